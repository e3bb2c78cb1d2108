"""Keys resolved ahead of the lookup: EmbeddingTable.resolve(keys) then
pooled_lookup(..., resolved=...) reads the rows by id. Checked against the
NumPy reference (rows read back with find) and against the probing lookup,
for every row type, pooling mode and both kernel paths (register and runtime
dims), and for the cases where the ids go stale."""

import numpy as np
import pytest

import embedlookup as el
from reference import pooled

TYPES = ["fp32", "fp16", "bf16", "int8", "int4"]


def _table(dim, row_type="fp32", threads=1, **kw):
    return el.EmbeddingTable(dim, row_type=row_type, num_threads=threads,
                             initializer=el.init.uniform(-0.5, 0.5, seed=5), **kw)


def _bags(rng, n_keys, bags, pooling, ragged=False):
    # Keys drawn from a vocabulary of n_keys ids spread over int64; more keys
    # than the kernels' chunk (4096) and prefetch distances, so chunk starts,
    # steady state and tails are all exercised.
    vocab = rng.integers(-(2**62), 2**62, n_keys)
    if ragged:
        lens = rng.integers(0, 2 * pooling, bags)
    else:
        lens = np.full(bags, pooling)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    values = vocab[rng.integers(0, n_keys, int(lens.sum()))]
    return vocab, values, offsets


@pytest.mark.parametrize("row_type", TYPES)
@pytest.mark.parametrize("dim", [64, 40])
@pytest.mark.parametrize("threads", [1, 2])
def test_resolved_lookup_equals_the_reference_and_the_probing_lookup(row_type, dim, threads):
    rng = np.random.default_rng(dim + threads)
    t = _table(dim, row_type, threads)
    vocab, values, offsets = _bags(rng, 3000, 700, 20, ragged=True)
    t.lookup(vocab)  # every key has a row
    weights = rng.random(values.shape[0]).astype(np.float32)
    rows = t.find(values)[0]  # decoded rows, the reference's input
    r = t.resolve(values)
    assert r.ids.shape == values.shape and r.ids.dtype == np.uint32
    for mode, w in [("sum", None), ("sum", weights), ("mean", None), ("max", None)]:
        got = t.pooled_lookup(values, offsets, mode=mode, per_sample_weights=w, resolved=r)
        # the same kernel reading the same rows in the same order: bit for bit
        np.testing.assert_array_equal(got, t.pooled_lookup(values, offsets, mode=mode, per_sample_weights=w))
        np.testing.assert_allclose(got, pooled(rows, offsets, mode, w), rtol=2e-5, atol=2e-5)


def test_resolve_inserts_like_a_lookup_and_ids_are_read_only():
    t = _table(16)
    keys = np.array([7, 3, 7, 11], dtype=np.int64)
    r = t.resolve(keys)
    assert len(t) == 3
    assert r.ids[0] == r.ids[2] and len(set(r.ids.tolist())) == 3
    with pytest.raises(ValueError):
        r.ids[0] = 1  # a forged id could name a row outside the table
    out = t.pooled_lookup(keys, np.array([0, 2]), resolved=r)
    rows = t.find(keys)[0]
    np.testing.assert_allclose(out, pooled(rows, np.array([0, 2]), "sum"), rtol=1e-6)


def test_stale_ids_after_an_erase_are_resolved_again():
    rng = np.random.default_rng(1)
    t = _table(32)
    vocab, values, offsets = _bags(rng, 500, 300, 16)
    t.lookup(vocab)
    r = t.resolve(values)
    victim = values[5]
    t.erase(np.array([victim]))
    # The erase freed a row (the layout epoch moved): the lookup resolves
    # again, so the victim reads as missing, never as its freed row.
    got = t.pooled_lookup(values, offsets, insert=False, resolved=r)
    rows, found = t.find(values)
    assert not found[values == victim].any()
    np.testing.assert_allclose(got, pooled(rows, offsets, "sum"), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, t.pooled_lookup(values, offsets, insert=False))


def test_ids_of_keys_missing_when_resolved_are_not_trusted():
    t = _table(8)
    keys = np.array([1, 2, 3], dtype=np.int64)
    t.lookup(keys[:2])
    r = t.resolve(keys, insert=False)
    assert len(t) == 2 and r.ids[2] == el._core.NO_ROW  # not inserted
    row3 = np.full((1, 8), 0.25, np.float32)
    t.assign(keys[2:], row3)  # inserted after the resolution, same layout epoch
    off = np.array([0], dtype=np.int64)
    got = t.pooled_lookup(keys, off, insert=False, resolved=r)
    np.testing.assert_allclose(got, t.find(keys)[0].sum(0, keepdims=True), rtol=1e-6)
    assert got[0, 0] != t.find(keys[:2])[0].sum(0)[0]  # key 3's row counted
    # The backward with these ids resolves again instead of calling key 3 missing.
    twin = _table(8)
    twin.lookup(keys[:2])
    twin.assign(keys[2:], row3)
    opt = el.optim.SGD(lr=0.5)
    g = np.ones((1, 8), np.float32)
    t.apply_pooled_gradients(keys, off, g, opt, forward_ids=r)
    twin.apply_pooled_gradients(keys, off, g, opt)
    np.testing.assert_array_equal(t.export()[1], twin.export()[1])


