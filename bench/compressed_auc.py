"""AUC against embedding memory: the hashing trick, quotient-remainder (QR),
mixed-dimension and a full (collision-free, unbounded) table on
``embedlookup-train``'s synthetic click stream.

One training run (``embedlookup.train.run``, progressive validation: every
batch is scored before it is trained on) per memory budget trains the
hashing trick, QR and mixed-dim at that budget side by side on the same
batches; mixed-dim runs once per ``--alphas`` value. The full table runs once
(its memory is whatever every ID it saw takes). One point per configuration:
mean progressive AUC over the run against the embedding bytes at the end
(rows, optimizer state, keys, index; see ``embedlookup.train``).

    PYTHONPATH=python python3 bench/compressed_auc.py --out docs/compressed_auc_memory \
        --rows 5000,20000,80000 --batches 150 --batch-size 1024 --alphas 0.1,0.3

writes ``<out>.json`` and ``<out>.png`` (``--replot <out>.json`` redraws the plot).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from embedlookup.train import RunConfig, SyntheticClickStream, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="5000,20000,80000", help="hashing-trick rows per budget (comma-separated)")
    p.add_argument("--alphas", default="0.1,0.3", help="mixed-dim power-law exponents (comma-separated)")
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="compressed_auc_memory", help="path prefix of the .json and .png")
    p.add_argument("--replot", metavar="JSON", help="only redraw the plot of an earlier run's .json next to it")
    a = p.parse_args(argv)
    if a.replot:
        with open(a.replot) as fh:
            plot(json.load(fh), a.replot[: -len(".json")] + ".png")
        return 0
    torch.set_num_threads(a.threads)
    rows = [int(r) for r in a.rows.split(",")]
    alphas = [float(x) for x in a.alphas.split(",")]
    stream = SyntheticClickStream(batch_size=a.batch_size, seed=a.seed)
    points = []

    def train(models, r, alpha):
        cfg = RunConfig(dim=a.dim, rows=r, models=models, seed=a.seed, window=10, mixed_alpha=alpha)
        from dataclasses import asdict

        cfg.extra["stream"] = asdict(stream)
        t0 = time.perf_counter()
        res = run(stream.batches(a.batches), cfg, stream.n_features, stream.n_dense, log=lambda s: None)
        for name, h in res["models"].items():
            label = f"mixed_dim a={alpha}" if name == "mixed_dim" else name
            pt = {"model": label, "rows": r, "budget_bytes": 2 * r * a.dim * 4, "memory_bytes": h["memory_bytes"][-1],
                  "mean_auc": h["mean_auc"], "mean_logloss": h["mean_logloss"],
                  "second_half_auc": float(sum(h["auc"][len(h["auc"]) // 2:]) / len(h["auc"][len(h["auc"]) // 2:]))}
            points.append(pt)
            print(f"rows {r:7d} {label:22s} memory {pt['memory_bytes'] / 2**20:7.2f} MiB  mean AUC "
                  f"{pt['mean_auc']:.4f}  second half {pt['second_half_auc']:.4f}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)

    train(("hash_table_unbounded",), rows[0], 0.0)
    for r in rows:
        for i, alpha in enumerate(alphas):
            train(("hashing", "qr", "mixed_dim") if i == 0 else ("mixed_dim",), r, alpha)
    result = {"command_args": vars(a), "stream": {"batches": a.batches, "batch_size": a.batch_size,
                                                    "seed": a.seed}, "points": points}
    with open(a.out + ".json", "w") as fh:
        json.dump(result, fh, indent=1)
    plot(result, a.out + ".png")
    print(f"wrote {a.out}.json and {a.out}.png")
    return 0


LABELS = {"hash_table_unbounded": "full table (collision-free, unbounded)", "hashing": "hashing trick",
          "qr": "quotient-remainder (mult)"}


def plot(result: dict, path: str) -> None:
    """AUC against memory, one marker per point, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, a = result["points"], argparse.Namespace(**result["command_args"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(pt["model"] for pt in points):
        pts = sorted((pt for pt in points if pt["model"] == label), key=lambda pt: pt["memory_bytes"])
        x = [pt["memory_bytes"] / 2**20 for pt in pts]
        ax.plot(x, [pt["mean_auc"] for pt in pts], "o-" if len(pts) > 1 else "*", ms=7 if len(pts) > 1 else 12,
                label=LABELS.get(label, label))
    ax.set_xscale("log")
    ax.set(xlabel="embedding memory at the end of the run (MiB, log scale)",
           ylabel="mean progressive AUC",
           title=f"synthetic stream, {a.batches} x {a.batch_size} samples, dim {a.dim}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
