"""The file tier stores rows in its row type (docs/compressed.md, docs/format.md).

A tier opened by a compressed table holds the table's row bytes as they are:
written back and promoted bit for bit (checked against tests/reference.py's
quantizer), its slots sized by the row type; a file of another row type is
refused unless its row type is named, and then rows convert through fp32."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import embedlookup as el
import reference as ref
from embedlookup import quantize as q

TYPES = ("fp16", "bf16", "int8", "int4")


def _rows(n, dim, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, dim)) * 0.5).astype(np.float32)


def _file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("kind", TYPES)
def test_a_tiered_compressed_table_moves_its_row_bytes_bit_for_bit(kind, tmp_path):
    dim = 16
    tier = el.storage.FileTier(str(tmp_path / "t.tier"), 4096)
    t = el.EmbeddingTable(dim, row_type=kind, tier=tier, memory_rows=100)
    assert tier.row_type == kind
    keys = np.arange(300, dtype=np.int64)
    x = _rows(300, dim)
    t.assign(keys, x)  # rows past memory_rows are written back
    raw = ref.quantize_rows(x, kind)
    in_tier = tier.keys()
    assert len(in_tier) >= 200
    got_raw, found = tier.get_raw(in_tier)
    assert found.all()
    np.testing.assert_array_equal(got_raw, raw[in_tier])  # the table's bytes, as the reference encodes them
    rows, found = tier.get(in_tier)  # fp32 view: decoded
    np.testing.assert_array_equal(rows, ref.dequantize_rows(raw[in_tier], kind, dim))
    # Promoted back: the same bytes (int8 / int4 too: no decode / re-encode).
    np.testing.assert_array_equal(t.lookup(keys), ref.dequantize_rows(raw, kind, dim))
    k, r = t.export_raw()
    np.testing.assert_array_equal(k, keys)
    np.testing.assert_array_equal(r, raw)


@pytest.mark.parametrize("kind,dim,slot", [("fp32", 64, 256), ("fp16", 64, 128), ("bf16", 64, 128),
                                           ("int8", 64, 72), ("int4", 64, 40), ("int8", 16, 24),
                                           ("fp16", 6, 16), ("int4", 2, 16)])
def test_slots_hold_the_row_type_bytes(kind, dim, slot, tmp_path):
    """Slot = row_bytes + state floats, rounded up to 8 bytes (64 for fp32,
    the layout of every earlier file); the header's dtype code is the
    snapshot format's (1 fp32, 2 fp16, 3 bf16, 4 int8, 5 int4)."""
    path = str(tmp_path / "t.tier")
    tier = el.storage.FileTier(path, 1000, dim=dim, row_type=kind)
    assert tier.slot_bytes == slot
    assert tier.slot_bytes == -(-q.row_bytes(kind, dim) // (64 if kind == "fp32" else 8)) * (64 if kind == "fp32" else 8)
    tier.close()
    head = _file_bytes(path)[:20]
    assert int.from_bytes(head[16:20], "little") == q.ROW_TYPES.index(kind) + 1
    assert int.from_bytes(head[8:12], "little") == 2  # the format version is unchanged


def test_an_int8_tier_file_is_about_3_5x_smaller_than_fp32(tmp_path):
    sizes = {}
    for kind in ("fp32", "int8", "int4"):
        path = str(tmp_path / f"{kind}.tier")
        el.storage.FileTier(path, 100_000, dim=64, row_type=kind).close()
        sizes[kind] = os.path.getsize(path)
    # directory (32 B per slot) + slots: 288 / 104 per row for int8 -> 2.8x
    # overall, 256 / 72 = 3.6x on the row data
    assert sizes["fp32"] / sizes["int8"] > 2.7
    assert sizes["fp32"] / sizes["int4"] > 3.9


@pytest.mark.parametrize("kind", TYPES)
def test_a_reopened_tier_gives_the_same_bytes(kind, tmp_path):
    path = str(tmp_path / "t.tier")
    dim = 8
    keys = np.arange(50, dtype=np.int64)
    x = _rows(50, dim, seed=3)
    t = el.EmbeddingTable(dim, row_type=kind, tier=el.storage.FileTier(path, 100), memory_rows=10)
    t.assign(keys, x)
    t.demote(keys)
    t.tier.close()
    del t
    tier = el.storage.FileTier(path)  # opened by the table below, as its row type
    t2 = el.EmbeddingTable(dim, row_type=kind, tier=tier)
    assert tier.row_type == kind
    np.testing.assert_array_equal(t2.lookup(keys), ref.dequantize_rows(ref.quantize_rows(x, kind), kind, dim))


def test_another_row_type_raises_unless_named_then_converts(tmp_path):
    path = str(tmp_path / "t.tier")
    dim = 16
    keys = np.arange(40, dtype=np.int64)
    x = _rows(40, dim, seed=5)
    t = el.EmbeddingTable(dim, row_type="int8", tier=el.storage.FileTier(path, 100))
    t.assign(keys, x)
    t.demote(keys)
    t.tier.close()
    before = _file_bytes(path)
    # An fp16 table: the file holds int8 rows and nobody named that.
    with pytest.raises(ValueError, match="holds int8 rows, expected fp16"):
        el.EmbeddingTable(dim, row_type="fp16", tier=el.storage.FileTier(path))
    assert _file_bytes(path) == before  # a refused open leaves the file as it was
    # A tier opened alone (fp32 by default) under an int8 table: refused too.
    alone = str(tmp_path / "alone.tier")
    with pytest.raises(ValueError, match="stores fp32 rows but the table stores int8"):
        el.EmbeddingTable(dim, row_type="int8", tier=el.storage.FileTier(alone, 100, dim=dim))
    # Named: the fp16 table reads the int8 rows decoded and re-encoded to fp16.
    tier = el.storage.FileTier(path, row_type="int8")
    t16 = el.EmbeddingTable(dim, row_type="fp16", tier=tier)
    int8_vals = ref.dequantize_rows(ref.quantize_rows(x, "int8"), "int8", dim)
    want = ref.dequantize_rows(ref.quantize_rows(int8_vals, "fp16"), "fp16", dim)
    np.testing.assert_array_equal(t16.lookup(keys), want)
    # ... and writes its rows back encoded to int8 (round to nearest even).
    y = _rows(40, dim, seed=6)
    t16.assign(keys, y)
    t16.demote(keys)
    y16 = ref.dequantize_rows(ref.quantize_rows(y, "fp16"), "fp16", dim)
    np.testing.assert_array_equal(tier.get_raw(keys)[0], ref.quantize_rows(y16, "int8"))


def test_bad_row_type_arguments_and_out_of_range_rows(tmp_path):
    with pytest.raises(ValueError, match="row_type must be one of"):
        el.storage.FileTier(str(tmp_path / "a.tier"), 10, dim=4, row_type="int3")
    with pytest.raises(ValueError, match="dim must be even"):
        el.storage.FileTier(str(tmp_path / "b.tier"), 10, dim=5, row_type="int4")
    assert not os.path.exists(tmp_path / "a.tier") and not os.path.exists(tmp_path / "b.tier")
    tier = el.storage.FileTier(str(tmp_path / "c.tier"), 10, dim=4, row_type="fp16")
    tier.set(np.array([1], np.int64), np.ones((1, 4), np.float32))
    bad = np.ones((2, 4), np.float32)
    bad[1, 2] = 1e6  # beyond fp16's range
    with pytest.raises(ValueError, match="row 1 .* out of the range of row_type fp16"):
        tier.set(np.array([1, 2], np.int64), bad)
    assert len(tier) == 1
    np.testing.assert_array_equal(tier.get(np.array([1], np.int64))[0], np.ones((1, 4), np.float32))


def test_a_standalone_compressed_tier_encodes_fp32_rows_as_the_reference(tmp_path):
    dim = 12
    keys = np.arange(30, dtype=np.int64) * 7
    x = _rows(30, dim, seed=9)
    for kind in TYPES:
        tier = el.storage.FileTier(str(tmp_path / f"{kind}.tier"), 64, dim=dim, row_type=kind)
        tier.set(keys, x)
        np.testing.assert_array_equal(tier.get_raw(keys)[0], ref.quantize_rows(x, kind))
        np.testing.assert_array_equal(tier.get(keys)[0], ref.dequantize_rows(ref.quantize_rows(x, kind), kind, dim))
        tier.close()


CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import embedlookup as el
    path, kind = sys.argv[1], sys.argv[2]
    dim = 16
    x = (np.random.default_rng(11).standard_normal((200, dim)) * 0.5).astype(np.float32)
    tier = el.storage.FileTier(path, 400, dim=dim, row_type=kind)
    tier.set(np.arange(100, dtype=np.int64), x[:100])
    tier.flush()
    print("A", flush=True)
    tier.set(np.arange(100, 200, dtype=np.int64), x[100:])  # never flushed
    tier.set(np.arange(50, dtype=np.int64), x[150:])         # overwrites, never flushed
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("kind", ("int8", "int4"))
def test_a_killed_writer_leaves_a_compressed_tier_that_reopens_whole(kind, tmp_path):
    """kill -9 after a flush and more unflushed writes: the file reopens
    (recovered), every acknowledged row is present, and every row present is
    one whole value written for its key (the slots' checksums cover the
    compressed bytes)."""
    path = str(tmp_path / "t.tier")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", CHILD, path, kind], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert p.stdout.split() == ["A"]
    x = (np.random.default_rng(11).standard_normal((200, 16)) * 0.5).astype(np.float32)
    raw = ref.quantize_rows(x, kind)
    tier = el.storage.FileTier(path, dim=16, row_type=kind)
    assert tier.recovered
    keys = np.arange(200, dtype=np.int64)
    got, found = tier.get_raw(keys)
    assert found[:100].all()  # acknowledged by flush()
    for k in keys[found]:
        allowed = [raw[k]] + ([raw[150 + k]] if k < 50 else [])
        assert any(np.array_equal(got[k], a) for a in allowed), k
