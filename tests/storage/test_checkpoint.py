"""save / load / incremental checkpoints, bad files."""

import os
import threading

import numpy as np
import pytest

import embedlookup as el
from storage_helpers import assert_same
from reference import RefOptimizer

DIM = 16


def trained_table(opt=None, n=300, steps=3, seed=0):
    opt = opt or el.optim.Adagrad(lr=0.1, initial_accumulator_value=0.1)
    t = el.EmbeddingTable(DIM, initializer=el.init.normal(std=0.1, seed=5), capacity=10_000, optimizer=opt)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        k = rng.integers(0, n, 64)
        t.lookup(k)
        t.apply_gradients(k, rng.standard_normal((64, DIM)).astype(np.float32))
    return t


@pytest.mark.parametrize("opt", [el.optim.SGD(lr=0.1), el.optim.Adagrad(lr=0.1, initial_accumulator_value=0.1),
                                 el.optim.Adagrad(lr=0.1, rowwise=True), el.optim.Adam(lr=0.01)])
def test_save_load_round_trip_continues_training_identically(tmp_path, opt):
    t = trained_table(opt)
    p = tmp_path / "ckpt"
    v = t.save(p)
    assert v == t.version
    u = el.EmbeddingTable.load(p, optimizer=opt)
    assert_same(t, u)
    assert (u.dim, u.capacity, u.step, u.version) == (t.dim, t.capacity, t.step, t.version)
    ui, ti = u.initializer, t.initializer
    assert (ui.kind, ui.seed, np.float32(ui.a), np.float32(ui.b)) == (ti.kind, ti.seed, np.float32(ti.a),
                                                                      np.float32(ti.b))
    # optimizer state and step came along: the same next step gives the same rows
    k = t.export()[0][:50]
    g = np.random.default_rng(1).standard_normal((50, DIM)).astype(np.float32)
    t.apply_gradients(k, g)
    u.apply_gradients(k, g)
    assert_same(t, u)
    # the initializer came along: new keys get the same rows
    np.testing.assert_array_equal(t.lookup(np.array([10**9])), u.lookup(np.array([10**9])))
    assert not os.path.exists(str(p) + ".tmp")


def test_loaded_rows_match_the_numpy_oracle(tmp_path):
    t = el.EmbeddingTable(4, initializer=el.init.zeros(), optimizer=el.optim.SGD(lr=0.5))
    ref = RefOptimizer("sgd", lr=0.5)
    keys = np.array([1, 2, 3, 2])
    t.lookup(keys)
    g = np.arange(16, dtype=np.float32).reshape(4, 4)
    t.apply_gradients(keys, g)
    table = {k: np.zeros(4, np.float32) for k in (1, 2, 3)}
    ref.apply(table, keys, g)
    t.save(tmp_path / "c")
    k, r = el.EmbeddingTable.load(tmp_path / "c").export()
    np.testing.assert_allclose(r, np.stack([table[int(x)] for x in k]), rtol=1e-6)


def test_incremental_checkpoints_replay(tmp_path):
    t = trained_table()
    v = t.save(tmp_path / "full")
    paths = []
    rng = np.random.default_rng(3)
    for i in range(3):
        k = rng.integers(0, 600, 64)
        t.lookup(k)
        t.apply_gradients(k, rng.standard_normal((64, DIM)).astype(np.float32))
        t.erase(k[:3])
        p = tmp_path / f"delta{i}"
        v = t.save_delta(p, v)
        paths.append(p)
    u = el.EmbeddingTable.load(tmp_path / "full", deltas=paths)
    assert_same(t, u)
    assert u.version == t.version
    with pytest.raises(ValueError, match="out of order"):
        el.EmbeddingTable.load(tmp_path / "full", deltas=[paths[1]])
    with pytest.raises(ValueError, match="delta, not a full checkpoint"):
        el.EmbeddingTable.load(paths[0])


def test_bad_files(tmp_path):
    t = trained_table()
    p = tmp_path / "c"
    t.save(p)
    data = p.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "header": data[:100],
        "magic": b"PK\x03\x04" + data[4:],
    }
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    cases["checksum"] = bytes(flipped)
    hdr = bytearray(data)
    hdr[24] = 9  # dim field, header CRC now wrong
    cases["header checksum"] = bytes(hdr)
    for what, blob in cases.items():
        q = tmp_path / what.replace(" ", "_")
        q.write_bytes(blob)
        with pytest.raises(el.storage.SnapshotFormatError, match=what.split()[-1] if what != "header" else "truncated"):
            el.EmbeddingTable.load(q)
    with pytest.raises(OSError if False else RuntimeError, match="cannot open"):
        el.EmbeddingTable.load(tmp_path / "missing")
    # a checkpoint applied to a table of another dim, or a non-empty table
    other = el.EmbeddingTable(DIM * 2)
    with pytest.raises(ValueError, match="dim"):
        other._t.apply_file(str(p))
    busy = el.EmbeddingTable(DIM)
    busy.lookup(np.arange(5))
    before = busy.export()
    with pytest.raises(ValueError, match="empty"):
        busy._t.apply_file(str(p))
    np.testing.assert_array_equal(busy.export()[1], before[1])


def test_saving_does_not_stop_lookups(tmp_path):
    t = el.EmbeddingTable(64)
    t.lookup(np.arange(100_000))
    keys = np.arange(0, 100_000, 7)
    counts = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            t.find(keys[:1000])
            counts.append(1)

    th = threading.Thread(target=reader)
    th.start()
    for i in range(3):
        t.save(tmp_path / f"c{i}")
    done.set()
    th.join()
    assert len(counts) > 3  # lookups ran while saving
    assert_same(t, el.EmbeddingTable.load(tmp_path / "c2"))
