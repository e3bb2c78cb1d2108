"""The client's native helpers for its trainer-side cache: distinct_keys
(against np.unique) and pool_rows (against a NumPy EmbeddingBag over a
dense matrix and torch.nn.functional.embedding_bag)."""

import numpy as np
import pytest

from embedlookup import _core

SUM, MEAN, MAX = 0, 1, 2


@pytest.mark.parametrize("case", ["uniform", "zipf", "empty", "one", "extremes"])
def test_distinct_keys_match_numpy_unique(case):
    rng = np.random.default_rng(7)
    keys = {"uniform": lambda: rng.integers(0, 5000, 40000),
            "zipf": lambda: rng.zipf(1.1, 30000).astype(np.int64) * 7919 - 100,
            "empty": lambda: np.zeros(0, np.int64),
            "one": lambda: np.full(1000, -3, np.int64),
            "extremes": lambda: np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max, 0, -1] * 3)}[case]()
    keys = np.ascontiguousarray(keys, np.int64)
    uk, inv, counts = _core.distinct_keys(keys)
    ref_u, ref_first, ref_counts = np.unique(keys, return_index=True, return_counts=True)
    order = np.argsort(ref_first, kind="stable")  # first-occurrence order
    np.testing.assert_array_equal(uk, ref_u[order])
    np.testing.assert_array_equal(counts, ref_counts[order])
    np.testing.assert_array_equal(uk[inv], keys)


def _ref_pool(rows, idx, off, n_bags, mode, w):
    out = np.zeros((n_bags, rows.shape[1]), np.float32)
    ends = list(off[1:n_bags]) + [idx.shape[0]]
    for b in range(n_bags):
        sel = slice(off[b], ends[b])
        r = rows[idx[sel]].astype(np.float64)
        if r.shape[0] == 0:
            continue
        if w is not None:
            r = r * w[sel, None]
        out[b] = r.max(0) if mode == MAX else r.sum(0) / (r.shape[0] if mode == MEAN else 1)
    return out


# weights only with sum (EmbeddingBag semantics; the client refuses them with mean and max)
@pytest.mark.parametrize("mode,weighted", [(SUM, False), (SUM, True), (MEAN, False), (MAX, False)])
@pytest.mark.parametrize("last_offset", [False, True])
def test_pool_rows_matches_a_dense_embedding_bag(mode, weighted, last_offset):
    rng = np.random.default_rng(mode * 4 + weighted * 2 + last_offset)
    wide = rng.standard_normal((300, 13)).astype(np.float32)
    rows = wide[:, :11]  # a view: rows contiguous, row stride 13 (the cache's rows beside their stamps)
    lengths = rng.integers(0, 7, 40)
    lengths[[0, 5, 39]] = 0  # empty bags, first and last among them
    off = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n = int(lengths.sum())
    idx = rng.integers(0, 300, n).astype(np.int64)
    w = rng.uniform(0.1, 2.0, n).astype(np.float32) if weighted else None
    given = np.append(off, n) if last_offset else off
    got = _core.pool_rows(rows, idx, given, 40, mode, w, 2)
    np.testing.assert_allclose(got, _ref_pool(rows, idx, off, 40, mode, w), rtol=1e-5, atol=1e-6)
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.embedding_bag(torch.from_numpy(idx), torch.from_numpy(np.ascontiguousarray(rows)),
                                            torch.from_numpy(off), mode=["sum", "mean", "max"][mode],
                                            per_sample_weights=None if w is None else torch.from_numpy(w))
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_pool_rows_refuses_bad_input():
    rows = np.ones((4, 3), np.float32)
    idx = np.array([0, 1, 4], np.int64)
    off = np.array([0, 2], np.int64)
    with pytest.raises(ValueError, match="idx"):
        _core.pool_rows(rows, idx, off, 2, SUM, None, 1)
    with pytest.raises(ValueError, match="offsets"):
        _core.pool_rows(rows, idx[:2], np.array([0, 3], np.int64), 2, SUM, None, 1)
    with pytest.raises(ValueError, match="offsets"):
        _core.pool_rows(rows, idx[:2], off, 5, SUM, None, 1)
    with pytest.raises(ValueError, match="weights"):
        _core.pool_rows(rows, idx[:2], off, 2, SUM, np.ones(3, np.float32), 1)
    with pytest.raises(ValueError, match="mode"):
        _core.pool_rows(rows, idx[:2], off, 2, 3, None, 1)
    with pytest.raises(ValueError, match="rows"):
        _core.pool_rows(np.ones((4, 6), np.float32)[:, ::2], idx[:2], off, 2, SUM, None, 1)
