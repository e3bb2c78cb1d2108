"""The torch modules (embedlookup.torch): HashEmbeddingBag, HashEmbedding,
HashEmbeddingBagCollection.

Valid: forward against reference.pooled over the table's rows; backward
(SGD) against reference.RefOptimizer on the expanded per-key gradients.
Invalid inputs must raise a documented exception and leave the module's
table bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import embedlookup as el  # noqa: E402
import embedlookup.torch as elt  # noqa: E402
import reference as ref  # noqa: E402
from fuzzlib import Tally, expect_rejection, fuzz  # noqa: E402
from test_table_fuzz import KEY_POOL, close  # noqa: E402

AREA = "torch modules"
DIM = 4


@st.composite
def bag_input(draw):
    lens = draw(st.lists(st.integers(0, 4), min_size=0, max_size=5))
    v = np.array(draw(st.lists(st.sampled_from(KEY_POOL), min_size=sum(lens), max_size=sum(lens))), np.int64)
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return v, off


@fuzz(30)
@given(data=st.data(), mode=st.sampled_from(["sum", "mean", "max"]), ilo=st.booleans(), weighted=st.booleans())
def test_hash_embedding_bag_forward_backward_match_the_reference(data, mode, ilo, weighted):
    draw = data.draw
    v, off = draw(bag_input())
    if not ilo:
        off = off[:-1]
        if v.size == 0 and off.size == 0:
            off = np.zeros(0, np.int64)
    m = elt.HashEmbeddingBag(DIM, mode, optimizer=el.optim.SGD(lr=0.5), include_last_offset=ilo,
                             initializer=el.init.uniform(-1, 1, seed=7))
    w = None
    if weighted and mode == "sum":
        w = np.array(draw(st.lists(st.floats(-2, 2, width=32), min_size=v.size, max_size=v.size)), np.float32)
    Tally.add(AREA, "tried")
    out = m(torch.from_numpy(v), torch.from_numpy(off), None if w is None else torch.from_numpy(w))
    rows = m.table.lookup(v, insert=False)
    want = ref.pooled(rows, off, mode, w, ilo)
    assert tuple(out.shape) == want.shape
    close(out.detach().numpy(), want, f"forward {mode}")
    # backward: gradient of sum(out * G)
    n_bags = want.shape[0]
    G = np.array(draw(st.lists(st.floats(-1, 1, width=32), min_size=n_bags * DIM, max_size=n_bags * DIM)),
                 np.float32).reshape(n_bags, DIM)
    before = {int(k): r.copy() for k, r in zip(*m.table.export())}
    (out * torch.from_numpy(G)).sum().backward()
    starts = off[:-1] if ilo else off
    ends = list(off[1:]) + ([] if ilo else [v.size])
    gk = np.zeros((v.size, DIM), np.float64)
    for b, (s, e) in enumerate(zip(starts, ends)):
        for i in range(s, e):
            if mode == "sum":
                gk[i] = G[b] * (1.0 if w is None else w[i])
            elif mode == "mean":
                gk[i] = G[b] / (e - s)
            else:  # max: the gradient goes to the winning row per column (first winner on ties)
                seg = rows[s:e]
                for c in range(DIM):
                    j = s + int(np.argmax(seg[:, c]))
                    if j == i:
                        gk[i, c] = G[b, c]
    if mode != "max" or not _has_ties(rows, starts, ends):
        if v.size:
            ropt = ref.RefOptimizer("sgd", lr=0.5)
            ropt.apply(before, v, gk.astype(np.float32))
        keys, after = m.table.export()
        close(after, np.stack([before[int(k)] for k in keys]) if keys.size else after, f"backward {mode}")
    Tally.add(AREA, "valid_ok")


def _has_ties(rows, starts, ends):
    for s, e in zip(starts, ends):
        seg = rows[s:e]
        if e - s > 1 and any(np.sum(seg[:, c] == seg[:, c].max()) > 1 for c in range(seg.shape[1])):
            return True
    return False


@fuzz(15)
@given(shape=st.lists(st.integers(0, 3), min_size=0, max_size=3))
def test_hash_embedding_any_shape(shape):
    Tally.add(AREA, "tried")
    m = elt.HashEmbedding(DIM, initializer=el.init.uniform(seed=3))
    x = torch.from_numpy(np.resize(np.array(KEY_POOL, np.int64), int(np.prod(shape))).reshape(shape))
    out = m(x)
    assert tuple(out.shape) == tuple(shape) + (DIM,)
    close(out.detach().numpy().reshape(-1, DIM), m.table.lookup(x.numpy().reshape(-1), insert=False), "embedding")
    Tally.add(AREA, "valid_ok")


def module():
    m = elt.HashEmbeddingBag(DIM, "sum", optimizer=el.optim.Adagrad(lr=0.1), initializer=el.init.uniform(seed=1))
    out = m(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2]))
    out.sum().backward()
    return m


T = torch.tensor
INVALID = {
    "float_input": lambda d, m: m(T([1.0, 2.0]), T([0])),
    "bool_input": lambda d, m: m(T([True, False]), T([0])),
    "3d_input": lambda d, m: m(torch.ones((2, 2, 2), dtype=torch.int64)),
    "2d_input_with_offsets": lambda d, m: m(torch.ones((2, 2), dtype=torch.int64), T([0, 1])),
    "missing_offsets": lambda d, m: m(T([1, 2])),
    "offsets_2d": lambda d, m: m(T([1, 2]), T([[0, 1]])),
    "offsets_float": lambda d, m: m(T([1, 2]), T([0.0, 1.0])),
    "offsets_bad": lambda d, m: m(T([1, 2, 3]), T([0, d.draw(st.sampled_from([-1, 4, 2**62, -(2**63)]))])),
    "offsets_decreasing": lambda d, m: m(T([1, 2, 3]), T([0, 2, 1])),
    "offsets_first_nonzero": lambda d, m: m(T([1, 2, 3]), T([1, 2])),
    "weights_shape": lambda d, m: m(T([1, 2, 3]), T([0, 1]), torch.ones(2)),
    "weights_int": lambda d, m: m(T([1, 2, 3]), T([0, 1]), T([1, 1, 1])),
    "weights_nonfinite": lambda d, m: m(T([1, 2, 3]), T([0, 1]), T([1.0, d.draw(st.sampled_from(
        [float("nan"), float("inf")])), 1.0])),
    "input_not_tensor": lambda d, m: m([1, 2, 3], T([0])),
    "backward_nonfinite_grad": lambda d, m: m(T([1, 2]), T([0, 1])).mul(float("nan")).sum().backward(),
    "backward_overflowing_grad": lambda d, m: m(T([1, 1, 1]), T([0])).mul(3e38).sum().backward(),
    "load_state_dict_other_dim": lambda d, m: m.load_state_dict(
        elt.HashEmbeddingBag(DIM + 1, "sum", optimizer=el.optim.Adagrad()).state_dict()),
    "load_state_dict_other_kind": lambda d, m: m.load_state_dict(_trained_adam().state_dict()),
    "load_state_dict_garbage": lambda d, m: m.load_state_dict({"_extra_state": {"version": 99}}),
}


def _trained_adam():
    a = elt.HashEmbeddingBag(DIM, "sum", optimizer=el.optim.Adam())
    a(T([1, 2]), T([0])).sum().backward()
    return a


@pytest.mark.parametrize("case", sorted(INVALID))
@fuzz(5)
@given(data=st.data())
def test_invalid_module_input_is_rejected_and_changes_nothing(case, data):
    m = module()
    expect_rejection(AREA, m.table, lambda: INVALID[case](data, m), what=case)


BAD_CTOR = [
    lambda: elt.HashEmbeddingBag(0),
    lambda: elt.HashEmbeddingBag(4, "median"),
    lambda: elt.HashEmbeddingBag(4, optimizer="sgd"),
    lambda: elt.HashEmbeddingBag(4, capacity=0),
    lambda: elt.HashEmbedding(-1),
    lambda: elt.HashEmbeddingBagCollection([], 4),
    lambda: elt.HashEmbeddingBagCollection(["a", "a"], 4),
    lambda: elt.HashEmbeddingBagCollection(["a"], 4, mode="avg"),
]


@pytest.mark.parametrize("i", range(len(BAD_CTOR)))
def test_bad_module_construction_raises(i):
    Tally.add(AREA, "tried")
    with pytest.raises((ValueError, TypeError)):
        BAD_CTOR[i]()
    Tally.add(AREA, "rejected")


@fuzz(15)
@given(data=st.data())
def test_collection_matches_per_feature_bags(data):
    """The shared-table collection equals, per feature, the pooled rows of its namespaced keys."""
    draw = data.draw
    F, B = 2, draw(st.integers(0, 3))
    lens = np.array(draw(st.lists(st.integers(0, 3), min_size=F * B, max_size=F * B)), np.int64)
    v = np.array(draw(st.lists(st.integers(0, 1000), min_size=int(lens.sum()), max_size=int(lens.sum()))),
                 np.int64)
    Tally.add(AREA, "tried")
    c = elt.HashEmbeddingBagCollection(["a", "b"], DIM, mode="sum", initializer=el.init.uniform(seed=2))
    out = c(values=torch.from_numpy(v), lengths=torch.from_numpy(lens))
    for i, f in enumerate(["a", "b"]):
        assert tuple(out[f].shape) == (B, DIM)
        # per bag: the sum of the rows the shared table holds for these IDs
        # cannot be read back without the namespacing, so check consistency:
        # the same IDs in different features must not share rows
        if B and i == 1 and np.array_equal(lens[:B], lens[B:]) and lens.sum():
            va, vb = v[: lens[:B].sum()], v[lens[:B].sum():]
            if np.array_equal(va, vb) and va.size:
                assert not np.allclose(out["a"].detach().numpy(), out["b"].detach().numpy()), \
                    "two features share rows"
    Tally.add(AREA, "valid_ok")


COLL_INVALID = {
    "lengths_not_multiple": lambda d, c: c(values=T([1, 2, 3]), lengths=T([1, 2, 0])),
    "lengths_negative": lambda d, c: c(values=T([1, 2, 3]), lengths=T([2, -1, 1, 1])),
    "lengths_sum_mismatch": lambda d, c: c(values=T([1, 2, 3]), lengths=T([2, 2, 2, 2])),
    "offsets_bad": lambda d, c: c(values=T([1, 2, 3]), offsets=T([0, 2, d.draw(st.sampled_from([1, 9, -3]))])),
    "both": lambda d, c: c(values=T([1, 2]), lengths=T([1, 1]), offsets=T([0, 1, 2])),
    "values_2d": lambda d, c: c(values=torch.ones((2, 2), dtype=torch.int64), lengths=T([2, 2])),
    "values_too_wide": lambda d, c: c(values=T([2**63 - 1, 1]), lengths=T([1, 1])),
}


@pytest.mark.parametrize("case", sorted(COLL_INVALID))
@fuzz(4)
@given(data=st.data())
def test_invalid_collection_input_changes_nothing(case, data):
    c = elt.HashEmbeddingBagCollection(["a", "b"], DIM, mode="sum", optimizer=el.optim.SGD(lr=0.1))
    c(values=T([1, 2, 3, 4]), lengths=T([1, 1, 1, 1])).get("a").sum().backward()
    expect_rejection(AREA, c.bag.table, lambda: COLL_INVALID[case](data, c), what=case)


@fuzz(10)
@given(data=st.data(), opt=st.sampled_from(["sgd", "adagrad", "rowwise", "adam"]))
def test_state_dict_round_trip_is_exact(data, opt):
    """Training, state_dict(), load_state_dict() into a fresh module: rows, optimizer state and step equal."""
    draw = data.draw
    mk = {"sgd": lambda: el.optim.SGD(lr=0.1), "adagrad": lambda: el.optim.Adagrad(lr=0.1),
          "rowwise": lambda: el.optim.Adagrad(lr=0.1, rowwise=True), "adam": lambda: el.optim.Adam(lr=0.1)}[opt]
    Tally.add(AREA, "tried")
    m = elt.HashEmbeddingBag(DIM, "sum", optimizer=mk(), initializer=el.init.uniform(seed=4))
    for _ in range(draw(st.integers(1, 3))):
        v, off = draw(bag_input())
        m(torch.from_numpy(v), torch.from_numpy(off[:-1] if off.size > 1 else np.zeros(1, np.int64)
                                                 if v.size else np.zeros(0, np.int64))).sum().backward()
    m2 = elt.HashEmbeddingBag(DIM, "sum", optimizer=mk(), initializer=el.init.uniform(seed=4))
    m2.load_state_dict(m.state_dict())
    k1, r1 = m.table.export()
    k2, r2 = m2.table.export()
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_array_equal(r1, r2)
    if k1.size:  # (with no rows a fresh table has no state kind yet: widths differ, nothing to compare)
        np.testing.assert_array_equal(m.table._t.export_state(k1), m2.table._t.export_state(k2))
    assert m.table.step == m2.table.step
    Tally.add(AREA, "valid_ok")
