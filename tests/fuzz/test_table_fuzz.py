"""EmbeddingTable under generated call sequences.

(a) Valid sequences are replayed on the native table and on a NumPy model
    built from tests/reference.py (rows, optimizer state, step): every result
    must match. (b) Each invalid-call category is fuzzed on a trained table
    (rows, optimizer state, tombstones, versions): the call must raise a
    documented exception and leave the whole table bit-identical
    (fuzzlib.snapshot).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import embedlookup as el
import reference as ref
from fuzzlib import Tally, crashed, expect_rejection, fuzz, run_isolated

AREA = "EmbeddingTable"
KEY_POOL = [0, 1, -1, 7, 42, 2**31, -(2**31), 2**62 + 3, 2**63 - 1, -(2**63), 123456789012345]
keys_st = st.lists(st.sampled_from(KEY_POOL), min_size=0, max_size=12).map(lambda k: np.array(k, np.int64))


def finite_rows(n, dim, draw, lo=-4.0, hi=4.0):
    vals = draw(st.lists(st.floats(lo, hi, width=32), min_size=n * dim, max_size=n * dim))
    return np.array(vals, np.float32).reshape(n, dim)


# --------------------------------------------------------------- the model
class Model:
    """NumPy model of a table: rows by key, optimizer state, step."""

    def __init__(self, dim, init):
        self.dim, self.init, self.rows, self.opt = dim, init, {}, None

    def initial(self, keys):
        kind, a, b, seed = self.init
        if kind == "zeros":
            return np.zeros((len(keys), self.dim), np.float32)
        if kind == "constant":
            return np.full((len(keys), self.dim), a, np.float32)
        return ref.init_uniform(np.asarray(keys, np.int64), self.dim, a, b, seed)

    def insert(self, keys):
        new = [k for k in dict.fromkeys(int(k) for k in keys) if k not in self.rows]
        if new:
            for k, r in zip(new, self.initial(new)):
                self.rows[k] = r

    def get(self, keys, insert=True):
        if insert:
            self.insert(keys)
        out = np.zeros((len(keys), self.dim), np.float32)
        for i, k in enumerate(keys):
            if int(k) in self.rows:
                out[i] = self.rows[int(k)]
        return out


def make_init(spec):
    kind, a, b, seed = spec
    if kind == "zeros":
        return el.init.zeros()
    if kind == "constant":
        return el.init.constant(a)
    return el.init.uniform(a, b, seed=seed)


init_st = st.one_of(
    st.just(("zeros", 0.0, 0.0, 0)),
    st.tuples(st.just("constant"), st.floats(-2, 2, width=32), st.just(0.0), st.just(0)),
    st.tuples(st.just("uniform"), st.just(-0.5), st.just(0.5), st.integers(0, 2**64 - 1)),
)

opt_st = st.one_of(
    st.builds(lambda lr, wd: ("sgd", dict(lr=lr, weight_decay=wd)), st.sampled_from([0.1, 0.01]),
              st.sampled_from([0.0, 0.01])),
    st.builds(lambda lr, d, iav, rw: ("rowwise_adagrad" if rw else "adagrad",
                                      dict(lr=lr, lr_decay=d, initial_accumulator_value=iav, eps=1e-6)),
              st.sampled_from([0.1, 0.5]), st.sampled_from([0.0, 0.1]), st.sampled_from([0.0, 0.1]),
              st.booleans()),
    st.builds(lambda lr, b1: ("adam", dict(lr=lr, betas=(b1, 0.999), eps=1e-6)),
              st.sampled_from([0.01, 0.1]), st.sampled_from([0.9, 0.5])),
)


def make_opt(kind, hp):
    if kind == "sgd":
        return el.optim.SGD(**hp)
    if kind in ("adagrad", "rowwise_adagrad"):
        return el.optim.Adagrad(rowwise=kind == "rowwise_adagrad", **hp)
    return el.optim.Adam(**hp)


def bags_st(draw, max_bags=5):
    """(values, offsets, include_last_offset) or (2-D values, None, False)."""
    if draw(st.booleans()):
        n_bags = draw(st.integers(0, 4))
        length = draw(st.integers(0, 3))  # zero-length 2-D bags included
        v = np.array(draw(st.lists(st.sampled_from(KEY_POOL), min_size=n_bags * length,
                                   max_size=n_bags * length)), np.int64).reshape(n_bags, length)
        return v, None, False
    lens = draw(st.lists(st.integers(0, 4), min_size=0, max_size=max_bags))
    vals = np.array(draw(st.lists(st.sampled_from(KEY_POOL), min_size=sum(lens), max_size=sum(lens))), np.int64)
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ilo = draw(st.booleans())
    if not ilo:
        off = off[:-1]
        if len(lens) == 0 and vals.size == 0:
            off = np.zeros(0, np.int64)
    return vals, off, ilo


def flat_bags(values, offsets, ilo):
    if values.ndim == 2:
        n, L = values.shape
        return values.reshape(-1), np.arange(n, dtype=np.int64) * L, False
    return values, offsets, ilo


def close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=what)


# ------------------------------------------------------- (a) valid sequences
@fuzz(30)
@given(data=st.data(), dim=st.sampled_from([1, 3, 8, 17]), init=init_st, opt=opt_st)
def test_valid_call_sequences_match_the_numpy_model(data, dim, init, opt):
    draw = data.draw
    t = el.EmbeddingTable(dim, initializer=make_init(init), optimizer=make_opt(*opt))
    m = Model(dim, init)
    ropt = ref.RefOptimizer(opt[0], **opt[1])
    replica, seen = el.EmbeddingTable(dim), 0
    for step in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["lookup", "find", "pooled", "assign", "erase", "grads", "pooled_grads",
                                   "delta"]))
        Tally.add(AREA, "tried")
        v0 = t.version
        if op == "lookup":
            k, ins = draw(keys_st), draw(st.booleans())
            close(t.lookup(k, insert=ins), m.get(k, ins), f"lookup {k}")
        elif op == "find":
            k = draw(keys_st)
            rows, found = t.find(k)
            np.testing.assert_array_equal(found, [int(x) in m.rows for x in k])
            close(rows, m.get(k, False), "find")
            assert t.version == v0, "find changed the version"
        elif op == "pooled":
            values, offsets, ilo = bags_st(draw)
            mode = draw(st.sampled_from(["sum", "mean", "max"]))
            fv, fo, filo = flat_bags(values, offsets, ilo)
            w = None
            if mode == "sum" and draw(st.booleans()):
                w = np.array(draw(st.lists(st.floats(-2, 2, width=32), min_size=fv.size, max_size=fv.size)),
                             np.float32).reshape(values.shape)
            ins = draw(st.booleans())
            got = t.pooled_lookup(values, offsets, mode, w, ilo, insert=ins)
            want = ref.pooled(m.get(fv, ins), fo, mode, None if w is None else w.reshape(-1), filo)
            assert got.shape == want.shape, f"pooled shape {got.shape} != {want.shape} (values {values.shape})"
            close(got, want, f"pooled {mode}")
        elif op == "assign":
            k = draw(keys_st)
            r = finite_rows(len(k), dim, draw)
            t.assign(k, r)
            for kk, rr in zip(k, r):  # last duplicate wins
                m.rows[int(kk)] = rr
            if k.size:
                assert t.version > v0
        elif op == "erase":
            k = draw(keys_st)
            n = t.erase(k)
            gone = {int(x) for x in k if int(x) in m.rows}
            assert n == len(gone), f"erase returned {n}, expected {len(gone)}"
            for x in gone:
                del m.rows[x]
                ropt.state.pop(x, None)
        elif op == "grads":
            k = np.array([x for x in draw(keys_st) if int(x) in m.rows], np.int64)
            g = finite_rows(len(k), dim, draw, -1, 1)
            t.apply_gradients(k, g)
            if k.size:
                ropt.apply(m.rows, k, g)
            else:
                ropt.step += 1  # a step with no rows still counts (one per call)
        elif op == "pooled_grads":
            values, offsets, ilo = bags_st(draw)
            fv, fo, filo = flat_bags(values, offsets, ilo)
            t.lookup(fv)
            m.insert(fv)
            mode = draw(st.sampled_from(["sum", "mean"]))
            n_bags = (values.shape[0] if values.ndim == 2 else (len(fo) - 1 if filo else len(fo)))
            go = finite_rows(n_bags, dim, draw, -1, 1)
            t.apply_pooled_gradients(values, offsets, go, mode=mode, include_last_offset=ilo)
            # Expand to per-key gradients (the documented equivalence).
            ends = list(fo[1:]) + ([] if filo else [fv.size])
            starts = fo[:-1] if filo else fo
            gk = np.zeros((fv.size, dim), np.float32)
            for b, (s, e) in enumerate(zip(starts, ends)):
                if e > s:
                    gk[s:e] = go[b] / (e - s if mode == "mean" else 1)
            if fv.size:
                ropt.apply(m.rows, fv, gk)
            else:
                ropt.step += 1
        elif op == "delta":
            d = t.export_delta(seen)
            replica.apply_delta(d)
            seen = el.storage.delta_info(d)["to_version"]
            kr, rr = replica.export()
            kt, rt = t.export()
            np.testing.assert_array_equal(kr, kt)
            np.testing.assert_array_equal(rr, rt)
        assert t.version >= v0, "version went backwards"
        assert t.step == ropt.step, f"step {t.step} != model {ropt.step}"
        keys, rows = t.export()
        assert sorted(m.rows) == [int(x) for x in keys], "key set differs from the model"
        if keys.size:
            close(rows, np.stack([m.rows[int(x)] for x in keys]), f"rows after {op}")
        Tally.add(AREA, "valid_ok")


# ------------------------------------------------------ (b) invalid inputs
DIM = 4


def trained_table(kind="adagrad"):
    t = el.EmbeddingTable(DIM, initializer=el.init.uniform(seed=3), optimizer=make_opt(kind, {}) if kind != "adam"
                          else el.optim.Adam())
    t.lookup(np.array([1, 2, 3, 4, 5], np.int64))
    t.apply_gradients(np.array([1, 2]), np.ones((2, DIM), np.float32))
    t.erase(np.array([5]))  # a tombstone
    return t


K = np.array([1, 2, 9], np.int64)  # 9 is new: an accepted call would insert it

bad_float = st.sampled_from([np.nan, np.inf, -np.inf])
huge = st.sampled_from([2**62, 2**63 - 1, -(2**63), -1, -(2**40), 10**12])


@st.composite
def bad_offsets(draw):
    """Offsets for 3 values that break one rule: negative / huge / non-monotonic / first != 0 / past the end."""
    kind = draw(st.sampled_from(["neg", "huge", "decr", "first", "past", "huge_mid"]))
    if kind == "neg":
        return np.array([0, draw(st.integers(-(2**63), -1))], np.int64)
    if kind == "huge":
        return np.array([0, draw(st.integers(4, 2**63 - 1))], np.int64)
    if kind == "huge_mid":
        return np.array([0, draw(st.integers(4, 2**63 - 1)), 3], np.int64)
    if kind == "decr":
        a = draw(st.integers(1, 3))
        return np.array([0, a, draw(st.integers(-(2**63), a - 1))], np.int64)
    if kind == "first":
        return np.array([draw(st.integers(1, 2**63 - 1).filter(bool)), 3], np.int64)
    return np.array([0, 1, draw(st.integers(4, 2**63 - 1))], np.int64)


def _overlap_out_keys(t, k):
    """out whose bytes ARE the keys' bytes."""
    buf = np.zeros(k.size * DIM * 2, np.int64)
    keys = buf[: k.size]
    keys[:] = k
    out = buf.view(np.float32)[: k.size * DIM].reshape(k.size, DIM)
    return keys, out


