"""What resolving keys ahead gains a torch training loop (HashEmbeddingBag).

W1 shapes: 1 M rows x 64, batches of 4096 bags x 32 uniform keys, row-wise
Adagrad, all cores. Four loops over the same batches, in interleaved rounds
(medians of per-round times per step):

* ``plain``: ``bag(x, off)``, backward (the index probe per key in the forward);
* ``resolved``: the step given ``resolved=`` with the resolution done
  outside the timing (what an input stage that hides it leaves the step);
* ``plain+mlp``: a small MLP on the pooled rows (64 -> 256 -> 256 -> 1)
  between forward and backward, a trainer's dense work;
* ``pipelined+mlp``: the same, with batch t+1 resolved on a background
  thread while batch t trains (the native resolve releases the GIL).

    PYTHONPATH=python python bench/bench_torch_resolve_ahead.py --rounds 7
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import time

import numpy as np
import torch

import embedlookup as el
from embedlookup.torch import HashEmbeddingBag


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=8, help="steps per loop and round")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dim, bags, pooling = 64, 4096, 32
    bag = HashEmbeddingBag(dim, mode="sum", optimizer=el.optim.Adagrad(lr=0.05, rowwise=True))
    for lo in range(0, a.rows, 1 << 17):  # every row in place
        keys = torch.arange(lo, min(a.rows, lo + (1 << 17)), dtype=torch.int64)
        bag.resolve(keys)
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.integers(0, a.rows, bags * pooling).astype(np.int64)) for _ in range(8)]
    off = torch.arange(0, bags * pooling, pooling, dtype=torch.int64)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 1))
    pool = cf.ThreadPoolExecutor(1)

    def step(x, r=None, dense=False):
        out = bag(x, off, resolved=r)
        loss = mlp(out).sum() if dense else out.sum()
        mlp.zero_grad(set_to_none=True)
        loss.backward()

    def loop(kind, steps, first):
        xs = [batches[(first + i) % len(batches)] for i in range(steps + 1)]
        if kind == "resolved":
            rs = [bag.resolve(x) for x in xs]
            t = time.perf_counter()
            for i in range(steps):
                step(xs[i], rs[i])
            return (time.perf_counter() - t) / steps
        t = time.perf_counter()
        if kind == "pipelined+mlp":
            nxt = pool.submit(bag.resolve, xs[0])
            for i in range(steps):
                r = nxt.result()
                nxt = pool.submit(bag.resolve, xs[i + 1])
                step(xs[i], r, dense=True)
            nxt.result()
        else:
            for i in range(steps):
                step(xs[i], dense=kind == "plain+mlp")
        return (time.perf_counter() - t) / steps

    kinds = ("plain", "resolved", "plain+mlp", "pipelined+mlp")
    for k in kinds:  # warm-up
        loop(k, 2, 0)
    times = {k: [] for k in kinds}
    for r in range(a.rounds):
        for k in (kinds if r % 2 == 0 else kinds[::-1]):
            times[k].append(loop(k, a.steps, r))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {times[k][-1] * 1e3:.2f} ms" for k in kinds), flush=True)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    ratio = {"resolved / plain": float(np.median(np.array(times["resolved"]) / np.array(times["plain"]))),
             "pipelined+mlp / plain+mlp": float(np.median(np.array(times["pipelined+mlp"]) /
                                                          np.array(times["plain+mlp"])))}
    for k in kinds:
        print(f"{k}: {med[k]:.2f} ms a step (median)")
    for k, v in ratio.items():
        print(f"{k}: {v:.3f} (median of per-round ratios)")
    res = {"step_ms": med, "ratios": ratio, "rounds": a.rounds, "steps": a.steps, "threads": torch.get_num_threads()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
