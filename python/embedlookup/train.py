"""Continual training of a DLRM-style CTR model on a click stream.

One pass over a stream of batches, with progressive validation: every batch
is first scored by the current model (those predictions give logloss / AUC),
then trained on. Several embedding configurations are trained side by side
on the same batches so that they can be compared at equal embedding memory:

* ``hashing``: ``torch.nn.EmbeddingBag(rows, dim, sparse=True)`` with the
  hashing trick (each (feature, ID) hashed modulo a fixed number of rows;
  colliding IDs share a row) + ``torch.optim.Adagrad``;
* ``hash_table``: ``embedlookup.torch.HashEmbeddingBagCollection`` (one
  collision-free table shared by all features) with fused Adagrad, bounded
  by ``capacity`` rows so that its total bytes (rows, optimizer state, index
  and metadata) match the hashing model's; the table policy is pluggable
  (``TablePolicy``): the default admits IDs until the table is full and then
  maps unseen IDs to one out-of-vocabulary row per feature (no eviction: a
  full table stops learning new IDs);
* ``freq_table``: the same collection backed by one ``embedlookup.FrequencyTable``
  (``table=``): an ID gets a row after ``admit_count`` sightings (count-min
  sketch), rows beyond the budget are evicted LFU (score decayed with
  ``half_life`` batches), IDs without a row read one learned cold row. Its
  budget is the same bytes as ``hash_table``'s, counting 8 more bytes per
  row (score metadata) and the sketch;
* ``hash_table_unbounded``: the same without a bound (more memory; the
  ceiling a collision-free table reaches when it may keep every ID);
* ``freq_table_all``, ``freq_table_int8`` and ``freq_table_fp32_half``
  (only when ``--models`` names them): precision that follows frequency. A
  first pass counts the stream's (feature, ID) pairs; ``freq_table_all`` is
  a FrequencyTable holding every one in fp32 (admitted at first sighting,
  nothing evicted); the other two get ``--cold-budget-fraction`` (0.5) of its
  bytes (rows x ``bytes_per_row``): hot fp32 rows and cold int8 rows
  (``cold_row_type="int8"``, ``--hot-share``), or fp32 rows evicting
  LFU. Their memory is the budget's accounting (docs/frequency.md);
  ``metrics.json`` has each table's allocated bytes by part too;
* ``qr`` and ``mixed_dim`` (only when ``--models`` names them): a
  quotient-remainder ``QREmbeddingBag`` and per-feature
  ``MixedDimEmbeddingBag``s (``--mixed-alpha``) at the hashing model's bytes
  (``embedlookup.torch.compositional``; docs/compressed-models.md).

Streams: ``SyntheticClickStream`` (seeded, documented below) or
``criteo_batches`` for files in the Criteo display-advertising TSV layout.

Run (installed: the ``embedlookup-train`` console script; from a checkout:
``PYTHONPATH=python python3 -m embedlookup.train`` with the same options)::

    embedlookup-train --quick                       # a complete small run, well under a minute
    embedlookup-train --batches 500 --rows 200000 --window 25 --out results
    embedlookup-train --criteo day_0.tsv --rows 200000 --out criteo_results
    embedlookup-train --ps local --trainers 2 --shards 2 --mode sync,bounded:2,async   # train_ps.py

It writes ``metrics.json`` (per-window logloss / AUC, memory, configuration)
and ``training.png`` (when matplotlib is installed) into ``--out`` (default
``train_results/``), prints one summary line per model and the paths it
wrote, and exits 0; it exits 2 on bad arguments and 1 when the input cannot
be read or the output cannot be written.

Result of the first command (seed 0, with --threads 1; docs/torch.md has seed 1): mean
logloss / AUC over the run -- hashing 0.4525 / 0.7754, hash_table 0.4478 /
0.7810, freq_table 0.4497 / 0.7775 (second half 0.4291 / 0.8046, level with
hash_table, hashing 0.4346 / 0.7984), unbounded 0.4460 / 0.7833 at 5x the
memory; the bounded three use 24.4-24.5 MiB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from . import init as _init
from . import optim as _optim
from .frequency import FrequencyTable
from .table import EmbeddingTable
from .torch import HashEmbeddingBagCollection
from .torch.compositional import mixed_dims

__all__ = ["Batch", "SyntheticClickStream", "criteo_batches", "DLRM", "TablePolicy", "AdmitUntilFull",
           "FreqTableEmbeddings", "run", "train", "summary", "build_parser", "main"]

_M64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit avalanche mix (murmur3's fmix64) on uint64 arrays: seeds the
    stream's hidden weights and the hashing-trick buckets."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        for mult in (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)):
            x ^= x >> np.uint64(33)
            x *= mult
        x ^= x >> np.uint64(33)
    return x


@dataclass
class Batch:
    """One mini-batch: ``dense`` (B, n_dense) float32, ``sparse`` (B, F)
    int64 IDs (one per feature), ``label`` (B,) float32 in {0, 1}."""

    dense: torch.Tensor
    sparse: torch.Tensor
    label: torch.Tensor


# --------------------------------------------------------------- synthetic
@dataclass
class SyntheticClickStream:
    """A seeded click stream with the structure of CTR data.

    * ``n_features`` categorical features; feature f draws a popularity rank
      r ~ Zipf(``zipf_alpha``) truncated to ``vocab[f]`` and maps it to an ID;
    * drift: for the first ``drifting`` features (items, ads) the ID of rank r
      at batch t is ``r + floor(drift * t)``: new IDs keep arriving at the head
      and old ones fade, as in a live catalogue;
    * hidden click model: ``logit = bias + sum_f w_f(ID) + dense . beta`` with
      ``w_f(ID) ~ N(0, weight_std)`` fixed per (seed, feature, ID) by a
      counter-based hash, so an ID's effect never changes but unseen IDs keep
      appearing; label ~ Bernoulli(sigmoid(logit));
    * ``n_dense`` dense features ~ N(0, 1).

    Deterministic for a given seed.
    """

    n_features: int = 8
    vocab: tuple = (2_000_000, 1_000_000, 300_000, 100_000, 30_000, 10_000, 1_000, 100)
    zipf_alpha: float = 1.15
    drifting: int = 2
    drift: float = 200.0
    n_dense: int = 4
    weight_std: float = 0.8
    bias: float = -2.0
    batch_size: int = 2048
    seed: int = 0

    def __post_init__(self):
        if len(self.vocab) < self.n_features:
            raise ValueError(f"vocab needs {self.n_features} sizes, got {len(self.vocab)}")

    def hidden_weight(self, f: int, ids: np.ndarray) -> np.ndarray:
        h1 = _mix64(ids.astype(np.int64).view(np.uint64) ^ np.uint64((self.seed * 1000003 + f * 7919 + 1) & _M64))
        h2 = _mix64(h1 ^ np.uint64(0x9E3779B97F4A7C15))
        u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
        u2 = (h2 >> np.uint64(11)).astype(np.float64) / 2.0**53
        return self.weight_std * np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)

    def batches(self, n_batches: int) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        beta = rng.normal(0, 0.3, self.n_dense)
        B, F = self.batch_size, self.n_features
        for t in range(n_batches):
            ids = np.empty((B, F), np.int64)
            logit = np.full(B, self.bias)
            for f in range(F):
                r = rng.zipf(self.zipf_alpha, B) - 1
                r = r % self.vocab[f]
                shift = int(self.drift * t) if f < self.drifting else 0
                ids[:, f] = r + shift
                logit += self.hidden_weight(f, ids[:, f])
            dense = rng.normal(0, 1, (B, self.n_dense)).astype(np.float32)
            logit += dense @ beta
            label = (rng.random(B) < 1 / (1 + np.exp(-logit))).astype(np.float32)
            yield Batch(torch.from_numpy(dense), torch.from_numpy(ids), torch.from_numpy(label))


# ------------------------------------------------------------------ criteo
CRITEO_DENSE, CRITEO_SPARSE = 13, 26


def criteo_batches(path: str, batch_size: int = 2048, max_batches: Optional[int] = None) -> Iterator[Batch]:
    """Reads the Criteo display-advertising TSV layout: ``label``, 13 integer
    columns, 26 categorical columns of 32-bit hex hashes, tab-separated;
    empty fields are missing. Integers become ``log(1 + max(x, 0))`` (missing:
    0); a categorical field becomes its hex value as an int64 ID (missing: -1).
    Lines with the wrong number of fields raise ``ValueError`` naming the line.
    """
    n_cols = 1 + CRITEO_DENSE + CRITEO_SPARSE
    dense = np.zeros((batch_size, CRITEO_DENSE), np.float32)
    sparse = np.full((batch_size, CRITEO_SPARSE), -1, np.int64)
    label = np.zeros(batch_size, np.float32)
    k, done = 0, 0
    with open(path, encoding="ascii") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != n_cols:
                raise ValueError(f"{path}:{lineno}: expected {n_cols} tab-separated fields "
                                 f"(label, 13 integers, 26 categoricals), got {len(parts)}")
            try:
                label[k] = float(parts[0])
                for j in range(CRITEO_DENSE):
                    s = parts[1 + j]
                    dense[k, j] = math.log1p(max(int(s), 0)) if s else 0.0
                for j in range(CRITEO_SPARSE):
                    s = parts[1 + CRITEO_DENSE + j]
                    sparse[k, j] = int(s, 16) if s else -1
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            k += 1
            if k == batch_size:
                yield Batch(torch.from_numpy(dense.copy()), torch.from_numpy(sparse.copy()),
                            torch.from_numpy(label.copy()))
                k, done = 0, done + 1
                sparse.fill(-1)
                dense.fill(0)
                if max_batches is not None and done >= max_batches:
                    return
    if k:
        yield Batch(torch.from_numpy(dense[:k].copy()), torch.from_numpy(sparse[:k].copy()),
                    torch.from_numpy(label[:k].copy()))


# ------------------------------------------------------------------- model
class TablePolicy:
    """Decides, before each forward, which IDs a bounded hashed table sees.
    ``prepare(sparse)`` returns the (B, F) IDs to look up. Subclass to plug in
    admission / eviction (``FreqTableEmbeddings`` shows the engine's own)."""

    def bind(self, collection: HashEmbeddingBagCollection) -> None:
        self.collection = collection

    def prepare(self, sparse: torch.Tensor) -> torch.Tensor:
        return sparse


class AdmitUntilFull(TablePolicy):
    """First come, first admitted, until ``capacity`` rows; afterwards unseen
    IDs map to one reserved out-of-vocabulary ID per feature (which is
    admitted first, so it always has a row). What the engine offers today:
    no eviction, so a full table stops learning new IDs."""

    OOV = -(1 << 40)  # a reserved ID; fits the shared table's namespaced key range

    def __init__(self, capacity: int):
        self.capacity = int(capacity)

    def bind(self, collection):
        super().bind(collection)
        self._keys = None

    def prepare(self, sparse):
        coll = self.collection
        table = coll.bag.table
        F = sparse.shape[1]
        if len(table) == 0:  # reserve the OOV rows first
            coll(values=torch.full((F,), self.OOV, dtype=torch.int64), lengths=torch.ones(F, dtype=torch.int64))
        room = self.capacity - len(table)
        B, F = sparse.shape
        keys = _namespaced(sparse, coll).reshape(F, B).T  # (B, F), as the table stores them
        _, found = table.find(keys.reshape(-1))
        new = ~found.reshape(B, F)
        if not new.any():
            return sparse
        # Admit the first `room` distinct unseen keys (in batch order); the rest read the OOV row.
        unseen = keys[new]
        uniq, first = np.unique(unseen, return_index=True)
        admitted = uniq[np.argsort(first)][:max(room, 0)]
        out = sparse.numpy().copy()
        sub = out[new]
        sub[~np.isin(unseen, admitted)] = self.OOV
        out[new] = sub
        return torch.from_numpy(out)


def _namespaced(sparse: torch.Tensor, coll: HashEmbeddingBagCollection) -> np.ndarray:
    """The keys the shared table stores for (B, F) IDs (feature-major)."""
    F, B = sparse.shape[1], sparse.shape[0]
    values = sparse.T.contiguous().reshape(-1)
    fo = torch.arange(0, F * B + 1, B, dtype=torch.int64)
    return torch.ops.embedlookup.namespace_keys(values, fo, coll._bits).numpy()


class HashingTrickEmbeddings(nn.Module):
    """(B, F) IDs -> (F, B, dim) via one nn.EmbeddingBag of ``rows`` rows,
    (feature, ID) hashed modulo rows (the hashing trick)."""

    def __init__(self, n_features: int, rows: int, dim: int, seed: int = 0):
        super().__init__()
        self.emb = nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)
        nn.init.uniform_(self.emb.weight, -0.05, 0.05)
        self.rows, self.seed = rows, seed
        self.salt = np.uint64(_mix64(np.arange(n_features, dtype=np.uint64) + np.uint64(seed + 1)))

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        B, F = sparse.shape
        ids = sparse.numpy().astype(np.int64).view(np.uint64)
        h = _mix64(ids ^ self.salt[None, :]) % np.uint64(self.rows)
        idx = torch.from_numpy(h.astype(np.int64).T.reshape(-1))
        out = self.emb(idx, torch.arange(F * B, dtype=torch.int64))
        return out.reshape(F, B, -1)

    def memory_bytes(self) -> int:
        # rows + torch Adagrad's dense state (one float per element)
        return 2 * self.emb.weight.numel() * 4


