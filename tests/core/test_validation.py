"""Regression tests from the fault campaign against the public API: bad input
raises a clear exception naming the argument, before the native call, and the
table (keys, rows, optimizer state, step, version) is left exactly as it was;
good input near the edges gives the values of an independent reference
(NumPy / torch.nn.EmbeddingBag / tests/reference.py)."""

import math

import numpy as np
import pytest

import embedlookup as el
from reference import RefOptimizer, init_uniform
from table_state import assert_same_state as assert_unchanged
from table_state import table_state as snapshot

DIM = 4
MODES = ["sum", "mean", "max"]


def make_table(opt=None):
    t = el.EmbeddingTable(DIM, initializer=el.init.uniform(-0.5, 0.5, seed=3))
    t.lookup(np.array([1, 2, 3], np.int64))
    t.apply_gradients(np.array([1, 2]), np.full((2, DIM), 0.25, np.float32), opt or el.optim.Adagrad(lr=0.1))
    return t


def raises_unchanged(t, call, exc, match):
    snap = snapshot(t)
    with pytest.raises(exc, match=match):
        call(t)
    assert_unchanged(t, snap)


def torch_empty_bags(B, mode):
    """torch.nn.EmbeddingBag's output for B empty bags. torch itself raises for
    a (B, 0) 2-D input ("step must be nonzero"), so the reference is its 1-D
    spelling of the same bags: no values, offsets all 0."""
    torch = pytest.importorskip("torch")
    eb = torch.nn.EmbeddingBag(10, DIM, mode=mode)
    return eb(torch.zeros(0, dtype=torch.long), torch.zeros(B, dtype=torch.long)).detach().numpy()


# ------------------------------------------------------------------ A: (B, 0) bags
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B", [1, 3, 1 << 16])
def test_zero_length_2d_bags_are_empty_bags(mode, B):
    t = make_table()
    snap = snapshot(t)
    out = t.pooled_lookup(np.zeros((B, 0), np.int64), mode=mode)
    np.testing.assert_array_equal(out, torch_empty_bags(B, mode))
    assert out.shape == (B, DIM)
    assert_unchanged(t, snap)  # nothing looked up: nothing inserted


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("B", [5, 1 << 16])
def test_zero_length_2d_bags_apply_pooled_gradients_is_a_no_op_on_rows(mode, B):
    t, ref = make_table(), make_table()
    k, r = t.export()
    g = np.ones((B, DIM), np.float32)
    t.apply_pooled_gradients(np.zeros((B, 0), np.int64), None, g, el.optim.Adagrad(lr=0.1), mode=mode)
    # The reference: the same B empty bags spelt 1-D (no values, offsets all 0).
    ref.apply_pooled_gradients(np.zeros(0, np.int64), np.zeros(B, np.int64), g, el.optim.Adagrad(lr=0.1), mode=mode)
    k2, r2 = t.export()
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(r2, r)  # no key in any bag: no row moves
    assert (t.step, t.version) == (ref.step, ref.version)


@pytest.mark.parametrize("mode", MODES)
def test_zero_length_2d_bags_frequency_table(mode):
    t = el.FrequencyTable(DIM, initializer=el.init.uniform(-0.5, 0.5, seed=3))
    t.pooled_lookup(np.array([[1, 2]], np.int64))
    k, r = t.export()
    out = t.pooled_lookup(np.zeros((4, 0), np.int64), mode=mode)
    np.testing.assert_array_equal(out, torch_empty_bags(4, mode))
    k2, r2 = t.export()
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(r2, r)


def test_one_d_empty_bags_max_give_zeros_like_embeddingbag():
    """The kernel was right: with correct offsets, empty bags in max mode are zeros."""
    torch = pytest.importorskip("torch")
    t = make_table()
    keys, off = np.array([1, 2, 3], np.int64), np.array([0, 0, 2, 3, 3], np.int64)
    out = t.pooled_lookup(keys, off, mode="max")
    rows = torch.from_numpy(t.lookup(keys, insert=False))
    ref = torch.nn.EmbeddingBag.from_pretrained(rows, mode="max")(torch.arange(3), torch.from_numpy(off))
    np.testing.assert_array_equal(out, ref.numpy())


# ----------------------------------------------------------- B: non-finite weights
BAD_WEIGHTS = [np.nan, np.inf, -np.inf, 1e39]  # 1e39 (float64) is inf in float32


