"""A standalone experiment behind docs/engine.md ("The training step"): the
training step's forward and backward timed apart, each against the gather
probe run between them (so all three see the same machine state), 1 thread
(or the count given; the probes then run at that count too).

Table of 1 M rows x 64 under random 64-bit keys, batch 4096 x pooling 32,
keys uniform (or Zipf(1.05) over a permutation of the rows), row-wise
Adagrad (or Adagrad). The forward and backward are the calls
HashEmbeddingBag makes: the backward gets the forward's row ids.
Run from a checkout after scripts/dev-build:
  PYTHONPATH=python python3 native/bench/experiments/step_split.py 25 [rowwise|adagrad] [uniform|zipf] [threads]
Prints the medians and the step's bytes (keys read + distinct rows read and
written) over the time at the median gather rate.
"""

import sys
import time

import numpy as np

import embedlookup as el
from embedlookup import _probes

rows, dim, B, P = 1_000_000, 64, 4096, 32


def setup(kind: str = "rowwise", zipf: bool = False, threads: int = 1):
    """(batches, forward, backward, mean distinct rows a batch): a 1 M x 64
    table under random 64-bit keys, four batches of B x P keys, and the
    forward / backward calls HashEmbeddingBag makes (the backward reuses the
    forward's row ids), warmed up (the optimizer state bound)."""
    t = el.EmbeddingTable(dim, num_threads=threads, initializer=el.init.uniform(-0.01, 0.01, seed=1))
    keys = np.random.default_rng(1).integers(0, 2**62, rows)
    t.lookup(keys)
    opt = el.optim.Adagrad(lr=0.01, rowwise=kind == "rowwise")
    rng = np.random.default_rng(0)
    perm = rng.permutation(rows)

    def draw():
        return perm[(rng.zipf(1.05, B * P) - 1) % rows] if zipf else rng.integers(0, rows, B * P)

    batches = [(keys[draw()], np.arange(0, B * P, P, dtype=np.int64),
                (rng.standard_normal((B, dim)) * 0.01).astype(np.float32)) for _ in range(4)]
    out = np.empty((B, dim), np.float32)
    ids = np.empty(B * P, np.uint32)

    def forward(k, off):
        return t._t.pooled_lookup_ids(k, off, B, 0, None, out, True, ids)

    def backward(k, off, g, epoch):
        t._t.apply_pooled_gradients(k, off, B, 0, None, None, g, opt._spec(), ids, epoch)

    for k, off, g in batches[:2]:
        backward(k, off, g, forward(k, off))
    return batches, forward, backward, float(np.mean([len(np.unique(b[0])) for b in batches]))


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    kind = sys.argv[2] if len(sys.argv) > 2 else "rowwise"
    zipf = len(sys.argv) > 3 and sys.argv[3] == "zipf"
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    batches, forward, backward, d = setup(kind, zipf, threads)
    f, bw, gather, update = [], [], [], []
    for r in range(rounds):
        k, off, g = batches[r % 4]
        t0 = time.perf_counter()
        ep = forward(k, off)
        f.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        backward(k, off, g, ep)
        bw.append(time.perf_counter() - t0)
        gather.append(_probes.gather_bandwidth(256 << 20, 256, B * P, 1, threads))
        update.append(_probes.update_bandwidth(256 << 20, 256, int(d), 1, threads))
    G = np.median(gather)
    row_s = 256 / G  # seconds per row gathered
    state = 4 if kind == "rowwise" else 256
    moved = (B * P + 2 * d * (1 + state / 256)) * 256
    step = np.median(f) + np.median(bw)
    print(f"distinct rows {d:.0f}; gather {G / 1e9:.2f} GB/s")
    print(f"forward {np.median(f) * 1e3:.2f} ms ({np.median(f) / (B * P * row_s):.2f}x the gather of its rows)")
    print(f"backward {np.median(bw) * 1e3:.2f} ms ({np.median(bw) / (d * row_s):.2f}x the gather of its distinct rows)")
    print(f"step moves {moved / 1e6:.1f} MB: {moved / step / G:.0%} of the gather rate")
    U = np.median(update)  # read + write counted
    floor = B * P * row_s + (moved - B * P * 256) / U
    print(f"update (read-modify-write) {U / 1e9:.2f} GB/s; backward {np.median(bw) / (2 * d * (1 + state / 256) * 256 / U):.2f}x "
          f"the read-modify-write of its rows; the step's own limit {floor * 1e3:.2f} ms: step at {floor / step:.0%} of it")


if __name__ == "__main__":
    main()
