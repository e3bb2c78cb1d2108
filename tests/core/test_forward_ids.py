"""The NumPy API's training step that reuses the forward's row ids:
pooled_lookup(..., return_ids=True) then apply_pooled_gradients(...,
forward_ids=...), checked against the dict reference optimizer."""

import numpy as np
import pytest

import embedlookup as el
from reference import RefOptimizer, init_uniform, pooled

DIM = 8


def _table(cls=el.EmbeddingTable, **kw):
    return cls(DIM, initializer=el.init.uniform(-0.1, 0.1, seed=3), optimizer=el.optim.Adagrad(lr=0.1), **kw)


def _batch(rng, n_keys=40, bags=16, pooling=6):
    values = rng.integers(0, n_keys, bags * pooling).astype(np.int64)
    offsets = np.arange(0, bags * pooling, pooling, dtype=np.int64)
    grad = rng.standard_normal((bags, DIM)).astype(np.float32)
    return values, offsets, grad


def _expand(values, offsets, grad, mode):
    """Per-occurrence gradients of a pooled backward (the reference's input)."""
    ends = np.append(offsets[1:], len(values))
    bag = np.repeat(np.arange(len(offsets)), ends - offsets)
    g = grad[bag].astype(np.float64)
    if mode == "mean":
        g /= (ends - offsets)[bag][:, None]
    return g


@pytest.mark.parametrize("cls", [el.EmbeddingTable, el.FrequencyTable])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_steps_with_the_forwards_ids_equal_the_reference(cls, mode):
    rng = np.random.default_rng(0)
    kw = {"budget_rows": 1000} if cls is el.FrequencyTable else {}
    t, plain = _table(cls, **kw), _table(cls, **kw)
    ref_rows, ref = {}, RefOptimizer("adagrad", lr=0.1, eps=1e-10)
    for step in range(5):
        values, offsets, grad = _batch(rng)
        out, fwd = t.pooled_lookup(values, offsets, mode=mode, return_ids=True)
        assert fwd.ids.shape == values.shape
        # the forward itself is the plain pooled lookup
        np.testing.assert_array_equal(out, plain.pooled_lookup(values, offsets, mode=mode))
        new = [k for k in np.unique(values).tolist() if k not in ref_rows]
        if new:  # rows this forward inserted: the initializer's reference values
            for k, r in zip(new, init_uniform(np.array(new, dtype=np.int64), DIM, -0.1, 0.1, 3)):
                ref_rows[k] = r.astype(np.float32)
        np.testing.assert_allclose(out, pooled(np.stack([ref_rows[k] for k in values.tolist()]), offsets, mode),
                                   rtol=1e-5, atol=1e-6)
        t.apply_pooled_gradients(values, offsets, grad, mode=mode, forward_ids=fwd)
        plain.apply_pooled_gradients(values, offsets, grad, mode=mode)
        ref.apply(ref_rows, values, _expand(values, offsets, grad, mode))
    ks, rows = t.export()
    pk, prow = plain.export()
    np.testing.assert_array_equal(ks, pk)
    np.testing.assert_array_equal(rows, prow)  # the same step as the probing backward, bit for bit
    np.testing.assert_allclose(rows, np.stack([ref_rows[k] for k in ks.tolist()]), rtol=1e-5, atol=1e-6)


def test_rows_freed_between_forward_and_backward_are_probed_again():
    # The forward's ids of an erased-and-reinserted key point at a freed row;
    # the layout epoch moved, so the backward resolves keys again.
    rng = np.random.default_rng(1)
    t, twin = _table(), _table()
    values, offsets, grad = _batch(rng)
    t.pooled_lookup(values, offsets)
    twin.pooled_lookup(values, offsets)
    _, fwd = t.pooled_lookup(values, offsets, return_ids=True)
    victim = values[:1]
    for tab in (t, twin):
        row = tab.find(victim)[0]
        tab.erase(victim)
        tab.assign(np.array([10_000, victim[0]], dtype=np.int64), np.concatenate([row, row]))
    t.apply_pooled_gradients(values, offsets, grad, forward_ids=fwd)
    twin.apply_pooled_gradients(values, offsets, grad)
    np.testing.assert_array_equal(t.export()[1], twin.export()[1])


def test_forward_ids_that_do_not_belong_are_refused_and_nothing_changes():
    rng = np.random.default_rng(2)
    t, other = _table(), _table()
    values, offsets, grad = _batch(rng)
    _, fwd = t.pooled_lookup(values, offsets, return_ids=True)
    _, fwd_other = other.pooled_lookup(values, offsets, return_ids=True)
    before = t.export()
    with pytest.raises(ValueError, match="forward_ids: they come from another table"):
        t.apply_pooled_gradients(values, offsets, grad, forward_ids=fwd_other)
    changed = values.copy()
    changed[3] += 1
    with pytest.raises(ValueError, match="forward_ids: values differ"):
        t.apply_pooled_gradients(changed, offsets, grad, forward_ids=fwd)
    with pytest.raises(ValueError, match="forward_ids: values differ"):
        t.apply_pooled_gradients(values[:-6], offsets[:-1], grad[:-1], forward_ids=fwd)
    with pytest.raises(TypeError, match="forward_ids must be"):
        t.apply_pooled_gradients(values, offsets, grad, forward_ids=fwd.ids)
    with pytest.raises(ValueError, match="return_ids: mode='max'"):
        t.pooled_lookup(values, offsets, mode="max", return_ids=True)
    after = t.export()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    # an equal copy of the values is accepted
    t.apply_pooled_gradients(values.copy(), offsets, grad, forward_ids=fwd)
    assert not np.array_equal(t.export()[1], before[1])


def test_the_backward_uses_the_forwards_ids_without_probing():
    # White box: point every occurrence at the first key's row. A backward
    # that probed the index again would update every key's own row instead.
    rng = np.random.default_rng(3)
    t = _table()
    values, offsets, grad = _batch(rng)
    uniq = np.unique(values)
    ref_rows = dict(zip(uniq.tolist(), init_uniform(uniq, DIM, -0.1, 0.1, 3)))
    ref = RefOptimizer("adagrad", lr=0.1, eps=1e-10)
    # The first step binds the optimizer state (and resolves keys itself).
    t.pooled_lookup(values, offsets)
    t.apply_pooled_gradients(values, offsets, grad)
    ref.apply(ref_rows, values, _expand(values, offsets, grad, "sum"))
    _, fwd = t.pooled_lookup(values, offsets, return_ids=True)
    rows0 = t.export()[1]
    fwd.ids[:] = fwd.ids[0]
    t.apply_pooled_gradients(values, offsets, grad, forward_ids=fwd)
    keys1, rows1 = t.export()
    np.testing.assert_array_equal(keys1[np.any(rows1 != rows0, axis=1)], [values[0]])
    # that row took the whole batch's gradient in one Adagrad step
    ref.apply(ref_rows, values[:1], _expand(values, offsets, grad, "sum").sum(0, keepdims=True))
    np.testing.assert_allclose(rows1, np.stack([ref_rows[k] for k in keys1.tolist()]), rtol=1e-5, atol=1e-7)