@pytest.mark.parametrize("bad", BAD_WEIGHTS)
def test_nonfinite_per_sample_weights_pooled_lookup(bad):
    t = make_table()
    w = np.array([1.0, bad, 1.0])
    raises_unchanged(t, lambda t: t.pooled_lookup(np.array([1, 2, 99]), np.array([0, 2]), per_sample_weights=w),
                     ValueError, "per_sample_weights must be finite")


@pytest.mark.parametrize("bad", BAD_WEIGHTS)
def test_nonfinite_per_sample_weights_apply_pooled_gradients(bad):
    t = make_table()
    w = np.array([1.0, bad, 1.0], np.float64)
    raises_unchanged(t, lambda t: t.apply_pooled_gradients(np.array([1, 2, 3]), np.array([0, 2]),
                                                           np.ones((2, DIM), np.float32), el.optim.Adagrad(lr=0.1),
                                                           per_sample_weights=w),
                     ValueError, "per_sample_weights must be finite")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_per_sample_weights_frequency_table(bad):
    t = el.FrequencyTable(DIM, initializer=el.init.uniform(-0.5, 0.5, seed=3), optimizer=el.optim.SGD(lr=0.1))
    t.pooled_lookup(np.array([1, 2, 3]), np.array([0, 2]))
    w = np.array([1.0, bad, 1.0], np.float32)
    snap = snapshot(t)
    with pytest.raises(ValueError, match="per_sample_weights must be finite"):
        t.pooled_lookup(np.array([1, 2, 99]), np.array([0, 2]), per_sample_weights=w)
    with pytest.raises(ValueError, match="per_sample_weights must be finite"):
        t.apply_pooled_gradients(np.array([1, 2, 3]), np.array([0, 2]), np.ones((2, DIM), np.float32),
                                 per_sample_weights=w)
    with pytest.raises(ValueError, match="weights must be finite"):
        t.lookup(np.array([1, 99]), weights=np.array([1.0, bad]))
    assert_unchanged(t, snap)


def test_finite_weights_still_match_reference():
    t = make_table()
    keys, off, w = np.array([1, 2, 3]), np.array([0, 2]), np.array([0.5, -2.0, 3.0], np.float32)
    rows = t.lookup(keys, insert=False).astype(np.float64)
    ref = np.stack([0.5 * rows[0] - 2.0 * rows[1], 3.0 * rows[2]])
    np.testing.assert_allclose(t.pooled_lookup(keys, off, per_sample_weights=w), ref, rtol=1e-6)


# ------------------------------------------------ C: optimizer hyperparameters
# (factory, attribute, bad value set after construction, message fragment)
SET_AFTER = [
    (lambda: el.optim.SGD(lr=0.1), "lr", math.nan),
    (lambda: el.optim.SGD(lr=0.1), "lr", -1.0),
    (lambda: el.optim.SGD(lr=0.1), "lr", math.inf),
    (lambda: el.optim.SGD(lr=0.1), "lr", 1e39),
    (lambda: el.optim.SGD(lr=0.1), "weight_decay", -5.0),
    (lambda: el.optim.Adagrad(lr=0.1), "eps", 0.0),
    (lambda: el.optim.Adagrad(lr=0.1), "lr_decay", math.nan),
    (lambda: el.optim.Adagrad(lr=0.1), "initial_accumulator_value", -1.0),
    (lambda: el.optim.Adagrad(lr=0.1, rowwise=True), "eps", 0.0),
    (lambda: el.optim.Adam(lr=0.1), "eps", 0.0),
    (lambda: el.optim.Adam(lr=0.1), "lr", math.nan),
    (lambda: el.optim.Adam(lr=0.1), "betas", (0.9, 1.0)),
    (lambda: el.optim.Adam(lr=0.1), "betas", (0.999999999, 0.9)),  # 1.0 in float32
]


def _ids(case):
    return f"{case[0]().__class__.__name__}-{case[1]}-{case[2]}"


@pytest.mark.parametrize("case", SET_AFTER, ids=[_ids(c) for c in SET_AFTER])
def test_hyperparameter_set_after_construction_is_checked_at_call(case):
    factory, attr, bad = case
    opt = factory()
    t = make_table(factory())
    setattr(opt, attr, bad)
    name = "betas" if attr == "betas" else attr
    raises_unchanged(t, lambda t: t.apply_gradients(np.array([1, 3]), np.ones((2, DIM), np.float32), opt),
                     ValueError, name)
    raises_unchanged(t, lambda t: t.apply_pooled_gradients(np.array([1, 3]), np.array([0, 1]),
                                                           np.ones((2, DIM), np.float32), opt),
                     ValueError, name)


