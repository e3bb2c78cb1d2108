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

import embedlookup as el

rows, dim, B, P = 1_000_000, 64, 4096, 32
dist, threads, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:] or ["base"]
switches = {s for v in variants for s in v.split(",") if s != "base"}
t = el.EmbeddingTable(dim, num_threads=threads, initializer=el.init.uniform(-0.01, 0.01, seed=1))
keys = np.random.default_rng(1).integers(0, 2**62, rows)
t.lookup(keys)
opt = el.optim.Adagrad(lr=0.01, rowwise=True)
rng = np.random.default_rng(0)
perm = rng.permutation(rows)


def draw():
    return perm[(rng.zipf(1.05, B * P) - 1) % rows] if dist == "zipf" else rng.integers(0, rows, B * P)


batches = [(keys[draw()], np.arange(0, B * P, P, dtype=np.int64),
            (rng.standard_normal((B, dim)) * 0.01).astype(np.float32)) for _ in range(4)]
out = np.empty((B, dim), np.float32)
ids = np.empty(B * P, np.uint32)


def forward(k, off):
    return t._t.pooled_lookup_ids(k, off, B, 0, None, out, True, ids)


def backward(k, off, g, epoch):
    t._t.apply_pooled_gradients(k, off, B, 0, None, None, g, opt._spec(), ids, epoch)


for k, off, g in batches[:2]:  # binds the optimizer state, warms up
    backward(k, off, g, forward(k, off))
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
