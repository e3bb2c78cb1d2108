"""Table basics: lookup / find / assign / erase / export, initializers, capacity, memory."""

import numpy as np
import pytest

import embedlookup as el
from reference import init_uniform


def keys_of(*k):
    return np.array(k, dtype=np.int64)


def test_lookup_inserts_with_the_initializer_and_is_collision_free():
    t = el.EmbeddingTable(8, initializer=el.init.uniform(-1, 1, seed=7))
    keys = np.array([0, 1, -1, 2**62, -(2**63), 2**63 - 1, 12345], dtype=np.int64)
    rows = t.lookup(keys)
    assert len(t) == len(keys)
    np.testing.assert_array_equal(rows, init_uniform(keys, 8, -1, 1, 7))
    # Distinct keys, distinct rows; the same key, the same row.
    assert len({r.tobytes() for r in rows}) == len(keys)
    np.testing.assert_array_equal(t.lookup(keys[::-1]), rows[::-1])


def test_find_never_inserts():
    t = el.EmbeddingTable(4, initializer=el.init.constant(2.0))
    t.lookup(keys_of(1, 2))
    rows, found = t.find(keys_of(2, 3, 1))
    np.testing.assert_array_equal(found, [True, False, True])
    np.testing.assert_array_equal(rows, [[2] * 4, [0] * 4, [2] * 4])
    assert len(t) == 2
    out = t.lookup(keys_of(9), insert=False)
    np.testing.assert_array_equal(out, np.zeros((1, 4)))
    assert len(t) == 2


def test_assign_erase_export():
    t = el.EmbeddingTable(3, initializer=el.init.zeros())
    t.assign(keys_of(5, 7, 5), np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]], np.float32))
    k, r = t.export()
    np.testing.assert_array_equal(k, [5, 7])
    np.testing.assert_array_equal(r, [[3, 3, 3], [2, 2, 2]])  # last duplicate wins
    assert t.erase(keys_of(5, 99)) == 1
    k, r = t.export()
    np.testing.assert_array_equal(k, [7])
    # An erased key comes back with a fresh initial row, reusing the freed slot.
    np.testing.assert_array_equal(t.lookup(keys_of(5)), [[0, 0, 0]])
    assert len(t) == 2


def test_pooled_lookup_after_erase_and_reinsert_sees_only_live_rows():
    # Tombstones keep their key in the index: the kernels' probe must skip a
    # matching tombstone and find the key's live slot further on, or report it
    # missing. 20 K keys in a small index: many buckets hold tombstones.
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(0, 1 << 40, size=20_000))
    t = el.EmbeddingTable(8, initializer=el.init.zeros())
    first = rng.random((len(keys), 8), dtype=np.float32)
    t.assign(keys, first)
    erased = keys[::3]
    t.erase(erased)
    back = erased[::2]  # re-inserted with new rows
    second = rng.random((len(back), 8), dtype=np.float32)
    t.assign(back, second)
    want = dict(zip(keys.tolist(), first))
    want.update(zip(back.tolist(), second))
    gone = set(erased.tolist()) - set(back.tolist())
    for k in gone:
        want[k] = np.zeros(8, np.float32)  # find() / lookup(insert=False) -> zeros
    q = rng.choice(keys, size=8_000)
    off = np.arange(0, len(q), 4)
    ref = np.add.reduceat(np.stack([want[k] for k in q.tolist()]), off, axis=0)
    rows, found = t.find(q)
    np.testing.assert_array_equal(found, [k not in gone for k in q.tolist()])
    np.testing.assert_allclose(rows, np.stack([want[k] for k in q.tolist()]))
    # pooled_lookup inserts missing keys (zeros initializer): the same sums
    np.testing.assert_allclose(t.pooled_lookup(q, off), ref, rtol=1e-6, atol=1e-6)
    assert len(t) == len(keys) - len(gone - set(q.tolist()))  # the queried ones came back


def test_export_is_sorted_and_complete():
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(-(10**12), 10**12, size=5000))
    t = el.EmbeddingTable(5, initializer=el.init.uniform(seed=3))
    t.lookup(keys)
    k, r = t.export()
    np.testing.assert_array_equal(k, np.sort(keys))
    np.testing.assert_array_equal(r, init_uniform(np.sort(keys), 5, -0.01, 0.01, 3))
    np.testing.assert_array_equal(t.keys(), np.sort(keys))
    assert t.erase(keys[::2]) == keys[::2].size
    np.testing.assert_array_equal(t.keys(), np.sort(keys[1::2]))


