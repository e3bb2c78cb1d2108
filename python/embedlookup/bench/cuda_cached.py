"""GPU benchmark of CachedCudaTable (rows in pinned host memory, hot rows in
HBM): a table ``ratio`` times the HBM budget, Zipf(``alpha``) keys, pooled
sum at several batch sizes, against the same rows all in HBM (CudaTable,
``insert=False, check=False``) in the same run; plus the cache's hit ratio
beside the static oracle (the ``hbm_rows`` most frequent keys of the stream
held from the start) and the training step (apply_gradients, SGD).

    python -c "import torch; from embedlookup.bench.cuda_cached import main; main()" \\
        [--hbm-rows 2000000] [--ratio 4] [--dim 64] [--pooling 32] [--batches 4096,16384,65536] [--json out.json]

Effective bytes = keys x dim x 4; copy bandwidth = device-to-device copy
(bytes read + written). The cached figures are end to end (host plan, copies,
kernel; synchronised per call); medians of ``repeats`` calls after ``warm``
calls (at least 4x hbm_rows keys) that fill the cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from .cuda_table import copy_bandwidth


def _zipf(rng, n_rows, n, alpha, perm):
    # Inverse-CDF sampling over ranks 1..n_rows; perm scatters the ranks over the keys
    # (the hottest keys are not the first inserted).
    ranks = np.arange(1, n_rows + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -alpha)
    cdf /= cdf[-1]
    return lambda: perm[np.searchsorted(cdf, rng.random(n))]


def _timed(torch, fn, repeats):
    t = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def run(hbm_rows=2_000_000, ratio=4, dim=64, pooling=32, batches=(4096, 16384, 65536), alpha=1.05, warm=8,
        repeats=7, seed=0):
    import torch

    import embedlookup as el
    from embedlookup.cuda import CachedCudaTable, CudaTable

    rows = hbm_rows * ratio
    rng = np.random.default_rng(seed)
    print(f"[cached] {rows} rows x {dim} (HBM budget {hbm_rows} rows), Zipf {alpha}", flush=True)
    init = el.init.uniform(-0.1, 0.1, seed=1)
    full = CudaTable(dim, initializer=init, expected_rows=rows)
    all_keys = torch.arange(rows, dtype=torch.int64, device="cuda")
    for k in all_keys.split(1 << 22):
        full.lookup(k)  # insert every row
    cached = CachedCudaTable(dim, hbm_rows=hbm_rows, host_rows=rows, initializer=init, optimizer=el.optim.SGD(lr=0.01),
                             half_life=50.0)
    for k in np.array_split(np.arange(rows, dtype=np.int64), max(1, rows >> 22)):
        cached.lookup(k, insert=True)  # every row in host memory; the cache fills by the stream below
    perm = rng.permutation(rows).astype(np.int64)
    copy_bw = copy_bandwidth(torch)
    print(f"[cached] device copy bandwidth {copy_bw / 1e9:.0f} GB/s", flush=True)
    results = []
    for b in batches:
        n = b * pooling
        draw = _zipf(rng, rows, n, alpha, perm)
        off = np.arange(0, n, pooling, dtype=np.int64)
        d_off = torch.from_numpy(off).cuda()
        cached.hits = cached.misses = 0
        for _ in range(max(warm, -(-4 * hbm_rows // n))):  # at least 4x the slots in accesses
            cached.pooled_lookup(draw(), off)
        cached.hits = cached.misses = 0
        stream = [draw() for _ in range(repeats)]
        it = iter(stream)
        t_cached = _timed(torch, lambda: cached.pooled_lookup(next(it), off), repeats)
        hit = cached.hits / max(1, cached.hits + cached.misses)
        counts = np.bincount(np.concatenate(stream), minlength=rows)
        oracle = np.sort(counts)[::-1][:hbm_rows].sum() / counts.sum()
        it = iter([torch.from_numpy(s).cuda() for s in stream])
        t_full = _timed(torch, lambda: full.pooled_lookup(next(it), d_off, insert=False, check=False), repeats)
        g = torch.ones(n, dim, device="cuda")
        it = iter(stream)
        t_train = _timed(torch, lambda: cached.apply_gradients(next(it), g), min(3, repeats))
        nbytes = n * dim * 4
        r = {"batch": b, "pooling": pooling, "cached_GBps": nbytes / t_cached / 1e9,
             "cached_pct_copy": 100 * nbytes / t_cached / copy_bw, "all_in_hbm_GBps": nbytes / t_full / 1e9,
             "all_in_hbm_pct_copy": 100 * nbytes / t_full / copy_bw, "cached_over_all_in_hbm": t_full / t_cached,
             "hit_ratio": hit, "static_oracle_hit_ratio": float(oracle),
             "train_step_GBps": 2 * nbytes / t_train / 1e9}
        results.append(r)
        print(f"[cached] batch {b}: cached {r['cached_GBps']:.0f} GB/s ({r['cached_pct_copy']:.1f}% copy), all in HBM "
              f"{r['all_in_hbm_GBps']:.0f} GB/s -> {r['cached_over_all_in_hbm']:.2f}x; hit {hit:.3f} vs static "
              f"oracle {oracle:.3f}; train step {r['train_step_GBps']:.0f} GB/s", flush=True)
    return {"device": torch.cuda.get_device_name(), "rows": rows, "hbm_rows": hbm_rows, "dim": dim, "alpha": alpha,
            "copy_bandwidth_GBps": copy_bw / 1e9, "results": results}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hbm-rows", type=int, default=2_000_000)
    ap.add_argument("--ratio", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--pooling", type=int, default=32)
    ap.add_argument("--batches", default="4096,16384,65536")
    ap.add_argument("--alpha", type=float, default=1.05)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = run(a.hbm_rows, a.ratio, a.dim, a.pooling, tuple(int(x) for x in a.batches.split(",")), a.alpha)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
