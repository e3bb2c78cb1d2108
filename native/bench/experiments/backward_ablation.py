"""A standalone experiment behind docs/engine.md ("Where the backward's time
goes"): what each part of the fused backward costs, by leaving it out.

backward_ablation.patch adds three switches to the fused update, read from
the environment at every call: EL_ABLATE_GRAD (no gradient rows read or
summed in the merge pass), EL_ABLATE_STATE (no optimizer state read or
written), EL_ABLATE_VERSION (no row versions stamped). They are for timing
only: with any of them set the update is wrong. Row-wise Adagrad only (the
state switch assumes it). Each variant is a comma-separated set of switches
("base": none); variants alternate call by call in one process, so they share
the machine's state, and each ratio is a median of per-round ratios against
the first variant. Build and run from a checkout:
  git apply native/bench/experiments/backward_ablation.patch && scripts/dev-build
  PYTHONPATH=python python3 native/bench/experiments/backward_ablation.py uniform 1 \\
      base EL_ABLATE_GRAD EL_ABLATE_STATE EL_ABLATE_VERSION EL_ABLATE_GRAD,EL_ABLATE_STATE,EL_ABLATE_VERSION
  git apply -R native/bench/experiments/backward_ablation.patch && scripts/dev-build
Arguments: uniform|zipf, threads, variants...; ROUNDS=40 in the environment.
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_split import setup  # noqa: E402  the same table, batches and calls

dist, threads, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:] or ["base"]
switches = {s for v in variants for s in v.split(",") if s != "base"}
batches, forward, backward, _ = setup("rowwise", dist == "zipf", threads)
times = {v: [] for v in variants}
for r in range(int(os.environ.get("ROUNDS", "40"))):
    k, off, g = batches[r % 4]
    for v in variants if r % 2 == 0 else variants[::-1]:
        ep = forward(k, off)
        for s in switches:
            os.environ.pop(s, None)
        for s in v.split(","):
            if s != "base":
                os.environ[s] = "1"
        t0 = time.perf_counter()
        backward(k, off, g, ep)
        times[v].append(time.perf_counter() - t0)
for s in switches:
    os.environ.pop(s, None)
first = np.array(times[variants[0]])
print(f"{dist} keys, {threads} thread(s), {len(first)} rounds; backward median, and the median of "
      f"{variants[0]}'s time / the variant's per round:")
for v in variants:
    print(f"  {v}: {np.median(times[v]) * 1e3:.2f} ms ({np.median(first / np.array(times[v])):.3f}x)")
