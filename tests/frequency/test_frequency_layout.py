"""Relayout keeps every key's row, optimizer state and score bit-identical and
puts rows in score order; namespacing; bad input; drift at small scale."""

import numpy as np
import pytest

import embedlookup as el


def _trained(budget=None, seed=0, n_steps=40):
    rng = np.random.default_rng(seed)
    t = el.FrequencyTable(16, half_life=5.0, budget_rows=budget, policy="lfu" if budget else None,
                          evict_fraction=0.2, initializer=el.init.normal(std=0.1, seed=seed))
    opt = el.optim.Adam(lr=0.01)
    p = 1.0 / np.arange(1, 301) ** 1.05
    p /= p.sum()
    for _ in range(n_steps):
        b = rng.choice(300, size=32, p=p).astype(np.int64)
        t.lookup(b)
        t.apply_gradients(b, rng.normal(size=(32, 16)).astype(np.float32), opt)
    return t, opt


@pytest.mark.parametrize("budget", [None, 120])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_relayout_keeps_rows_state_and_scores_bit_identical(budget, chunk):
    t, opt = _trained(budget)
    twin, _ = _trained(budget)  # same stream, never relaid out
    keys, rows = t.export()
    score0, last0, id0 = t.inspect(keys)
    t.relayout(chunk)
    keys1, rows1 = t.export()
    np.testing.assert_array_equal(keys1, keys)
    assert rows1.tobytes() == rows.tobytes()
    score1, last1, id1 = t.inspect(keys)
    assert score1.tobytes() == score0.tobytes() and np.array_equal(last1, last0)
    # Rows sit in score order: hottest at row id 0, ids dense from 0.
    now = t.stats()["clock"]
    cur = score1.astype(np.float64) * 2.0 ** (-(now - last1.astype(np.int64)) / 5.0)
    order = np.lexsort((keys, -last1.astype(np.int64), -cur))
    np.testing.assert_array_equal(id1[order], np.arange(keys.size))
    # Optimizer state moved with its row: one more identical step on both tables agrees bit for bit.
    g = np.ones((keys.size, 16), np.float32)
    t.apply_gradients(keys, g, opt)
    twin.apply_gradients(keys, g, opt)
    assert t.export()[1].tobytes() == twin.export()[1].tobytes()


def test_relayout_is_incremental_and_survives_evictions_between_steps():
    t, _ = _trained(120)
    left = t.relayout_step(10)
    assert 0 < left < len(t)
    # Evictions and admissions between steps: the plan skips vanished keys.
    t.lookup(np.arange(1000, 1060, dtype=np.int64))
    keys, rows = t.export()
    while t.relayout_step(10):
        pass
    k2, r2 = t.export()
    np.testing.assert_array_equal(k2, keys)
    assert r2.tobytes() == rows.tobytes()
    assert t.stats()["relayouts_completed"] == 1


def test_hot_region_counts_lookups_of_low_row_ids():
    t = el.FrequencyTable(8, hot_fraction=0.5)
    t.lookup(np.arange(10, dtype=np.int64))  # ids 0..9 in order
    for _ in range(3):
        t.lookup(np.array([9, 8, 7, 6, 5], np.int64))
    before = t.stats()["hot_hits"]
    t.lookup(np.array([9, 8, 7, 6, 5], np.int64))
    assert t.stats()["hot_hits"] == before  # ids 5..9 are outside [0, 5)
    t.relayout()
    t.lookup(np.array([9, 8, 7, 6, 5], np.int64))
    assert t.stats()["hot_hits"] == before + 5


def test_features_never_collide_and_keep_their_own_stats():
    t = el.FrequencyTable(4, features=["user", "item"], initializer=el.init.uniform(-1, 1, seed=9))
    v = np.array([0, 5, (1 << 47) - 1, -(1 << 47)], np.int64)
    a = t.lookup(v, feature="user")
    b = t.lookup(v, feature="item")
    assert len(t) == 8
    assert not np.array_equal(a, b)  # same values, different rows
    np.testing.assert_array_equal(t.find(v, feature="user")[0], a)
    keys = t.export()[0]
    assert sorted(set((keys >> 48).tolist())) == [0, 1]
    st = t.stats()["features"]
    assert st["user"]["misses"] == 4 and st["user"]["hits"] == 4 and st["item"]["misses"] == 4
    # One namespacing rule for FrequencyTable and the torch collection (_namespace.py).
    with pytest.raises(ValueError, match=r"\[-2\*\*47, 2\*\*47\)"):
        t.lookup(np.array([1 << 47], np.int64), feature="user")
    with pytest.raises(ValueError, match=str(-(1 << 47) - 1)):
        t.lookup(np.array([-(1 << 47) - 1], np.int64), feature="user")
    with pytest.raises(ValueError, match="not one of"):
        t.lookup(v, feature="ads")
    with pytest.raises(ValueError, match="name the feature"):
        t.lookup(v)
    auto = el.FrequencyTable(4, features=True)
    auto.lookup(v, feature="x")
    auto.lookup(v, feature=7)
    assert sorted(set((auto.export()[0] >> 48).tolist())) == [0, 7]


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget_rows=0), "budget_rows"),
    (dict(budget_rows=-5), "budget_rows"),
    (dict(budget_bytes=10), "holds no row"),
    (dict(half_life=0), "half_life"),
    (dict(half_life=-1.0), "half_life"),
    (dict(half_life=float("nan")), "half_life"),
    (dict(budget_rows=10, policy="fifo"), "policy"),
    (dict(policy="lfu"), "needs budget"),
    (dict(budget_rows=10, policy="none"), "cannot keep a budget"),
    (dict(policy="ttl"), "ttl"),
    (dict(budget_rows=100, max_batch_keys=4096), "below one batch"),
    (dict(admit_count=0), "admit_count"),
    (dict(admit_probability=0.0), "admit_probability"),
    (dict(sketch_width=1000), "power of two"),
    (dict(evict_fraction=1.0), "evict_fraction"),
    (dict(default_row="random"), "default_row"),
    (dict(on_evict="print"), "on_evict"),
])
def test_bad_construction_raises_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        el.FrequencyTable(8, **kwargs)