class HashTableEmbeddings(nn.Module):
    """(B, F) IDs -> (F, B, dim) via HashEmbeddingBagCollection (one shared
    collision-free table), after the table policy."""

    def __init__(self, n_features: int, dim: int, capacity: Optional[int], lr: float, seed: int = 0,
                 policy: Optional[TablePolicy] = None, row_type: str = "fp32"):
        super().__init__()
        opt, ini = _optim.Adagrad(lr=lr), _init.uniform(-0.05, 0.05, seed=seed)
        # fp16 / bf16 rows: stochastic rounding seeded by the run's seed
        table = None if row_type == "fp32" else EmbeddingTable(dim, initializer=ini, capacity=capacity,
                                                               optimizer=opt, row_type=row_type,
                                                               rounding_seed=seed)
        names = [f"f{i}" for i in range(n_features)]
        if table is None:
            self.coll = HashEmbeddingBagCollection(names, dim, mode="sum", optimizer=opt, initializer=ini,
                                                   capacity=capacity)
        else:  # the table carries the optimizer, initializer and capacity
            self.coll = HashEmbeddingBagCollection(names, dim, mode="sum", table=table)
        self.policy = policy or TablePolicy()
        self.policy.bind(self.coll)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        if self.training:
            sparse = self.policy.prepare(sparse)
        B, F = sparse.shape
        out = self.coll(values=sparse.T.contiguous().reshape(-1), lengths=torch.ones(F * B, dtype=torch.int64))
        return torch.stack(list(out.values()))

    def prefetch(self, sparse: torch.Tensor):
        """Starts reading the tier rows of a future batch's (B, F) IDs (when
        the table has a tier; else nothing): the training loop calls it one
        batch ahead."""
        B, F = sparse.shape
        return self.coll.prefetch(values=sparse.T.contiguous().reshape(-1), lengths=torch.ones(F * B, dtype=torch.int64))

    def memory_bytes(self) -> int:
        """Bytes in use: live rows with their Adagrad state and key, plus the
        index as allocated. (The arena allocates 8 MiB chunks, so allocated
        bytes round up; ``allocated_bytes`` gives those.)"""
        return _table_bytes(self.coll.bag.table)

    def allocated_bytes(self) -> int:
        return int(self.coll.memory_usage()["total_bytes"])