def test_training_step_with_resolved_ids_equals_the_probing_step():
    rng = np.random.default_rng(3)
    opt = el.optim.Adagrad(lr=0.1)
    t, plain = _table(16, optimizer=opt), _table(16, optimizer=opt)
    for _ in range(4):
        vocab, values, offsets = _bags(rng, 200, 64, 8)
        grad = rng.standard_normal((64, 16)).astype(np.float32)
        r = t.resolve(values)  # the input stage: inserts new keys now
        out, fwd = t.pooled_lookup(values, offsets, resolved=r, return_ids=True)
        assert fwd is r
        np.testing.assert_array_equal(out, plain.pooled_lookup(values, offsets))
        t.apply_pooled_gradients(values, offsets, grad, forward_ids=fwd)
        plain.apply_pooled_gradients(values, offsets, grad)
    np.testing.assert_array_equal(t.export()[0], plain.export()[0])
    np.testing.assert_array_equal(t.export()[1], plain.export()[1])


def test_bad_resolved_arguments_raise_and_change_nothing():
    t, other = _table(8), _table(8)
    keys = np.array([1, 2, 3, 4], dtype=np.int64)
    off = np.array([0, 2], dtype=np.int64)
    r = t.resolve(keys)
    before = t.export()
    with pytest.raises(ValueError, match="resolved: values differ"):
        t.pooled_lookup(keys[::-1].copy(), off, resolved=r)
    with pytest.raises(ValueError, match="resolved: they come from another table"):
        other.pooled_lookup(keys, off, resolved=r)
    with pytest.raises(TypeError, match="resolved must be what .*resolve"):
        t.pooled_lookup(keys, off, resolved=r.ids)
    with pytest.raises(TypeError, match="keys must hold integers"):
        t.resolve(np.array([1.5, 2.0]))
    after = t.export()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert len(other) == 0


def test_frequency_table_does_not_offer_resolution_ahead():
    ft = el.FrequencyTable(8, budget_rows=100)
    with pytest.raises(NotImplementedError, match="EmbeddingTable.resolve"):
        ft.resolve(np.array([1, 2], dtype=np.int64))
    assert len(ft) == 0


def test_stale_resolution_hands_the_backward_the_ids_it_used():
    # After an erase the given ids are stale: the lookup resolves again and
    # returns those fresh ids (not the stale ones) for the backward.
    rng = np.random.default_rng(5)
    opt = el.optim.SGD(lr=0.5)
    t, twin = _table(16, optimizer=opt), _table(16, optimizer=opt)
    vocab, values, offsets = _bags(rng, 300, 40, 8)
    t.lookup(vocab)
    twin.lookup(vocab)
    r = t.resolve(values)
    for tab in (t, twin):
        tab.erase(values[:1])
    out, fwd = t.pooled_lookup(values, offsets, resolved=r, return_ids=True)
    assert fwd is not r and fwd.epoch != r.epoch
    np.testing.assert_array_equal(out, twin.pooled_lookup(values, offsets))  # the erased key reinserted in both
    grad = rng.standard_normal((40, 16)).astype(np.float32)
    t.apply_pooled_gradients(values, offsets, grad, forward_ids=fwd)
    twin.apply_pooled_gradients(values, offsets, grad)
    np.testing.assert_array_equal(t.export()[0], twin.export()[0])
    np.testing.assert_array_equal(t.export()[1], twin.export()[1])


def test_keys_passed_again_skip_the_compare_and_other_views_do_not():
    # The keys' own memory (another view or a tensor of it) is taken as the
    # resolved keys; any other array is compared element by element.
    t = _table(8)
    base = np.arange(16, dtype=np.int64) * 3
    keys = base[:8]
    off = np.array([0, 4], dtype=np.int64)
    r = t.resolve(keys)
    expected = pooled(t.find(keys)[0], off, "sum")
    np.testing.assert_allclose(t.pooled_lookup(keys.view(), off, resolved=r), expected, rtol=1e-6)
    np.testing.assert_allclose(t.pooled_lookup(keys.copy(), off, resolved=r), expected, rtol=1e-6)  # equal keys
    for other in (base[8:], base[::2], base[:8].astype(np.int32)):  # same length, other memory / layout / dtype
        if not np.array_equal(other, keys):
            with pytest.raises(ValueError, match="resolved: values differ"):
                t.pooled_lookup(other, off, resolved=r)
