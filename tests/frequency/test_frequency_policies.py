"""Each eviction/admission policy against the slow Python model (model.py):
same rows kept, same admissions and rejections, same evictions in the same
order, same scores, after every call of small random traces."""

import numpy as np
import pytest

import embedlookup as el
from model import PolicyModel

CASES = [
    dict(policy="lfu", budget=12, evict_fraction=0.0),
    dict(policy="lfu", budget=12, evict_fraction=0.25, admit_count=3),
    dict(policy="lru", budget=10, evict_fraction=0.1),
    dict(policy="lru", budget=10, admit_probability=0.5, admit_seed=7),
    dict(policy="ttl", budget=0, ttl=4),
    dict(policy="ttl", budget=9, ttl=6, ttl_interval=2, admit_count=2),
    dict(policy="lfu", budget=16, admit_count=2, admit_probability=0.7, admit_seed=3, weighted=True),
    dict(policy="lfu", budget=14, evict_fraction=0.2, weighted=True, pooled=True),
]


def _table(case, half_life):
    return el.FrequencyTable(
        4, half_life=half_life, budget_rows=case.get("budget") or None, policy=case["policy"],
        evict_fraction=case.get("evict_fraction", 0.05), ttl=case.get("ttl"), ttl_interval=case.get("ttl_interval"),
        admit_count=case.get("admit_count", 1), admit_probability=case.get("admit_probability", 1.0),
        admit_seed=case.get("admit_seed", 0), sketch_width=1 << 16)


def _model(case, half_life):
    return PolicyModel(half_life=half_life, budget=case.get("budget", 0), policy=case["policy"],
                       evict_fraction=case.get("evict_fraction", 0.05), ttl=case.get("ttl", 0),
                       ttl_interval=case.get("ttl_interval", 0), admit_count=case.get("admit_count", 1),
                       admit_probability=case.get("admit_probability", 1.0), admit_seed=case.get("admit_seed", 0))


