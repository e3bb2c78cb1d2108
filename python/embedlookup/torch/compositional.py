"""Embedding bags that spend fewer rows or fewer columns than a full table.

``QREmbeddingBag`` (compositional, quotient-remainder: Shi et al., KDD'20)
    An ID is hashed to ``h`` in ``[0, num_embeddings)``; its vector combines
    row ``h // num_collisions`` of a quotient table and row
    ``h % num_collisions`` of a remainder table (element-wise product by
    default, or sum, or concatenation). Two tables of about
    ``num_embeddings / m`` and ``m`` rows give every one of ``num_embeddings``
    hashed IDs its own vector, where the hashing trick with the same memory
    would make ``~m`` of them share one row.

``MixedDimEmbeddingBag`` (mixed dimension: Ginart et al., ISIT'21)
    A table of ``table_dim`` columns, projected to the model's
    ``embedding_dim`` by a learned matrix. Giving rare, many-valued features a
    small ``table_dim`` and popular, few-valued ones a large one spends memory
    where it buys accuracy; ``mixed_dims`` gives Ginart's power-law rule.

Both keep ``HashEmbeddingBag``'s contract: forward takes ``torch.nn.EmbeddingBag``'s
arguments (1-D ``input`` with ``offsets``, or 2-D ``input``; ``per_sample_weights``
with ``"sum"``; ``include_last_offset``), rows live in embedlookup tables that
their fused sparse ``optimizer`` updates during ``backward`` (the projection of
``MixedDimEmbeddingBag`` is an ordinary ``nn.Parameter`` for the dense
optimizer), training mode inserts unseen keys and eval mode does not.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks
from .. import init as _init
from ..optim import Optimizer
from .modules import HashEmbedding, HashEmbeddingBag, _int_tensor

__all__ = ["QREmbeddingBag", "MixedDimEmbeddingBag", "mixed_dims", "qr_hash"]

_OPERATIONS = ("mult", "add", "concat")
_FMIX = (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53)


def qr_hash(ids: np.ndarray, num_embeddings: int, salt: int = 0) -> np.ndarray:
    """int64 IDs -> hashed IDs in ``[0, num_embeddings)``: murmur3's fmix64 of
    ``id ^ salt``, then ``% num_embeddings``. Stable across runs and machines."""
    x = np.asarray(ids, np.int64).view(np.uint64) ^ np.uint64(salt & ((1 << 64) - 1))
    with np.errstate(over="ignore"):
        for mult in _FMIX:
            x = x ^ (x >> np.uint64(33))
            x = x * np.uint64(mult)
        x = x ^ (x >> np.uint64(33))
    return (x % np.uint64(num_embeddings)).astype(np.int64)


def _bags(input, offsets, per_sample_weights, mode: str, include_last_offset: bool):
    """nn.EmbeddingBag's argument rules -> (flat int64 keys, offsets, weights or None)."""
    x = _int_tensor(input, "input")
    if x.device.type != "cpu":
        raise ValueError(f"input must be a CPU tensor, got device {x.device}")
    if x.dim() == 2:
        if offsets is not None:
            raise ValueError("offsets must be None when input is 2-D (each row is one bag)")
        if include_last_offset:
            raise ValueError("include_last_offset needs 1-D input with offsets")
        offsets = torch.arange(x.shape[0], dtype=torch.int64) * x.shape[1]
        x = x.reshape(-1)
    elif x.dim() == 1:
        if offsets is None:
            raise ValueError("offsets are required when input is 1-D")
        offsets = _int_tensor(offsets, "offsets")
        if offsets.dim() != 1:
            raise ValueError(f"offsets must be 1-D, got shape {tuple(offsets.shape)}")
    else:
        raise ValueError(f"input must be 1-D (with offsets) or 2-D (bags x length), got shape {tuple(x.shape)}")
    x = x.to(torch.int64).contiguous()
    offsets = offsets.to(torch.int64).contiguous()
    # The engine's offsets rules (monotone, in range, a trailing offset equal to n).
    _checks.bags(x.numpy(), offsets.numpy(), include_last_offset)
    w = None
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(f"per_sample_weights are only supported with mode='sum', got mode={mode!r}")
        if not isinstance(per_sample_weights, torch.Tensor) or not per_sample_weights.is_floating_point():
            raise TypeError("per_sample_weights must be a floating-point torch.Tensor")
        if per_sample_weights.shape != input.shape:
            raise ValueError(f"per_sample_weights must have input's shape {tuple(input.shape)}, "
                             f"got {tuple(per_sample_weights.shape)}")
        w = per_sample_weights.reshape(-1).to(torch.float32)
    return x, offsets, w