class FreqTableEmbeddings(HashTableEmbeddings):
    """(B, F) IDs -> (F, B, dim) via HashEmbeddingBagCollection backed by one
    ``embedlookup.FrequencyTable``: an ID gets a row after ``admit_count``
    sightings (count-min sketch), rows over ``budget_rows`` are evicted by
    ``policy`` (LFU on a score decayed with ``half_life`` batches), and IDs
    without a row read the shared learned cold row (``default_row``)."""

    def __init__(self, n_features: int, dim: int, budget_rows: int, lr: float, seed: int = 0, *,
                 admit_count: int = 2, policy: str = "lfu", half_life: float = 100.0, default_row: str = "cold",
                 sketch_width: int = 1 << 14, sketch_depth: int = 4):
        nn.Module.__init__(self)
        self.table = FrequencyTable(dim, initializer=_init.uniform(-0.05, 0.05, seed=seed),
                                    optimizer=_optim.Adagrad(lr=lr), budget_rows=budget_rows, policy=policy,
                                    half_life=half_life, admit_count=admit_count, default_row=default_row,
                                    sketch_width=sketch_width, sketch_depth=sketch_depth,
                                    on_evict="drop")  # evicted rows are not kept anywhere
        self.coll = HashEmbeddingBagCollection([f"f{i}" for i in range(n_features)], dim, mode="sum",
                                               table=self.table)
        self.policy = TablePolicy()
        self.policy.bind(self.coll)

    def memory_bytes(self) -> int:
        """As HashTableEmbeddings, plus each row's 8-byte score and the sketch."""
        t = self.coll.bag.table
        m = t.memory_usage()
        return int(len(t) * (m["row_bytes_per_row"] + 4 * t.dim + 8 + 8) + m["index_bytes"] + m["sketch_bytes"])


class FreqTableAccounted(FreqTableEmbeddings):
    """FreqTableEmbeddings (``budget_rows=None``: unbounded, nothing evicted)
    whose memory is counted by the budget rule of ``FrequencyTable``:
    rows x ``bytes_per_row`` (row, Adagrad state, score, key, index share)
    plus the sketch, so it compares with :class:`MixedPrecisionFreqEmbeddings`
    at equal accounting."""

    def __init__(self, n_features: int, dim: int, budget_rows: Optional[int], lr: float, seed: int = 0, **kw):
        if budget_rows is None:
            kw["policy"] = "none"
        super().__init__(n_features, dim, budget_rows, lr, seed, **kw)

    def memory_bytes(self) -> int:
        t = self.coll.bag.table
        return int(len(t) * t.bytes_per_row(t.dim, t.optimizer) + t.memory_usage()["sketch_bytes"])


