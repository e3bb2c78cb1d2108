"""Precision that follows frequency: a FrequencyTable with cold_row_type="int8".

The reference is a dict model written here from the rule in docs/frequency.md
("Precision that follows frequency"): hot rows in fp32, cold rows as the int8
row-wise quantization (tests/reference.quantize_rows) of their fp32 value and
optimizer state, one byte budget (hot x bytes_per_row + cold x
cold_bytes_per_row), LFU demotion of untouched hot rows above hot_share of
the budget, then the lowest-priority cold rows leave while hot and cold rows
pass the budget. Training follows tests/reference.RefOptimizer (Adagrad)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import embedlookup as el
from embedlookup import optim
from embedlookup.torch import _frequency

from reference import RefOptimizer, dequantize_rows, init_uniform, quantize_rows

DIM = 8
LR = 0.05
INIT = (-0.05, 0.05, 3)
# Independent of the package's helpers: fp32 row padded to 8 floats, Adagrad
# state (dim floats), score 8, key 8, index share 16; the cold row: int8 row
# (pad4(dim) + 8), int8 state row (the same), version 8, score 8, index 16.
HOT = 4 * 8 + 4 * DIM + 8 + 8 + 16
COLD = (DIM + 8) + (DIM + 8) + 8 + 8 + 16


def q8(x):
    x = np.asarray(x, np.float32).reshape(1, -1)
    return dequantize_rows(quantize_rows(x, "int8"), "int8", x.shape[1])[0]


def state_of(t, keys):
    """Optimizer-state rows of keys in memory (the torch modules' accessor)."""
    return t._t.export_state(np.asarray(keys, np.int64))


def scale_of(x):
    x = np.asarray(x, np.float32)
    return float((x.max() - x.min()) / np.float32(255))


def make(budget_rows_hot=40, share=0.5, **kw):
    return el.FrequencyTable(DIM, initializer=el.init.uniform(*INIT[:2], seed=INIT[2]),
                             optimizer=optim.Adagrad(lr=LR), budget_bytes=budget_rows_hot * HOT,
                             cold_row_type="int8", hot_share=share, evict_fraction=0.0,
                             half_life=1e9, policy="lfu", **kw)


class MixedModel:
    """Values, optimizer state and scores of hot and cold keys."""

    def __init__(self, budget, share):
        self.B, self.share = budget, share
        self.opt = RefOptimizer("adagrad", lr=LR, eps=1e-10)
        self.val: dict[int, np.ndarray] = {}
        self.hot: dict[int, list] = {}   # key -> [count, last]
        self.cold: dict[int, list] = {}
        self.dropped: list[int] = []
        self.clock = 0

    def state(self, k):
        return self.opt.state.get(k, np.zeros(DIM))

    def lookup(self, keys):
        """One training lookup; returns (promoted, demoted, dropped) keys."""
        self.clock += 1
        now = self.clock
        promoted = []
        for k in dict.fromkeys(int(x) for x in keys):
            if k in self.cold:
                self.hot[k] = self.cold.pop(k)
                promoted.append(k)
            elif k not in self.hot:
                self.hot[k] = [0, now]
                self.val[k] = init_uniform([k], DIM, *INIT)[0]
                self.opt.state.pop(k, None)
        for k in (int(x) for x in keys):
            self.hot[k][0] += 1
            self.hot[k][1] = now
        demoted, dropped = [], []
        h, c, B = HOT, COLD, self.B
        hot_cap = math.floor(self.share * B / h)
        if len(self.hot) > hot_cap:
            cand = sorted((v[0], v[1], k) for k, v in self.hot.items() if v[1] < now)
            for _, _, k in cand[:len(self.hot) - hot_cap]:
                self.cold[k] = self.hot.pop(k)
                self.val[k] = q8(self.val[k])
                if k in self.opt.state:
                    self.opt.state[k] = q8(self.opt.state[k]).astype(np.float64)
                demoted.append(k)
        total = len(self.hot) * h + len(self.cold) * c
        if total > B:
            e = min(len(self.cold), -(-(total - B) // c))
            for _, _, k in sorted((v[0], v[1], k) for k, v in self.cold.items())[:e]:
                del self.cold[k]
                dropped.append(k)
                self.dropped.append(k)
        return promoted, demoted, dropped


def test_demotion_promotion_and_training_follow_the_dict_model():
    rng = np.random.default_rng(7)
    t = make()
    m = MixedModel(40 * HOT, 0.5)
    evicted = []
    t.on_evict = lambda ev: evicted.append(ev)  # dropped cold rows leave through on_evict
    pop = np.arange(100, dtype=np.int64) * 7919 + 11
    p = 1.0 / np.arange(1, 101) ** 1.1
    p /= p.sum()
    promoted_seen = demoted_seen = dropped_seen = 0
    cold_state = {}  # key -> the int8 state it was demoted with
    for step in range(120):
        keys = rng.choice(pop, size=12, p=p)
        known = np.array(sorted(m.hot), dtype=np.int64)
        before = t.find(known)[0] if known.size else None
        st = state_of(t, known) if known.size else np.zeros((0, 0), np.float32)
        out = t.lookup(keys)
        promoted, demoted, dropped = m.lookup(keys)
        # which rows moved: exactly the model's choice
        assert list(t.cold_keys()) == sorted(m.cold), step
        # a demoted row is the int8 quantization of its fp32 value (and state), bit for bit
        for k in demoted:
            if k not in m.cold:  # demoted, then dropped in the same call
                continue
            i = int(np.searchsorted(known, k))
            np.testing.assert_array_equal(t.find(np.array([k]))[0][0], q8(before[i]))
            if st.shape[1]:
                cold_state[k] = q8(st[i])
        # a promoted row comes back with that state
        for k in promoted:
            if k in cold_state:
                np.testing.assert_array_equal(state_of(t, np.array([k]))[0], cold_state.pop(k))
        for i, k in enumerate(keys):
            np.testing.assert_allclose(out[i], m.val[int(k)], rtol=0, atol=2e-5 + scale_of(m.val[int(k)]))
        grads = rng.standard_normal((keys.size, DIM)).astype(np.float32) * 0.1
        t.apply_gradients(keys, grads)
        m.opt.apply(m.val, keys, grads)
        promoted_seen += len(promoted)
        demoted_seen += len(demoted)
        dropped_seen += len(dropped)
    assert promoted_seen > 20 and demoted_seen > 50 and dropped_seen > 5  # every path ran
    s = t.stats()
    assert (s["demoted"], s["promoted"], s["cold_dropped"]) == (demoted_seen, promoted_seen, dropped_seen)
    # nothing lost: every key is hot, cold, or was handed to on_evict with its cold value
    assert len(t) == len(m.hot) + len(m.cold)
    got = np.concatenate([e["keys"] for e in evicted]) if evicted else np.zeros(0, np.int64)
    assert sorted(got.tolist()) == sorted(m.dropped)
    # values of every key still held, hot (fp32 training) and cold (int8)
    keys, rows = t.export()
    assert sorted(keys.tolist()) == sorted(list(m.hot) + list(m.cold))
    for k, r in zip(keys.tolist(), rows):
        np.testing.assert_allclose(r, m.val[k], rtol=0, atol=2e-5 + scale_of(m.val[k]))
    for k in m.cold:
        assert scale_of(m.val[k]) < 0.01  # the bound is meaningful here (rows span ~0.1-1)


def test_a_cold_row_keeps_its_optimizer_state_as_int8_and_trains_in_fp32_after_promotion():
    t = make(budget_rows_hot=12, share=0.5)  # 6 hot rows at most
    a, b = np.array([1], np.int64), np.array([2, 3, 4, 5, 6], np.int64)
    t.lookup(a)
    g = np.array([[0.3, -0.2, 0.1, 0.05, -0.4, 0.2, 0.0, 0.7]], np.float32)
    t.apply_gradients(a, g)
    row, state = t.find(a)[0][0].copy(), state_of(t, a)[0].copy()
    t.lookup(b)  # 6 rows: the budget holds
    assert t.cold_keys().size == 0
    t.lookup(np.array([7]))  # 7 hot rows > 6: key 1 (count 1, oldest) goes cold
    assert t.cold_keys().tolist() == [1]
    np.testing.assert_array_equal(t.find(a)[0][0], q8(row))  # serving read: in place, stays cold
    assert 1 in t.cold_keys()
    out = t.lookup(a)  # training read: promoted back to fp32 with its int8 state
    assert 1 not in t.cold_keys()
    np.testing.assert_array_equal(out[0], q8(row))
    np.testing.assert_array_equal(state_of(t, a)[0], q8(state))
    # the next step is an fp32 Adagrad step from those values
    t.apply_gradients(a, g)
    s = q8(state).astype(np.float64) + g[0].astype(np.float64) ** 2
    want = q8(row).astype(np.float64) - LR * g[0] / (np.sqrt(s) + 1e-10)
    np.testing.assert_allclose(t.find(a)[0][0], want.astype(np.float32), rtol=1e-6, atol=1e-7)
    assert np.any(t.find(a)[0][0] != q8(t.find(a)[0][0]))  # not int8 values any more


def test_memory_is_accounted_exactly_and_the_budget_holds():
    rng = np.random.default_rng(1)
    t = make(budget_rows_hot=30)
    for _ in range(60):  # at most 15 hot rows
        t.lookup(rng.integers(0, 200, size=10))
        mu = t.memory_usage()
        assert mu["accounted_bytes"] == mu["rows"] * HOT + mu["cold_rows"] * COLD
        assert mu["accounted_bytes"] <= 30 * HOT and mu["rows"] <= 15
    mu = t.memory_usage()
    assert mu["cold_rows"] > 0 and mu["rows"] + mu["cold_rows"] == len(t)
    assert mu["cold_row_bytes_per_row"] == DIM + 8
    assert el.FrequencyTable.cold_bytes_per_row(DIM, optim.Adagrad(), "int8") == COLD
    assert t._t.cold_slot_bytes() + 16 == COLD  # the store's own slot: row, state, version, score
    assert "cold_row_type='int8'" in repr(t)
    assert el.FrequencyTable.bytes_per_row(DIM, optim.Adagrad()) == HOT
    # allocated bytes: at least what the rows need, parts summed into total_bytes
    assert mu["cold_row_bytes"] >= mu["cold_rows"] * (DIM + 8)
    assert mu["cold_state_bytes"] >= mu["cold_rows"] * (DIM + 8)
    assert mu["cold_bytes"] == sum(mu[k] for k in ("cold_row_bytes", "cold_state_bytes", "cold_metadata_bytes",
                                                    "cold_index_bytes"))
    assert mu["total_bytes"] == mu["cold_bytes"] + sum(
        mu[k] for k in ("index_bytes", "row_bytes", "optimizer_state_bytes", "metadata_bytes", "sketch_bytes",
                        "evicted_buffer_bytes"))


def trained(seed, steps=30):
    """A table with hot and cold rows after `steps` training steps on 80 keys."""
    rng = np.random.default_rng(seed)
    t = make(budget_rows_hot=20)
    for _ in range(steps):
        k = rng.integers(0, 80, size=8)
        t.lookup(k)
        t.apply_gradients(k, rng.standard_normal((8, DIM)).astype(np.float32) * 0.1)
    return t


def test_a_delta_carries_hot_and_cold_rows_and_a_fresh_table_takes_it():
    t = trained(seed=2)
    assert len(t.cold_keys()) > 0
    keys, rows = t.export()
    cold = t.cold_keys()
    # cold rows travel as the values the table serves (their int8 values)
    for k in cold:
        i = int(np.searchsorted(keys, k))
        np.testing.assert_array_equal(rows[i], q8(rows[i]))
    d = t.export_delta()
    fresh = make(budget_rows_hot=20)
    fresh.apply_delta(d)
    k2, r2 = fresh.export()
    np.testing.assert_array_equal(k2, keys)
    np.testing.assert_array_equal(r2, rows)
    hot = np.setdiff1d(keys, cold)
    np.testing.assert_array_equal(state_of(fresh, hot), state_of(t, hot))
    # the budget holds again at the next training call that admits a row
    fresh.lookup(np.array([10_000], np.int64))
    mu = fresh.memory_usage()
    assert mu["accounted_bytes"] <= 20 * HOT
    assert len(fresh) == len(keys) + 1 - fresh.stats()["cold_dropped"]


def test_state_dict_refuses_a_table_with_cold_rows():
    t = make()
    t.lookup(np.arange(5))
    with pytest.raises(NotImplementedError, match="cold_row_type"):
        _frequency.extra_state(t, np.arange(5))
    with pytest.raises(NotImplementedError, match="cold_row_type"):
        _frequency.empty_like(t)


@pytest.mark.parametrize("kw, match", [
    (dict(cold_row_type="int4"), "cold_row_type must be None or 'int8'"),
    (dict(cold_row_type="fp32"), "cold_row_type must be None or 'int8'"),
    (dict(budget_rows=10, budget_bytes=None), "needs budget_bytes"),
    (dict(budget_bytes=None), "needs budget_bytes"),
    (dict(optimizer=None), "needs optimizer"),
    (dict(policy="ttl", ttl=5), "policy 'lfu' or 'lru'"),
    (dict(row_type="fp16"), "row_type='fp32'"),
    (dict(hot_share=1.5), "hot_share"),
    (dict(hot_share=0.0), "hot_share"),
])
def test_bad_options_raise(kw, match):
    args = dict(initializer=el.init.zeros(), optimizer=optim.Adagrad(), budget_bytes=40 * HOT,
                cold_row_type="int8")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        el.FrequencyTable(DIM, **args)


def test_a_budget_below_one_cold_row_difference_is_refused():
    with pytest.raises(ValueError, match="budget_bytes"):
        el.FrequencyTable(DIM, optimizer=optim.Adagrad(), budget_bytes=HOT - 1, cold_row_type="int8")


def test_assign_of_a_row_that_cannot_be_demoted_raises_and_changes_nothing():
    t = make(budget_rows_hot=20)
    t.lookup(np.arange(10))
    t.lookup(np.arange(10, 20))
    assert t.cold_keys().size > 0
    before = t.export(), t.cold_keys(), t.version
    bad = np.zeros((2, DIM), np.float32)
    bad[1, 0], bad[1, 1] = 3e38, -3e38  # max - min overflows float32: no int8 scale
    with pytest.raises(ValueError, match="rows: row 1"):
        t.assign(np.array([7, 1000], np.int64), bad)
    after = t.export(), t.cold_keys(), t.version
    np.testing.assert_array_equal(before[0][0], after[0][0])
    np.testing.assert_array_equal(before[0][1], after[0][1])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]


def test_erase_and_assign_reach_cold_rows():
    t = make(budget_rows_hot=10)
    t.lookup(np.arange(5))
    t.lookup(np.arange(5, 10))
    cold = t.cold_keys()
    assert cold.size > 0
    k = int(cold[0])
    row = np.full((1, DIM), 0.25, np.float32)
    t.assign(np.array([k]), row)  # a cold key keeps one row: now hot, with the new value
    np.testing.assert_array_equal(t.find(np.array([k]))[0], row)
    assert k not in t.cold_keys() or np.array_equal(t.find(np.array([k]))[0][0], q8(row[0]))
    k2 = int(t.cold_keys()[0])
    n = len(t)
    assert t.erase(np.array([k2])) == 1
    assert len(t) == n - 1 and k2 not in t.cold_keys()
    assert not t.find(np.array([k2]))[1][0]


def test_relayout_packs_the_hot_rows_and_leaves_cold_rows_alone():
    rng = np.random.default_rng(5)
    t = make(budget_rows_hot=20)
    for _ in range(20):
        t.lookup(rng.integers(0, 60, size=8))
    cold = t.cold_keys()
    assert cold.size > 0
    before = t.export()
    t.relayout(4)
    after = t.export()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(t.cold_keys(), cold)
    hot = np.setdiff1d(after[0], cold)
    ids = t.inspect(hot)[2]
    assert sorted(ids.tolist()) == list(range(hot.size))  # packed at the start of the arena


def test_serving_reads_run_beside_training_with_cold_rows():
    """find() from other threads while training demotes and promotes: every
    row read is a whole row (a demoted row reads as its int8 value or as its
    fp32 value, never a mix), and the table ends consistent."""
    import threading

    t = make(budget_rows_hot=200)  # 100 hot rows at most, room for 150 cold ones: nothing dropped
    base = np.repeat(np.linspace(-1, 1, 200, dtype=np.float32)[:, None], DIM, 1) + np.linspace(0, 0.5, DIM,
                                                                                                 dtype=np.float32)
    for lo in range(0, 200, 50):  # row k: c_k + a ramp, so its int8 value differs from it
        t.assign(np.arange(lo, lo + 50, dtype=np.int64), base[lo:lo + 50])
    assert len(t) == 200  # assigned rows are spared at this step: the first training call demotes
    allowed = {k: (base[k], q8(base[k])) for k in range(200)}

    def whole(key, r):  # the fp32 row or its int8 value (re-quantizing moves it by an ulp at most)
        return any(np.allclose(r, a, rtol=0, atol=1e-6) for a in allowed[key])

    errors, stop = [], threading.Event()

    def serve():
        rng = np.random.default_rng(1)
        while not stop.is_set():
            k = rng.integers(0, 200, size=16)
            rows, found = t.find(k)
            for i, key in enumerate(k.tolist()):
                if found[i] and not whole(key, rows[i]):
                    errors.append((key, rows[i]))

    th = [threading.Thread(target=serve) for _ in range(2)]
    for x in th:
        x.start()
    rng = np.random.default_rng(2)
    try:
        for step in range(150):
            # no gradients: values stay base or int8(base); a new key now and then makes the
            # call admit, which is when the budget is held (demotion)
            new = [10_000 + step] if step % 3 == 0 else []
            t.lookup(np.concatenate([rng.integers(0, 200, size=12), np.array(new, np.int64)]))
    finally:
        stop.set()
        for x in th:
            x.join()
    assert not errors, errors[:3]
    keys, rows = t.export()
    assert len(t) == keys.size == t.memory_usage()["rows"] + t.cold_keys().size
    assert t.stats()["promoted"] > 0 and t.stats()["demoted"] > 0
    for k, r in zip(keys.tolist(), rows):
        assert k >= 10_000 or whole(k, r)


def test_save_and_load_keep_hot_and_cold_rows(tmp_path):
    t = trained(seed=4)
    assert t.cold_keys().size > 0
    keys, rows = t.export()
    t.save(tmp_path / "mixed.ckpt")
    u = el.FrequencyTable.load(tmp_path / "mixed.ckpt", optimizer=optim.Adagrad(lr=LR), budget_bytes=20 * HOT,
                               cold_row_type="int8", hot_share=0.5, evict_fraction=0.0, half_life=1e9)
    assert u.cold_row_type == "int8"
    k2, r2 = u.export()
    np.testing.assert_array_equal(k2, keys)
    np.testing.assert_array_equal(r2, rows)
    hot = np.setdiff1d(keys, t.cold_keys())
    np.testing.assert_array_equal(state_of(u, hot), state_of(t, hot))
    u.lookup(np.array([10_000], np.int64))  # admits: the budget holds again
    assert u.memory_usage()["accounted_bytes"] <= 20 * HOT and u.cold_keys().size > 0
    with pytest.raises(TypeError, match="unexpected keyword"):
        el.EmbeddingTable.load(tmp_path / "mixed.ckpt", budget_bytes=5)
