"""Compressed row storage types (fp16, bf16, int8, int4): codecs bit for bit
against the NumPy oracle, table reads, pooled kernels within stated bounds,
training with stochastic rounding, bad input."""

import numpy as np
import pytest

import embedlookup as el
import reference as ref
from embedlookup import quantize as q

TYPES = ("fp16", "bf16", "int8", "int4")


def tricky_rows(n, dim, seed=0, kind=None):
    """Rows that exercise rounding: wide magnitudes, fp16 subnormals and ties,
    constant rows (int scale 0), exact halves of int codes."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * np.exp(rng.uniform(-8, 6, (n, 1)))).astype(np.float32)
    x[0] = 1.0  # constant row: scale 0
    x[1, :] = np.float32(2.0 ** -20) * rng.integers(-40, 40, dim)  # fp16 subnormals
    x[2, :] = (np.float32(1) + np.float32(2.0 ** -11) * rng.integers(0, 8, dim)).astype(np.float32)  # fp16 ties
    x[3, :] = np.arange(dim, dtype=np.float32) * 0.5  # int codes at exact halves
    big = 2.0 ** 10 if kind == "fp16" else 2.0 ** 100
    x[4, :] = (1 + np.float32(2.0 ** -8) * rng.integers(0, 4, dim)) * np.float32(big)  # bf16 ties, large
    return x


@pytest.mark.parametrize("kind", ref.ROW_KINDS)
@pytest.mark.parametrize("dim", [2, 6, 16, 30, 64])
def test_codecs_match_the_reference_bit_for_bit(kind, dim):
    x = tricky_rows(40, dim, seed=dim, kind=kind)
    raw = q.quantize_rows(x, kind)
    want = ref.quantize_rows(x, kind)
    assert raw.shape == (40, ref.row_bytes(kind, dim)) == (40, q.row_bytes(kind, dim))
    np.testing.assert_array_equal(raw, want)
    back = q.dequantize_rows(raw, kind, dim)
    np.testing.assert_array_equal(back.view(np.uint32), ref.dequantize_rows(want, kind, dim).view(np.uint32))


@pytest.mark.parametrize("kind", TYPES)
def test_table_reads_are_the_reference_rows(kind):
    dim = 24
    t = el.EmbeddingTable(dim, row_type=kind)
    keys = np.arange(100, 140, dtype=np.int64) * 7919
    x = tricky_rows(40, dim, seed=3, kind=kind)
    t.assign(keys, x)
    want = ref.dequantize_rows(ref.quantize_rows(x, kind), kind, dim)
    np.testing.assert_array_equal(t.lookup(keys).view(np.uint32), want.view(np.uint32))
    rows, found = t.find(np.concatenate([keys[:3], [-5]]))
    np.testing.assert_array_equal(rows[:3], want[:3])
    assert found.tolist() == [True, True, True, False] and not rows[3].any()
    k, r = t.export()
    order = np.argsort(keys)
    np.testing.assert_array_equal(k, keys[order])
    np.testing.assert_array_equal(r, want[order])
    k, raw = t.export_raw()
    np.testing.assert_array_equal(raw, ref.quantize_rows(x, kind)[order])
    assert t.row_type == kind and kind in repr(t)


@pytest.mark.parametrize("kind", TYPES)
def test_initialized_rows_are_the_quantized_initializer(kind):
    t = el.EmbeddingTable(16, row_type=kind, initializer=el.init.uniform(-0.5, 0.5, seed=11))
    keys = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int64)
    got = t.lookup(keys)
    init = ref.init_uniform(keys, 16, -0.5, 0.5, 11)
    np.testing.assert_array_equal(got, ref.dequantize_rows(ref.quantize_rows(init, kind), kind, 16))


def pooled_bound(vals, offsets, weights, n, kind):
    """Per-bag error bound of a float32 pooled sum against the exact (float64)
    sum of the stored values: (L + 3) float32 roundings of partial sums each
    at most sum_k |w_k| * M_k, with M_k = max |value| (int types: the scale
    and bias terms are summed apart, so M_k = |scale| * levels + |bias|)."""
    ends = np.append(offsets[1:], n)
    out = []
    for s, e in zip(offsets, ends):
        w = np.abs(weights[s:e]) if weights is not None else np.ones(e - s)
        m = np.abs(vals[s:e]).max(axis=1) if e > s else np.zeros(0)
        out.append((e - s + 3) * 2.0 ** -23 * float((w * m).sum()) * 2)
    return np.array(out)


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("dim", [8, 22, 64, 128])
@pytest.mark.parametrize("mode, weighted", [("sum", False), ("sum", True), ("mean", False), ("max", False)])
def test_pooled_lookup_within_the_bound_of_the_stored_values(kind, dim, mode, weighted):
    rng = np.random.default_rng(dim)
    n_keys = 300
    t = el.EmbeddingTable(dim, row_type=kind, num_threads=2)
    keys = rng.choice(10 ** 9, n_keys, replace=False).astype(np.int64)
    x = (rng.standard_normal((n_keys, dim)) * rng.uniform(0.1, 3, (n_keys, 1)) + rng.uniform(-1, 1, (n_keys, 1)))
    x = x.astype(np.float32)
    t.assign(keys, x)
    stored = ref.dequantize_rows(ref.quantize_rows(x, kind), kind, dim)
    lengths = rng.integers(0, 40, 700)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    pos = rng.integers(0, n_keys + 20, lengths.sum())  # some keys missing: zero rows
    values = np.where(pos < n_keys, keys[np.minimum(pos, n_keys - 1)], -1 - pos).astype(np.int64)
    vals = np.where((pos < n_keys)[:, None], stored[np.minimum(pos, n_keys - 1)], 0).astype(np.float64)
    w = rng.uniform(-2, 2, len(values)).astype(np.float32) if weighted else None
    got = t.pooled_lookup(values, offsets, mode=mode, per_sample_weights=w, insert=False)
    want = ref.pooled(vals, offsets, mode, None if w is None else w.astype(np.float64))
    if mode == "max":
        np.testing.assert_array_equal(got, want.astype(np.float32))  # values decode exactly
        return
    bound = pooled_bound(vals, offsets, None if w is None else w.astype(np.float64), len(values), kind)
    if mode == "mean":
        bound = bound / np.maximum(lengths, 1) + np.abs(want).max(axis=1) * 2.0 ** -23
    err = np.abs(got - want).max(axis=1)
    assert (err <= bound + 1e-30).all(), (err - bound).max()
    # and the bound is tight enough to mean something: far below the values
    assert (bound <= 1e-4 * (np.abs(want).max(axis=1) + 1) * (lengths + 3)).all()


@pytest.mark.parametrize("kind", TYPES)
def test_pooled_on_a_frequency_table(kind):
    dim = 32
    t = el.FrequencyTable(dim, row_type=kind, budget_rows=1000)
    keys = np.arange(50, dtype=np.int64)
    x = np.random.default_rng(1).standard_normal((50, dim)).astype(np.float32)
    t.assign(keys, x)
    stored = ref.dequantize_rows(ref.quantize_rows(x, kind), kind, dim)
    np.testing.assert_array_equal(t.find(keys)[0], stored)
    offsets = np.arange(0, 50, 5, dtype=np.int64)
    got = t.pooled_lookup(keys, offsets, mode="max", train=False)
    np.testing.assert_array_equal(got, ref.pooled(stored.astype(np.float64), offsets, "max").astype(np.float32))
    assert t.memory_usage()["row_bytes_per_row"] == ref.row_bytes(kind, dim)


@pytest.mark.parametrize("kind", ref.ROW_KINDS)
@pytest.mark.parametrize("dim", [8, 30, 64])
def test_memory_per_row_is_exact(kind, dim):
    t = el.EmbeddingTable(dim, row_type=kind)
    t.lookup(np.arange(1000, dtype=np.int64))
    m = t.memory_usage()
    want = 4 * ((dim + 7) // 8 * 8) if kind == "fp32" else ref.row_bytes(kind, dim)
    assert m["row_bytes_per_row"] == want and m["row_type"] == kind
    assert m["row_bytes"] >= 1000 * want


# ---------------------------------------------------------------- bad input
def test_unknown_type_and_odd_int4_dim_are_refused():
    with pytest.raises(ValueError, match="row_type"):
        el.EmbeddingTable(8, row_type="int2")
    with pytest.raises(ValueError, match="even"):
        el.EmbeddingTable(7, row_type="int4")
    with pytest.raises(ValueError, match="row_type"):
        el.FrequencyTable(8, row_type="fp8")
    with pytest.raises(ValueError, match="even"):
        q.quantize_rows(np.zeros((2, 3), np.float32), "int4")
    with pytest.raises(ValueError, match="row_type"):
        q.row_bytes("float16", 4)
    with pytest.raises(ValueError, match="shape"):
        q.dequantize_rows(np.zeros((2, 9), np.uint8), "int8", 4)  # int8 dim 4 has 12-byte rows
    with pytest.raises(ValueError, match="cold"):
        el.FrequencyTable(8, row_type="fp16", default_row="cold")


@pytest.mark.parametrize("kind, bad", [("fp16", 65520.0), ("fp16", -1e6), ("bf16", 3.4e38),
                                       ("int8", 3e38), ("int4", 3e38)])
def test_assign_out_of_range_raises_and_changes_nothing(kind, bad):
    t = el.EmbeddingTable(8, row_type=kind)
    keys = np.array([1, 2], dtype=np.int64)
    t.assign(keys, np.ones((2, 8), np.float32))
    before = t.export_raw()
    rows = np.zeros((3, 8), np.float32)
    rows[2, 3] = bad
    if kind.startswith("int"):
        rows[2, 4] = -bad  # max - min overflows float32
    with pytest.raises(ValueError, match="out of the range"):
        t.assign(np.array([1, 5, 2], dtype=np.int64), rows)
    after = t.export_raw()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    with pytest.raises(ValueError, match="range"):
        q.quantize_rows(rows, kind)
    # the largest value that does round to a finite one is accepted
    if kind == "fp16":
        t.assign(np.array([9], dtype=np.int64), np.full((1, 8), 65519.0, np.float32))
        assert t.lookup(np.array([9], dtype=np.int64))[0, 0] == 65504.0


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_int_tables_refuse_training_and_stay_unchanged(kind):
    t = el.EmbeddingTable(8, row_type=kind, optimizer=el.optim.SGD(lr=0.1))
    keys = np.array([1, 2, 3], dtype=np.int64)
    t.lookup(keys)
    before = t.export_raw()[1].copy()
    with pytest.raises(ValueError, match="cannot be trained"):
        t.apply_gradients(keys, np.ones((3, 8), np.float32))
    with pytest.raises(ValueError, match="cannot be trained"):
        t.apply_pooled_gradients(keys, np.array([0], dtype=np.int64), np.ones((1, 8), np.float32))
    np.testing.assert_array_equal(t.export_raw()[1], before)
    assert t.step == 0


# ----------------------------------------------------------------- training
def sr_table(kind, seed, num_threads=2, opt=None):
    return el.EmbeddingTable(64, row_type=kind, rounding_seed=seed, num_threads=num_threads,
                             optimizer=opt or el.optim.Adagrad(lr=0.05))


def train_steps(t, steps=5):
    rng = np.random.default_rng(7)
    for _ in range(steps):
        keys = rng.integers(0, 3000, 6000).astype(np.int64)
        t.lookup(keys)
        t.apply_gradients(keys, rng.standard_normal((6000, 64)).astype(np.float32))
    return t.export_raw()


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_stochastic_rounding_is_reproducible_and_seeded(kind):
    a = train_steps(sr_table(kind, 5, num_threads=2))
    b = train_steps(sr_table(kind, 5, num_threads=1))
    c = train_steps(sr_table(kind, 6, num_threads=2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])  # bit-identical whatever the thread count
    assert (a[1] != c[1]).any()  # the seed changes the rounding


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_stochastic_rounding_is_unbiased(kind):
    """SGD with lr 1 moves every element from a stored value v to v - g,
    exactly a quarter of a unit in the last place above a stored neighbour.
    Round to nearest would always land on that neighbour (bias -1/4 ulp);
    stochastic rounding must round up with probability 1/4. Over N = 64000
    independent elements the observed fraction has standard deviation
    sqrt(3/16 / N) = 0.0017: a bound of 0.02 (12 sigma) cannot fail by
    chance, and a biased rounding (0 or 1/2) cannot pass it."""
    n_keys, dim = 1000, 64
    t = el.EmbeddingTable(dim, row_type=kind, rounding_seed=1, optimizer=el.optim.SGD(lr=1.0))
    keys = np.arange(n_keys, dtype=np.int64)
    base = np.float32(1.0)
    ulp = np.float32(2.0 ** -10) if kind == "fp16" else np.float32(2.0 ** -7)
    t.assign(keys, np.full((n_keys, dim), base, np.float32))
    g = np.full((n_keys, dim), -(ulp / 4), np.float32)  # v - g = 1 + ulp/4
    t.apply_gradients(keys, g)
    got = t.lookup(keys)
    assert set(np.unique(got).tolist()) <= {1.0, float(base + ulp)}
    up = float((got > 1.0).mean())
    assert abs(up - 0.25) < 0.02, up
    # the mean of the stored values is the exact result, within the same bound
    assert abs(float(got.astype(np.float64).mean()) - (1.0 + ulp / 4)) < 0.02 * ulp


def test_fp16_training_follows_fp32_training():
    """A few Adagrad steps on fp16 rows stay within fp16 resolution of the
    same steps on fp32 rows (the optimizer state is fp32 in both)."""
    rng = np.random.default_rng(3)
    t16 = el.EmbeddingTable(16, row_type="fp16", optimizer=el.optim.Adagrad(lr=0.01))
    t32 = el.EmbeddingTable(16, optimizer=el.optim.Adagrad(lr=0.01))
    keys = np.arange(200, dtype=np.int64)
    x = q.dequantize_rows(q.quantize_rows(rng.uniform(-1, 1, (200, 16)).astype(np.float32), "fp16"), "fp16", 16)
    t16.assign(keys, x)
    t32.assign(keys, x)
    for _ in range(10):
        k = rng.integers(0, 200, 400).astype(np.int64)
        g = rng.standard_normal((400, 16)).astype(np.float32)
        t16.apply_gradients(k, g)
        t32.apply_gradients(k, g)
    d = np.abs(t16.lookup(keys) - t32.lookup(keys))
    assert d.max() <= 10 * 2.0 ** -11 * 2  # at most ~one fp16 ulp per step at |w| < 2
    assert d.max() > 0  # the rows really are fp16
    # optimizer state is fp32 beside the fp16 row: as many floats as an fp32 table's
    np.testing.assert_allclose(t16._t.export_state(keys), t32._t.export_state(keys), rtol=0.05)


@pytest.mark.parametrize("kind", TYPES)
def test_frequency_relayout_and_eviction_keep_compressed_rows(kind):
    """Relayout moves rows as stored (values unchanged); evicted rows come out
    as their stored values in fp32."""
    t = el.FrequencyTable(16, row_type=kind, budget_rows=500)
    keys = np.arange(400, dtype=np.int64)
    x = np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)
    t.assign(keys, x)
    stored = ref.dequantize_rows(ref.quantize_rows(x, kind), kind, 16)
    rng = np.random.default_rng(1)
    for _ in range(5):
        t.lookup(keys[rng.zipf(1.3, 1000) % 400])
    t.relayout()
    k, r = t.export()
    np.testing.assert_array_equal(k, keys)
    np.testing.assert_array_equal(r, stored)
    t.lookup(np.arange(1000, 1300, dtype=np.int64))  # past the budget: the coldest rows leave
    ev = t.take_evicted()
    assert len(ev["keys"]) > 0
    np.testing.assert_array_equal(ev["rows"], stored[ev["keys"]])
    k, r = t.export()
    old = k < 400
    np.testing.assert_array_equal(r[old], stored[k[old]])


@pytest.mark.parametrize("kind", TYPES)
def test_rows_through_the_file_tier(kind, tmp_path):
    """A tier asked for fp32 rows under a compressed table (row_type named:
    the explicit conversion): written back decoded, promoted encoded again:
    exact for fp16 / bf16, within the int types' error bound (scale / 2 of the
    stored row, plus float32 rounding) for int8 / int4. (A tier of the table's
    own row type: test_tier_row_types.py.)"""
    tier = el.storage.FileTier(str(tmp_path / "t.tier"), 4096, dim=16, row_type="fp32")
    t = el.EmbeddingTable(16, row_type=kind, tier=tier, memory_rows=100)
    keys = np.arange(300, dtype=np.int64)
    x = np.random.default_rng(2).standard_normal((300, 16)).astype(np.float32)
    t.assign(keys, x)  # rows past memory_rows are written back
    assert len(tier) > 0
    raw = ref.quantize_rows(x, kind)
    stored = ref.dequantize_rows(raw, kind, 16)
    got = t.lookup(keys)  # promotes tier rows again
    if kind in ("fp16", "bf16"):
        np.testing.assert_array_equal(got, stored)
    else:
        scale = raw[:, -8:-4].copy().view(np.float32)[:, 0]
        assert (np.abs(got - stored) <= scale[:, None] / 2 + 4e-7 * np.abs(stored).max()).all()
    k, r = t.export()
    np.testing.assert_array_equal(k, keys)
