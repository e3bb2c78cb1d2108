"""Continual training through the parameter server: ``embedlookup-train --ps``.

The comparison of :mod:`embedlookup.train` (progressive validation over one
pass of a click stream), with the embedding rows on an
``embedlookup.ps.ParameterServer`` instead of in the process, trained by
``trainers`` trainers at once, once per consistency mode (``sync``,
``bounded:S``, ``async``), each mode on a fresh server from the same initial
state and the same batches.

How the trainers run:

* ``backend="local"``: the shards are the server's in-process shards; the N
  trainers are N threads of this process, each with its own client
  (``server.client(mode=...)``) and its own copy of the dense layers.
* ``backend="ray"``: the shards are Ray actors (one per shard); the N
  trainers are N Ray actors (separate processes) that each receive a pickled
  client and build their model there.

Every trainer runs the same DLRM over a ``HashEmbeddingBagCollection`` whose
table is its client: the forward pulls pooled rows from the shards, the
backward pushes the pooled gradient, and the shards apply Adagrad. The
stream is dealt round-robin: in round r, trainer i trains batch r*N + i
(scored before its update, as in the single-process run), all N at once.
The dense layers (a few thousand floats) are synchronised by the driver
after each round: it adds every trainer's update of the round to the
round's starting weights and gives every trainer the result (each keeps its
own Adam moments). The dense layers thus take one update per batch, as in the
single-process run (averaging instead would halve their steps with two
trainers), and trainers differ only in what their embedding pulls see,
which is what the modes change. With one trainer, ``sync`` is the
single-process ``hash_table_unbounded`` model step for step.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch
from torch import nn

from . import init as _init
from . import optim as _optim

__all__ = ["PSEmbeddings", "Trainer", "run_ps", "plot_ps", "parse_modes"]


def parse_modes(text: str) -> list[str]:
    """``"sync,bounded:2,async"`` -> the modes, checked (``bounded:S`` with S >= 1)."""
    modes = [m.strip() for m in str(text).split(",") if m.strip()]
    if not modes:
        raise ValueError("--mode: give at least one of sync, bounded:S, async")
    for m in modes:
        if m in ("sync", "async"):
            continue
        head, _, s = m.partition(":")
        if head != "bounded" or not s.isdigit() or int(s) < 1:
            raise ValueError(f"--mode: {m!r} is not sync, async or bounded:S with an integer S >= 1")
    if len(set(modes)) != len(modes):
        raise ValueError(f"--mode: a mode is given twice in {text!r}")
    return modes


class PSEmbeddings(nn.Module):
    """(B, F) IDs -> (F, B, dim) through a HashEmbeddingBagCollection whose
    shared table is a parameter-server client."""

    def __init__(self, n_features: int, client):
        super().__init__()
        from .torch import HashEmbeddingBagCollection

        self.coll = HashEmbeddingBagCollection([f"f{i}" for i in range(n_features)], client.dim, mode="sum",
                                               table=client)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        B, F = sparse.shape
        out = self.coll(values=sparse.T.contiguous().reshape(-1), lengths=torch.ones(F * B, dtype=torch.int64))
        return torch.stack(list(out.values()))


class Trainer:
    """One trainer: a client, a DLRM over it and the dense optimizer. A plain
    object for the local backend's threads; the Ray backend wraps the class
    with ``ray.remote``, so every method takes and returns plain data."""

    def __init__(self, client, n_features: int, n_dense: int, dim: int, lr_dense: float, seed: int,
                 threads: Optional[int] = None):
        from .train import DLRM

        if threads:
            torch.set_num_threads(threads)
        self.client = client
        torch.manual_seed(seed)  # every trainer starts from the same dense weights
        self.model = DLRM(PSEmbeddings(n_features, client), n_dense, n_features, dim)
        self.params = [p for n_, p in self.model.named_parameters() if not n_.startswith("embeddings.")]
        self.opt = torch.optim.Adam(self.params, lr=lr_dense)
        self.loss_fn = nn.BCEWithLogitsLoss()

    def step(self, dense: np.ndarray, sparse: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, float]:
        """Scores the batch, then trains on it; returns (logits before the
        update, seconds)."""
        t0 = time.perf_counter()
        self.model.train()
        y = torch.from_numpy(label)
        logits = self.model(torch.from_numpy(dense), torch.from_numpy(sparse))
        scored = logits.detach().numpy().copy()
        loss = self.loss_fn(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # pooled gradients pushed to the shards here
        self.opt.step()
        return scored, time.perf_counter() - t0

    def dense_state(self) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in self.params]

    def load_dense(self, arrays: list[np.ndarray]) -> None:
        with torch.no_grad():
            for p, a in zip(self.params, arrays):
                p.copy_(torch.from_numpy(a))

    def flush(self) -> None:
        self.client.flush()

    def close(self) -> None:
        self.client.close()


class _LocalTrainers:
    """N Trainer objects driven by N threads."""

    def __init__(self, clients, make):
        self.trainers = [make(c) for c in clients]
        self.pool = ThreadPoolExecutor(len(self.trainers), thread_name_prefix="ps-trainer")

    def map(self, method: str, args_per_trainer):
        futs = [self.pool.submit(getattr(t, method), *a) for t, a in zip(self.trainers, args_per_trainer)]
        return [f.result() for f in futs]

    def close(self):
        try:
            self.map("close", [()] * len(self.trainers))
        finally:
            self.pool.shutdown()


class _RayTrainers:
    """N Trainer actors (processes) on the server's Ray cluster."""

    def __init__(self, clients, make_args):
        import ray

        self.ray = ray
        # num_cpus=0: the trainers must not wait for the CPUs the shard actors hold
        cls = ray.remote(num_cpus=0)(Trainer)
        self.trainers = [cls.remote(c, *make_args) for c in clients]

    def map(self, method: str, args_per_trainer):
        refs = [getattr(t, method).remote(*a) for t, a in zip(self.trainers, args_per_trainer)]
        return self.ray.get(refs)

    def close(self):
        try:
            self.map("close", [()] * len(self.trainers))
        finally:
            for t in self.trainers:
                self.ray.kill(t)