def _pool(vectors: torch.Tensor, offsets, mode: str, weights, include_last_offset: bool) -> torch.Tensor:
    """Pools per-key vectors (n, d) into bags with nn.EmbeddingBag's semantics
    (autograd flows back into ``vectors``)."""
    idx = torch.arange(vectors.shape[0], dtype=torch.int64)
    return F.embedding_bag(idx, vectors, offsets, mode=mode, per_sample_weights=weights,
                           include_last_offset=include_last_offset)


class QREmbeddingBag(nn.Module):
    """Quotient-remainder embedding bag (compositional embeddings).

    Parameters
    ----------
    embedding_dim: floats per output vector.
    num_embeddings: size of the hashed ID space (IDs are hashed into
        ``[0, num_embeddings)`` by :func:`qr_hash` unless ``hash_ids=False``).
    num_collisions: ``m``: the remainder table has at most ``m`` rows, the
        quotient table at most ``ceil(num_embeddings / m)``.
    mode: "sum", "mean" (default) or "max", as nn.EmbeddingBag.
    operation: how the two rows combine: ``"mult"`` (element-wise product,
        the paper's best), ``"add"`` or ``"concat"`` (each table holds
        ``embedding_dim / 2`` columns; embedding_dim must be even).
    optimizer: fused sparse optimizer of both tables (``None`` freezes them).
    initializer: for the quotient table (default uniform(-0.05, 0.05));
    remainder_initializer: for the remainder table; default: the same as
        ``initializer`` for "add"/"concat" and uniform(0.9, 1.1) for "mult",
        so that products start at the quotient rows' scale rather than
        their square.
    hash_ids: hash IDs into ``[0, num_embeddings)`` (default); with False the
        IDs must already lie in that range (ValueError otherwise).
    salt: mixed into the hash (different salts give unrelated collisions).
    include_last_offset, num_threads, insert_in_eval: as HashEmbeddingBag.

    The tables are ``self.quotient`` and ``self.remainder``
    (``HashEmbedding`` modules keyed by quotient / remainder).
    """

    def __init__(self, embedding_dim: int, num_embeddings: int, num_collisions: int, mode: str = "mean", *,
                 operation: str = "mult", optimizer: Optimizer | None = None,
                 initializer: _init.Initializer | None = None,
                 remainder_initializer: _init.Initializer | None = None, hash_ids: bool = True, salt: int = 0,
                 include_last_offset: bool = False, num_threads: int | None = None,
                 insert_in_eval: bool = False):
        super().__init__()
        _checks.mode_id(mode)
        for name, v in (("embedding_dim", embedding_dim), ("num_embeddings", num_embeddings),
                        ("num_collisions", num_collisions)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if operation not in _OPERATIONS:
            raise ValueError(f"operation must be one of {list(_OPERATIONS)}, got {operation!r}")
        if operation == "concat" and embedding_dim % 2:
            raise ValueError(f"operation='concat' splits embedding_dim in halves: it must be even, "
                             f"got {embedding_dim}")
        if num_collisions > num_embeddings:
            raise ValueError(f"num_collisions ({num_collisions}) must not exceed num_embeddings ({num_embeddings})")
        self.embedding_dim, self.num_embeddings, self.num_collisions = int(embedding_dim), int(num_embeddings), \
            int(num_collisions)
        self.mode, self.operation, self.hash_ids, self.salt = mode, operation, bool(hash_ids), int(salt)
        self.include_last_offset = bool(include_last_offset)
        table_dim = self.embedding_dim // 2 if operation == "concat" else self.embedding_dim
        q_init = initializer or _init.uniform(-0.05, 0.05)
        r_init = remainder_initializer or (_init.uniform(0.9, 1.1, seed=1) if operation == "mult" else q_init)
        kw = dict(optimizer=optimizer, num_threads=num_threads, insert_in_eval=insert_in_eval)
        self.quotient = HashEmbedding(table_dim, initializer=q_init,
                                      capacity=-(-self.num_embeddings // self.num_collisions), **kw)
        self.remainder = HashEmbedding(table_dim, initializer=r_init, capacity=self.num_collisions, **kw)

    def extra_repr(self) -> str:
        return (f"{self.embedding_dim}, num_embeddings={self.num_embeddings}, num_collisions={self.num_collisions}, "
                f"mode={self.mode!r}, operation={self.operation!r}")

    def hashed(self, ids: torch.Tensor) -> torch.Tensor:
        """IDs -> hashed IDs in ``[0, num_embeddings)`` (checked when hash_ids=False)."""
        if self.hash_ids:
            return torch.from_numpy(qr_hash(ids.numpy(), self.num_embeddings, self.salt))
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(f"input: with hash_ids=False every ID must lie in [0, {self.num_embeddings}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """One vector per ID (n, embedding_dim), before pooling."""
        h = self.hashed(ids)
        q = self.quotient(torch.div(h, self.num_collisions, rounding_mode="floor"))
        r = self.remainder(torch.remainder(h, self.num_collisions))
        if self.operation == "mult":
            return q * r
        if self.operation == "add":
            return q + r
        return torch.cat([q, r], dim=1)

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        x, offsets, w = _bags(input, offsets, per_sample_weights, self.mode, self.include_last_offset)
        return _pool(self.embed(x), offsets, self.mode, w, self.include_last_offset)

    def memory_usage(self) -> dict:
        """Native memory of both tables, summed (see EmbeddingTable.memory_usage)."""
        total: dict = {}
        for m in (self.quotient, self.remainder):
            for k, v in m.table.memory_usage().items():
                if k.endswith("_bytes") or k == "rows":
                    total[k] = total.get(k, 0) + v
        return total


class MixedDimEmbeddingBag(nn.Module):
    """An embedding bag of ``table_dim`` stored columns projected to ``embedding_dim``.

    Parameters
    ----------
    embedding_dim: floats per output vector (the model's dimension).
    table_dim: floats per stored row. ``table_dim == embedding_dim`` gives a
        plain HashEmbeddingBag (no projection).
    mode, optimizer, initializer, capacity, include_last_offset, num_threads,
    insert_in_eval, table: as HashEmbeddingBag (they apply to the table).

    ``self.projection`` is an ``nn.Linear(table_dim, embedding_dim, bias=False)``
    (default torch init), trained by the caller's dense optimizer. With "sum" and
    "mean" the bag is pooled in the table's dimension and projected once (equal
    by linearity and ``embedding_dim / table_dim`` times fewer floats read);
    "max" projects each row before pooling, since a max does not commute with
    the projection.
    """

    def __init__(self, embedding_dim: int, table_dim: int, mode: str = "mean", *,
                 optimizer: Optimizer | None = None, initializer: _init.Initializer | None = None,
                 capacity: int | None = None, include_last_offset: bool = False, num_threads: int | None = None,
                 insert_in_eval: bool = False, table=None):
        super().__init__()
        for name, v in (("embedding_dim", embedding_dim), ("table_dim", table_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.embedding_dim, self.table_dim = int(embedding_dim), int(table_dim)
        self.mode, self.include_last_offset = mode, bool(include_last_offset)
        bag_mode = "sum" if mode == "max" else mode  # "max" pools after the projection (below)
        self.bag = HashEmbeddingBag(self.table_dim, bag_mode, optimizer=optimizer, initializer=initializer,
                                    capacity=capacity, include_last_offset=include_last_offset,
                                    num_threads=num_threads, insert_in_eval=insert_in_eval, table=table)
        _checks.mode_id(mode)
        self.projection = (nn.Linear(self.table_dim, self.embedding_dim, bias=False)
                           if self.table_dim != self.embedding_dim else None)

    @property
    def table(self):
        return self.bag.table

    def extra_repr(self) -> str:
        return f"{self.embedding_dim}, table_dim={self.table_dim}, mode={self.mode!r}"

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.mode == "max":
            x, off, _ = _bags(input, offsets, per_sample_weights, "max", self.include_last_offset)
            rows = self._rows(x)
            rows = rows if self.projection is None else self.projection(rows)
            return _pool(rows, off, "max", None, self.include_last_offset)
        out = self.bag(input, offsets, per_sample_weights)
        return out if self.projection is None else self.projection(out)

    def _rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows of ``keys`` (n, table_dim) through the bag's table: one key per bag, summed."""
        return self.bag._pool(keys, torch.arange(keys.shape[0], dtype=torch.int64), None, _checks.MODES["sum"],
                              False)


def mixed_dims(num_rows: Sequence[int], base_dim: int, alpha: float = 0.3, min_dim: int = 1) -> list[int]:
    """Ginart et al.'s power-law dimensions: feature i with ``num_rows[i]``
    distinct values (each looked up once per sample, so a row's popularity is
    ~ 1 / num_rows[i]) gets ``base_dim * (min(num_rows) / num_rows[i]) ** alpha``
    columns, rounded, at least ``min_dim``. ``alpha = 0`` gives every feature
    ``base_dim``; larger alpha shrinks many-valued features more."""
    n = np.asarray(num_rows, np.float64)
    if n.ndim != 1 or n.size == 0 or (n < 1).any():
        raise ValueError(f"num_rows must be a non-empty list of positive counts, got {num_rows!r}")
    if not (isinstance(alpha, (int, float)) and 0 <= alpha and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    dims = np.rint(base_dim * (n.min() / n) ** alpha).astype(int)
    return [int(max(min_dim, min(base_dim, d))) for d in dims]