@pytest.mark.parametrize("case", CASES, ids=[f"{c['policy']}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_matches_model(case, seed):
    rng = np.random.default_rng(seed)
    half_life = 3.0
    t, m = _table(case, half_life), _model(case, half_life)
    universe = rng.permutation(60).astype(np.int64) * 1000 - 7000  # negative keys too
    p = 1.0 / np.arange(1, 61) ** 1.1
    p /= p.sum()
    for step in range(80):
        batch = universe[rng.choice(60, size=rng.integers(1, 8), p=p)]
        w = rng.integers(0, 4, size=batch.size).astype(np.float32) if case.get("weighted") else None
        hits, admitted, rejected, evicted = m.step(batch, w)
        before = t.stats()  # find() below counts serving lookups too
        if case.get("pooled"):  # the pooled path scores, admits and evicts the same way
            pooled = t.pooled_lookup(batch, np.array([0], np.int64), score_weights=w)
            s = t.stats()
            rows = t.find(batch)[0]  # rows of rejected keys read as zeros here too
            np.testing.assert_allclose(pooled[0], rows.sum(0), rtol=1e-5, atol=1e-6)
        else:
            rows = t.lookup(batch, weights=w)
            s = t.stats()
        d = {k: s[k] - before[k] for k in ("hits", "misses", "admitted", "rejected", "evicted")}
        assert d == dict(hits=hits, misses=batch.size - hits, admitted=len(admitted), rejected=len(rejected),
                         evicted=len(evicted)), f"step {step}"
        ev = t.take_evicted()
        assert ev["keys"].tolist() == evicted, f"step {step}"
        keys = np.array(sorted(m.rows), dtype=np.int64)
        assert t.export()[0].tolist() == keys.tolist(), f"step {step}"
        score, last, _ = t.inspect(keys)
        np.testing.assert_array_equal(last, [m.rows[k][1] for k in keys.tolist()])
        np.testing.assert_allclose(score, [m.rows[k][0] for k in keys.tolist()], rtol=1e-6)
        # Keys without a row read the default (zero) row; admitted keys their initial row.
        have = np.isin(batch, keys)
        assert np.all(rows[~have] == 0)
        np.testing.assert_array_equal(rows[have], t.find(batch[have])[0])


def test_evicted_rows_carry_row_state_and_score():
    t = el.FrequencyTable(8, budget_rows=3, policy="lfu", evict_fraction=0.0, half_life=100.0,
                          initializer=el.init.normal(std=0.1, seed=2))
    opt = el.optim.Adagrad(lr=0.1)
    k = np.array([1, 2, 3], np.int64)
    t.lookup(k, weights=np.array([5, 1, 3], np.float32))
    g = np.arange(24, dtype=np.float32).reshape(3, 8) / 10
    t.apply_gradients(k, g, opt)
    row2 = t.find(np.array([2]))[0][0].copy()
    t.lookup(np.array([4], np.int64))  # over budget: key 2 (score 1) goes
    ev = t.take_evicted()
    assert ev["keys"].tolist() == [2]
    np.testing.assert_array_equal(ev["rows"][0], row2)
    np.testing.assert_allclose(ev["optimizer_state"][0], g[1] ** 2, rtol=1e-6)  # Adagrad sum of squares
    np.testing.assert_allclose(ev["scores"][0], 2.0 ** (-1 / 100.0), rtol=1e-6)
    assert ev["last_step"].tolist() == [1]
    assert t.take_evicted()["keys"].size == 0  # taken once


def test_on_evict_callback_and_drop():
    got = []
    t = el.FrequencyTable(4, budget_rows=2, policy="lru", evict_fraction=0.0, on_evict=got.append)
    for k in [1, 2, 3, 4]:
        t.lookup(np.array([k], np.int64))
    assert [int(x) for e in got for x in e["keys"]] == [1, 2]
    d = el.FrequencyTable(4, budget_rows=2, policy="lru", evict_fraction=0.0, on_evict="drop")
    for k in [1, 2, 3, 4]:
        d.lookup(np.array([k], np.int64))
    assert d.stats()["evicted"] == 2 and d.take_evicted()["keys"].size == 0


def test_cold_row_learns_and_zero_row_drops():
    cold = el.FrequencyTable(4, admit_count=3, default_row="cold", sketch_width=1 << 10)
    keys = np.array([10, 11], np.int64)
    rows = cold.lookup(keys)  # seen once: not admitted
    assert np.all(rows == 0) and len(cold) == 0
    cold.apply_gradients(keys, np.ones((2, 4), np.float32), el.optim.SGD(lr=0.5))
    np.testing.assert_allclose(cold.default_row_values(), -1.0)  # -0.5 * (1 + 1)
    np.testing.assert_allclose(cold.lookup(np.array([12], np.int64)), [[-1.0] * 4])
    zeros = el.FrequencyTable(4, admit_count=3, sketch_width=1 << 10)
    zeros.lookup(keys)
    zeros.apply_gradients(keys, np.ones((2, 4), np.float32), el.optim.SGD(lr=0.5))
    assert np.all(zeros.default_row_values() == 0) and zeros.stats()["grads_dropped"] == 2
    # Third sighting admits: the key then reads its own initial row.
    zeros.lookup(np.array([10, 10], np.int64))
    assert len(zeros) == 1


def test_pooled_lookup_uses_default_row_for_rejected_keys():
    t = el.FrequencyTable(8, admit_count=2, sketch_width=1 << 10, initializer=el.init.uniform(-1, 1, seed=4))
    v = np.array([1, 2, 1, 3], np.int64)
    out = t.pooled_lookup(v, np.array([0, 2], np.int64))  # key 1 seen twice: admitted; 2, 3 not
    r1 = t.find(np.array([1]))[0][0]
    np.testing.assert_allclose(out, [r1, r1], rtol=1e-6)
    assert t.stats()["admitted"] == 1 and t.stats()["rejected"] == 2


def test_count_min_sketch_never_undercounts():
    # A 1-counter sketch sums every key's sightings: estimates only run high,
    # so keys are admitted no later than with exact counts.
    t = el.FrequencyTable(4, admit_count=3, sketch_width=1, sketch_depth=1)
    m = PolicyModel(half_life=1000.0, admit_count=3)
    rng = np.random.default_rng(5)
    for _ in range(30):
        b = rng.integers(0, 50, size=3)
        m.step(b)
        t.lookup(b)
        assert set(m.rows) <= set(t.export()[0].tolist())


def test_drop_discards_rows_but_evicts_counts_and_tombstones_like_the_buffer():
    # on_evict="drop" does not collect evicted rows at all; everything else
    # (which rows stay, their values, the counts, the tombstones deltas carry)
    # equals a table that buffers them for take_evicted.
    rng = np.random.default_rng(5)
    opts = dict(budget_rows=120, policy="lfu", evict_fraction=0.2, initializer=el.init.uniform(-1, 1, seed=2))
    drop = el.FrequencyTable(4, on_evict="drop", **opts)
    buf = el.FrequencyTable(4, **opts)
    handed = []
    for step in range(40):
        keys = rng.integers(0, 300, 64).astype(np.int64)
        w = rng.random(64).astype(np.float32)
        np.testing.assert_array_equal(drop.lookup(keys, weights=w), buf.lookup(keys, weights=w))
        g = rng.standard_normal((64, 4)).astype(np.float32)
        drop.apply_gradients(keys, g, el.optim.SGD(lr=0.1))
        buf.apply_gradients(keys, g, el.optim.SGD(lr=0.1))
        assert drop.take_evicted()["keys"].size == 0
        handed.extend(buf.take_evicted()["keys"].tolist())
    k = drop.keys()
    np.testing.assert_array_equal(k, buf.keys())
    np.testing.assert_array_equal(drop.find(k)[0], buf.find(k)[0])
    assert drop.stats()["evicted"] == buf.stats()["evicted"] == len(handed) > 0
    assert drop.version == buf.version
    # The header's fields after the lineage (a random id per table) and every
    # section (keys, versions, rows, state, tombstone keys and versions), equal.
    a, b = bytes(drop.export_delta(0)), bytes(buf.export_delta(0))
    assert a[40:128] == b[40:128]
    for i in range(6):
        at, n = np.frombuffer(a, np.uint64, 2, 128 + 24 * i).tolist()
        assert np.frombuffer(b, np.uint64, 2, 128 + 24 * i).tolist() == [at, n]
        assert a[at:at + n] == b[at:at + n]
    assert np.frombuffer(a, np.int64, 1, 64)[0] > 0  # it holds tombstones
    # Switching on_evict after construction takes effect: rows are buffered again.
    drop.on_evict = None
    drop.lookup(np.arange(1000, 1100, dtype=np.int64))  # 100 new keys: past the budget
    assert drop.take_evicted()["keys"].size > 0
    with pytest.raises(ValueError, match="on_evict"):
        drop.on_evict = "discard"
    assert drop.on_evict is None
    with pytest.raises(ValueError, match="on_evict"):
        el.FrequencyTable(4, on_evict="bogus")


def test_lookup_reports_which_keys_hold_a_row_after_the_call():
    t = el.FrequencyTable(4, admit_count=2, sketch_width=1 << 10, budget_rows=4, evict_fraction=0.0)
    held = np.zeros(4, np.bool_)
    t.lookup(np.array([1, 2, 3, 4], np.int64), found=held)
    assert not held.any()  # seen once: none admitted
    keys = np.array([1, 2, 5, 1], np.int64)
    held = np.ones(4, np.bool_)
    t.lookup(keys, found=held)
    np.testing.assert_array_equal(held, t.find(keys)[1])  # what a serving lookup sees afterwards
    np.testing.assert_array_equal(held, [True, True, False, True])
    before = (len(t), t.stats()["clock"], t.version)
    for bad in (np.zeros(4, np.uint8), np.zeros(3, np.bool_), np.zeros((4, 1), np.bool_), [True] * 4,
                np.zeros(8, np.bool_)[::2]):
        with pytest.raises((ValueError, TypeError), match="found"):
            t.lookup(keys, found=bad)
    assert (len(t), t.stats()["clock"], t.version) == before  # refused before anything changed
