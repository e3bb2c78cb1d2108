#!/usr/bin/env python3
"""Where a DLRM training step's time goes: the embedding collection
(forward, backward and update - fused in ours, TorchRec's sparse
Adagrad step in ZCH's - timed alone on the same batch) vs the rest
(dense layers, interaction, loss, dense optimizer = full step - embedding),
for the models of examples/dlrm_criteo.py plus embedlookup's collection with
one op per table (the torch.compile path), all interleaved step by step in
one process. Medians over --steps.

    PYTHONPATH=python python bench/profile_dlrm_step.py --steps 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import dlrm_criteo as ex  # noqa: E402

from embedlookup.datasets import criteo  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--out", default="/tmp/profile_dlrm_step")
    a = p.parse_args()
    args = ex.build_parser().parse_args(["--batch-size", str(a.batch_size), "--out", a.out])
    torch.set_num_threads(args.threads)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "criteo_synthetic.tsv")
    criteo.write_synthetic(path, a.batch_size * (a.steps + 2), seed=0)
    batches = [(b.dense, ex.kjt_of(b.sparse), b.label) for b in criteo.read_batches(path, a.batch_size, None)]
    models, opts = ex.build(args, criteo.N_DENSE)
    per_table, per_opts = ex.build(args, criteo.N_DENSE)
    models["embedlookup (one op per table)"] = per_table["embedlookup"]
    opts["embedlookup (one op per table)"] = per_opts["embedlookup"]
    per_table["embedlookup"].sparse_arch.embedding_bag_collection._one_node_ok = lambda weights: False
    loss_fn = nn.BCEWithLogitsLoss()
    times = {m: {"step": [], "embedding": []} for m in models}
    for i, (dense, kjt, label) in enumerate(batches[:a.steps]):
        for name, m in models.items():
            coll = m.sparse_arch.embedding_bag_collection
            t0 = time.perf_counter()
            kt = coll(kjt)
            kt.values().backward(torch.ones_like(kt.values()) * 1e-6)
            for o in opts[name][1:]:  # TorchRec's embedding optimizer (sparse Adagrad); ours is fused
                o.step()
                o.zero_grad()
            t1 = time.perf_counter()
            for o in opts[name]:
                o.zero_grad()
            loss = loss_fn(m(dense, kjt).squeeze(-1), label)
            loss.backward()
            for o in opts[name]:
                o.step()
            t2 = time.perf_counter()
            if i >= 2:  # warm-up
                times[name]["embedding"].append(t1 - t0)
                times[name]["step"].append(t2 - t1)
    print(f"batch {a.batch_size}, 26 tables x dim {args.dim}, {args.threads} thread(s), {a.steps - 2} steps "
          f"(medians, ms), load {os.getloadavg()[0]:.1f}")
    print(f"{'model':34s} {'step':>8s} {'embedding':>10s} {'dense+rest':>11s} {'ex/s':>8s}")
    for name, t in times.items():
        step, emb = statistics.median(t["step"]) * 1e3, statistics.median(t["embedding"]) * 1e3
        print(f"{name:34s} {step:8.1f} {emb:10.1f} {step - emb:11.1f} {a.batch_size / step * 1e3:8.0f}")
    np.save(os.path.join(a.out, "times.npy"), {k: v for k, v in times.items()}, allow_pickle=True)


if __name__ == "__main__":
    main()
