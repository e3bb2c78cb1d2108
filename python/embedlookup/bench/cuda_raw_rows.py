"""GPU benchmark of CudaRawTable.pooled_lookup for every storage type: time,
effective bytes/s (keys x row bytes of the type) against the measured
device-to-device copy bandwidth, and the speed-up over dense fp32
``torch.nn.functional.embedding_bag`` on the same keys, in one run.

    python -c "import torch; from embedlookup.bench.cuda_raw_rows import main; main()" [--rows 10000000] [--dim 64] [--pooling 32] [--batch 16384]

Rows are random bytes in each type's layout (valid scale / bias for int8 and
int4): their values do not change the time, and the correctness of the decode
is the tests' job (tests/cuda/test_cuda_raw_rows.py). Medians of interleaved
repeats, each a block of calls timed with CUDA events.
"""

from __future__ import annotations

import argparse
import json
import statistics

from .cuda_table import _time_block, copy_bandwidth
from .raw_rows import synthetic_raw_rows

KINDS = ("fp32", "fp16", "bf16", "int8", "int4")


def run(rows: int = 10_000_000, dim: int = 64, pooling: int = 32, batch: int = 16384, repeats: int = 9,
        calls: int = 5, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from ..cuda import CudaRawTable
    from .. import _row_layout

    keys = np.arange(rows, dtype=np.int64)
    g = torch.Generator(device="cuda").manual_seed(seed)
    values = torch.randint(0, rows, (batch * pooling,), device="cuda", generator=g)
    offsets = torch.arange(0, batch * pooling, pooling, device="cuda")
    dense = torch.randn(rows, dim, device="cuda")
    tables = {}
    for kind in KINDS:
        tables[kind] = CudaRawTable(keys, synthetic_raw_rows(kind, rows, dim, seed), kind, dim)
    fns = {kind: (lambda t=t: t.pooled_lookup(values, offsets, "sum", check=False)) for kind, t in tables.items()}
    fns["EmbeddingBag fp32"] = lambda: torch.nn.functional.embedding_bag(values, dense, offsets, mode="sum")
    for f in fns.values():
        f()
    times = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved
        for name, f in fns.items():
            times[name].append(_time_block(torch, f, calls))
    copy = copy_bandwidth(torch)
    n_keys = batch * pooling
    out = {"device": torch.cuda.get_device_name(), "rows": rows, "dim": dim, "pooling": pooling, "batch": batch,
           "copy_bytes_per_s": copy, "results": {}}
    eb = statistics.median(times["EmbeddingBag fp32"])
    for name, ts in times.items():
        t = statistics.median(ts)
        rb = _row_layout.row_bytes(name, dim) if name in KINDS else 4 * dim
        out["results"][name] = {"seconds": t, "bytes_per_s": n_keys * rb / t,
                                "pct_of_copy": 100 * n_keys * rb / t / copy, "speedup_vs_embeddingbag": eb / t}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--pooling", type=int, default=32)
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    res = run(a.rows, a.dim, a.pooling, a.batch, a.repeats)
    print(f"{res['device']}: {a.rows} rows x {a.dim}, batch {a.batch} x pooling {a.pooling}, sum; "
          f"copy {res['copy_bytes_per_s'] / 1e9:.0f} GB/s")
    print(f"{'rows':>18} {'ms':>8} {'GB/s':>8} {'% copy':>7} {'vs EmbeddingBag':>16}")
    for name, r in res["results"].items():
        print(f"{name:>18} {r['seconds'] * 1e3:8.3f} {r['bytes_per_s'] / 1e9:8.0f} {r['pct_of_copy']:7.1f} "
              f"{r['speedup_vs_embeddingbag']:15.2f}x")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