INVALID = {
    # lookups
    "lookup_float_keys": lambda d, t: t.lookup(np.array(d.draw(st.lists(st.floats(), min_size=1, max_size=4)))),
    "lookup_2d_keys": lambda d, t: t.lookup(np.ones((2, d.draw(st.integers(1, 3))), np.int64)),
    "lookup_out_shape": lambda d, t: t.lookup(K, out=np.empty((d.draw(st.integers(0, 6).filter(lambda x: x != 3)),
                                                               DIM), np.float32)),
    "lookup_out_dtype": lambda d, t: t.lookup(K, out=np.empty((3, DIM), d.draw(st.sampled_from(
        [np.float64, np.float16, np.int32])))),
    "lookup_out_noncontig": lambda d, t: t.lookup(K, out=np.empty((3, 2 * DIM), np.float32)[:, ::2]),
    "lookup_out_overlaps_keys": lambda d, t: (lambda ko: t.lookup(ko[0], out=ko[1]))(_overlap_out_keys(t, K)),
    "find_out_shape": lambda d, t: t.find(K, out=np.empty((3, DIM + 1), np.float32)),
    "pooled_bad_offsets": lambda d, t: t.pooled_lookup(K, d.draw(bad_offsets())),
    "pooled_bad_mode": lambda d, t: t.pooled_lookup(K, np.array([0, 2]), mode=d.draw(st.sampled_from(
        ["SUM", "avg", "", None, 0, 1.0, "max "]))),
    "pooled_weights_nonfinite": lambda d, t: t.pooled_lookup(
        K, np.array([0, 2]), "sum", np.array([1.0, d.draw(bad_float), 1.0], np.float32)),
    "pooled_weights_shape": lambda d, t: t.pooled_lookup(K, np.array([0, 2]), "sum",
                                                         np.ones(d.draw(st.sampled_from([0, 2, 4])), np.float32)),
    "pooled_weights_with_mean": lambda d, t: t.pooled_lookup(K, np.array([0, 2]), d.draw(st.sampled_from(
        ["mean", "max"])), np.ones(3, np.float32)),
    "pooled_out_shape": lambda d, t: t.pooled_lookup(K, np.array([0, 2]), out=np.empty((3, DIM), np.float32)),
    "pooled_out_overlaps_weights": lambda d, t: (lambda w: t.pooled_lookup(
        K, np.array([0, 1, 2]), "sum", w[:3], out=w.reshape(3, DIM)))(np.ones(3 * DIM, np.float32)),
    "pooled_3d_values": lambda d, t: t.pooled_lookup(np.ones((2, 2, 2), np.int64)),
    "pooled_offsets_2d": lambda d, t: t.pooled_lookup(K, np.array([[0, 1]])),
    "pooled_ilo_2d": lambda d, t: t.pooled_lookup(np.ones((2, 2), np.int64), include_last_offset=True),
    # mutations
    "assign_shape": lambda d, t: t.assign(K, np.ones((3, d.draw(st.sampled_from([1, 3, 5]))), np.float32)),
    "assign_int_rows": lambda d, t: t.assign(K, np.ones((3, DIM), np.int64)),
    "assign_nonfinite_rows": lambda d, t: t.assign(K, np.full((3, DIM), d.draw(bad_float), np.float32)),
    "assign_float32_overflow": lambda d, t: t.assign(K, np.full((3, DIM), d.draw(st.sampled_from(
        [1e39, -1e300])), np.float64)),
    "erase_float_keys": lambda d, t: t.erase(np.array([1.5])),
    "grads_missing_key": lambda d, t: t.apply_gradients(K, np.ones((3, DIM), np.float32)),
    "grads_nonfinite": lambda d, t: t.apply_gradients(K[:2], np.full((2, DIM), d.draw(bad_float), np.float32)),
    "grads_float64_overflow": lambda d, t: t.apply_gradients(K[:2], np.full((2, DIM), 1e39)),
    # each gradient is finite; their merged sum (duplicates of one key) is not
    "grads_merged_overflow": lambda d, t: (lambda n: t.apply_gradients(
        np.array([1] * n, np.int64), np.full((n, DIM), 3.0e38, np.float32)))(d.draw(st.integers(2, 8))),
    "grads_wrong_optimizer_kind": lambda d, t: t.apply_gradients(K[:2], np.ones((2, DIM), np.float32),
                                                                 d.draw(st.sampled_from([el.optim.Adam(),
                                                                 el.optim.Adagrad(rowwise=True)]))),
    "grads_not_an_optimizer": lambda d, t: t.apply_gradients(K[:2], np.ones((2, DIM), np.float32),
                                                             d.draw(st.sampled_from(["sgd", 0.1, {}]))),
    "grads_mutated_hyperparameter": lambda d, t: t.apply_gradients(
        K[:2], np.ones((2, DIM), np.float32), _mutated(d)),
    "grads_float32_overflowing_hyperparameter": lambda d, t: t.apply_gradients(
        K[:2], np.ones((2, DIM), np.float32), el.optim.Adagrad(**{d.draw(st.sampled_from(
            ["lr", "eps", "weight_decay", "initial_accumulator_value"])): 1e39})),
    "pooled_grads_nonfinite": lambda d, t: t.apply_pooled_gradients(
        K[:2], np.array([0, 1]), np.full((2, DIM), d.draw(bad_float), np.float32)),
    "pooled_grads_max": lambda d, t: t.apply_pooled_gradients(K[:2], np.array([0, 1]), np.ones((2, DIM)),
                                                              mode="max"),
    "pooled_grads_bad_offsets": lambda d, t: t.apply_pooled_gradients(K[:2], d.draw(bad_offsets()),
                                                                      np.ones((2, DIM), np.float32)),
    "pooled_grads_missing_key": lambda d, t: t.apply_pooled_gradients(K, np.array([0, 1]),
                                                                      np.ones((2, DIM), np.float32)),
    "pooled_grads_shape": lambda d, t: t.apply_pooled_gradients(K[:2], np.array([0, 1]),
                                                                np.ones((3, DIM), np.float32)),
    # versions and deltas
    "export_delta_bad_version": lambda d, t: t.export_delta(d.draw(st.sampled_from(
        [-1, -(2**63), 2**64, 2**70, 1.5, "3", None]))),
    "apply_delta_garbage": lambda d, t: t.apply_delta(d.draw(st.binary(max_size=400))),
    "apply_delta_wrong_type": lambda d, t: t.apply_delta(d.draw(st.sampled_from(
        ["abc", 3, None, np.zeros(10, np.int64), np.zeros((2, 5), np.uint8)]))),
    "apply_delta_other_table": lambda d, t: t.apply_delta(trained_table().export_delta(0)),
    "apply_delta_other_dim": lambda d, t: t.apply_delta(el.EmbeddingTable(DIM + 1).export_delta(0)),
    "apply_delta_stale": lambda d, t: t.apply_delta(t._fuzz_old_cut),
    "demote_without_tier": lambda d, t: t.demote(K),
    # checkpoints
    # a path with a NUL byte must not be truncated to the part before it
    "save_nul_path": lambda d, t: t.save(os.path.join(tempfile.mkdtemp(), d.draw(st.sampled_from(
        ["ckpt\0.elt", "a\0", "\0"])))),
    "save_delta_nul_path": lambda d, t: t.save_delta(os.path.join(tempfile.mkdtemp(), "d\0.elt"), 0),
    "load_nul_path": lambda d, t: el.EmbeddingTable.load(_saved(t) + "\0.ignored"),
}