class MixedPrecisionFreqEmbeddings(FreqTableEmbeddings):
    """FreqTableEmbeddings whose FrequencyTable keeps hot rows in fp32 and
    demotes cold rows to int8 (``cold_row_type="int8"``) under one byte
    budget (docs/frequency.md, "Precision that follows frequency")."""

    def __init__(self, n_features: int, dim: int, budget_bytes: int, lr: float, seed: int = 0, *,
                 admit_count: int = 2, policy: str = "lfu", half_life: float = 100.0, default_row: str = "cold",
                 sketch_width: int = 1 << 14, sketch_depth: int = 4, hot_share: float = 0.25):
        nn.Module.__init__(self)
        self.table = FrequencyTable(dim, initializer=_init.uniform(-0.05, 0.05, seed=seed),
                                    optimizer=_optim.Adagrad(lr=lr), budget_bytes=budget_bytes, policy=policy,
                                    half_life=half_life, admit_count=admit_count, default_row=default_row,
                                    sketch_width=sketch_width, sketch_depth=sketch_depth, on_evict="drop",
                                    cold_row_type="int8", hot_share=hot_share)
        self.coll = HashEmbeddingBagCollection([f"f{i}" for i in range(n_features)], dim, mode="sum",
                                               table=self.table)
        self.policy = TablePolicy()
        self.policy.bind(self.coll)

    def memory_bytes(self) -> int:
        """Hot rows x bytes_per_row + cold rows x cold_bytes_per_row, plus the sketch."""
        m = self.table.memory_usage()
        return int(m["accounted_bytes"] + m["sketch_bytes"])


def count_admitted_keys(batches, admit_count: int) -> int:
    """Distinct (feature, ID) pairs of a stream seen at least ``admit_count``
    times: the rows an unbounded FrequencyTable ends with (its count-min
    sketch may admit a few more)."""
    counts = None
    for b in batches:
        x = b.sparse.numpy()
        keys = (np.arange(x.shape[1], dtype=np.int64)[None, :] << 48) | (x & ((1 << 48) - 1))
        k, c = np.unique(keys.reshape(-1), return_counts=True)
        if counts is not None:
            k, inv = np.unique(np.concatenate([counts[0], k]), return_inverse=True)
            c = np.bincount(inv, weights=np.concatenate([counts[1], c])).astype(np.int64)
        counts = (k, c)
    return 0 if counts is None else int(np.count_nonzero(counts[1] >= admit_count))


def _table_bytes(table) -> int:
    """Bytes in use of one table: live rows with their optimizer state and
    key, plus the index (HashTableEmbeddings' accounting)."""
    m = table.memory_usage()
    return int(len(table) * (m["row_bytes_per_row"] + 4 * table.dim + 8) + m["index_bytes"])


class QREmbeddings(nn.Module):
    """(B, F) IDs -> (F, B, dim) via one ``QREmbeddingBag`` shared by all
    features (quotient-remainder, element-wise product): (feature, ID) is
    hashed as the hashing trick does into ``num_embeddings = m * q_rows``
    values, row ``h // m`` of a ``q_rows``-row quotient table times row
    ``h % m`` of an ``m``-row remainder table. ``rows = q_rows + m`` is
    the number of rows a bounded table would get in the same bytes, split in
    halves: ~rows^2 / 4 distinct vectors instead of ``rows``."""

    def __init__(self, n_features: int, rows: int, dim: int, lr: float, seed: int = 0):
        super().__init__()
        from .torch.compositional import QREmbeddingBag

        self.m = max(1, rows // 2)
        self.q_rows = max(1, rows - self.m)
        self.qr = QREmbeddingBag(dim, self.m * self.q_rows, self.m, "sum", hash_ids=False,
                                 optimizer=_optim.Adagrad(lr=lr), initializer=_init.uniform(-0.05, 0.05, seed=seed),
                                 remainder_initializer=_init.uniform(0.9, 1.1, seed=seed + 1))
        self.salt = np.uint64(_mix64(np.arange(n_features, dtype=np.uint64) + np.uint64(seed + 1)))

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        B, F = sparse.shape
        ids = sparse.numpy().astype(np.int64).view(np.uint64)
        h = _mix64(ids ^ self.salt[None, :]) % np.uint64(self.qr.num_embeddings)
        out = self.qr(torch.from_numpy(h.astype(np.int64).T.reshape(-1, 1)))
        return out.reshape(F, B, -1)

    def memory_bytes(self) -> int:
        return _table_bytes(self.qr.quotient.table) + _table_bytes(self.qr.remainder.table)


class MixedDimEmbeddings(nn.Module):
    """(B, F) IDs -> (F, B, dim) via one ``MixedDimEmbeddingBag`` per feature:
    feature f stores ``dims[f]`` columns (Ginart et al.'s power law over the
    features' cardinalities, ``mixed_dims(vocab, dim, alpha)``) projected to
    ``dim``, in at most ``rows[f]`` rows (IDs hashed modulo ``rows[f]``).
    ``rows_for_budget`` sizes ``rows`` so that all tables (rows, Adagrad
    state, keys, index) and the projections (with Adam's two moments) fill a
    byte budget."""

    def __init__(self, dims, rows, dim: int, lr: float, seed: int = 0):
        super().__init__()
        from .torch.compositional import MixedDimEmbeddingBag

        self.dims, self.rows = [int(d) for d in dims], [int(r) for r in rows]
        self.bags = nn.ModuleList(
            MixedDimEmbeddingBag(dim, d, "sum", optimizer=_optim.Adagrad(lr=lr), capacity=r,
                                 initializer=_init.uniform(-0.05, 0.05, seed=seed + f))
            for f, (d, r) in enumerate(zip(self.dims, self.rows)))
        self.salt = np.uint64(_mix64(np.arange(len(self.dims), dtype=np.uint64) + np.uint64(seed + 1)))

    @staticmethod
    def rows_for_budget(budget: int, dims, vocab, dim: int) -> list:
        """Rows per feature: ``min(vocab[f], R)`` (``None`` = unbounded) with the
        largest common R whose bytes fit ``budget``."""
        per_row = [budget / hash_table_rows_for_bytes(budget, d) for d in dims]
        fixed = sum(12 * d * dim for d in dims if d != dim)

        def cost(R):
            return fixed + sum(min(v or R, R) * c for v, c in zip(vocab, per_row))

        lo, hi = 1, int(budget)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid - 1)
        return [min(v or lo, lo) for v in vocab]

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        ids = sparse.numpy().astype(np.int64).view(np.uint64)
        out = []
        for f, bag in enumerate(self.bags):
            h = _mix64(ids[:, f] ^ self.salt[f]) % np.uint64(self.rows[f])
            out.append(bag(torch.from_numpy(h.astype(np.int64).reshape(-1, 1))))
        return torch.stack(out)

    def memory_bytes(self) -> int:
        proj = sum(12 * b.table_dim * b.embedding_dim for b in self.bags if b.projection is not None)
        return sum(_table_bytes(b.table) for b in self.bags) + proj