def _importable_by_ray_workers() -> None:
    """Before a local Ray cluster starts: its worker processes (shards and
    trainers) import embedlookup from where this process did, with
    PYTHONPATH made absolute (a relative ``PYTHONPATH=python`` would resolve
    from the workers' own folder)."""
    import os

    import ray

    if ray.is_initialized():
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in paths))


def run_ps(batches, cfg, n_features: int, n_dense: int, *, backend: str = "local", trainers: int = 2,
           shards: int = 2, modes=("sync", "bounded:2", "async"), address: Optional[str] = None,
           threads: Optional[int] = None, log=print) -> dict:
    """Trains one model per consistency mode through a fresh ParameterServer
    with ``trainers`` trainers; returns the metrics dict of
    :func:`embedlookup.train.run` (one entry per mode, named ``ps:<mode>``)
    with the run's PS settings under ``"ps"``."""
    from . import ps
    from .train import auc, logloss

    if trainers < 1 or shards < 1:
        raise ValueError(f"trainers and shards must be >= 1, got trainers={trainers}, shards={shards}")
    batches = list(batches)
    if backend == "ray" and address is None:
        _importable_by_ray_workers()
    hist = {}
    seen = sum(b.label.shape[0] for b in batches)
    for mode in modes:
        name = f"ps:{mode}"
        h = hist[name] = {"logloss": [], "auc": [], "memory_bytes": [], "seconds": 0.0, "batches": []}
        server = ps.ParameterServer(cfg.dim, shards, table="embedding",
                                    table_options={"initializer": _init.uniform(-0.05, 0.05, seed=cfg.seed)},
                                    optimizer=_optim.Adagrad(lr=cfg.lr_embedding), backend=backend,
                                    address=address)
        group = None
        try:
            clients = [server.client(mode=mode, client_id=f"trainer-{i}") for i in range(trainers)]
            args = (n_features, n_dense, cfg.dim, cfg.lr_dense, cfg.seed, threads)
            group = (_RayTrainers(clients, args) if backend == "ray"
                     else _LocalTrainers(clients, lambda c: Trainer(c, *args)))
            ys, ss = [], []
            dense = group.map("dense_state", [()])[0]  # the same initial weights on every trainer
            t0 = time.perf_counter()
            for r in range(0, len(batches), trainers):
                part = batches[r:r + trainers]
                out = group.map("step", [(b.dense.numpy(), b.sparse.numpy(), b.label.numpy()) for b in part])
                # dense layers: every trainer's update of this round, summed
                states = group.map("dense_state", [()] * len(part))
                dense = [d + sum(s - d for s in a) for d, a in zip(dense, zip(*states))]
                group.map("load_dense", [(dense,)] * len(group.trainers))
                for b, (scored, _) in zip(part, out):
                    ys.append(b.label.numpy())
                    ss.append(scored)
                    n = len(h["batches"]) + 1
                    h["batches"].append(n)
                    if n % cfg.window == 0:
                        y, s = np.concatenate(ys), np.concatenate(ss)
                        h["logloss"].append(logloss(y, s))
                        h["auc"].append(auc(y, s))
                        ys, ss = [], []
                        log(f"{name:16s} batch {n:5d}  ll={h['logloss'][-1]:.4f} auc={h['auc'][-1]:.4f}")
            group.map("flush", [()] * len(group.trainers))
            h["seconds"] = time.perf_counter() - t0
            h["server_stats"] = _jsonable(server.stats())
        finally:
            if group is not None:
                group.close()
            server.shutdown()
        del h["batches"]
        h["mean_logloss"] = float(np.mean(h["logloss"])) if h["logloss"] else float("nan")
        h["mean_auc"] = float(np.nanmean(h["auc"])) if h["auc"] else float("nan")
    sync = hist.get("ps:sync")
    for name, h in hist.items():
        if sync is not None and name != "ps:sync":
            h["auc_gap_vs_sync"] = sync["mean_auc"] - h["mean_auc"]
    from dataclasses import asdict

    return {"config": asdict(cfg), "samples": seen, "models": hist,
            "ps": {"backend": backend, "trainers": trainers, "shards": shards, "modes": list(modes)}}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def plot_ps(result: dict, path: str, title: str = "") -> Optional[str]:
    """AUC and logloss over the stream, one line per mode; returns None, or
    why no plot was written (matplotlib missing)."""
    from .train import _pyplot

    plt, why = _pyplot()
    if why:
        return why
    fig, ax = plt.subplots(1, 3, figsize=(17, 4.5))
    w = result["config"]["window"]
    sync = result["models"].get("ps:sync")
    for name, h in result["models"].items():
        x = np.arange(1, len(h["auc"]) + 1) * w
        label = f"{name} (mean AUC {h['mean_auc']:.4f})"
        ax[0].plot(x, h["auc"], label=label)
        ax[1].plot(x, h["logloss"], label=name)
        if sync is not None and len(sync["auc"]) == len(h["auc"]):
            ax[2].plot(x, np.asarray(h["auc"]) - np.asarray(sync["auc"]), label=name)
    ax[0].set(xlabel="batch", ylabel="AUC (progressive, per window)")
    ax[1].set(xlabel="batch", ylabel="logloss (progressive, per window)")
    ax[2].set(xlabel="batch", ylabel="AUC minus the sync run's (per window)")
    ax[2].axhspan(-0.002, 0.002, color="0.9", zorder=0, label="+-0.002")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    p = result["ps"]
    how = (f"through the parameter server: backend {p['backend']}, {p['trainers']} trainers, "
           f"{p['shards']} shards")
    fig.suptitle(f"{title}, {how}" if title else how)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
