"""Every bad argument raises a clear exception naming it, and the table is left exactly as it was."""

import numpy as np
import pytest

import embedlookup as el

DIM = 4


@pytest.fixture
def table():
    t = el.EmbeddingTable(DIM, initializer=el.init.uniform(seed=1))
    t.lookup(np.array([1, 2, 3], np.int64))
    t.apply_gradients(np.array([1]), np.ones((1, DIM), np.float32), el.optim.Adagrad())
    return t


def snapshot(t):
    k, r = t.export()
    return k.copy(), r.copy(), len(t), t.step


def unchanged(t, snap):
    k, r, n, step = snap
    k2, r2 = t.export()
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(r2, r)
    assert len(t) == n and t.step == step


K = np.array([1, 2, 9], np.int64)  # 9 is new: an accepted call would insert it
OFF = np.array([0, 2], np.int64)
G = np.ones((3, DIM), np.float32)

CASES = [
    # (call, exception, message fragment)
    (lambda t: t.lookup(np.array([1.0, 2.0])), TypeError, "keys must hold integers"),
    (lambda t: t.lookup(np.array([[1, 2]])), ValueError, "keys must be 1-D"),
    (lambda t: t.lookup(np.array([True])), TypeError, "keys must hold integers"),
    (lambda t: t.lookup(K, out=np.empty((3, DIM), np.float64)), ValueError, "out must be a float32"),
    (lambda t: t.lookup(K, out=np.empty((2, DIM), np.float32)), ValueError, "out must be a float32"),
    (lambda t: t.lookup(K, out=np.empty((DIM, 3), np.float32).T), ValueError, "C-contiguous"),
    (lambda t: t.pooled_lookup(K, np.array([0.0, 1.0])), TypeError, "offsets must hold integers"),
    (lambda t: t.pooled_lookup(K, np.array([1, 2])), ValueError, r"offsets\[0\] must be 0"),
    (lambda t: t.pooled_lookup(K, np.array([0, 2, 1])), ValueError, "non-decreasing"),
    (lambda t: t.pooled_lookup(K, np.array([0, 4])), ValueError, "exceeds len"),
    (lambda t: t.pooled_lookup(K, np.array([0, 2]), include_last_offset=True), ValueError, "must equal len"),
    (lambda t: t.pooled_lookup(K, np.array([], np.int64), include_last_offset=True), ValueError, "at least one"),
    (lambda t: t.pooled_lookup(K, np.array([], np.int64)), ValueError, "offsets is empty"),
    (lambda t: t.pooled_lookup(K), ValueError, "offsets are required"),
    (lambda t: t.pooled_lookup(K, OFF, mode="median"), ValueError, "mode must be one of"),
    (lambda t: t.pooled_lookup(K, OFF, mode="mean", per_sample_weights=np.ones(3, np.float32)), ValueError,
     "only supported with mode='sum'"),
    (lambda t: t.pooled_lookup(K, OFF, per_sample_weights=np.ones(2, np.float32)), ValueError,
     "per_sample_weights must have shape"),
    (lambda t: t.pooled_lookup(K, OFF, per_sample_weights=np.ones(3, np.int64)), TypeError,
     "per_sample_weights must hold floating"),
    (lambda t: t.assign(K, np.ones((3, DIM + 1), np.float32)), ValueError, "rows must have shape"),
    (lambda t: t.assign(K, np.ones((3, DIM), np.int32)), TypeError, "rows must hold floating"),
    (lambda t: t.apply_gradients(K[:2], np.ones((2, DIM + 1), np.float32), el.optim.SGD()), ValueError,
     "grads must have shape"),
    (lambda t: t.apply_gradients(K, G, el.optim.SGD()), KeyError, "key 9"),
    (lambda t: t.apply_gradients(K[:2], np.array([[1, np.nan, 1, 1], [1, 1, 1, 1]], np.float32),
                                 el.optim.Adagrad()), ValueError, "NaN or inf"),
    (lambda t: t.apply_gradients(K[:2], np.array([[1, 1, 1, 1], [np.inf, 1, 1, 1]], np.float32),
                                 el.optim.Adagrad()), ValueError, "row 1 holds NaN or inf"),
    (lambda t: t.apply_gradients(K[:2], G[:2], "adam"), TypeError, "optimizer must be"),
    (lambda t: t.apply_gradients(K[:2], G[:2]), ValueError, "no default optimizer"),
    (lambda t: t.apply_gradients(K[:2], G[:2], el.optim.Adam()), ValueError, "belongs to Adagrad"),
]


@pytest.mark.parametrize("call,exc,msg", CASES)
def test_rejected_and_table_unchanged(table, call, exc, msg):
    snap = snapshot(table)
    with pytest.raises(exc, match=msg):
        call(table)
    unchanged(table, snap)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(dim=0), "dim must be a positive int"),
    (dict(dim=-3), "dim must be a positive int"),
    (dict(dim=2.5), "dim must be a positive int"),
    (dict(dim=4, capacity=0), "capacity must be a positive int"),
    (dict(dim=4, num_threads=0), "num_threads must be a positive int"),
])
def test_bad_construction(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        el.EmbeddingTable(**kwargs)


def test_bad_initializer_and_optimizer_hyperparameters():
    with pytest.raises(TypeError, match="initializer must come from embedlookup.init"):
        el.EmbeddingTable(4, initializer="normal")
    with pytest.raises(ValueError, match="need low < high"):
        el.init.uniform(1, 0)
    with pytest.raises(ValueError, match="std must be > 0"):
        el.init.normal(std=0)
    with pytest.raises(ValueError, match="seed must be an int"):
        el.init.uniform(seed=-1)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        el.optim.SGD(lr=-1)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        el.optim.Adagrad(lr=float("nan"))
    with pytest.raises(ValueError, match=r"betas\[1\] must be"):
        el.optim.Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="betas must be a pair"):
        el.optim.Adam(betas=0.9)