def _mutated(d):
    """An optimizer whose hyperparameter was set to a bad value after construction (lr schedules do set it)."""
    o = el.optim.Adagrad(lr=0.1)
    setattr(o, d.draw(st.sampled_from(["lr", "eps", "lr_decay", "weight_decay"])), d.draw(st.sampled_from(
        [float("nan"), float("inf"), -1.0, "0.1"])))
    return o


def _saved(t):
    path = os.path.join(tempfile.mkdtemp(), "ckpt.elt")
    t.save(path)
    return path


@pytest.mark.parametrize("case", sorted(INVALID))
@fuzz(12)
@given(data=st.data())
def test_invalid_call_is_rejected_and_changes_nothing(case, data):
    t = trained_table()
    if case == "apply_delta_stale":
        t._fuzz_old_cut = t.export_delta(0)
        t.lookup(np.array([77, 78]))  # moves past that cut: the delta 0..v_old is stale now
    expect_rejection(AREA, t, lambda: INVALID[case](data, t), what=case)


ZERO_LENGTH = """
import numpy as np, embedlookup as el
t = el.EmbeddingTable(4, initializer=el.init.constant(1.0), optimizer=el.optim.SGD(lr=1.0))
t.lookup(np.array([1, 2]))
v = np.zeros(({n}, 0), np.int64)
got = t.pooled_lookup(v, mode={mode!r})
assert got.shape == ({n}, 4) and not got.any(), "pooled {mode} of empty 2-D bags: " + repr(got)
if {mode!r} != "max":
    t.apply_pooled_gradients(v, None, np.ones(({n}, 4), np.float32), mode={mode!r})
    assert (t.export()[1] == 1).all(), "a gradient of empty bags changed rows"
print("OK")
"""


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("n_bags", [1, 3, 17])
def test_zero_length_2d_bags_are_empty_bags(mode, n_bags):
    """2-D values of shape (n, 0): n empty bags, all zeros (nn.EmbeddingBag's rule), forward and
    backward. In a child process: the current code reads past its offsets here (seen to segfault)."""
    Tally.add(AREA, "tried")
    p = run_isolated(ZERO_LENGTH.format(n=n_bags, mode=mode))
    if crashed(p):
        Tally.add(AREA, "crash")
    elif p.returncode:
        Tally.add(AREA, "wrong")
    else:
        Tally.add(AREA, "valid_ok")
    assert p.returncode == 0 and "OK" in p.stdout, f"rc {p.returncode}: {p.stderr[-600:]}"