def test_batch_above_budget_raises_and_changes_nothing():
    t = el.FrequencyTable(4, budget_rows=4, policy="lfu")
    t.lookup(np.array([1, 2], np.int64))
    keys, rows = t.export()
    clock = t.stats()["clock"]
    with pytest.raises(ValueError, match="5 distinct keys but budget_rows is 4"):
        t.lookup(np.array([1, 2, 3, 4, 5], np.int64))
    k2, r2 = t.export()
    np.testing.assert_array_equal(k2, keys)
    assert r2.tobytes() == rows.tobytes()
    assert t.stats()["clock"] == clock  # refused before the clock moved: no trace of the failed call
    t.lookup(np.array([3, 3, 3, 4, 5, 5], np.int64))  # 6 keys but only 3 distinct: fine


def _drift_run(n_phases=4, universe=2000, budget_frac=0.2, steps=120, batch=256, seed=0):
    rng = np.random.default_rng(seed)
    distinct = n_phases * universe
    t = el.FrequencyTable(8, budget_rows=int(budget_frac * distinct), policy="lfu", half_life=10.0,
                          admit_count=2, sketch_width=1 << 14, on_evict="drop")
    opt = el.optim.SGD(lr=0.01)
    p = 1.0 / np.arange(1, universe + 1) ** 1.05
    p /= p.sum()
    shares = []
    for phase in range(n_phases):
        ids = rng.permutation(universe) + phase * universe  # a new popular set each phase
        for s in range(steps):
            b = ids[rng.choice(universe, size=batch, p=p)].astype(np.int64)
            before = t.stats()
            t.lookup(b)
            t.apply_gradients(b, np.ones((batch, 8), np.float32), opt)
            after = t.stats()
            if s >= steps // 2:  # after the drift has been absorbed
                shares.append((phase, after["hits"] - before["hits"], batch))
    return t, shares


def test_drift_keeps_trained_rows_serving_at_least_90_percent():
    # hits = occurrences whose key already had a row before this call, i.e. a
    # row trained by an earlier step's apply_gradients.
    t, shares = _drift_run()
    for phase in range(4):
        h = sum(x for p, x, _ in shares if p == phase)
        n = sum(x for p, _, x in shares if p == phase)
        assert h / n >= 0.9, f"phase {phase}: {h / n:.3f}"
    assert len(t) <= t.budget_rows


def test_stats_report_bytes_per_part_and_budget_bytes():
    opt = el.optim.Adagrad(lr=0.1)
    per_row = el.FrequencyTable.bytes_per_row(16, opt)
    assert per_row == 4 * 16 + 4 * 16 + 8 + 8 + 16
    t = el.FrequencyTable(16, budget_bytes=per_row * 50, optimizer=opt, admit_count=2, sketch_width=1 << 12,
                          sketch_depth=3, policy="lru")
    assert t.budget_rows == 50
    k = np.arange(200, dtype=np.int64)
    t.lookup(np.concatenate([k[:40], k[:40]]))  # seen twice in one call: admitted
    t.apply_gradients(k[:40], np.ones((40, 16), np.float32))
    s = t.stats()
    assert s["sketch_bytes"] == 4 * 3 * (1 << 12)
    assert s["rows"] == 40 and s["admitted"] == 40
    assert s["row_bytes"] >= 40 * 64 and s["optimizer_state_bytes"] >= 40 * 64
    assert s["metadata_bytes"] >= 40 * 16 and s["index_bytes"] > 0
    assert s["overhead_bytes_per_row"] == (s["index_bytes"] + s["metadata_bytes"]) / 40
    assert s["hit_ratio"] == 0.0 and s["misses"] == 80


def test_insert_is_an_alias_of_train():
    t = el.FrequencyTable(4)
    t.pooled_lookup(np.array([1, 2], np.int64), np.array([0], np.int64), insert=False)
    assert len(t) == 0 and t.stats()["clock"] == 0
    t.lookup(np.array([1, 2], np.int64), insert=True)
    assert len(t) == 2 and t.stats()["clock"] == 1
