"""The HBM cache's host-side policy (embedlookup.cache_policy) against the
plain model in cache_policy_model.py: every plan (slot map, fills, evictions,
write-backs) on Zipf streams, pinning of planned batches, admission by the
sketch, and a replay of the plans on NumPy rows showing that no update is lost
(every evicted dirty slot is written back)."""

import numpy as np
import pytest
from cache_policy_model import CachePolicyModel

from embedlookup.cache_policy import HbmCachePolicy, HostRowIndex

WIDE = dict(sketch_width=1 << 16, sketch_depth=4)


def zipf_batches(seed, n_batches, batch, n_keys, a=1.05):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_keys + 1) ** a
    ids = rng.permutation(n_keys) * 7919 - 5000  # scattered, some negative keys
    return [ids[rng.choice(n_keys, size=batch, p=p / p.sum())].astype(np.int64) for _ in range(n_batches)]


def same_plan(got, want):
    for name in ("slot_of", "writeback_slots", "writeback_keys", "evict_slots", "evict_keys", "fill_slots",
                 "fill_keys"):
        np.testing.assert_array_equal(got[name], np.asarray(want[name], dtype=got[name].dtype), err_msg=name)
    assert (got["hits"], got["misses"]) == (want["hits"], want["misses"])


@pytest.mark.parametrize("slots,half_life,admit,lag", [(16, 4.0, 1, 1), (24, 50.0, 2, 2), (8, 1.5, 3, 1)])
def test_plans_match_the_model(slots, half_life, admit, lag):
    pol = HbmCachePolicy(slots, half_life=half_life, admit_count=admit, **WIDE)
    ref = CachePolicyModel(slots, half_life, admit)
    rng = np.random.default_rng(slots)
    evictions = writebacks = 0
    for i, keys in enumerate(zipf_batches(slots, 60, 40, 200)):
        write = bool(rng.integers(2))
        got, want = pol.plan(keys, write=write), ref.plan(keys, write)
        same_plan(got, want)
        evictions += len(got["evict_slots"])
        writebacks += len(got["writeback_slots"])
        if pol.pending == lag:  # lag 2: the next batch is planned (prefetched) before this one is released
            pol.release()
            ref.release()
        for s in range(slots):
            assert pol.dirty(s) == ref.dirty[s]
    assert evictions > 20 and writebacks > 5  # the stream exercises replacement and write-back
    assert pol.resident() == {k: s for s, k in enumerate(ref.key) if k is not None}


def test_pinned_batch_keeps_its_slots():
    pol = HbmCachePolicy(4, half_life=1.0, **WIDE)
    first = pol.plan(np.array([1, 2, 3, 4]))
    assert sorted(first["fill_keys"].tolist()) == [1, 2, 3, 4]
    hot = np.repeat(np.array([10, 11], dtype=np.int64), 50)  # far hotter, but batch 1 is in flight
    second = pol.plan(hot)
    assert second["evict_slots"].size == 0 and (second["slot_of"] == -1).all()
    pol.release()  # batch 1 done
    third = pol.plan(hot)
    assert sorted(third["fill_keys"].tolist()) == [10, 11] and (third["slot_of"] >= 0).all()
    assert set(third["evict_keys"].tolist()) <= {1, 2, 3, 4} and third["evict_slots"].size == 2


def test_admission_needs_admit_count_sightings():
    pol = HbmCachePolicy(8, admit_count=3, **WIDE)
    p1 = pol.plan(np.array([5, 5, 6]))
    assert p1["fill_keys"].size == 0 and (p1["slot_of"] == -1).all()
    assert pol.estimate(5) == 2 and pol.estimate(6) == 1
    pol.release()
    p2 = pol.plan(np.array([5, 6]))
    assert p2["fill_keys"].tolist() == [5] and p2["slot_of"][0] >= 0 and p2["slot_of"][1] == -1
    assert (p2["hits"], p2["misses"]) == (0, 2)


def test_replayed_plans_lose_no_update():
    """Rows in host memory, a cache of slots: carry out each plan (write back,
    fill), add a batch's gradient to the slot or host row of each position,
    flush at the end: equal to adding every gradient to the host rows directly."""
    dim, slots = 3, 12
    pol = HbmCachePolicy(slots, half_life=3.0, **WIDE)
    index = HostRowIndex()
    host = np.zeros((512, dim))
    hbm = np.full((slots, dim), np.nan)  # a slot is read only after a fill
    truth = np.zeros((512, dim))
    rng = np.random.default_rng(3)
    pending = []
    for keys in zipf_batches(9, 80, 30, 150):
        rows = index.resolve(keys)
        plan = pol.plan(keys, write=True)
        hbm_wb = index.resolve(plan["writeback_keys"], insert=False)
        host[hbm_wb] = hbm[plan["writeback_slots"]]
        host_fill = index.resolve(plan["fill_keys"], insert=False)
        hbm[plan["fill_slots"]] = host[host_fill]
        g = rng.normal(size=(keys.size, dim))
        np.add.at(truth, rows, g)
        cached = plan["slot_of"] >= 0
        np.add.at(hbm, plan["slot_of"][cached], g[cached])
        np.add.at(host, rows[~cached], g[~cached])
        pending.append(keys)
        if len(pending) == 2:  # one batch prefetched ahead
            pol.release()
            pending.pop(0)
    slots_d, keys_d = pol.take_dirty()
    host[index.resolve(keys_d, insert=False)] = hbm[slots_d]
    np.testing.assert_allclose(host, truth, rtol=1e-12, atol=1e-12)
    assert pol.take_dirty()[0].size == 0


def test_host_row_index():
    idx = HostRowIndex()
    np.testing.assert_array_equal(idx.resolve(np.array([9, -4, 9, 7])), [0, 1, 0, 2])
    np.testing.assert_array_equal(idx.resolve([7, 11], insert=False), [2, -1])
    assert len(idx) == 3


def test_bad_arguments_leave_the_policy_as_it_was():
    for kw, msg in ((dict(slots=0), "slots"), (dict(slots=4, sketch_width=3), "sketch_width"),
                    (dict(slots=4, half_life=float("nan")), "half_life"), (dict(slots=4, admit_count=0), "admit_count"),
                    (dict(slots=2**31), "slots")):
        with pytest.raises(ValueError, match=msg):
            HbmCachePolicy(**kw)
    pol = HbmCachePolicy(4, **WIDE)
    with pytest.raises(RuntimeError, match="no planned batch"):
        pol.release()
    pol.plan(np.array([1, 2]))
    with pytest.raises(ValueError, match="keys must be 1-D"):
        pol.plan(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="keys"):
        pol.plan(np.array([1.5]))
    assert (pol.clock, pol.used, pol.pending) == (1, 2, 1)
    with pytest.raises(IndexError, match="slot"):
        pol.dirty(4)
