#!/usr/bin/env python3
"""TorchRec's DLRM on a Criteo-layout TSV: embedlookup's EmbeddingBagCollection
against TorchRec's managed-collision EBC, at the same embedding memory.

Both models are ``torchrec.models.dlrm.DLRM`` with the same dense layers
(same initial weights, same Adagrad); only the collection differs:

* ``embedlookup``: ``embedlookup.torchrec.EmbeddingBagCollection`` with
  ``frequency=`` (each of the 26 tables an ``embedlookup.FrequencyTable``
  with a budget of ``--rows`` rows: an ID gets a row on first sight, the
  least-frequently-used rows are evicted past the budget, IDs without a row
  read a learned cold row), fused Adagrad in the backward;
* ``torchrec_zch``: ``ManagedCollisionEmbeddingBagCollection`` over
  TorchRec's EBC with one ``MCHManagedCollisionModule`` per table
  (``zch_size = --rows``, DistanceLFU eviction every ``--eviction-interval``
  batches; IDs it holds no slot for share its last slot), the EBC's bags
  switched to sparse gradients and ``torch.optim.Adagrad`` (TorchRec's
  unsharded EBC otherwise builds dense gradients of every table per step).

Both see the same batches in the same order: each batch is first scored
(progressive validation: those predictions give AUC and logloss), then
trained on. The two models alternate batch by batch, so machine load hits
both alike. examples/s counts the training steps (forward, backward,
update) only.

Input: ``--data FILE`` (a real Criteo file: ``day_0`` of the Terabyte set,
``train.txt`` of the Kaggle set) or, by default, a generated file in that
layout with a learnable click model (``embedlookup.datasets.criteo``).

    PYTHONPATH=python python3 examples/dlrm_criteo.py                      # ~minutes; writes dlrm_results/
    PYTHONPATH=python python3 examples/dlrm_criteo.py --data day_0 --max-batches 2000 --rows 200000

Writes ``metrics.json`` (per window: examples, AUC, logloss, training
seconds; totals; memory; the configuration), ``predictions.npz`` (labels
and every model's progressive-validation scores, so the claims can be
checked) and ``dlrm_criteo.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
import torchrec
from torch import nn
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
from torchrec.modules.mc_modules import DistanceLFU_EvictionPolicy, ManagedCollisionCollection, MCHManagedCollisionModule

import embedlookup as el
from embedlookup.datasets import criteo
from embedlookup.torchrec import EmbeddingBagCollection
from embedlookup.train import auc, logloss

MODELS = ("embedlookup", "torchrec_zch")
# torch's sparse Adagrad warns on every step that invariant checks are off
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a Criteo-layout TSV (default: generate one into --out)")
    p.add_argument("--generate", type=int, default=100_000, help="rows of the generated file (default 100000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--rows", type=int, default=8192, help="rows per table, both models (default 8192)")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05, help="Adagrad learning rate, embeddings and dense layers")
    p.add_argument("--eviction-interval", type=int, default=4, help="MCH's eviction interval in batches")
    p.add_argument("--window", type=int, default=20, help="batches per AUC point (default 20)")
    p.add_argument("--threads", type=int, default=1, help="torch and native threads (default 1)")
    p.add_argument("--out", default="dlrm_results")
    p.add_argument("--plot", help="also save the plot here (e.g. docs/dlrm_criteo.png)")
    return p


def configs(rows: int, dim: int):
    return [torchrec.EmbeddingBagConfig(name=f"t{f}", embedding_dim=dim, num_embeddings=rows,
                                        feature_names=[f"cat_{f}"]) for f in range(criteo.N_SPARSE)]


class ZCHCollection(EmbeddingBagCollectionInterface):
    """TorchRec's MC-EBC as DLRM's collection (DLRM wants a KeyedTensor back;
    the MC-EBC returns (KeyedTensor, remapped features))."""

    def __init__(self, tables, rows: int, eviction_interval: int):
        super().__init__()
        self.ebc = torchrec.EmbeddingBagCollection(tables=tables)
        for bag in self.ebc.embedding_bags.values():
            bag.sparse = True
        mchs = {c.name: MCHManagedCollisionModule(zch_size=rows, device=torch.device("cpu"),
                                                  eviction_policy=DistanceLFU_EvictionPolicy(),
                                                  eviction_interval=eviction_interval, input_hash_size=2**63 - 1)
                for c in tables}
        self.mc = ManagedCollisionEmbeddingBagCollection(self.ebc, ManagedCollisionCollection(mchs, tables))

    def forward(self, features):
        return self.mc(features)[0]

    def embedding_bag_configs(self):
        return self.ebc.embedding_bag_configs()

    def is_weighted(self):
        return False

    @property
    def device(self):
        return torch.device("cpu")

    def memory_bytes(self) -> int:
        """Rows, torch Adagrad's state (one float per element) and MCH's buffers."""
        rows = sum(b.weight.numel() * 4 * 2 for b in self.ebc.embedding_bags.values())
        return rows + sum(buf.numel() * buf.element_size() for buf in self.mc._managed_collision_collection.buffers())


def build(args, n_dense: int):
    models, opts = {}, {}
    for name in MODELS:
        torch.manual_seed(args.seed)
        if name == "embedlookup":
            coll = EmbeddingBagCollection(configs(args.rows, args.dim), optimizer=el.optim.Adagrad(lr=args.lr),
                                          frequency=dict(policy="lfu", default_row="cold", half_life=200, sketch_width=1 << 12,
                                                         on_evict="drop"),
                                          seed=args.seed, num_threads=args.threads)
        else:
            coll = ZCHCollection(configs(args.rows, args.dim), args.rows, args.eviction_interval)
        m = DLRM(embedding_bag_collection=coll, dense_in_features=n_dense, dense_arch_layer_sizes=[64, args.dim],
                 over_arch_layer_sizes=[64, 1])
        params = [p for n, p in m.named_parameters() if p.numel() and "embedding_bag_collection" not in n]
        opt = [torch.optim.Adagrad(params, lr=args.lr)]
        if name == "torchrec_zch":
            opt.append(torch.optim.Adagrad(list(coll.ebc.parameters()), lr=args.lr))
        models[name], opts[name] = m, opt
    # The same initial dense layers in both (TorchRec's EBC drew its rows from torch's generator first).
    a, b = models["embedlookup"], models["torchrec_zch"]
    b.dense_arch.load_state_dict(a.dense_arch.state_dict())
    b.over_arch.load_state_dict(a.over_arch.state_dict())
    return models, opts


def embedding_bytes(model) -> int:
    """Bytes the embeddings hold at the end. TorchRec: rows, Adagrad state and
    MCH's buffers. Ours: per live row its padded row, Adagrad state, score
    metadata, key and index share (FrequencyTable.bytes_per_row), plus each
    sketch (the arena allocates 8 MiB chunks: for tables this small the
    allocated bytes are larger, see allocated_bytes in metrics.json)."""
    coll = model.sparse_arch.embedding_bag_collection
    if isinstance(coll, ZCHCollection):
        return coll.memory_bytes()
    total = 0
    for bag in coll.embedding_bags.values():
        t = bag.table
        total += len(t) * el.FrequencyTable.bytes_per_row(t.dim, t.optimizer) + t.memory_usage()["sketch_bytes"]
    return int(total)


def allocated_bytes(model) -> int | None:
    coll = model.sparse_arch.embedding_bag_collection
    if isinstance(coll, ZCHCollection):
        return coll.memory_bytes()
    return int(sum(m["total_bytes"] for m in coll.memory_usage().values()))


def kjt_of(sparse: torch.Tensor):
    B, F = sparse.shape
    return torchrec.KeyedJaggedTensor(keys=[f"cat_{f}" for f in range(F)], values=sparse.T.contiguous().reshape(-1),
                                      lengths=torch.ones(F * B, dtype=torch.int64))


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    gen = None
    path = args.data
    if path is None:
        path = os.path.join(args.out, "criteo_synthetic.tsv")
        t0 = time.perf_counter()
        gen = criteo.write_synthetic(path, args.generate, seed=args.seed)
        print(f"generated {path}: {gen['rows']} rows, click rate {gen['click_rate']:.3f}, oracle AUC "
              f"{gen['oracle_auc']:.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    elif not os.path.exists(path):
        raise FileNotFoundError(f"--data: no such file: {path}")
    t0 = time.perf_counter()
    batches = [(b.dense, kjt_of(b.sparse), b.label)
               for b in criteo.read_batches(path, args.batch_size, args.max_batches)]
    print(f"read {len(batches)} batches of {args.batch_size} ({time.perf_counter() - t0:.1f} s)", flush=True)
    models, opts = build(args, criteo.N_DENSE)
    loss_fn = nn.BCEWithLogitsLoss()
    scores = {m: [] for m in MODELS}
    train_s = {m: 0.0 for m in MODELS}
    windows = {m: [] for m in MODELS}
    labels = []
    examples = 0
    for i, (dense, kjt, y) in enumerate(batches):
        labels.append(y.numpy())
        order = MODELS if i % 2 == 0 else MODELS[::-1]
        for name in order:
            model = models[name]
            model.eval()
            with torch.no_grad():
                scores[name].append(model(dense, kjt).squeeze(1).numpy().copy())
            model.train()
            t0 = time.perf_counter()
            loss = loss_fn(model(dense, kjt).squeeze(1), y)
            for o in opts[name]:
                o.zero_grad()
            loss.backward()
            for o in opts[name]:
                o.step()
            train_s[name] += time.perf_counter() - t0
        examples += y.shape[0]
        if (i + 1) % args.window == 0 or i + 1 == len(batches):
            lo = (i // args.window) * args.window
            yl = np.concatenate(labels[lo:])
            line = [f"batch {i + 1}/{len(batches)}"]
            for name in MODELS:
                s = np.concatenate(scores[name][lo:])
                windows[name].append({"batches": [lo, i + 1], "examples": examples, "auc": auc(yl, s),
                                      "logloss": logloss(yl, s), "train_s": train_s[name]})
                line.append(f"{name} AUC {windows[name][-1]['auc']:.4f} ({examples / train_s[name]:,.0f} ex/s)")
            print("  ".join(line), flush=True)
    y_all = np.concatenate(labels)
    half = y_all.shape[0] // 2
    result = {"config": vars(args), "data": path, "generator": gen, "examples": int(y_all.shape[0]),
              "batches": len(batches), "models": {}}
    for name in MODELS:
        s = np.concatenate(scores[name])
        result["models"][name] = {
            "auc": auc(y_all, s), "logloss": logloss(y_all, s),
            "auc_second_half": auc(y_all[half:], s[half:]),
            "train_s": train_s[name], "examples_per_s": y_all.shape[0] / train_s[name],
            "embedding_bytes": embedding_bytes(models[name]), "allocated_bytes": allocated_bytes(models[name]),
            "windows": windows[name],
        }
    np.savez(os.path.join(args.out, "predictions.npz"), labels=y_all,
             **{name: np.concatenate(scores[name]) for name in MODELS})
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.join(args.out, "dlrm_criteo.png"), args.plot)
    return result


def plot(result: dict, path: str, extra: str | None = None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in result["models"].items():
        w = m["windows"]
        label = f"{name} (AUC {m['auc']:.4f}, {m['examples_per_s']:,.0f} ex/s)"
        a1.plot([x["examples"] for x in w], [x["auc"] for x in w], marker=".", label=label)
        a2.plot([x["train_s"] for x in w], [x["auc"] for x in w], marker=".", label=name)
    a1.set_xlabel("examples seen")
    a2.set_xlabel("training seconds (forward + backward + update)")
    for a in (a1, a2):
        a.set_ylabel("progressive-validation AUC (per window)")
        a.grid(alpha=0.3)
    a1.legend(fontsize=8)
    c = result["config"]
    fig.suptitle(f"TorchRec DLRM, {c['rows']} rows x {c['dim']} per table (26 tables), batch {c['batch_size']}, "
                 f"{c['threads']} thread(s): embedlookup EBC vs TorchRec MC-EBC", fontsize=9)
    fig.tight_layout()
    for p in filter(None, (path, extra)):
        fig.savefig(p, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for k in ("rows", "dim", "batch_size", "window", "threads", "eviction_interval", "generate"):
        if getattr(args, k) < 1:
            print(f"dlrm_criteo: error: --{k.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.rows < args.batch_size:
        print("dlrm_criteo: error: --rows must be >= --batch-size (a table's budget holds one batch's IDs)",
              file=sys.stderr)
        return 2
    try:
        res = run(args)
    except (OSError, ValueError) as e:
        print(f"dlrm_criteo: error: {e}", file=sys.stderr)
        return 1
    for name, m in res["models"].items():
        print(f"{name:14s} AUC {m['auc']:.4f} (second half {m['auc_second_half']:.4f})  logloss {m['logloss']:.4f}  "
              f"{m['examples_per_s']:,.0f} examples/s  embedding memory {m['embedding_bytes'] / 2**20:.1f} MiB")
    print(f"wrote {args.out}/metrics.json, predictions.npz, dlrm_criteo.png" + (f", {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
