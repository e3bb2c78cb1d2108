#!/usr/bin/env python3
"""The engine's hard bar (issue 2): pooled_lookup (sum) on the hashed table must be at
least as fast as torch.nn.EmbeddingBag with dense indices, on uniform keys, 1 M rows x 64
dims, batch 4096, pooling 32, measured in the same run.

    PYTHONPATH=python python3 bench/issue2_bar.py [--repeats 15] [--json PATH] [-- more bench args]

Prints both medians, effective GB/s, the machine's gather limit and the ratio; exits 0
when the bar is met (median per-round ratio torch_time / embedlookup_time >= 1), 1 if not,
2 if it could not be measured.
"""

import argparse
import os
import sys

try:
    import embedlookup  # noqa: F401
except ImportError:  # a development checkout: use the in-place build
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from embedlookup import bench


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--op-time", type=float, default=4.0, help="seconds of timed rounds (more rounds: steadier)"
    )
    p.add_argument("--threads", type=int, default=0, help="0: all cores")
    p.add_argument("--json", help="write the full report here")
    a = p.parse_args()
    w = bench.parse_workload(["issue2"] + ([f"threads={a.threads}"] if a.threads else []))
    cfg = bench.Config(
        repeats=a.repeats, max_repeats=201, op_time=a.op_time, subjects=["embedlookup", "torch"]
    )
    rep = bench.run([(w, ["pooled_sum"])], cfg, command="bench/issue2_bar.py " + " ".join(sys.argv[1:]))
    if a.json:
        bench.write_json(rep, a.json)
    print(bench.format_table(rep))
    by = {r["subject"]: r for r in rep["results"]}
    el, th = by.get("embedlookup", {}), by.get("torch", {})
    if el.get("status") != "ok" or th.get("status") != "ok":
        print(f"issue-2 bar: NOT MEASURED (embedlookup: {el.get('reason')}; torch: {th.get('reason')})")
        return 2
    ratio = th["speedup_vs_embedlookup"]
    gl = rep["workloads"][0]["limits"]["gather_bytes_per_s"] / 1e9
    print(
        f"issue-2 bar: embedlookup {el['median_s'] * 1e3:.2f} ms ({el['bytes_per_s'] / 1e9:.2f} GB/s), "
        f"torch.nn.EmbeddingBag {th['median_s'] * 1e3:.2f} ms ({th['bytes_per_s'] / 1e9:.2f} GB/s), "
        f"gather limit {gl:.2f} GB/s; ratio torch/embedlookup = {ratio:.3f} -> "
        f"{'MET' if ratio >= 1.0 else 'NOT MET'}"
    )
    return 0 if ratio >= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
