"""What the torch modules' eager path saves per training step: the module's
step (forward + fused backward) through its eager autograd Function against
the same step through the registered custom op (what compiled code runs, and
what eager code ran before), on one module, alternated call by call so both
see the same table and machine state. Batch sizes from one bag to the suite's
4096 x 32; 1 M-row table, dim 64, row-wise Adagrad, uniform keys, 1 thread.

  PYTHONPATH=python python bench/bench_torch_dispatch.py [--rounds 9] [--threads 1]

Prints per batch size the medians of both steps (ms), their difference (the
dispatch cost saved) and the ratio op / eager. Then the same for a
HashEmbeddingBagCollection of 26 features (Criteo's count), batch 2048, one
key per feature and sample, with one shared table and with a table per
feature (26 pooled calls a step), the op subject routing every call through
the ops as eager code did before. Last, what the shared-table collection's
per-feature views cost a backward: F = 26 indexed views out[i] of one
(F, B, 64) result (the collection before; autograd backs each with a full
zero gradient) against unbind's views (the collection now), B = 2048, each
used once as the DLRM example uses them (stacked, summed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import embedlookup as el
from embedlookup.torch import HashEmbeddingBag, HashEmbeddingBagCollection, _ops


def op_step(m, x, off, g):
    """The module's step with the custom op called as its forward (the
    pre-eager-path code path, and the one torch.compile keeps)."""
    y = torch.ops.embedlookup.pooled_lookup(m._grad_anchor, x, off, None, m._handle, m._mode_id,
                                            m.include_last_offset, m._insert())[0]
    y.backward(g)


def eager_step(m, x, off, g):
    m(x, off).backward(g)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9, help="alternations per batch size (default 9)")
    ap.add_argument("--threads", type=int, default=1, help="native and torch threads (default 1)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**62, args.rows)
    t = el.EmbeddingTable(64, num_threads=args.threads, initializer=el.init.uniform(-0.01, 0.01, seed=1))
    t.lookup(keys)  # all rows present: the steps only read and update
    m = HashEmbeddingBag(64, mode="sum", optimizer=el.optim.Adagrad(lr=0.01, rowwise=True), table=t)
    print(f"{'bags x pooling':>15} {'eager ms':>9} {'op ms':>9} {'saved ms':>9} {'op/eager':>9}")
    for bags in (1, 16, 256, 4096):
        P = 32
        batches = [(torch.from_numpy(keys[rng.integers(0, args.rows, bags * P)]), torch.arange(0, bags * P, P),
                    torch.from_numpy(rng.standard_normal((bags, 64)).astype(np.float32) * 0.01)) for _ in range(3)]
        for b in batches:  # warm both paths
            eager_step(m, *b)
            op_step(m, *b)
        # Enough calls per sample to time ~20 ms, so small batches are not timer noise.
        reps = max(1, int(0.02 / (1e-4 + bags * P * 4e-8)))
        times = {"eager": [], "op": []}
        for r in range(args.rounds):
            order = (("eager", eager_step), ("op", op_step)) if r % 2 == 0 else (("op", op_step), ("eager", eager_step))
            for name, step in order:
                t0 = time.perf_counter()
                for i in range(reps):
                    step(m, *batches[i % 3])
                times[name].append((time.perf_counter() - t0) / reps)
        e, o = np.median(times["eager"]) * 1e3, np.median(times["op"]) * 1e3
        ratio = np.median(np.array(times["op"]) / np.array(times["eager"]))
        print(f"{f'{bags} x {P}':>15} {e:9.3f} {o:9.3f} {o - e:9.3f} {ratio:9.2f}", flush=True)
    collection(args, rng)
    feature_views(args)


def _through_ops(anchor, values, offsets, weights, handle, mode, include_last_offset, insert, resolved_ids=None,
                 resolved_epoch=-1):
    return torch.ops.embedlookup.pooled_lookup(anchor, values, offsets, weights, handle, mode, include_last_offset,
                                               insert, resolved_ids, resolved_epoch)[0]


def collection(args, rng):
    F, B = 26, 2048
    print(f"\n{'collection':>15} {'eager ms':>9} {'op ms':>9} {'saved ms':>9} {'op/eager':>9}")
    eager_routes = (_ops.pooled, _ops.namespaced)
    op_routes = (_through_ops, lambda v, fo, bits: torch.ops.embedlookup.namespace_keys(v, fo, bits))
    for shared in (True, False):
        m = HashEmbeddingBagCollection([f"f{i}" for i in range(F)], 64, mode="sum", shared_table=shared,
                                       optimizer=el.optim.Adagrad(lr=0.01, rowwise=True), num_threads=args.threads)
        batches = [(torch.from_numpy(rng.integers(0, 100_000, F * B)), torch.ones(F * B, dtype=torch.int64),
                    torch.from_numpy(rng.standard_normal((B, 64)).astype(np.float32))) for _ in range(3)]

        def step(b):
            out = m(values=b[0], lengths=b[1])
            torch.stack(list(out.values())).sum(0).backward(b[2])

        times = {"eager": [], "op": []}
        for r in range(args.rounds + 1):
            order = ("eager", "op") if r % 2 == 0 else ("op", "eager")
            for name in order:
                _ops.pooled, _ops.namespaced = eager_routes if name == "eager" else op_routes
                try:
                    t0 = time.perf_counter()
                    for b in batches:
                        step(b)
                    if r:  # the first round warms up (rows inserted)
                        times[name].append((time.perf_counter() - t0) / len(batches))
                finally:
                    _ops.pooled, _ops.namespaced = eager_routes
        e, o = np.median(times["eager"]) * 1e3, np.median(times["op"]) * 1e3
        ratio = np.median(np.array(times["op"]) / np.array(times["eager"]))
        label = "shared table" if shared else "26 tables"
        print(f"{label:>15} {e:9.3f} {o:9.3f} {o - e:9.3f} {ratio:9.2f}", flush=True)


def feature_views(args):
    F, B = 26, 2048
    print(f"\n{'feature views':>15} {'unbind ms':>9} {'out[i] ms':>9} {'saved ms':>9} {'ratio':>9}")
    base = torch.randn(F * B, 64, requires_grad=True)
    g = torch.randn(B, 64)

    def backward(views):
        out = base.reshape(F, B, 64)
        parts = out.unbind(0) if views == "unbind" else [out[i] for i in range(F)]
        torch.stack(list(parts)).sum(0).backward(g)

    times = {"unbind": [], "indexed": []}
    for r in range(args.rounds + 1):
        for views in (("unbind", "indexed") if r % 2 == 0 else ("indexed", "unbind")):
            t0 = time.perf_counter()
            for _ in range(5):
                backward(views)
            if r:
                times[views].append((time.perf_counter() - t0) / 5)
    u, i = np.median(times["unbind"]) * 1e3, np.median(times["indexed"]) * 1e3
    ratio = np.median(np.array(times["indexed"]) / np.array(times["unbind"]))
    print(f"{'26 x 2048 x 64':>15} {u:9.3f} {i:9.3f} {i - u:9.3f} {ratio:9.2f}", flush=True)


if __name__ == "__main__":
    main()
