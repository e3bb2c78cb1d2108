"""Workload generation: distributions, determinism, key/row correspondence, parsing."""

import numpy as np
import pytest
from embedlookup.bench import WORKLOADS, Workload, WorkloadData, WorkloadError, parse_workload
from embedlookup.bench.workloads import draw_ranks, mix_keys, zipf_pmf


def test_zipf_frequencies_match_the_analytic_distribution():
    w = Workload(dist="zipf", alpha=1.1, rows=50, dim=4)
    n = 400_000
    r = draw_ranks(np.random.default_rng(3), n, w)
    freq = np.bincount(r, minlength=50) / n
    # analytic: P(k) = (k+1)^-1.1 / H, computed here independently of zipf_pmf
    p = np.array([(k + 1) ** -1.1 for k in range(50)])
    p /= p.sum()
    sigma = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) < 5 * sigma + 1e-12)
    assert np.allclose(zipf_pmf(50, 1.1), p)


def test_uniform_frequencies_are_flat():
    w = Workload(dist="uniform", rows=20, dim=4)
    n = 200_000
    freq = np.bincount(draw_ranks(np.random.default_rng(1), n, w), minlength=20) / n
    assert np.all(np.abs(freq - 0.05) < 5 * np.sqrt(0.05 * 0.95 / n))


def test_keys_limits_the_ranks_drawn():
    w = Workload(dist="zipf", rows=1000, keys=10, dim=4)
    r = draw_ranks(np.random.default_rng(0), 10_000, w)
    assert r.min() >= 0 and r.max() < 10


def test_mix_keys_are_distinct_and_seeded():
    a, b = mix_keys(100_000, 0), mix_keys(100_000, 1)
    assert np.unique(a).size == a.size
    assert a.dtype == np.int64 and not np.array_equal(a, b)
    assert np.array_equal(a, mix_keys(100_000, 0))


def _small(**kw):
    return parse_workload(["small", *(f"{k}={v}" for k, v in kw.items())])


def test_generation_is_deterministic_by_seed():
    a, b, c = (WorkloadData.generate(_small(seed=s, threads=1)) for s in (5, 5, 6))
    for x, y in zip(a.batches, b.batches):
        assert np.array_equal(x.keys, y.keys) and np.array_equal(x.grad, y.grad)
    assert np.array_equal(a.dense, b.dense)
    assert not np.array_equal(a.batches[0].keys, c.batches[0].keys)


def test_dense_rows_are_the_tables_rows_and_batches_are_consistent():
    d = WorkloadData.generate(_small(threads=1))
    w = d.workload
    keys, rows = d.table.export()
    order = np.argsort(d.keys)
    assert np.array_equal(keys, d.keys[order]) and np.array_equal(rows, d.dense[order])
    for b in d.batches:
        assert np.array_equal(b.keys, d.keys[b.idx])
        assert b.keys.shape == (w.batch * w.pooling,) and b.grad.shape == (w.batch, w.dim)
        assert np.array_equal(b.offsets_full[:-1], b.offsets) and b.offsets_full[-1] == b.keys.size
        assert b.distinct == np.unique(b.keys).size
    t = d.fresh_table()
    assert np.array_equal(t.lookup(d.keys), d.dense)


def test_zipf_hot_keys_are_scattered_over_the_table():
    d = WorkloadData.generate(parse_workload(["small-zipf", "threads=1"]))
    counts = np.bincount(np.concatenate([b.idx for b in d.batches]), minlength=d.workload.rows)
    hottest = np.argsort(counts)[::-1][:5]
    assert not np.array_equal(np.sort(hottest), np.arange(5))


def test_parse_names_and_overrides():
    w = parse_workload(["zipf-1m", "alpha=1.3", "rows=1e5", "dim=32"])
    assert (w.dist, w.alpha, w.rows, w.dim, w.batch) == ("zipf", 1.3, 100_000, 32, 4096)
    assert w.name.startswith("zipf-1m:")
    w = parse_workload("dist=zipf,rows=2000,name=mine")
    assert (w.name, w.dist, w.rows, w.dim) == ("mine", "zipf", 2000, 64)
    assert parse_workload("uniform-1m") == WORKLOADS["uniform-1m"]


@pytest.mark.parametrize(
    "tokens, match",
    [
        (["nosuch"], "unknown workload 'nosuch'"),
        (["small", "colour=red"], "unknown workload parameter 'colour'"),
        (["small", "rows=abc"], "rows='abc' is not a valid int"),
        (["small", "rows=1.5"], "rows='1.5' is not a valid int"),
        (["small", "rows=0"], "rows must be a positive integer"),
        (["small", "dist=normal"], "dist must be 'uniform' or 'zipf'"),
        (["small", "alpha=-1"], "alpha must be a finite number > 0"),
        (["small", "keys=20000"], "keys must be in"),
        (["small", "dtype=float16"], "dtype 'float16' is not supported"),
        (["small", "small-zipf"], "two names given"),
    ],
)
def test_parse_errors_name_the_problem(tokens, match):
    with pytest.raises(WorkloadError, match=match):
        parse_workload(tokens)


def test_dense_rows_start_on_a_cache_line():
    # a 64-byte row at a random 16-byte offset would straddle two cache lines
    for seed in range(3):
        d = WorkloadData.generate(_small(threads=1, seed=seed))
        assert d.dense.ctypes.data % 64 == 0