@pytest.mark.parametrize("dim", [1, 7, 8, 13, 64, 130])
def test_growth_keeps_every_row(dim):
    t = el.EmbeddingTable(dim, initializer=el.init.zeros())
    keys = np.arange(20000, dtype=np.int64) * 31 - 7
    rows = np.random.default_rng(dim).standard_normal((len(keys), dim)).astype(np.float32)
    for chunk in np.array_split(np.arange(len(keys)), 7):  # several rehashes and arena chunks
        t.assign(keys[chunk], rows[chunk])
    np.testing.assert_array_equal(t.lookup(keys), rows)


def test_initializers_are_deterministic_across_order_and_threads():
    keys = np.arange(3000, dtype=np.int64) * 977
    perm = np.random.default_rng(1).permutation(len(keys))
    for init in (el.init.uniform(-0.5, 0.5, seed=11), el.init.normal(0.0, 1.0, seed=11)):
        a = el.EmbeddingTable(16, initializer=init, num_threads=1)
        b = el.EmbeddingTable(16, initializer=init, num_threads=2)
        a.lookup(keys)
        for part in np.array_split(keys[perm], 5):
            b.lookup(part)
        np.testing.assert_array_equal(a.export()[1], b.export()[1])


def test_normal_initializer_statistics_and_seed():
    keys = np.arange(20000, dtype=np.int64)
    r = el.EmbeddingTable(32, initializer=el.init.normal(1.0, 0.5, seed=2)).lookup(keys)
    assert abs(r.mean() - 1.0) < 0.01 and abs(r.std() - 0.5) < 0.01
    # Standard-normal tail mass beyond 2 sigma is ~4.55%.
    assert abs(np.mean(np.abs(r - 1.0) > 1.0) - 0.0455) < 0.005
    other = el.EmbeddingTable(32, initializer=el.init.normal(1.0, 0.5, seed=3)).lookup(keys[:10])
    assert not np.array_equal(other, r[:10])


def test_capacity_is_all_or_nothing():
    t = el.EmbeddingTable(4, capacity=5)
    t.lookup(keys_of(1, 2, 3))
    before = t.export()
    with pytest.raises(el.TableFullError, match="capacity 5"):
        t.lookup(keys_of(4, 5, 6, 4))
    assert len(t) == 3
    np.testing.assert_array_equal(t.export()[0], before[0])
    t.lookup(keys_of(4, 5, 4))  # exactly fills it
    assert len(t) == 5


def test_out_argument_is_written_in_place():
    t = el.EmbeddingTable(4, initializer=el.init.constant(1.5))
    out = np.full((2, 4), 9.0, np.float32)
    res = t.lookup(keys_of(3, 4), out=out)
    assert res is out
    np.testing.assert_array_equal(out, 1.5)
    pooled = np.empty((1, 4), np.float32)
    assert t.pooled_lookup(keys_of(3, 4), keys_of(0), out=pooled) is pooled
    np.testing.assert_array_equal(pooled, 3.0)


def test_inputs_from_dlpack_and_buffers():
    torch = pytest.importorskip("torch")
    t = el.EmbeddingTable(4, initializer=el.init.uniform(seed=5))
    k = torch.tensor([10, 20, 10])
    np.testing.assert_array_equal(t.lookup(k), t.lookup(np.array([10, 20, 10])))
    np.testing.assert_array_equal(t.lookup([10, 20]), t.lookup(np.array([10, 20], np.int32)))
    np.testing.assert_array_equal(t.lookup(memoryview(np.array([20], np.int64))), t.lookup(keys_of(20)))


def test_memory_usage_reports_every_part():
    t = el.EmbeddingTable(64)
    t.lookup(np.arange(10000, dtype=np.int64))
    t.apply_gradients(np.arange(10, dtype=np.int64), np.zeros((10, 64), np.float32), el.optim.Adam())
    m = t.memory_usage()
    assert m["rows"] == 10000
    assert m["row_bytes_per_row"] == 256
    assert m["row_bytes"] >= 10000 * 256
    assert m["optimizer_state_bytes"] >= 10000 * 2 * 256
    assert 0 < m["overhead_bytes_per_row"] < 64
    assert m["total_bytes"] == m["index_bytes"] + m["row_bytes"] + m["optimizer_state_bytes"] + m["metadata_bytes"]
