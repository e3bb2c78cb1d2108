"""Row types through deltas and checkpoints: quantize on export for replicas,
raw copies of compressed tables, explicit conversion or a clear error."""

import numpy as np
import pytest

import embedlookup as el
import reference as ref
from embedlookup.storage import delta_info, file_info


def trainer(n=2000, dim=64, seed=0):
    t = el.EmbeddingTable(dim, optimizer=el.optim.Adagrad(lr=0.1))
    keys = np.random.default_rng(seed).choice(10 ** 12, n, replace=False).astype(np.int64)
    t.lookup(keys)
    t.apply_gradients(keys, np.random.default_rng(seed + 1).standard_normal((n, dim)).astype(np.float32))
    return t


@pytest.mark.parametrize("kind", ["fp16", "bf16", "int8", "int4"])
def test_export_delta_quantizes_an_fp32_trainer_for_a_replica(kind):
    t = trainer()
    d32 = t.export_delta(0)
    dq = t.export_delta(0, row_type=kind)
    info = delta_info(dq)
    assert info["row_type"] == kind and delta_info(d32)["row_type"] == "fp32"
    replica = el.EmbeddingTable(64, row_type=kind)
    replica.apply_delta(dq)
    keys, rows = t.export()
    k, raw = replica.export_raw()
    np.testing.assert_array_equal(k, keys)
    np.testing.assert_array_equal(raw, ref.quantize_rows(rows, kind))
    # per row: the key (8), the row in the type's bytes, the Adagrad state (fp32, 4 dim); + header
    rb = ref.row_bytes(kind, 64)
    assert len(d32) == pytest.approx(2000 * (8 + 256 + 256), abs=1024)
    assert len(dq) == pytest.approx(2000 * (8 + rb + 256), abs=1024)


def test_int8_replica_refresh_moves_about_4x_fewer_bytes():
    t = el.EmbeddingTable(64)  # a serving export: rows only, no optimizer state
    keys = np.arange(5000, dtype=np.int64)
    t.lookup(keys)
    v = t.version
    t.assign(keys[:3000], np.random.default_rng(0).standard_normal((3000, 64)).astype(np.float32))
    d32, d8 = t.export_delta(v), t.export_delta(v, row_type="int8")
    assert delta_info(d8)["rows"] == delta_info(d32)["rows"] == 3000
    assert len(d32) / len(d8) > 3.25  # per row: 8 key bytes + 256 vs 8 + 72 (3.3x)


def test_a_delta_of_another_row_type_raises_unless_converted():
    t = trainer(n=300, dim=16)
    d = t.export_delta(0)
    r = el.EmbeddingTable(16, row_type="int8")
    r.lookup(np.array([-1], dtype=np.int64))
    before = r.export_raw()
    with pytest.raises(ValueError, match="fp32 but this table stores int8"):
        r.apply_delta(d)
    after = r.export_raw()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    fresh = el.EmbeddingTable(16, row_type="int8")
    fresh.apply_delta(d, convert=True)
    np.testing.assert_array_equal(fresh.export_raw()[1], ref.quantize_rows(t.export()[1], "int8"))
    # and back: an int8 delta into an fp32 table, converted, gives the int8 values
    back = el.EmbeddingTable(16)
    back.apply_delta(fresh.export_delta(0), convert=True)
    np.testing.assert_array_equal(back.export()[1], fresh.export()[1])


def test_conversion_out_of_range_raises_and_changes_nothing():
    src = el.EmbeddingTable(8)
    src.assign(np.array([1, 2], dtype=np.int64), np.array([[1.0] * 8, [1e5] + [0.0] * 7], np.float32))
    dst = el.EmbeddingTable(8, row_type="fp16")
    with pytest.raises(ValueError, match="out of the range"):
        dst.apply_delta(src.export_delta(0), convert=True)
    assert len(dst) == 0 and dst.version == 0
    with pytest.raises(ValueError, match="row_type"):
        src.export_delta(0, row_type="int3")


@pytest.mark.parametrize("kind", ["fp16", "int8", "int4"])
def test_checkpoints_keep_the_row_type_byte_for_byte(kind, tmp_path):
    t = el.EmbeddingTable(32, row_type=kind, optimizer=el.optim.Adagrad(lr=0.1) if kind == "fp16" else None)
    keys = np.arange(100, dtype=np.int64) * 3
    t.lookup(keys)
    if kind == "fp16":
        t.apply_gradients(keys, np.ones((100, 32), np.float32))
    p = tmp_path / "c.snap"
    t.save(p)
    info = file_info(p)
    assert info["row_type"] == kind
    assert p.read_bytes()[8:12] == (2).to_bytes(4, "little")  # format version 2 for compressed rows
    u = el.EmbeddingTable.load(p)
    assert u.row_type == kind
    np.testing.assert_array_equal(u.export_raw()[1], t.export_raw()[1])
    f = el.EmbeddingTable.load(p, row_type="fp32")  # explicit conversion
    assert f.row_type == "fp32"
    np.testing.assert_array_equal(f.export()[1], t.export()[1])


def test_fp32_checkpoints_stay_format_version_1(tmp_path):
    t = el.EmbeddingTable(8)
    t.lookup(np.arange(10, dtype=np.int64))
    p = tmp_path / "c.snap"
    t.save(p)
    assert p.read_bytes()[8:12] == (1).to_bytes(4, "little")
    assert file_info(p)["row_type"] == "fp32"
    u = el.EmbeddingTable.load(p)
    assert u.row_type == "fp32"
    # an int8 delta on top of an fp32 checkpoint needs the conversion named
    t2 = el.EmbeddingTable.load(p)
    v = t2.version
    t2.assign(np.array([3], dtype=np.int64), np.full((1, 8), 2.0, np.float32))
    q = tmp_path / "d.snap"
    t2.save_delta(q, v, row_type="int8")
    with pytest.raises(ValueError, match="int8 but this table stores fp32"):
        el.EmbeddingTable.load(p, [q])
    w = el.EmbeddingTable.load(p, [q], row_type="int8")
    assert w.lookup(np.array([3], dtype=np.int64))[0].tolist() == [2.0] * 8
