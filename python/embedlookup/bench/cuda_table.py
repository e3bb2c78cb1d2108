"""GPU benchmark of CudaTable.pooled_lookup: effective bytes/s against the
GPU's measured device-to-device copy bandwidth and torch.nn.EmbeddingBag on
the same GPU, same rows, same keys, in one run.

    python -c "import torch; from embedlookup.bench.cuda_table import main; main()" [--rows 10000000] [--dim 64] [--pooling 32] [--batches 4096,16384,65536]

Effective bytes = keys looked up x dim x 4 (the row bytes a pooled lookup must
read); copy bandwidth counts bytes read + written (STREAM convention). Each
figure is the median of interleaved repeats, each repeat timing a block of
calls with CUDA events.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _time_block(torch, fn, calls: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def copy_bandwidth(torch, nbytes: int = 1 << 30, repeats: int = 15) -> float:
    """Device-to-device copy, bytes read + written per second (median)."""
    a = torch.ones(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    t = [_time_block(torch, lambda: b.copy_(a), 3) for _ in range(repeats)]
    return 2.0 * nbytes / statistics.median(t)


def _stage(msg: str) -> None:
    import sys

    print(f"[cuda_table] {msg}", file=sys.stderr, flush=True)


def run(rows: int = 10_000_000, dim: int = 64, pooling: int = 32, batches=(4096, 16384, 65536),
        repeats: int = 9, seed: int = 0, weights_from: str = "export", insert_variant: bool = True) -> dict:
    """weights_from: "export" fills the table through inserting lookups (the
    initializer) and hands its exported rows to EmbeddingBag; "assign" draws
    the rows with torch and assigns them to the table."""
    import torch
    import torch.nn.functional as F

    import embedlookup as el
    from embedlookup.cuda import CudaTable

    dev = torch.device("cuda")
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    _stage(f"creating a table for {rows} rows")
    table = CudaTable(dim, initializer=el.init.uniform(-0.1, 0.1, seed=seed), expected_rows=rows)
    chunk = 1 << 21
    if weights_from == "export":
        _stage("inserting keys through pooled lookups")
        for s in range(0, rows, chunk):
            keys = torch.arange(s, min(rows, s + chunk), device=dev)
            off = torch.arange(0, keys.shape[0], pooling, device=dev)
            table.pooled_lookup(keys, off)
        assert len(table) == rows
        # torch's EmbeddingBag gets the very same rows (export is sorted by key = row index).
        _stage("exporting")
        keys_sorted, weight = table.export()
        assert bool((keys_sorted == torch.arange(rows, device=dev)).all())
        del keys_sorted
    else:
        _stage("assigning rows")
        weight = torch.rand(rows, dim, device=dev) * 0.2 - 0.1
        for s in range(0, rows, chunk):
            e = min(rows, s + chunk)
            table.assign(torch.arange(s, e, device=dev), weight[s:e])
        assert len(table) == rows
    build_s = time.perf_counter() - t0
    _stage(f"table built in {build_s:.1f} s; measuring copy bandwidth")

    copy_bw = copy_bandwidth(torch)
    results = []
    for batch in batches:
        n = batch * pooling
        idx = torch.randint(0, rows, (n,), device=dev)
        off = torch.arange(0, n, pooling, device=dev)
        out = torch.empty(batch, dim, device=dev)
        _stage(f"batch {batch}")
        fns = {
            "embedlookup": lambda: table.pooled_lookup(idx, off, insert=False, check=False, out=out),
            "embedlookup_insert_check": lambda: table.pooled_lookup(idx, off, out=out),
            "torch_embedding_bag": lambda: F.embedding_bag(idx, weight, off, mode="sum"),
        }
        if not insert_variant:
            del fns["embedlookup_insert_check"]
        with torch.no_grad():
            ref = F.embedding_bag(idx, weight, off, mode="sum")
            ours = table.pooled_lookup(idx, off, insert=False)
            max_err = float((ours - ref).abs().max())
            assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5), max_err
            nbytes = n * dim * 4
            calls = max(1, int(4e8 // nbytes))  # ~0.2 ms or more per timed block
            times = {k: [] for k in fns}
            for fn in fns.values():
                _time_block(torch, fn, calls)  # warm-up
            for _ in range(repeats):  # interleaved, so drifts hit all alike
                for k, fn in fns.items():
                    times[k].append(_time_block(torch, fn, calls))
        med = {k: statistics.median(v) for k, v in times.items()}
        r = {"batch": batch, "pooling": pooling, "keys": n, "max_abs_diff_vs_torch": max_err}
        for k, t in med.items():
            r[f"{k}_s"] = t
            r[f"{k}_GBps"] = nbytes / t / 1e9
            r[f"{k}_pct_copy"] = 100.0 * nbytes / t / copy_bw
        r["speedup_vs_embedding_bag"] = med["torch_embedding_bag"] / med["embedlookup"]
        if insert_variant:
            r["speedup_insert_check_vs_embedding_bag"] = med["torch_embedding_bag"] / med["embedlookup_insert_check"]
        results.append(r)
    props = torch.cuda.get_device_properties(dev)
    return {
        "device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
        "rows": rows, "dim": dim, "key_distribution": "uniform", "table_build_s": build_s, "weights_from": weights_from,
        "copy_bandwidth_GBps": copy_bw / 1e9, "results": results,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--pooling", type=int, default=32)
    p.add_argument("--batches", default="4096,16384,65536")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--weights-from", choices=["export", "assign"], default="export")
    p.add_argument("--no-insert-variant", action="store_true", help="skip timing the inserting, checking call")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    res = run(a.rows, a.dim, a.pooling, tuple(int(b) for b in a.batches.split(",")), a.repeats,
              weights_from=a.weights_from, insert_variant=not a.no_insert_variant)
    print(f"device: {res['device']} ({res['sms']} SMs), torch {res['torch']}; table {res['rows']} rows x "
          f"{res['dim']} fp32, uniform keys; built in {res['table_build_s']:.1f} s")
    print(f"device-to-device copy bandwidth (read + write): {res['copy_bandwidth_GBps']:.0f} GB/s")
    print(f"{'batch':>7} {'pool':>4} | {'embedlookup GB/s':>16} {'% copy':>6} | {'+insert+check':>13} {'% copy':>6} | "
          f"{'EmbeddingBag GB/s':>17} {'% copy':>6} | {'x EB':>5}")
    for r in res["results"]:
        ins = r.get("embedlookup_insert_check_GBps", float("nan"))
        ins_pct = r.get("embedlookup_insert_check_pct_copy", float("nan"))
        print(f"{r['batch']:>7} {r['pooling']:>4} | {r['embedlookup_GBps']:>16.0f} {r['embedlookup_pct_copy']:>6.1f} | "
              f"{ins:>13.0f} {ins_pct:>6.1f} | "
              f"{r['torch_embedding_bag_GBps']:>17.0f} {r['torch_embedding_bag_pct_copy']:>6.1f} | "
              f"{r['speedup_vs_embedding_bag']:>5.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
