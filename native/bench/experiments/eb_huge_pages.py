"""A standalone experiment behind docs/compressed.md ("The dense peer on huge
pages"): torch.nn.EmbeddingBag over the same 1 M x 64 rows held three ways,
the workload's dense rows (huge pages), the compressed suite's exactly
representable rows as NumPy allocated them (4 KiB pages: the suite's dense
peer before the fix), and a huge-page copy of those (the peer now). Zipf
keys (zipf-1m), 1 thread, interleaved rounds; prints the medians in ms.
Run from a checkout after scripts/dev-build:
  PYTHONPATH=python python3 native/bench/experiments/eb_huge_pages.py [workload]
"""

import dataclasses
import os
import sys
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the suite runs torch

import numpy as np
import torch

from embedlookup._checks import huge_copy
from embedlookup.bench.ops_compressed import exact_rows
from embedlookup.bench.workloads import WORKLOADS, WorkloadData


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "zipf-1m"
    torch.set_num_threads(1)
    w = dataclasses.replace(WORKLOADS[name], threads=1)
    d = WorkloadData.generate(w)
    values = exact_rows(d.dense, "int4")[0]
    held = {"dense rows (huge pages)": d.dense, "exact rows, NumPy (4 KiB pages)": values,
            "exact rows, huge-page copy": huge_copy(values)}
    bags = {k: torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(v), freeze=True, mode="sum")
            for k, v in held.items()}
    batches = [(torch.from_numpy(b.idx), torch.from_numpy(b.offsets)) for b in d.batches]
    times = {k: [] for k in bags}
    with torch.inference_mode():
        for _ in range(15):
            for k, bag in bags.items():
                t = []
                for i, off in batches * 2:
                    t0 = time.perf_counter()
                    bag(i, off)
                    t.append(time.perf_counter() - t0)
                times[k].append(np.median(t))
    for k, v in times.items():
        print(f"{k:34s} {np.median(v) * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