class DLRM(nn.Module):
    """Bottom MLP on dense features, embeddings per sparse feature, pairwise
    dot-product interactions, top MLP -> click logit (Naumov et al., 2019)."""

    def __init__(self, embeddings: nn.Module, n_dense: int, n_features: int, dim: int, hidden: int = 64):
        super().__init__()
        self.embeddings = embeddings
        self.bottom = nn.Sequential(nn.Linear(n_dense, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.ReLU())
        n = n_features + 1
        self.register_buffer("pairs", torch.triu_indices(n, n, offset=1), persistent=False)
        self.top = nn.Sequential(nn.Linear(dim + n * (n - 1) // 2, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        d = self.bottom(dense)                                # (B, dim)
        e = self.embeddings(sparse).transpose(0, 1)           # (B, F, dim)
        z = torch.cat([d.unsqueeze(1), e], dim=1)             # (B, F+1, dim)
        inter = torch.bmm(z, z.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        return self.top(torch.cat([d, inter], dim=1)).squeeze(1)


# ----------------------------------------------------------------- metrics
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum statistic (ties get average ranks)."""
    labels = labels.astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over runs of equal scores (runs are rare)
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def logloss(labels: np.ndarray, logits: np.ndarray) -> float:
    # log(1 + e^x) - y x, stable
    return float(np.mean(np.logaddexp(0, logits) - labels * logits))


# --------------------------------------------------------------------- run
@dataclass
class RunConfig:
    dim: int = 16
    rows: int = 100_000           # hashing-trick rows; the bounded table gets the same bytes
    lr_embedding: float = 0.05
    lr_dense: float = 1e-3
    window: int = 20              # batches per reported window
    models: tuple = ("hashing", "hash_table", "freq_table", "hash_table_unbounded")
    seed: int = 0
    # freq_table: FrequencyTable admission / eviction
    admit_count: int = 2
    freq_policy: str = "lfu"
    half_life: float = 100.0      # batches (one clock step per training lookup)
    default_row: str = "cold"
    # count-min counters per sketch row (x 4 rows x 4 bytes, counted in the
    # budget); None: the power of two nearest below budget / 512 (~2-3 %)
    sketch_width: Optional[int] = None
    mixed_alpha: float = 0.3      # mixed_dim: Ginart et al.'s power-law exponent
    # freq_table_int8 / freq_table_fp32_half: their byte budget as a share of
    # what freq_table_all (fp32, every admitted row) ends with
    cold_budget_fraction: float = 0.5
    hot_share: float = 0.25       # freq_table_int8: the hot fp32 rows' share of the budget
    extra: dict = field(default_factory=dict)


def hash_table_rows_for_bytes(budget: int, dim: int) -> int:
    """Rows of a bounded table whose rows + Adagrad state + index + metadata
    fit ``budget`` bytes, measured on a probe table (index bytes depend on
    the load the index keeps)."""
    probe = HashEmbeddingBagCollection(["a"], dim, optimizer=_optim.Adagrad())
    t = probe.bag.table
    n = 20_000
    t.lookup(np.arange(n, dtype=np.int64))
    t.apply_gradients(np.arange(n, dtype=np.int64), np.zeros((n, dim), np.float32), _optim.Adagrad())
    m = t.memory_usage()
    # Index bytes per row at this probe's load; the index doubles as it grows,
    # so at capacity it may hold up to 2x this (reported, not hidden).
    per_row = m["row_bytes_per_row"] + 4 * dim + 8 + m["index_bytes"] / n
    return int(budget / per_row)


def freq_table_rows_for_bytes(budget: int, dim: int, sketch_bytes: int) -> int:
    """Rows of a FrequencyTable within ``budget`` bytes under the accounting of
    :func:`hash_table_rows_for_bytes`, plus 8 bytes of score metadata per row
    and the admission sketch."""
    per_row_hash = budget / hash_table_rows_for_bytes(budget, dim)
    return int((budget - sketch_bytes) / (per_row_hash + 8))


def build_models(cfg: RunConfig, n_features: int, n_dense: int) -> dict:
    torch.manual_seed(cfg.seed)
    models = {}
    budget = 2 * cfg.rows * cfg.dim * 4
    for name in cfg.models:
        if name == "hashing":
            emb = HashingTrickEmbeddings(n_features, cfg.rows, cfg.dim, cfg.seed)
        elif name == "hash_table":
            cap = hash_table_rows_for_bytes(budget, cfg.dim)
            emb = HashTableEmbeddings(n_features, cfg.dim, cap, cfg.lr_embedding, cfg.seed, AdmitUntilFull(cap))
        elif name == "freq_table":
            width = cfg.sketch_width or 1 << max(6, int(math.log2(budget / 512)))
            sketch_bytes = 4 * width * 4 if cfg.admit_count > 1 else 0
            rows = freq_table_rows_for_bytes(budget, cfg.dim, sketch_bytes)
            emb = FreqTableEmbeddings(n_features, cfg.dim, rows, cfg.lr_embedding, cfg.seed,
                                      admit_count=cfg.admit_count, policy=cfg.freq_policy, half_life=cfg.half_life,
                                      default_row=cfg.default_row, sketch_width=width)
        elif name == "qr":
            emb = QREmbeddings(n_features, hash_table_rows_for_bytes(budget, cfg.dim), cfg.dim, cfg.lr_embedding,
                               cfg.seed)
        elif name == "mixed_dim":
            # Cardinalities: the synthetic stream's vocab (drifting features: unbounded);
            # unknown (Criteo) -> equal, so every feature keeps dim.
            stream = cfg.extra.get("stream")
            vocab = ([None if f < stream["drifting"] else stream["vocab"][f] for f in range(n_features)]
                     if stream else [None] * n_features)
            dims = mixed_dims([v or 10 * max(stream["vocab"]) for v in vocab] if stream else [1] * n_features,
                              cfg.dim, cfg.mixed_alpha)
            rows = MixedDimEmbeddings.rows_for_budget(budget, dims, vocab, cfg.dim)
            emb = MixedDimEmbeddings(dims, rows, cfg.dim, cfg.lr_embedding, cfg.seed)
        elif name == "hash_table_unbounded":
            emb = HashTableEmbeddings(n_features, cfg.dim, None, cfg.lr_embedding, cfg.seed)
        elif name in PRECISION_MODELS:
            # Every row at fp32 (freq_table_all), and at a share of its bytes:
            # hot fp32 + cold int8 (freq_table_int8) or fp32 evicting
            # (freq_table_fp32_half). Same admission and policy.
            all_rows = cfg.extra.get("all_rows")
            if not all_rows:
                raise ValueError(f"{name}: needs cfg.extra['all_rows'] (count_admitted_keys of the stream)")
            # Every key gets a row at its first sighting (admit_count=1: no
            # sketch), so freq_table_all holds exactly all_rows rows.
            kw = dict(admit_count=1, policy=cfg.freq_policy, half_life=cfg.half_life,
                      default_row=cfg.default_row, sketch_width=64)
            share = int(cfg.cold_budget_fraction * all_rows * FrequencyTable.bytes_per_row(cfg.dim, _optim.Adagrad()))
            if name == "freq_table_all":
                emb = FreqTableAccounted(n_features, cfg.dim, None, cfg.lr_embedding, cfg.seed, **kw)
            elif name == "freq_table_int8":
                emb = MixedPrecisionFreqEmbeddings(n_features, cfg.dim, share, cfg.lr_embedding, cfg.seed,
                                                   hot_share=cfg.hot_share, **kw)
            else:
                rows = share // FrequencyTable.bytes_per_row(cfg.dim, _optim.Adagrad())
                emb = FreqTableAccounted(n_features, cfg.dim, rows, cfg.lr_embedding, cfg.seed, **kw)
        elif name in ROW_TYPE_MODELS:  # hash_table_unbounded with compressed rows
            emb = HashTableEmbeddings(n_features, cfg.dim, None, cfg.lr_embedding, cfg.seed,
                                      row_type=ROW_TYPE_MODELS[name])
        else:
            raise ValueError(f"unknown model {name!r}")
        torch.manual_seed(cfg.seed)  # every configuration starts from the same dense weights
        model = DLRM(emb, n_dense, n_features, cfg.dim)
        dense_params = [p for n_, p in model.named_parameters() if not n_.startswith("embeddings.")]
        opts = [torch.optim.Adam(dense_params, lr=cfg.lr_dense)]
        if name == "mixed_dim":  # the projections are dense parameters of the embedding module
            proj = [b.projection.weight for b in emb.bags if b.projection is not None]
            if proj:
                opts[0].add_param_group({"params": proj})
        if name == "hashing":
            opts.append(torch.optim.Adagrad(emb.parameters(), lr=cfg.lr_embedding))
        models[name] = (model, opts)
    return models


def run(batches, cfg: RunConfig, n_features: int, n_dense: int, log=print) -> dict:
    """Trains every configured model one pass over ``batches`` with
    progressive validation; returns the metrics dict (see module doc)."""
    models = build_models(cfg, n_features, n_dense)
    loss_fn = nn.BCEWithLogitsLoss()
    hist = {name: {"logloss": [], "auc": [], "memory_bytes": [], "seconds": 0.0} for name in models}
    buf = {name: ([], []) for name in models}
    seen = 0
    # One batch ahead: before training on batch t, tables over a file tier
    # start reading batch t+1's rows (prefetch), so the device works while
    # this step computes (docs/storage.md, "Prefetch"). Without a tier it
    # does nothing.
    it = iter(batches)
    nxt = next(it, None)
    t = -1
    while nxt is not None:
        batch, nxt = nxt, next(it, None)
        t += 1
        seen += batch.label.shape[0]
        for name, (model, opts) in models.items():
            t0 = time.perf_counter()
            ahead = getattr(model.embeddings, "prefetch", None)
            if nxt is not None and ahead is not None:
                ahead(nxt.sparse)
            model.train()
            logits = model(batch.dense, batch.sparse)
            buf[name][0].append(batch.label.numpy())
            buf[name][1].append(logits.detach().numpy().copy())  # scored before this batch's update
            loss = loss_fn(logits, batch.label)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()  # hashed tables update here (fused)
            for o in opts:
                o.step()
            hist[name]["seconds"] += time.perf_counter() - t0
        if (t + 1) % cfg.window == 0:
            for name, (model, _) in models.items():
                y, s = np.concatenate(buf[name][0]), np.concatenate(buf[name][1])
                hist[name]["logloss"].append(logloss(y, s))
                hist[name]["auc"].append(auc(y, s))
                hist[name]["memory_bytes"].append(model.embeddings.memory_bytes())
                buf[name] = ([], [])
            log(f"batch {t + 1:5d} samples {seen:9d}  " + "  ".join(
                f"{n}: ll={h['logloss'][-1]:.4f} auc={h['auc'][-1]:.4f}" for n, h in hist.items()))
    for name, (model, _) in models.items():
        h = hist[name]
        h["mean_logloss"] = float(np.mean(h["logloss"])) if h["logloss"] else float("nan")
        h["mean_auc"] = float(np.nanmean(h["auc"])) if h["auc"] else float("nan")
        if name.startswith("hash_table") or name.startswith("freq_table"):
            h["allocated_bytes"] = model.embeddings.allocated_bytes()
            h["rows"] = len(model.embeddings.coll.bag.table)
            h["capacity"] = model.embeddings.coll.bag.table.capacity
        if name.startswith("freq_table"):
            # what the table allocated, by part (cold rows included), and its budget accounting
            h["memory_usage"] = {k: v for k, v in model.embeddings.coll.bag.table.memory_usage().items()
                                 if isinstance(v, (int, float))}
            st = model.embeddings.coll.bag.table.stats()
            h["budget_rows"] = model.embeddings.coll.bag.table.budget_rows
            h["table_stats"] = {k: st[k] for k in ("admitted", "rejected", "evicted", "hits", "misses",
                                                   "cold_updates", "evict_pause_max_ms", "sketch_bytes",
                                                   "cold_rows", "demoted", "promoted", "cold_dropped") if k in st}
    return {"config": asdict(cfg), "samples": seen, "models": hist}


def _pyplot():
    """(matplotlib.pyplot on the Agg backend, None), or (None, why there is no plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return None, f"matplotlib is not available ({e}); no plot written"
    return plt, None


def plot(result: dict, path: str, title: str = "") -> Optional[str]:
    """Writes the PNG; returns None, or why no plot was written (matplotlib missing)."""
    plt, why = _pyplot()
    if why:
        return why
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    w = result["config"]["window"]
    for name, h in result["models"].items():
        x = np.arange(1, len(h["logloss"]) + 1) * w
        mb = h["memory_bytes"][-1] / 2**20 if h["memory_bytes"] else float("nan")
        label = f"{name} ({mb:.1f} MiB)"
        ax[0].plot(x, h["logloss"], label=label)
        ax[1].plot(x, h["auc"], label=label)
        ax[2].plot(x, np.array(h["memory_bytes"]) / 2**20, label=name)
    ax[0].set(xlabel="batch", ylabel="logloss (progressive, per window)")
    ax[1].set(xlabel="batch", ylabel="AUC (progressive, per window)")
    ax[2].set(xlabel="batch", ylabel="embedding memory (MiB)")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title or "progressive validation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


MODELS = ("hashing", "hash_table", "freq_table", "hash_table_unbounded")
# Trained only when --models names them: compositional (quotient-remainder)
# and mixed-dimension embeddings at the hashing trick's bytes.
COMPRESSED_MODELS = ("qr", "mixed_dim")
# Not in the default run: hash_table_unbounded with fp16 / bf16 rows
# (stochastic rounding, docs/compressed.md).
ROW_TYPE_MODELS = {"hash_table_unbounded_fp16": "fp16", "hash_table_unbounded_bf16": "bf16"}
# Not in the default run: precision that follows frequency (docs/frequency.md)
# -- a FrequencyTable holding every admitted row in fp32, and at
# --cold-budget-fraction of its bytes: hot fp32 + cold int8, or fp32 evicting.
PRECISION_MODELS = ("freq_table_all", "freq_table_int8", "freq_table_fp32_half")

# Options whose default --quick changes: (full run, --quick).
_SIZES = {
    "batches": (400, 40),
    "batch_size": (2048, 512),
    "rows": (100_000, 20_000),
    "window": (20, 10),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``embedlookup-train`` argument parser (every option has help text)."""
    p = argparse.ArgumentParser(
        prog="embedlookup-train",
        description=__doc__.split("\n\n")[0],
        epilog="Writes metrics.json and training.png (ps_training.png with --ps) into --out (default "
        "train_results/), "
        "prints a summary per model and the paths written. Exit status: 0 on success, "
        "1 if the input cannot be read or the output cannot be written, 2 on bad arguments.",
    )

    def sized(name):
        full, quick = _SIZES[name]
        return f"(default {full}; with --quick {quick})"

    p.add_argument("--quick", action="store_true",
                   help="a complete but small run (fewer, smaller batches, a smaller table, one "
                   "thread: ~15 s on 2 busy cores); options given explicitly still win")
    p.add_argument("--criteo", metavar="TSV", help="Criteo-layout TSV file (default: the synthetic stream)")
    p.add_argument("--batches", type=int, default=None,
                   help=f"batches to train on, one pass {sized('batches')}")
    p.add_argument("--batch-size", type=int, default=None, help=f"samples per batch {sized('batch_size')}")
    p.add_argument("--dim", type=int, default=16, help="embedding dimension (default 16)")
    p.add_argument("--rows", type=int, default=None,
                   help=f"hashing-trick rows; sets every bounded model's memory budget {sized('rows')}")
    p.add_argument("--window", type=int, default=None,
                   help=f"batches per reported logloss / AUC window {sized('window')}")
    p.add_argument("--lr-embedding", type=float, default=0.05, help="embedding learning rate (default 0.05)")
    p.add_argument("--models", default=None,
                   help="comma-separated models to train side by side, of "
                   f"{','.join(list(MODELS) + list(COMPRESSED_MODELS) + list(ROW_TYPE_MODELS) + list(PRECISION_MODELS))} "
                   f"(default {','.join(MODELS)})")
    p.add_argument("--mixed-alpha", type=float, default=0.3,
                   help="mixed_dim: power-law exponent of the per-feature dims (default 0.3; 0 = all dim)")
    p.add_argument("--admit-count", type=int, default=2,
                   help="freq_table: sightings before an ID gets a row (default 2)")
    p.add_argument("--freq-policy", default="lfu",
                   help="freq_table: eviction policy, lfu or lru (default lfu)")
    p.add_argument("--half-life", type=float, default=100.0,
                   help="freq_table: score half-life in batches (default 100)")
    p.add_argument("--default-row", default="cold",
                   help="freq_table: what IDs without a row read, cold or zeros (default cold)")
    p.add_argument("--sketch-width", type=int, default=None,
                   help="freq_table: count-min sketch width, a power of two (default: ~budget / 512)")
    p.add_argument("--cold-budget-fraction", type=float, default=0.5,
                   help="freq_table_int8 / freq_table_fp32_half: byte budget as a share of freq_table_all's "
                   "(every admitted row in fp32; default 0.5)")
    p.add_argument("--hot-share", type=float, default=0.25,
                   help="freq_table_int8: the hot fp32 rows' share of the byte budget; the rest holds int8 "
                   "rows (default 0.25)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic stream and the models (default 0)")
    p.add_argument("--drift", type=float, default=200.0,
                   help="synthetic stream: new head IDs per batch on the drifting features (default 200)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and native threads (default: torch's; with --quick 1)")
    p.add_argument("--ps", choices=("local", "ray"), default=None,
                   help="train through an embedlookup.ps.ParameterServer with this backend instead of the "
                   "in-process models: one run per --mode, --trainers trainers (local: threads; ray: actor "
                   "processes) against --shards shards (docs/ps-training.md)")
    p.add_argument("--trainers", type=int, default=2, help="--ps: trainers training at once (default 2)")
    p.add_argument("--shards", type=int, default=2, help="--ps: parameter-server shards (default 2)")
    p.add_argument("--mode", default="sync,bounded:2,async",
                   help="--ps: comma-separated consistency modes, each trained on a fresh server: sync, "
                   "bounded:S (S >= 1 steps of staleness), async (default sync,bounded:2,async)")
    p.add_argument("--ps-address", default=None,
                   help="--ps ray: the Ray cluster to use (default: start a local one)")
    p.add_argument("--out", metavar="DIR", default="train_results",
                   help="folder for metrics.json and training.png, created if missing "
                   "(default train_results)")
    return p


def train(argv=None, log=print) -> dict:
    """Parses ``argv`` as the command line does, trains, writes the files and
    returns the metrics dict, with ``"paths"``: the files written (the plot
    only where matplotlib is installed). Raises ``OSError`` / ``ValueError``
    when the input cannot be read or the output written, ``SystemExit`` on
    bad arguments."""
    p = build_parser()
    a = p.parse_args(argv)
    for name, (full, quick) in _SIZES.items():
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)
    for name in ("batches", "batch_size", "rows", "window", "dim"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.ps and a.models is not None:
        p.error("--models: with --ps the models are the --mode runs; give one of the two")
    models = tuple(m.strip() for m in (a.models or ",".join(MODELS)).split(",") if m.strip())
    known = list(MODELS) + list(COMPRESSED_MODELS) + list(ROW_TYPE_MODELS) + list(PRECISION_MODELS)
    unknown = [m for m in models if m not in known]
    if unknown or not models:
        p.error(f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(known)}")
    modes = None
    if a.ps:
        for name in ("trainers", "shards"):
            if getattr(a, name) < 1:
                p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
        try:
            modes = _ps_modes(a.mode)
        except ValueError as e:
            p.error(str(e))
    if a.quick and a.threads is None:
        # Small batches gain nothing from threads, and on a loaded machine
        # their barrier waits made a 2-thread quick run 8x slower (52 s vs 6 s).
        a.threads = 1
    if a.threads:
        torch.set_num_threads(a.threads)  # the native kernels share torch's OpenMP runtime
    cfg = RunConfig(dim=a.dim, rows=a.rows, lr_embedding=a.lr_embedding, window=a.window,
                    models=models, seed=a.seed,
                    admit_count=a.admit_count, freq_policy=a.freq_policy, half_life=a.half_life,
                    default_row=a.default_row, sketch_width=a.sketch_width, mixed_alpha=a.mixed_alpha,
                    cold_budget_fraction=a.cold_budget_fraction, hot_share=a.hot_share)
    if not 0 < a.cold_budget_fraction <= 1:
        p.error(f"--cold-budget-fraction must be in (0, 1], got {a.cold_budget_fraction}")
    if not 0 < a.hot_share <= 1:
        p.error(f"--hot-share must be in (0, 1], got {a.hot_share}")
    cfg.extra["quick"] = a.quick
    if a.criteo:
        if not os.path.isfile(a.criteo):
            raise FileNotFoundError(f"--criteo: no such file: {a.criteo}")
        batches = criteo_batches(a.criteo, a.batch_size, a.batches)
        nf, nd, title = CRITEO_SPARSE, CRITEO_DENSE, f"Criteo: {os.path.basename(a.criteo)}"
    else:
        stream = SyntheticClickStream(batch_size=a.batch_size, seed=a.seed, drift=a.drift)
        batches = stream.batches(a.batches)
        nf, nd = stream.n_features, stream.n_dense
        cfg.extra["stream"] = {k: v for k, v in asdict(stream).items()}
        title = f"synthetic stream (seed {a.seed}, drift {a.drift}/batch)"
    if any(m in PRECISION_MODELS for m in models):  # a first pass counts the rows to budget against
        again = (criteo_batches(a.criteo, a.batch_size, a.batches) if a.criteo
                 else SyntheticClickStream(batch_size=a.batch_size, seed=a.seed, drift=a.drift).batches(a.batches))
        cfg.extra["all_rows"] = count_admitted_keys(again, 1)
    os.makedirs(a.out, exist_ok=True)  # before training: a bad --out fails in a second, not after minutes
    t0 = time.perf_counter()
    if a.ps:
        from .train_ps import plot_ps, run_ps

        result = run_ps(batches, cfg, nf, nd, backend=a.ps, trainers=a.trainers, shards=a.shards, modes=modes,
                        address=a.ps_address, threads=a.threads, log=log)
        draw, png = plot_ps, os.path.join(a.out, "ps_training.png")
    else:
        result = run(batches, cfg, nf, nd, log=log)
        draw, png = plot, os.path.join(a.out, "training.png")
    result["wall_s"] = time.perf_counter() - t0
    metrics = os.path.join(a.out, "metrics.json")
    result["paths"] = [metrics]
    why = draw(result, png, title)
    if why:
        result["plot_skipped"] = why
    else:
        result["paths"].append(png)
    with open(metrics, "w") as fh:
        json.dump(result, fh, indent=1, default=float)
    return result


def _ps_modes(text: str) -> list:
    from .train_ps import parse_modes

    return parse_modes(text)


def summary(result: dict) -> str:
    """The lines ``embedlookup-train`` prints at the end: one per model, then the files."""
    via = ""
    if "ps" in result:
        q = result["ps"]
        via = f" through the parameter server ({q['backend']}, {q['trainers']} trainers, {q['shards']} shards)"
    out = [f"trained {len(result['models'])} models on {result['samples']} samples{via} "
           f"in {result.get('wall_s', 0.0):.1f} s"]
    for name, h in result["models"].items():
        if "auc_gap_vs_sync" in h or "ps" in result:  # through the parameter server: no local memory
            gap = f"  AUC gap vs sync {h['auc_gap_vs_sync']:+.4f}" if "auc_gap_vs_sync" in h else ""
            out.append(f"  {name:22s} mean logloss {h['mean_logloss']:.4f}  mean AUC {h['mean_auc']:.4f}  "
                       f"train {h['seconds']:.1f} s{gap}")
            continue
        mb = h["memory_bytes"][-1] / 2**20 if h["memory_bytes"] else 0.0
        out.append(f"  {name:22s} mean logloss {h['mean_logloss']:.4f}  mean AUC {h['mean_auc']:.4f}  "
                   f"memory {mb:.1f} MiB  train {h['seconds']:.1f} s")
    if result.get("plot_skipped"):
        out.append(f"note: {result['plot_skipped']}")
    out += [f"wrote {p}" for p in result.get("paths", [])]
    return "\n".join(out)


def main(argv=None) -> int:
    """The ``embedlookup-train`` console script: trains, prints the summary and
    the paths written, returns the exit status (0 on success). From Python,
    :func:`train` returns the metrics dict instead."""
    try:
        result = train(argv)
    except (OSError, ValueError) as e:
        print(f"embedlookup-train: error: {e}", file=sys.stderr)
        return 1
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
