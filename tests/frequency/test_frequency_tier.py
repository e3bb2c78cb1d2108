"""A frequency-aware table over a file tier: evictions are written back, and evicted keys come back trained."""

import numpy as np
import pytest

import embedlookup as el


def test_evicted_rows_go_to_the_tier_and_return_trained(tmp_path):
    tier = el.storage.FileTier(tmp_path / "rows.el", capacity=64)
    t = el.FrequencyTable(4, initializer=el.init.zeros(), optimizer=el.optim.SGD(lr=1.0),
                          budget_rows=4, policy="lru", evict_fraction=0.5, tier=tier)
    first = np.array([1, 2, 3, 4], np.int64)
    t.lookup(first)
    grads = np.arange(16, dtype=np.float32).reshape(4, 4)
    t.apply_gradients(first, grads)
    trained = -grads  # zeros - lr * grad
    np.testing.assert_array_equal(t.find(first)[0], trained)

    t.lookup(np.array([5, 6, 7, 8], np.int64))  # over budget: the LRU rows 1..4 leave memory
    assert (t.inspect(first)[2] == 2**32 - 1).all()  # no row id in memory
    rows, found = t.find(first)  # a serving lookup reads the tier in place, without promoting
    assert found.all()
    np.testing.assert_array_equal(rows, trained)
    assert (t.inspect(first)[2] == 2**32 - 1).all()
    held, in_tier = tier.get(first)
    assert in_tier.all()
    np.testing.assert_array_equal(held, trained)  # written back, not lost

    back = t.lookup(np.array([2, 3], np.int64))   # promoted with their trained values
    np.testing.assert_array_equal(back, trained[[1, 2]])
    # Copied, not moved: the tier keeps its durable copy until the row is written back.
    held, in_tier = tier.get(np.array([2, 3], np.int64))
    assert in_tier.all()
    np.testing.assert_array_equal(held, trained[[1, 2]])
    assert len(t) == 8  # keys counted once, whether in memory, the tier or both
    t.apply_gradients(np.array([2], np.int64), np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(t.find(np.array([2], np.int64))[0][0], trained[1] - 1)
    keys, rows = t.export()  # the memory copy wins over the tier's older one
    np.testing.assert_array_equal(keys, np.arange(1, 9))
    np.testing.assert_array_equal(rows[1], trained[1] - 1)


def test_tier_and_on_evict_are_exclusive(tmp_path):
    tier = el.storage.FileTier(tmp_path / "rows.el", capacity=8)
    with pytest.raises(ValueError, match="on_evict and tier are exclusive"):
        el.FrequencyTable(4, budget_rows=4, policy="lfu", tier=tier, on_evict="drop")


def test_erase_removes_keys_from_memory_and_from_the_tier(tmp_path):
    tier = el.storage.FileTier(tmp_path / "rows.el", capacity=64)
    t = el.FrequencyTable(4, initializer=el.init.constant(3.0), budget_rows=4, policy="lru",
                          evict_fraction=0.5, tier=tier)
    t.lookup(np.array([1, 2, 3, 4], np.int64))
    t.lookup(np.array([5, 6, 7, 8], np.int64))  # 1..4 go to the tier
    assert tier.get(np.array([1], np.int64))[1].all()
    assert t.erase(np.array([1, 5], np.int64)) == 2  # one in the tier, one in memory
    assert not tier.get(np.array([1], np.int64))[1].any()
    assert not t.find(np.array([5], np.int64))[1].any()
    # An erased key is new again: the initializer's row, not a resurrected one.
    np.testing.assert_array_equal(t.lookup(np.array([1], np.int64)), np.full((1, 4), 3.0, np.float32))
