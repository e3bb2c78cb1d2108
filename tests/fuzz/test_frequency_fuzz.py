"""FrequencyTable under generated call sequences and invalid inputs.

Valid: without a budget and with admit_count=1 the frequency table must
behave exactly as the NumPy model (every trained key gets its initializer
row, gradients as reference.RefOptimizer); with a budget, the rows it keeps
must equal the model's rows of those keys and it must never pass the budget.
Invalid: each category must raise a documented exception and leave rows,
optimizer state, versions, scores (inspect), counters (stats) and the
default row bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import embedlookup as el
import reference as ref
from fuzzlib import Tally, diff, expect_rejection, fuzz, snapshot
from test_table_fuzz import KEY_POOL, Model, close, finite_rows, keys_st

AREA = "FrequencyTable"
DIM = 4
NS_POOL = [0, 1, 5, 2**47, 2**48 - 1]


def _no_clock(snap):
    snap = dict(snap)
    snap["freq_stats"] = tuple(kv for kv in snap["freq_stats"] if kv[0] != "clock")
    return snap


def refused(t, budget, k, call) -> bool:
    """A batch of more distinct keys than the budget must be refused (documented ValueError), changing nothing."""
    if not budget or len(set(k.tolist())) <= budget:
        return False
    before = _no_clock(snapshot(t))
    with pytest.raises(ValueError, match="budget"):
        call()
    # (the clock is left out here: that a refused batch advances it is its own case,
    # INVALID["lookup_batch_over_budget"], so this model check can go on past it)
    d = diff(before, _no_clock(snapshot(t)))
    assert not d, f"a refused batch ({len(set(k.tolist()))} keys > budget {budget}) changed {d}"
    Tally.add(AREA, "rejected")
    return True


@fuzz(25)
@given(data=st.data(), budget=st.sampled_from([None, 3, 6]), policy=st.sampled_from(["lfu", "lru"]))
def test_valid_sequences_match_the_model(data, budget, policy):
    draw = data.draw
    kw = dict(budget_rows=budget, policy=policy, evict_fraction=0.0) if budget else {}
    t = el.FrequencyTable(DIM, initializer=el.init.uniform(-0.5, 0.5, seed=9), optimizer=el.optim.SGD(lr=0.1),
                          **kw)
    m = Model(DIM, ("uniform", -0.5, 0.5, 9))
    ropt = ref.RefOptimizer("sgd", lr=0.1)
    spared = False  # rows assigned since the last admission: spared by eviction until the clock moves on
    for _ in range(draw(st.integers(1, 10))):
        op = draw(st.sampled_from(["lookup", "pooled", "assign", "grads", "erase", "find", "relayout",
                                   "inspect"]))
        Tally.add(AREA, "tried")
        n_before = len(t)
        if op == "lookup":
            k = draw(keys_st)
            if refused(t, budget, k, lambda: t.lookup(k)):
                continue
            got = t.lookup(k)
            if budget is None or len(set(k.tolist())) <= budget:
                close(got, m.get(k), "training lookup")
            else:
                m.insert(k)
        elif op == "find":
            k = draw(keys_st)
            rows, found = t.find(k)
            for i, x in enumerate(k):
                if found[i]:
                    close(rows[i], m.rows[int(x)], "find")
                else:
                    assert not rows[i].any()
        elif op == "pooled":
            lens = draw(st.lists(st.integers(0, 3), max_size=4))
            v = np.array(draw(st.lists(st.sampled_from(KEY_POOL), min_size=sum(lens), max_size=sum(lens))), np.int64)
            off = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if lens else np.zeros(0, np.int64)
            mode = draw(st.sampled_from(["sum", "mean", "max"]))
            if refused(t, budget, v, lambda: t.pooled_lookup(v, off, mode)):
                continue
            got = t.pooled_lookup(v, off, mode)
            if budget is None:
                close(got, ref.pooled(m.get(v), off, mode), "training pooled lookup")
            else:
                m.insert(v)
        elif op == "assign":
            k = draw(keys_st)
            r = finite_rows(len(k), DIM, draw)
            if refused(t, budget, k, lambda: t.assign(k, r)):
                continue
            t.assign(k, r)
            for kk, rr in zip(k, r):
                m.rows[int(kk)] = rr
        elif op == "grads":
            held = set(t.export()[0].tolist())
            k = np.array([x for x in draw(keys_st) if int(x) in held], np.int64)
            g = finite_rows(len(k), DIM, draw, -1, 1)
            t.apply_gradients(k, g)
            if k.size:
                ropt.apply(m.rows, k, g)
        elif op == "relayout":
            if draw(st.booleans()):
                left = t.relayout_step(draw(st.integers(1, 4)))
                assert left >= 0
            else:
                t.relayout(draw(st.integers(1, 8)))
        elif op == "inspect":
            k = draw(keys_st)
            score, last, row_id = t.inspect(k)
            held = set(t.export()[0].tolist())
            for i, x in enumerate(k):
                if int(x) in held:
                    assert score[i] >= 0 and row_id[i] != 2**32 - 1, f"held key {x}: {score[i]}, {row_id[i]}"
                else:
                    assert row_id[i] == 2**32 - 1, f"absent key {x} has a row id"
        elif op == "erase":
            k = draw(keys_st)
            held = set(t.export()[0].tolist())
            assert t.erase(k) == len({int(x) for x in k} & held)
            for x in k:
                m.rows.pop(int(x), None)
        keys, rows = t.export()
        if budget:
            # assign spares the rows of the current clock step (docs/frequency.md): the
            # budget holds after each training lookup, which advances the clock.
            if op == "assign":
                spared = True
            elif op in ("lookup", "pooled") and len(keys) > n_before:
                spared = False  # an admission after the clock moved: eviction ran over every older row
            if op in ("lookup", "pooled") and not spared:
                assert len(keys) <= budget, f"{len(keys)} rows over the budget {budget} after a training {op}"
            for x in list(m.rows):  # evicted: forgotten (a re-admitted key starts from its initializer)
                if x not in set(keys.tolist()):
                    del m.rows[x]
        else:
            assert sorted(m.rows) == keys.tolist()
        if keys.size:
            close(rows, np.stack([m.rows[int(x)] for x in keys]), f"rows after {op}")
        Tally.add(AREA, "valid_ok")


@fuzz(20)
@given(data=st.data(), budget=st.sampled_from([2, 4]), policy=st.sampled_from(["lfu", "lru"]))
def test_frequency_table_over_a_tier_never_loses_a_row(data, budget, policy):
    """With a tier, evicted rows go to the tier and come back trained: export() and lookups must equal a
    model that never forgets (docs/storage.md, "With the frequency-aware table")."""
    import os
    import tempfile

    draw = data.draw
    tier = el.storage.FileTier(os.path.join(tempfile.mkdtemp(prefix="el-fuzz-"), "f.tier"), 256)
    t = el.FrequencyTable(DIM, initializer=el.init.uniform(-0.5, 0.5, seed=9), optimizer=el.optim.SGD(lr=0.1),
                          budget_rows=budget, policy=policy, evict_fraction=0.0, tier=tier)
    m = Model(DIM, ("uniform", -0.5, 0.5, 9))
    ropt = ref.RefOptimizer("sgd", lr=0.1)
    area = "FrequencyTable over FileTier"
    for _ in range(draw(st.integers(1, 10))):
        op = draw(st.sampled_from(["lookup", "grads", "assign", "relayout"]))
        Tally.add(area, "tried")
        k = np.unique(draw(keys_st))[:budget]  # a batch fits the budget
        if op == "lookup":
            close(t.lookup(k), m.get(k), "training lookup over a tier")
        elif op == "assign":
            r = finite_rows(len(k), DIM, draw)
            t.assign(k, r)
            for kk, rr in zip(k, r):
                m.rows[int(kk)] = rr
        elif op == "grads":
            t.lookup(k)
            m.get(k)
            g = finite_rows(len(k), DIM, draw, -1, 1)
            t.apply_gradients(k, g)
            if k.size:
                ropt.apply(m.rows, k, g)
        else:
            t.relayout()
        keys, rows = t.export()
        assert keys.tolist() == sorted(m.rows), f"after {op}: keys {keys.tolist()} != model {sorted(m.rows)}"
        if keys.size:
            close(rows, np.stack([m.rows[int(x)] for x in keys]), f"rows after {op}")
        Tally.add(area, "valid_ok")
    tier.close()


def freq_table(features=None):
    t = el.FrequencyTable(DIM, optimizer=el.optim.Adagrad(lr=0.1), budget_rows=8, policy="lfu",
                          admit_count=2, features=features, initializer=el.init.uniform(seed=2))
    kw = {"feature": "a"} if features else {}
    for _ in range(3):
        t.lookup(np.array([1, 2, 3, 4], np.int64), **kw)
    t.apply_gradients(np.array([1, 2], np.int64), np.ones((2, DIM), np.float32), **kw)
    t.erase(np.array([4]), **kw)
    return t


bad_float = st.sampled_from([float("nan"), float("inf"), -float("inf")])
K = np.array([1, 2, 99], np.int64)

INVALID = {
    "lookup_batch_over_budget": lambda d, t: t.lookup(np.arange(100, 100 + d.draw(st.integers(9, 20)))),
    "pooled_batch_over_budget": lambda d, t: t.pooled_lookup(np.arange(100, 109), np.array([0, 4])),
    "assign_batch_over_budget": lambda d, t: t.assign(np.arange(100, 109), np.ones((9, DIM), np.float32)),
    "lookup_float_keys": lambda d, t: t.lookup(np.array([1.0, 2.5])),
    "lookup_score_weights_negative": lambda d, t: t.lookup(K, weights=np.array([1, -1, 1], np.float32)),
    "lookup_score_weights_nonfinite": lambda d, t: t.lookup(K, weights=np.array([1, d.draw(bad_float), 1])),
    "lookup_score_weights_shape": lambda d, t: t.lookup(K, weights=np.ones(2, np.float32)),
    "lookup_out_shape": lambda d, t: t.lookup(K, out=np.empty((2, DIM), np.float32)),
    "pooled_bad_offsets": lambda d, t: t.pooled_lookup(K, np.array([0, d.draw(st.sampled_from(
        [-1, 2**62, 4, -(2**63)]))], np.int64)),
    "pooled_bad_mode": lambda d, t: t.pooled_lookup(K, np.array([0, 1]), mode=d.draw(st.sampled_from(
        ["Sum", None, 2]))),
    "pooled_score_weights_negative": lambda d, t: t.pooled_lookup(K, np.array([0, 1]),
                                                                  score_weights=np.array([1, -2, 1], np.float32)),
    "pooled_weights_nonfinite": lambda d, t: t.pooled_lookup(K, np.array([0, 1]), "sum",
                                                             np.array([1, d.draw(bad_float), 1], np.float32)),
    "grads_nonfinite": lambda d, t: t.apply_gradients(K[:2], np.full((2, DIM), d.draw(bad_float), np.float32)),
    "grads_merged_overflow": lambda d, t: t.apply_gradients(np.array([1, 1, 1], np.int64),
                                                            np.full((3, DIM), 3e38, np.float32)),
    "grads_wrong_kind": lambda d, t: t.apply_gradients(K[:2], np.ones((2, DIM), np.float32), el.optim.Adam()),
    "grads_shape": lambda d, t: t.apply_gradients(K[:2], np.ones((3, DIM), np.float32)),
    "assign_shape": lambda d, t: t.assign(K, np.ones((3, DIM + 1), np.float32)),
    "assign_nonfinite_rows": lambda d, t: t.assign(K, np.full((3, DIM), d.draw(bad_float), np.float32)),
    "relayout_step_bad": lambda d, t: t.relayout_step(d.draw(st.sampled_from([0, -1, True, 1.5, None, 2**70]))),
    "relayout_bad": lambda d, t: t.relayout(d.draw(st.sampled_from([0, -5, "1"]))),
    "inspect_float_keys": lambda d, t: t.inspect(np.array([1.5])),
    "feature_on_raw_table": lambda d, t: t.lookup(K, feature="a"),
    "export_delta_bad_version": lambda d, t: t.export_delta(d.draw(st.sampled_from([-1, 2**64]))),
    "apply_delta_garbage": lambda d, t: t.apply_delta(d.draw(st.binary(max_size=300))),
}

INVALID_NS = {
    "ns_value_out_of_range": lambda d, t: t.lookup(np.array([d.draw(st.sampled_from(
        [-(2**47) - 1, 2**47, 2**48, 2**63 - 1, -(2**63)]))], np.int64), feature="a"),
    "ns_unknown_feature": lambda d, t: t.lookup(np.array([1]), feature=d.draw(st.sampled_from(["zz", 3, None]))),
    "ns_grads_nonfinite": lambda d, t: t.apply_gradients(np.array([1]), np.full((1, DIM), np.nan, np.float32),
                                                         feature="a"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
@fuzz(8)
@given(data=st.data())
def test_invalid_call_is_rejected_and_changes_nothing(case, data):
    t = freq_table()
    expect_rejection(AREA, t, lambda: INVALID[case](data, t), what=case)


@pytest.mark.parametrize("case", sorted(INVALID_NS))
@fuzz(8)
@given(data=st.data())
def test_invalid_namespaced_call_is_rejected_and_changes_nothing(case, data):
    t = freq_table(features=["a", "b"])
    expect_rejection(AREA, t, lambda: INVALID_NS[case](data, t), what=case)


# Constructor arguments: each must raise ValueError/TypeError (no table exists to compare).
BAD_CTOR = [
    dict(half_life=0), dict(half_life=float("nan")), dict(half_life=-1.0), dict(half_life=float("inf")),
    dict(budget_rows=0), dict(budget_rows=-3), dict(budget_rows=True), dict(budget_rows=2.5),
    dict(budget_bytes=1), dict(budget_rows=4, budget_bytes=10_000),
    dict(budget_rows=4, policy="none"), dict(policy="lfu"), dict(policy="FIFO"), dict(policy="ttl"),
    dict(policy="ttl", ttl=0), dict(ttl=5),
    dict(budget_rows=4, evict_fraction=1.0), dict(budget_rows=4, evict_fraction=float("nan")),
    dict(admit_count=0), dict(admit_probability=0.0), dict(admit_probability=float("nan")),
    dict(admit_probability=1.5), dict(admit_seed=-1), dict(sketch_width=3), dict(sketch_width=0),
    dict(sketch_depth=0), dict(sketch_depth=17), dict(default_row="ones"), dict(hot_fraction=float("nan")),
    dict(hot_fraction=1.5), dict(on_evict="keep"), dict(features=[1.5]),
    dict(budget_rows=4, max_batch_keys=8), dict(num_threads=0), dict(num_threads=-2),
    dict(initializer="uniform"), dict(optimizer="sgd"),
]


@pytest.mark.parametrize("kw", BAD_CTOR, ids=[repr(k) for k in BAD_CTOR])
def test_bad_constructor_argument_raises(kw):
    Tally.add(AREA, "tried")
    with pytest.raises((ValueError, TypeError)):
        el.FrequencyTable(DIM, **kw)
    Tally.add(AREA, "rejected")
