"""pooled_lookup against the NumPy oracle and torch.nn.EmbeddingBag."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedlookup as el
from reference import pooled

MODES = ["sum", "mean", "max"]


def table_with_rows(dim, keys, seed=0):
    """A table whose rows for `keys` are known random values."""
    t = el.EmbeddingTable(dim, initializer=el.init.zeros())
    rows = np.random.default_rng(seed).standard_normal((len(keys), dim)).astype(np.float32)
    t.assign(keys, rows)
    return t, dict(zip(keys.tolist(), rows))


def gathered(rowmap, values, dim):
    return np.stack([rowmap[k] for k in values.tolist()]) if len(values) else np.zeros((0, dim), np.float32)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dim", [1, 8, 13, 64, 136])
def test_modes_with_empty_bags_and_duplicates(mode, dim):
    keys = np.array([3, -4, 10**15, 7, 8], dtype=np.int64)
    t, rowmap = table_with_rows(dim, keys)
    values = np.array([3, 3, -4, 7, 10**15, 8, 8, 8, 3], dtype=np.int64)
    offsets = np.array([0, 2, 2, 5, 5, 9], dtype=np.int64)  # bags 1, 3 and the last are empty
    out = t.pooled_lookup(values, offsets, mode=mode)
    ref = pooled(gathered(rowmap, values, dim), offsets, mode)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert np.all(out[[1, 3, 5]] == 0)


def test_weights_and_include_last_offset():
    keys = np.arange(6, dtype=np.int64) * 11
    t, rowmap = table_with_rows(4, keys)
    values = keys[[0, 1, 2, 5, 5, 3]]
    w = np.array([0.5, -1, 2, 3, 0.25, 1], np.float32)
    offsets = np.array([0, 3, 3, 6], dtype=np.int64)
    out = t.pooled_lookup(values, offsets, "sum", per_sample_weights=w, include_last_offset=True)
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out, pooled(gathered(rowmap, values, 4), offsets, "sum", w, True), rtol=1e-6)
    hand = 0.5 * rowmap[0] - rowmap[11] + 2 * rowmap[22]
    np.testing.assert_allclose(out[0], hand, rtol=1e-6)


def test_two_dimensional_input_is_fixed_length_bags():
    keys = np.arange(12, dtype=np.int64)
    t, rowmap = table_with_rows(8, keys)
    values = keys.reshape(4, 3)
    out = t.pooled_lookup(values, mode="mean")
    np.testing.assert_allclose(out, np.stack([np.mean([rowmap[k] for k in r], 0) for r in values.tolist()]),
                               rtol=1e-6)


def test_missing_keys_with_insert_false_are_zero_rows():
    keys = np.array([1, 2], dtype=np.int64)
    t, rowmap = table_with_rows(4, keys)
    values = np.array([1, 99, 2, 98], dtype=np.int64)
    offsets = np.array([0, 2], dtype=np.int64)
    z = np.zeros(4, np.float32)
    for mode in MODES:
        out = t.pooled_lookup(values, offsets, mode, insert=False)
        ref = pooled(np.stack([rowmap[1], z, rowmap[2], z]), offsets, mode)
        np.testing.assert_allclose(out, ref, rtol=1e-6)
    assert len(t) == 2


def test_insert_true_adds_missing_keys_with_their_initial_rows():
    t = el.EmbeddingTable(4, initializer=el.init.uniform(seed=9))
    values = np.array([5, 6, 5], dtype=np.int64)
    out = t.pooled_lookup(values, np.array([0], np.int64))
    np.testing.assert_allclose(out[0], t.lookup(values).sum(0), rtol=1e-6)
    assert len(t) == 2


@pytest.mark.parametrize("mode", MODES)
def test_matches_torch_embedding_bag(mode):
    torch = pytest.importorskip("torch")
    n, dim = 1000, 32
    keys = np.random.default_rng(1).permutation(10**6)[:n].astype(np.int64) * 13
    t, _ = table_with_rows(dim, keys, seed=3)
    weight = torch.from_numpy(t.lookup(keys))
    rng = np.random.default_rng(2)
    lengths = rng.integers(0, 9, size=300)
    idx = rng.integers(0, n, size=lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    w = rng.standard_normal(len(idx)).astype(np.float32) if mode == "sum" else None
    ref = torch.nn.functional.embedding_bag(
        torch.from_numpy(idx), weight, torch.from_numpy(offsets), mode=mode,
        per_sample_weights=None if w is None else torch.from_numpy(w))
    out = t.pooled_lookup(keys[idx], offsets, mode, per_sample_weights=w)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=0, max_size=40),
    dim=st.sampled_from([1, 3, 8, 16, 24, 64, 72]),
    mode=st.sampled_from(MODES),
    weighted=st.booleans(),
    last=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_random_jagged_batches(lengths, dim, mode, weighted, last, seed):
    rng = np.random.default_rng(seed)
    universe = rng.integers(-(2**62), 2**62, size=20)
    t, rowmap = table_with_rows(dim, np.unique(universe), seed=seed)
    values = rng.choice(np.unique(universe), size=sum(lengths)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if not last:
        offsets = offsets[:-1]
    w = rng.standard_normal(len(values)).astype(np.float32) if (weighted and mode == "sum") else None
    out = t.pooled_lookup(values, offsets, mode, per_sample_weights=w, include_last_offset=last)
    ref = pooled(gathered(rowmap, values, dim), offsets, mode, w, last)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_large_batch_across_threads_matches_oracle():
    # Large enough for the OpenMP split by key positions, with skewed bag sizes.
    keys = np.arange(5000, dtype=np.int64) * 3
    t, rowmap = table_with_rows(64, keys, seed=4)
    rng = np.random.default_rng(5)
    lengths = np.where(rng.random(3000) < 0.05, 200, rng.integers(0, 6, 3000))
    values = keys[rng.integers(0, len(keys), lengths.sum())]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    all_rows = t.lookup(keys)
    pos = {k: i for i, k in enumerate(keys.tolist())}
    g = all_rows[[pos[k] for k in values.tolist()]]
    for mode in MODES:
        np.testing.assert_allclose(t.pooled_lookup(values, offsets, mode), pooled(g, offsets, mode),
                                   rtol=1e-4, atol=1e-4)
