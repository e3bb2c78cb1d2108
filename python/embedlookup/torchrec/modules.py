"""``EmbeddingBagCollection``: TorchRec's unsharded EBC over hashed tables.

One ``embedlookup.torch.HashEmbeddingBag`` (one ``EmbeddingTable``) per
``EmbeddingBagConfig``. The features of one table share its rows exactly as
in TorchRec (feature ``a`` and feature ``b`` of table ``t`` both read row
``t[id]``; no per-feature namespacing, which would give them different rows
and make training diverge from TorchRec's), and all of a table's features
are pooled in one native call. The output is a ``torchrec.KeyedTensor``
with TorchRec's keys (``feature`` or ``feature@table`` for a feature read by
several tables), order (tables in config order, each table's features in
order) and layout (``(B, sum of dims)``).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface, get_embedding_names_by_table
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from .. import init as _init
from ..optim import Optimizer
from ..torch import HashEmbeddingBag

__all__ = ["EmbeddingBagCollection"]

_MODES = {PoolingType.SUM: "sum", PoolingType.MEAN: "mean"}


class EmbeddingBagCollection(EmbeddingBagCollectionInterface):
    """Drop-in for ``torchrec.EmbeddingBagCollection`` over hashed tables.

    Parameters
    ----------
    tables: ``torchrec.EmbeddingBagConfig``s (distinct names; pooling SUM or
        MEAN; data_type FP32). ``num_embeddings`` does not bound the IDs:
        any int64 ID gets its own row (created on first lookup in training
        mode). It sets the default initialisation range, as in TorchRec
        (uniform(+-sqrt(1/num_embeddings)) unless weight_init_min/max are
        given), and, with ``capacity="num_embeddings"``, each table's
        maximum row count. ``init_fn`` is not used (rows do not exist up
        front; the initializer draws them on insertion).
    is_weighted: as TorchRec: use the KJT's weights as per-sample weights
        (every table must pool with SUM).
    device: ``None`` or CPU (the tables run on the CPU engine).
    optimizer: ``embedlookup.optim.SGD / Adagrad / Adam``, applied to every
        table by the backward (fused, sparse); ``None`` freezes the tables.
        The rows are not ``nn.Parameter``s: the dense optimizer never sees
        them (see embedlookup.torch).
    capacity: ``None`` (default: unbounded tables) or ``"num_embeddings"``
        (each table holds at most its ``num_embeddings`` rows; inserting
        past that raises ``embedlookup.TableFullError``).
    seed: seed of the row initializers (table i uses ``seed + i``).
    num_threads: native threads per call (default: OpenMP's).

    ``forward(features: KeyedJaggedTensor) -> KeyedTensor``. The KJT may hold
    its keys in any order and extra keys; every feature of every table must
    be among them. Variable batch size per feature is not supported.
    ``embedding_bags[table_name].table`` is the table (e.g. to ``assign``
    rows by key).
    """

    def __init__(self, tables: List[EmbeddingBagConfig], is_weighted: bool = False,
                 device: Optional[torch.device] = None, *, optimizer: Optimizer | None = None,
                 capacity: Optional[str] = None, seed: int = 0, num_threads: int | None = None):
        super().__init__()
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"device must be None or cpu (embedlookup.torchrec runs on the CPU engine), got {device}")
        if capacity not in (None, "num_embeddings"):
            raise ValueError(f"capacity must be None or 'num_embeddings', got {capacity!r}")
        if not isinstance(tables, (list, tuple)) or not tables:
            raise ValueError("tables must be a non-empty list of torchrec EmbeddingBagConfig")
        self._is_weighted = bool(is_weighted)
        self._embedding_bag_configs = list(tables)
        self._device = torch.device("cpu")
        self.embedding_bags = nn.ModuleDict()
        self._lengths_per_embedding: List[int] = []
        for i, cfg in enumerate(tables):
            if not isinstance(cfg, EmbeddingBagConfig):
                raise TypeError(f"tables[{i}] must be a torchrec EmbeddingBagConfig, got {type(cfg).__name__}")
            if cfg.name in self.embedding_bags:
                raise ValueError(f"tables: duplicate table name {cfg.name!r}")
            if cfg.pooling not in _MODES:
                raise ValueError(f"tables[{i}] ({cfg.name!r}): pooling must be PoolingType.SUM or MEAN, "
                                 f"got {cfg.pooling}")
            if self._is_weighted and cfg.pooling != PoolingType.SUM:
                raise ValueError(f"tables[{i}] ({cfg.name!r}): is_weighted=True needs PoolingType.SUM "
                                 f"(per-sample weights with mean pooling are not defined), got {cfg.pooling}")
            if cfg.data_type != DataType.FP32:
                raise ValueError(f"tables[{i}] ({cfg.name!r}): data_type must be DataType.FP32, got {cfg.data_type}")
            if not isinstance(cfg.num_embeddings, int) or cfg.num_embeddings < 1:
                raise ValueError(f"tables[{i}] ({cfg.name!r}): num_embeddings must be a positive int, "
                                 f"got {cfg.num_embeddings!r}")
            if not cfg.feature_names:  # TorchRec's rule: a table without features reads its own name
                cfg.feature_names = [cfg.name]
            if len(set(cfg.feature_names)) != len(cfg.feature_names):
                raise ValueError(f"tables[{i}] ({cfg.name!r}): duplicate feature_names {cfg.feature_names}")
            lo, hi = cfg.get_weight_init_min(), cfg.get_weight_init_max()
            self.embedding_bags[cfg.name] = HashEmbeddingBag(
                cfg.embedding_dim, mode=_MODES[cfg.pooling], optimizer=optimizer,
                initializer=_init.uniform(lo, hi, seed=seed + i),
                capacity=cfg.num_embeddings if capacity == "num_embeddings" else None,
                include_last_offset=True, num_threads=num_threads)
            self._lengths_per_embedding.extend([cfg.embedding_dim] * len(cfg.feature_names))
        self.optimizer = optimizer
        self._embedding_names: List[str] = [n for names in get_embedding_names_by_table(tables) for n in names]
        self._feature_names: List[List[str]] = [list(cfg.feature_names) for cfg in tables]

    # ---------------------------------------------------- TorchRec's interface
    def is_weighted(self) -> bool:
        return self._is_weighted

    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        return self._embedding_bag_configs

    @property
    def device(self) -> torch.device:
        return self._device

    def reset_parameters(self) -> None:
        """Empties every table: rows are drawn again by the initializers on
        first lookup (TorchRec re-initialises its dense weights here)."""
        for bag in self.embedding_bags.values():
            keys, _ = bag.table.export()
            bag.table.erase(keys)

    def memory_usage(self) -> Dict[str, dict]:
        """Native memory per table (see ``EmbeddingTable.memory_usage``)."""
        return {name: bag.table.memory_usage() for name, bag in self.embedding_bags.items()}

    # ----------------------------------------------------------------- forward
    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        if not isinstance(features, KeyedJaggedTensor):
            raise TypeError(f"features must be a torchrec KeyedJaggedTensor, got {type(features).__name__}")
        if features.variable_stride_per_key():
            raise NotImplementedError("features: a KeyedJaggedTensor with a variable batch size per feature is not "
                                      "supported")
        if features.inverse_indices_or_none() is not None:
            raise NotImplementedError("features: a KeyedJaggedTensor with inverse_indices is not supported")
        keys = features.keys()
        index = {k: i for i, k in enumerate(keys)}
        B = features.stride()
        values, offsets = features.values(), features.offsets()
        weights = None
        if self._is_weighted:
            weights = features.weights_or_none()
            if weights is None:
                raise ValueError("features: this collection is weighted (is_weighted=True) but the "
                                 "KeyedJaggedTensor has no weights")
        if offsets.shape[0] != len(keys) * B + 1:
            raise ValueError(f"features: offsets have {offsets.shape[0]} entries, expected "
                             f"{len(keys)} keys x stride {B} + 1")
        off = offsets.tolist() if B else [0] * (len(keys) + 1)
        pieces = []
        for (name, bag), names in zip(self.embedding_bags.items(), self._feature_names):
            missing = [f for f in names if f not in index]
            if missing:
                raise ValueError(f"features: the KeyedJaggedTensor lacks feature(s) {missing} of table {name!r} "
                                 f"(its keys: {keys})")
            pos = [index[f] for f in names]
            if pos == list(range(pos[0], pos[0] + len(pos))):  # contiguous in the KJT: slice, no copy
                lo, hi = off[pos[0] * B], off[(pos[-1] + 1) * B]
                v = values[lo:hi]
                o = offsets[pos[0] * B:(pos[-1] + 1) * B + 1] - lo
                w = None if weights is None else weights[lo:hi]
            else:
                vs, os_, ws, base = [], [offsets.new_zeros(1)], [], 0
                for p in pos:
                    lo, hi = off[p * B], off[(p + 1) * B]
                    vs.append(values[lo:hi])
                    os_.append(offsets[p * B + 1:(p + 1) * B + 1] - lo + base)
                    if weights is not None:
                        ws.append(weights[lo:hi])
                    base += hi - lo
                v, o = torch.cat(vs), torch.cat(os_)
                w = None if weights is None else torch.cat(ws)
            out = bag(v, o, w)  # (len(names) * B, dim): feature-major bags
            dim = out.shape[1]
            pieces.append(out.reshape(len(names), B, dim).transpose(0, 1).reshape(B, len(names) * dim))
        return KeyedTensor(keys=self._embedding_names, values=torch.cat(pieces, dim=1),
                           length_per_key=self._lengths_per_embedding)
