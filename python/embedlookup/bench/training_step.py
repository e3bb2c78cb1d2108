"""Training step (forward + backward + sparse update) of embedding bags:
HashEmbeddingBag vs torch and FBGEMM peers, in one process, interleaved.

Workload: a table of 1 M rows x 64 fp32, batch 4096 bags, pooling
32 (131 072 lookups), keys uniform over the rows (``--zipf A`` for Zipf).
Every module is filled with all rows first, so every step updates existing
rows. Each step is ``out = emb(values, offsets); out.backward(grad)`` (+
``opt.step()`` and ``zero_grad`` for torch's unfused optimizers), with a fixed
random ``grad``. Peers: nn.EmbeddingBag(sparse=True) + torch.optim.Adagrad /
SparseAdam, and FBGEMM's CPU SplitTableBatchedEmbeddingBagsCodegen with fused
exact row-wise Adagrad (when fbgemm_gpu imports).

Run: PYTHONPATH=python python3 bench/bench_training_step.py [--repeats 15]
(installed: python3 -m embedlookup.bench.training_step).
Prints per-config median ms and each config's speed-up over the fastest peer.
"""

from __future__ import annotations

import argparse
import statistics
import time

from .machine import torch_huge_pages

# The peers' tables on huge pages, as ours are (torch reads its setting when
# it is imported, so before the import below): on 4 KiB pages FBGEMM's and
# torch's row reads paid page walks ours did not (FBGEMM's step: 19-25 ms here
# before, 14-20 ms in the suite, which asks the same).
_MEMORY_NOTE = torch_huge_pages()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import embedlookup as el  # noqa: E402
from embedlookup.torch import HashEmbeddingBag  # noqa: E402


def make_ours(rows, dim, opt):
    m = HashEmbeddingBag(dim, mode="sum", optimizer=opt, initializer=el.init.uniform(-0.01, 0.01, seed=1))
    m.table.lookup(np.arange(rows, dtype=np.int64))  # fill: steps update existing rows

    def step(x, off, g):
        m(x, off).backward(g)

    return step


def make_torch(rows, dim, opt_cls, **kw):
    emb = nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)
    opt = opt_cls(emb.parameters(), **kw)

    def step(x, off, g):
        opt.zero_grad(set_to_none=True)
        emb(x, off).backward(g)
        opt.step()

    return step


def make_fbgemm(rows, dim):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (ComputeDevice,
                                                                         SplitTableBatchedEmbeddingBagsCodegen)
    emb = SplitTableBatchedEmbeddingBagsCodegen([(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
                                                optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=0.01,
                                                eps=1e-8, pooling_mode=PoolingMode.SUM)

    def step(x, off, g):
        # FBGEMM wants offsets with the final end (T*B + 1 entries).
        emb(x, torch.cat([off, torch.tensor([x.shape[0]])])).backward(g)

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--pooling", type=int, default=32)
    p.add_argument("--zipf", type=float, default=0.0, help="Zipf exponent (0: uniform keys)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--only", default="", help="comma-separated config names to run")
    p.add_argument("--threads", type=int, default=0, help="threads for torch, FBGEMM and ours (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)  # embedlookup's kernels share torch's OpenMP runtime
    rng = np.random.default_rng(0)
    n = a.batch * a.pooling
    batches = []
    for _ in range(4):
        if a.zipf > 0:
            k = (rng.zipf(a.zipf, n) - 1) % a.rows
        else:
            k = rng.integers(0, a.rows, n)
        batches.append((torch.from_numpy(k.astype(np.int64)),
                        torch.arange(0, n, a.pooling, dtype=torch.int64),
                        torch.randn(a.batch, a.dim) * 0.01))
    configs = {
        "ours_adagrad": lambda: make_ours(a.rows, a.dim, el.optim.Adagrad(lr=0.01)),
        "ours_rowwise_adagrad": lambda: make_ours(a.rows, a.dim, el.optim.Adagrad(lr=0.01, rowwise=True)),
        "ours_adam": lambda: make_ours(a.rows, a.dim, el.optim.Adam(lr=0.001)),
        "ours_sgd": lambda: make_ours(a.rows, a.dim, el.optim.SGD(lr=0.01)),
        "peer_torch_adagrad": lambda: make_torch(a.rows, a.dim, torch.optim.Adagrad, lr=0.01),
        "peer_torch_sparseadam": lambda: make_torch(a.rows, a.dim, torch.optim.SparseAdam, lr=0.001),
        "peer_fbgemm_rowwise_adagrad": lambda: make_fbgemm(a.rows, a.dim),
    }
    if a.only:
        configs = {k: v for k, v in configs.items() if k in a.only.split(",")}
    steps = {}
    for name, make in configs.items():
        try:
            steps[name] = make()
        except ImportError as e:
            print(f"skip {name}: {e}")
    for name, step in steps.items():  # warm-up: first touches, lazy state
        for x, off, g in batches[:2]:
            step(x, off, g)
    times = {k: [] for k in steps}
    for r in range(a.repeats):
        for name, step in steps.items():
            x, off, g = batches[r % len(batches)]
            t0 = time.perf_counter()
            step(x, off, g)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    peers = {k: v for k, v in med.items() if k.startswith("peer_")}
    fastest = min(peers, key=peers.get) if peers else None
    print(f"# rows={a.rows} dim={a.dim} batch={a.batch} pooling={a.pooling} zipf={a.zipf} "
          f"threads={torch.get_num_threads()} isa={el._core.isa()} repeats={a.repeats}")
    if _MEMORY_NOTE:
        print(f"# {_MEMORY_NOTE}")
    for k, v in sorted(med.items(), key=lambda kv: kv[1]):
        ratio = f"  {peers[fastest] / v:5.2f}x vs {fastest}" if fastest else ""
        print(f"{k:30s} {v:8.2f} ms{ratio}")
    return med


if __name__ == "__main__":
    main()