@pytest.mark.parametrize("case", SET_AFTER, ids=[_ids(c) for c in SET_AFTER])
def test_hyperparameter_rejected_at_construction(case):
    factory, attr, bad = case
    cls = type(factory())
    with pytest.raises(ValueError, match=attr):
        cls(**{attr: bad})


@pytest.mark.parametrize("cls,attr", [(el.optim.SGD, "lr"), (el.optim.SGD, "weight_decay"),
                                      (el.optim.Adagrad, "eps"), (el.optim.Adam, "lr")])
@pytest.mark.parametrize("bad", ["a", None, True])
def test_hyperparameter_wrong_type_names_it(cls, attr, bad):
    with pytest.raises(TypeError, match=attr):
        cls(**{attr: bad})
    opt = cls()
    setattr(opt, attr, bad)
    t = make_table(cls())
    raises_unchanged(t, lambda t: t.apply_gradients(np.array([1]), np.ones((1, DIM), np.float32), opt),
                     TypeError, attr)


def test_rowwise_must_be_bool():
    with pytest.raises(TypeError, match="rowwise"):
        el.optim.Adagrad(rowwise="yes")


def test_lr_changed_between_calls_is_used_and_lr_zero_freezes():
    """Valid schedule changes still apply, with the reference's values."""
    t = el.EmbeddingTable(DIM, initializer=el.init.uniform(-0.5, 0.5, seed=3))
    keys = np.array([1, 2, 1])
    t.lookup(keys)
    k0, r0 = t.export()
    ref = {int(k): r for k, r in zip(k0, r0)}
    opt = el.optim.SGD(lr=0.1)
    g = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM) / 10
    for lr in (0.1, 0.5, 0.0):
        opt.lr = lr
        t.apply_gradients(keys, g, opt)
        RefOptimizer("sgd", lr=lr).apply(ref, keys, g)
    k, r = t.export()
    np.testing.assert_allclose(r, np.stack([ref[int(x)] for x in k]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("opt_kind", ["adagrad", "rowwise_adagrad", "adam"])
def test_smallest_eps_zero_gradient_stays_finite(opt_kind):
    eps = float(np.finfo(np.float32).tiny)
    opt = {"adagrad": el.optim.Adagrad(lr=0.1, eps=eps), "rowwise_adagrad": el.optim.Adagrad(lr=0.1, eps=eps,
                                                                                              rowwise=True),
           "adam": el.optim.Adam(lr=0.1, eps=eps)}[opt_kind]
    t = make_table(el.optim.Adagrad(lr=0.1) if opt_kind != "adam" else el.optim.Adam(lr=0.1))
    if opt_kind == "rowwise_adagrad":
        t = el.EmbeddingTable(DIM, initializer=el.init.uniform(-0.5, 0.5, seed=3))
        t.lookup(np.array([1, 2, 3]))
    k, r = t.export()
    t.apply_gradients(np.array([3]), np.zeros((1, DIM), np.float32), opt)
    k2, r2 = t.export()
    np.testing.assert_array_equal(r2, r)  # a zero gradient moves nothing (no 0/0)


# ------------------------------------------------------------ D: initializers
@pytest.mark.parametrize("make,match", [
    (lambda: el.init.constant(math.nan), "constant: value"),
    (lambda: el.init.constant(1e39), "constant: value"),
    (lambda: el.init.constant(-math.inf), "constant: value"),
    (lambda: el.init.normal(mean=math.nan), "normal: mean"),
    (lambda: el.init.normal(std=math.inf), "normal: std"),
    (lambda: el.init.normal(std=math.nan), "normal: std"),
    (lambda: el.init.normal(mean=3e38, std=1e38), r"normal: \|mean\| \+ 6 \* std"),
    (lambda: el.init.uniform(-3e38, 3e38), "uniform: high - low"),
    (lambda: el.init.uniform(math.nan, 1.0), "uniform: low"),
    (lambda: el.init.uniform(0.0, math.inf), "uniform: high"),
])
def test_initializer_with_nonfinite_rows_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [lambda: el.init.constant("a"), lambda: el.init.uniform(None, 1.0),
                                  lambda: el.init.normal(std="x")])
def test_initializer_wrong_type_is_type_error(make):
    with pytest.raises(TypeError, match="must be a real number"):
        make()


def test_initializer_edges_still_accepted_and_match_reference():
    t = el.EmbeddingTable(DIM, initializer=el.init.uniform(-1e38, 1e38, seed=7))
    keys = np.array([5, -9, 2**40])
    rows = t.lookup(keys)
    assert np.isfinite(rows).all()
    np.testing.assert_allclose(rows, init_uniform(keys, DIM, -1e38, 1e38, 7), rtol=1e-6)
    c = el.EmbeddingTable(DIM, initializer=el.init.constant(3e38)).lookup(np.array([1]))
    np.testing.assert_array_equal(c, np.full((1, DIM), np.float32(3e38)))


# --------------------------------------------------- E: out overlapping inputs
def test_out_overlapping_keys_rejected():
    t = make_table()
    buf = np.zeros(4 * DIM, np.float32)
    keys = buf[:8].view(np.int64)  # 4 int64 keys in the first 32 bytes of buf
    keys[:] = [1, 2, 3, 50]
    out = buf[: 4 * DIM].reshape(4, DIM)
    raises_unchanged(t, lambda t: t.lookup(keys, out=out), ValueError, "out must not overlap the memory of keys")
    raises_unchanged(t, lambda t: t.find(keys, out=out), ValueError, "out must not overlap")
    np.testing.assert_array_equal(keys, [1, 2, 3, 50])  # the input is intact too


def test_out_overlapping_pooled_inputs_rejected():
    t = make_table()
    buf = np.zeros(64, np.float32)
    values = buf[:8].view(np.int64)
    values[:] = [1, 2, 3, 77]
    offsets = buf[8:12].view(np.int64)
    offsets[:] = [0, 2]
    w = buf[12:16]
    w[:] = 1.0
    raises_unchanged(t, lambda t: t.pooled_lookup(values, offsets, out=buf[:8].reshape(2, DIM)), ValueError,
                     "out must not overlap the memory of values")
    raises_unchanged(t, lambda t: t.pooled_lookup(values, offsets, out=buf[8:16].reshape(2, DIM)), ValueError,
                     "out must not overlap the memory of offsets")
    raises_unchanged(t, lambda t: t.pooled_lookup(values, offsets, per_sample_weights=w,
                                                  out=buf[12:20].reshape(2, DIM)),
                     ValueError, "out must not overlap the memory of per_sample_weights")
    ft = el.FrequencyTable(DIM)
    snap = snapshot(ft)
    with pytest.raises(ValueError, match="out must not overlap the memory of keys"):
        ft.lookup(values, out=buf[:16].reshape(4, DIM))
    assert_unchanged(ft, snap)


def test_out_beside_inputs_in_one_buffer_is_accepted_and_correct():
    t = make_table()
    buf = np.zeros(8 + 2 * DIM, np.float32)
    values = buf[:8].view(np.int64)
    values[:] = [1, 2, 3, 3]
    out = buf[8:].reshape(2, DIM)
    t.pooled_lookup(values, np.array([0, 2]), out=out)
    rows = t.lookup(np.array([1, 2, 3]), insert=False).astype(np.float64)
    np.testing.assert_allclose(out, np.stack([rows[0] + rows[1], 2 * rows[2]]), rtol=1e-6)


# --------------------------------------------------------------- G: names
def test_frequency_table_errors_name_keys():
    t = el.FrequencyTable(DIM, features=["f"])
    t.lookup(np.array([1]), feature="f")
    snap = snapshot(t)
    for call in (lambda: t.lookup(np.array([[1]]), feature="f"), lambda: t.find(np.array([[1]]), feature="f"),
                 lambda: t.assign(np.array([[1]]), np.ones((1, DIM)), feature="f"),
                 lambda: t.erase(np.array([[1]]), feature="f")):
        with pytest.raises(ValueError, match="^keys must be 1-D"):
            call()
    with pytest.raises(ValueError, match="^keys of feature 'f': key .* does not fit in 48 bits"):
        t.lookup(np.array([1 << 47]), feature="f")
    with pytest.raises(ValueError, match="^weights must be finite"):
        t.lookup(np.array([1]), feature="f", weights=np.array([-1.0]))
    assert_unchanged(t, snap)
    with pytest.raises(ValueError, match="^values of feature 'f': key .* does not fit"):  # pooled calls take values
        t.pooled_lookup(np.array([1 << 47]), np.array([0]), feature="f")
