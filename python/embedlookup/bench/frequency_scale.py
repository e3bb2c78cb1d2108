"""Frequency-aware table benchmarks at scale (``FrequencyTable``).

Zipf part, per alpha: a universe of ``--keys`` distinct int64 keys (default
10 M) of 64-dim rows, batches of 4096 bags x 32 keys drawn by Zipf rank and
mapped to keys through a random permutation (so hot keys are scattered in
both tables before relayout). Reports, from interleaved repeats in one run:

- pooled lookup (sum) on the table before and after relayout vs
  ``torch.nn.EmbeddingBag`` over the same rows with dense indices;
- relayout time and its longest single pause (one ``relayout_step`` chunk);
- hot-region hit ratio (hot region = 10% of rows) vs an oracle that knows the
  true top-10% keys;
- bytes of overhead (index + metadata) per row vs the row.

Drift part: the popular set changes every phase; the table keeps a budget of
20% of the stream's distinct keys (LFU, admission after 2 sightings) and is
trained every step. Reports, per phase, the share of lookups served by rows
trained in an earlier step (hits), over the phase's second half.

    PYTHONPATH=python python3 bench/bench_frequency.py --part all --json /tmp/freq.json
    python3 -m embedlookup.bench.frequency_scale --part all     # the same, installed

``docs/data/frequency.json`` holds the figures docs/frequency.md quotes.

Memory: about 2 x keys x 256 B (table + the torch copy) + 0.1 GB per M keys.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import embedlookup as el

from .machine import torch_huge_pages

DIM, BAGS, POOL = 64, 4096, 32


def zipf_cdf(n: int, alpha: float) -> np.ndarray:
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -alpha)
    cdf /= cdf[-1]
    return cdf


def sample_ranks(cdf: np.ndarray, m: int, rng) -> np.ndarray:
    # Sorted uniforms make the binary searches walk the CDF in order (cache
    # friendly); the shuffle restores independent order.
    r = np.minimum(np.searchsorted(cdf, np.sort(rng.random(m))), cdf.size - 1).astype(np.int64)
    rng.shuffle(r)
    return r


def fill_rows(lo: int, hi: int) -> np.ndarray:
    # Deterministic per chunk so the torch weight and the table hold the same rows.
    return np.random.default_rng(lo).standard_normal((hi - lo, DIM), dtype=np.float32)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def zipf_part(alpha: float, n: int, warmup: int, evals: int, repeats: int, threads: int, chunk: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(int(alpha * 1000))
    perm = rng.permutation(n).astype(np.int64)  # rank -> key; key k is row k in torch
    cdf = zipf_cdf(n, alpha)
    t = el.FrequencyTable(DIM, half_life=1e9, hot_fraction=0.1, num_threads=threads)
    weight = torch.empty((n, DIM), dtype=torch.float32)
    step = 1 << 20
    t0 = time.perf_counter()
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        rows = fill_rows(lo, hi)
        t.assign(np.arange(lo, hi, dtype=np.int64), rows)
        weight[lo:hi] = torch.from_numpy(rows)
    populate_s = time.perf_counter() - t0
    emb = torch.nn.EmbeddingBag.from_pretrained(weight, mode="sum", freeze=True)
    offsets = np.arange(0, BAGS * POOL, POOL, dtype=np.int64)
    toff = torch.from_numpy(offsets)
    out = np.empty((BAGS, DIM), np.float32)

    t0 = time.perf_counter()
    for _ in range(warmup):  # training lookups build the scores
        t.pooled_lookup(perm[sample_ranks(cdf, BAGS * POOL, rng)], offsets, train=True, out=out)
    warmup_s = time.perf_counter() - t0
    eval_ranks = [sample_ranks(cdf, BAGS * POOL, rng) for _ in range(evals)]
    eval_keys = [perm[r] for r in eval_ranks]
    # Training-lookup timings use their own batches: training on the measured
    # batches would teach the table the evaluation keys.
    train_keys = [[perm[sample_ranks(cdf, BAGS * POOL, rng)] for _ in range(evals)] for _ in range(2)]
    eval_t = [torch.from_numpy(k) for k in eval_keys]
    oracle = float(np.mean(np.concatenate(eval_ranks) < int(0.1 * n)))

    # Correctness: same pooled rows as torch.
    with torch.no_grad():
        ref = emb(eval_t[0], toff).numpy()
    t.pooled_lookup(eval_keys[0], offsets, train=False, out=out)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)

    def measure(label, train_batches):
        ours, ref_t, ours_train = [], [], []
        s0 = t.stats()
        for _ in range(repeats):
            for k, tk in zip(eval_keys, eval_t):
                ours.append(timed(lambda: t.pooled_lookup(k, offsets, train=False, out=out)))
                with torch.no_grad():
                    ref_t.append(timed(lambda: emb(tk, toff)))
        s1 = t.stats()
        for k in train_batches:
            ours_train.append(timed(lambda: t.pooled_lookup(k, offsets, train=True, out=out)))
        hot = (s1["hot_hits"] - s0["hot_hits"]) / max(1, (s1["hits"] + s1["misses"] - s0["hits"] - s0["misses"]))
        m_ours, m_ref = statistics.median(ours), statistics.median(ref_t)
        return {f"{label}_ms": 1e3 * m_ours, f"{label}_torch_ms": 1e3 * m_ref,
                f"{label}_train_ms": 1e3 * statistics.median(ours_train),
                f"{label}_speedup_vs_torch": m_ref / m_ours, f"{label}_hot_hit_ratio": hot,
                f"{label}_gbps": BAGS * POOL * DIM * 4 / m_ours / 1e9}

    r = {"alpha": alpha, "keys": n, "threads": threads, "populate_s": populate_s, "warmup_batches": warmup,
         "warmup_s": warmup_s, "oracle_hot_hit_ratio": oracle}
    r.update(measure("before", train_keys[0]))
    steps = []
    t0 = time.perf_counter()
    while True:
        t1 = time.perf_counter()
        left = t.relayout_step(chunk)
        steps.append(time.perf_counter() - t1)
        if left == 0:
            break
    r["relayout_s"] = time.perf_counter() - t0
    r["relayout_chunk_rows"] = chunk
    r["relayout_steps"] = len(steps)
    r["relayout_first_step_s"] = steps[0]  # includes the plan's snapshot and sort (not under the exclusive lock)
    r["relayout_step_ms_median"] = 1e3 * statistics.median(steps)
    # Longest exclusive-lock hold of one step: what a concurrent lookup can wait.
    r["relayout_pause_ms_max"] = t.stats()["relayout_pause_max_ms"]
    r.update(measure("after", train_keys[1]))
    r["after_vs_before"] = r["before_ms"] / r["after_ms"]
    # The machine's load drifts between the two phases; each phase's torch run
    # (interleaved with ours) normalises it out.
    r["after_vs_before_torch_normalised"] = r["after_speedup_vs_torch"] / r["before_speedup_vs_torch"]
    r["hot_hit_gap_points"] = 100 * (oracle - r["after_hot_hit_ratio"])
    s = t.stats()
    r["overhead_bytes_per_row"] = s["overhead_bytes_per_row"]
    r["index_bytes_per_row"] = s["index_bytes"] / s["rows"]
    r["metadata_bytes_per_row"] = s["metadata_bytes"] / s["rows"]
    r["row_bytes_per_row"] = s["row_bytes_per_row"]
    return r


def drift_part(phase_keys: int, phases: int, steps: int, threads: int, budget_frac: float = 0.2,
               alpha: float = 1.05) -> dict:
    rng = np.random.default_rng(7)
    distinct = phase_keys * phases
    t = el.FrequencyTable(DIM, budget_rows=int(budget_frac * distinct), policy="lfu", half_life=20.0,
                          admit_count=2, sketch_width=1 << 22, on_evict="drop", num_threads=threads)
    opt = el.optim.SGD(lr=0.01)
    cdf = zipf_cdf(phase_keys, alpha)
    offsets = np.arange(0, BAGS * POOL, POOL, dtype=np.int64)
    grads = np.full((BAGS, DIM), 1e-3, np.float32)
    out = np.empty((BAGS, DIM), np.float32)
    res, step_ms = [], []
    for phase in range(phases):
        ids = rng.permutation(phase_keys).astype(np.int64) + phase * phase_keys
        hits = n = 0
        first = None
        for s in range(steps):
            v = ids[sample_ranks(cdf, BAGS * POOL, rng)]
            a = t.stats()
            t0 = time.perf_counter()
            t.pooled_lookup(v, offsets, train=True, out=out)
            step_ms.append(1e3 * (time.perf_counter() - t0))
            # Gradient per key occurrence = its bag's gradient (sum pooling).
            t.apply_gradients(v, np.repeat(grads, POOL, axis=0), opt)
            b = t.stats()
            if s == steps // 4:
                first = (b["hits"] - a["hits"]) / (BAGS * POOL)
            if s >= steps // 2:
                hits += b["hits"] - a["hits"]
                n += BAGS * POOL
        res.append({"phase": phase, "trained_share_second_half": hits / n, "trained_share_at_quarter": first})
    s = t.stats()
    return {"phase_keys": phase_keys, "phases": phases, "distinct_keys": distinct, "budget_rows": t.budget_rows,
            "steps_per_phase": steps, "phases_detail": res, "rows": s["rows"], "evicted": s["evicted"],
            "lookup_ms_median": statistics.median(step_ms), "lookup_ms_max": max(step_ms),
            "evict_pause_ms_max": s["evict_pause_max_ms"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["zipf", "drift", "all"], default="all")
    ap.add_argument("--keys", type=int, default=10_000_000)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.8, 1.05, 1.2])
    # 240: at alpha 1.05 the scores' top 10% is within 1.4 points of the oracle's
    # hot-region hit ratio after 240 batches (3.4 points after 60).
    ap.add_argument("--warmup", type=int, default=240, help="training batches before measuring")
    ap.add_argument("--evals", type=int, default=8, help="distinct measured batches")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=16384, help="rows moved per relayout step")
    ap.add_argument("--drift-keys", type=int, default=250_000, help="keys per drift phase")
    ap.add_argument("--drift-phases", type=int, default=4)
    ap.add_argument("--drift-steps", type=int, default=24)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    # EmbeddingBag's weight on huge pages, as the table's rows are (torch
    # reads the setting when imported, here later): on 4 KiB pages its random reads pay page
    # walks the table does not (the compressed suite's peer read 1.45x slower
    # so, docs/compressed.md).
    note = torch_huge_pages()
    if note:
        print(f"# {note}", flush=True)
    out = {"isa": el._core.isa(), "zipf": [], "drift": None, "memory": note}
    if a.part in ("zipf", "all"):
        for alpha in a.alphas:
            r = zipf_part(alpha, a.keys, a.warmup, a.evals, a.repeats, a.threads, a.chunk)
            print(json.dumps(r), flush=True)
            out["zipf"].append(r)
    if a.part in ("drift", "all"):
        out["drift"] = drift_part(a.drift_keys, a.drift_phases, a.drift_steps, a.threads)
        print(json.dumps(out["drift"]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
