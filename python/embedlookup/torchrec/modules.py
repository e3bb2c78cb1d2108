"""``EmbeddingBagCollection`` and ``EmbeddingCollection``: TorchRec's
unsharded EBC and EC over hashed tables.

One ``embedlookup.torch.HashEmbeddingBag`` (one ``EmbeddingTable``) per
``EmbeddingBagConfig``. The features of one table share its rows exactly as
in TorchRec (feature ``a`` and feature ``b`` of table ``t`` both read row
``t[id]``; no per-feature namespacing, which would give them different rows
and make training diverge from TorchRec's), and all of a table's features
are pooled in one native call. The output is a ``torchrec.KeyedTensor``
with TorchRec's keys (``feature`` or ``feature@table`` for a feature read by
several tables), order (tables in config order, each table's features in
order) and layout (``(B, sum of dims)``). In eager mode the whole
collection is one autograd node (``_PooledCollection``: one output buffer,
one backward for every table); under torch.compile each table is its own
op. The ``EmbeddingCollection`` holds
one ``HashEmbedding`` per ``EmbeddingConfig``, looks up all of a table's
features in one native call and returns TorchRec's ``{name: JaggedTensor}``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import (EmbeddingBagCollectionInterface, EmbeddingCollectionInterface,
                                                get_embedding_names_by_table)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

import numpy as np

from .. import _checks
from .. import init as _init
from ..frequency import FrequencyTable
from ..optim import Optimizer
from ..torch import HashEmbedding, HashEmbeddingBag
from ..torch.modules import _int_tensor

__all__ = ["EmbeddingBagCollection", "EmbeddingCollection"]

_MODES = {PoolingType.SUM: "sum", PoolingType.MEAN: "mean"}


def _check_args(device, capacity, frequency, tables, config_type) -> None:
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"device must be None or cpu (embedlookup.torchrec runs on the CPU engine), got {device}")
    if capacity not in (None, "num_embeddings"):
        raise ValueError(f"capacity must be None or 'num_embeddings', got {capacity!r}")
    if frequency is not None:
        if not isinstance(frequency, dict):
            raise TypeError(f"frequency must be None or a dict of FrequencyTable options, got {type(frequency).__name__}")
        if capacity is not None:
            raise ValueError("capacity: a FrequencyTable keeps its budget by eviction (frequency=...); pass "
                             "capacity=None with frequency")
        taken = sorted(set(frequency) & {"initializer", "optimizer", "num_threads", "budget_rows", "budget_bytes",
                                         "features", "tier"})
        if taken:
            raise ValueError(f"frequency: {taken} are set by the collection (budget_rows = each table's "
                             f"num_embeddings; initializer, optimizer, num_threads from its own arguments)")
    if not isinstance(tables, (list, tuple)) or not tables:
        raise ValueError(f"tables must be a non-empty list of torchrec {config_type.__name__}")


def _check_config(i: int, cfg, config_type, names) -> None:
    if not isinstance(cfg, config_type):
        raise TypeError(f"tables[{i}] must be a torchrec {config_type.__name__}, got {type(cfg).__name__}")
    if cfg.name in names:
        raise ValueError(f"tables: duplicate table name {cfg.name!r}")
    if cfg.data_type != DataType.FP32:
        raise ValueError(f"tables[{i}] ({cfg.name!r}): data_type must be DataType.FP32, got {cfg.data_type}")
    if not isinstance(cfg.num_embeddings, int) or cfg.num_embeddings < 1:
        raise ValueError(f"tables[{i}] ({cfg.name!r}): num_embeddings must be a positive int, "
                         f"got {cfg.num_embeddings!r}")
    if not cfg.feature_names:  # TorchRec's rule: a table without features reads its own name
        cfg.feature_names = [cfg.name]
    if len(set(cfg.feature_names)) != len(cfg.feature_names):
        raise ValueError(f"tables[{i}] ({cfg.name!r}): duplicate feature_names {cfg.feature_names}")


def _table_kwargs(i: int, cfg, optimizer, capacity, frequency, seed, num_threads) -> dict:
    """The module arguments of table ``i``: its own EmbeddingTable (rows
    initialised in TorchRec's range, optional capacity) or, with
    ``frequency``, a FrequencyTable whose budget is ``num_embeddings`` rows."""
    init = _init.uniform(cfg.get_weight_init_min(), cfg.get_weight_init_max(), seed=seed + i)
    if frequency is not None:
        table = FrequencyTable(cfg.embedding_dim, initializer=init, optimizer=optimizer, num_threads=num_threads,
                               budget_rows=cfg.num_embeddings, **frequency)
        return dict(optimizer=optimizer, table=table)
    return dict(optimizer=optimizer, initializer=init, num_threads=num_threads,
                capacity=cfg.num_embeddings if capacity == "num_embeddings" else None)


def _check_features(features) -> None:
    if not isinstance(features, KeyedJaggedTensor):
        raise TypeError(f"features must be a torchrec KeyedJaggedTensor, got {type(features).__name__}")
    if features.variable_stride_per_key():
        raise NotImplementedError("features: a KeyedJaggedTensor with a variable batch size per feature is not "
                                  "supported")
    if features.inverse_indices_or_none() is not None:
        raise NotImplementedError("features: a KeyedJaggedTensor with inverse_indices is not supported")


def _cut(values, offsets, weights, starts: List[int], pos: List[int], B: int):
    """The bags of the features at KJT positions ``pos``, feature-major:
    (values, offsets (len(pos) * B + 1), weights or None). ``starts[p]``:
    where feature p's values start (``offsets[p * B]``; F + 1 entries). A
    slice (no copy) when the features are adjacent in the KJT, else a
    concatenation."""
    if pos == list(range(pos[0], pos[0] + len(pos))):
        lo, hi = starts[pos[0]], starts[pos[-1] + 1]
        return (values[lo:hi], offsets[pos[0] * B:(pos[-1] + 1) * B + 1] - lo,
                None if weights is None else weights[lo:hi])
    vs, os_, ws, base = [], [offsets.new_zeros(1)], [], 0
    for p in pos:
        lo, hi = starts[p], starts[p + 1]
        vs.append(values[lo:hi])
        os_.append(offsets[p * B + 1:(p + 1) * B + 1] - lo + base)
        if weights is not None:
            ws.append(weights[lo:hi])
        base += hi - lo
    return torch.cat(vs), torch.cat(os_), None if weights is None else torch.cat(ws)


@torch.library.custom_op("embedlookup::kjt_features", mutates_args=())
def kjt_features(values: torch.Tensor, offsets: torch.Tensor, weights: Optional[torch.Tensor],
                 positions: List[int], stride: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_cut` as an op, for torch.compile: how many values the features
    hold depends on the offsets' data, which a traced graph cannot read
    without breaking; the op's fake implementation gives that count as a
    dynamic size. Outputs are copies (an op may not return views of its
    inputs); no weights: an empty tensor."""
    starts = offsets[::stride].tolist() if stride else [0] * (max(positions) + 2)
    v, o, w = _cut(values, offsets, weights, starts, list(positions), stride)
    return v.clone(), o.clone(), (w.clone() if w is not None else values.new_empty((0,), dtype=torch.float32))


@kjt_features.register_fake
def _(values, offsets, weights, positions, stride):
    n = torch.library.get_ctx().new_dynamic_size()
    w = weights.new_empty((n,)) if weights is not None else values.new_empty((0,), dtype=torch.float32)
    return values.new_empty((n,)), offsets.new_empty((len(positions) * stride + 1,)), w


def _cut_tables(features: KeyedJaggedTensor, group_names, feature_groups, weights):
    """Per group of features (a table's, or one feature), its values cut out
    of the KJT: ``(values, offsets (F_g * B + 1), weights or None, positions
    of its features among the KJT's keys)``. Every group's features are
    checked present before anything is returned. Under torch.compile the
    cut is the ``embedlookup::kjt_features`` op (no graph break)."""
    keys = features.keys()
    index = {k: i for i, k in enumerate(keys)}
    for name, names in zip(group_names, feature_groups):
        missing = [f for f in names if f not in index]
        if missing:
            raise ValueError(f"features: the KeyedJaggedTensor lacks feature(s) {missing} of table {name!r} "
                             f"(its keys: {keys})")
    B = features.stride()
    values, offsets = features.values(), features.offsets()
    if offsets.shape[0] != len(keys) * B + 1:
        raise ValueError(f"features: offsets have {offsets.shape[0]} entries, expected "
                         f"{len(keys)} keys x stride {B} + 1")
    cuts = []
    if torch.compiler.is_compiling():
        for names in feature_groups:
            pos = [index[f] for f in names]
            v, o, w = torch.ops.embedlookup.kjt_features(values, offsets, weights, pos, B)
            cuts.append((v, o, None if weights is None else w, pos))
        return B, cuts
    # Where each feature's values start: F + 1 numbers (not all F * B offsets).
    starts = offsets[::B].tolist() if B else [0] * (len(keys) + 1)
    for names in feature_groups:
        pos = [index[f] for f in names]
        cuts.append(_cut(values, offsets, weights, starts, pos, B) + (pos,))
    return B, cuts


def _cut_np(values: np.ndarray, offsets: np.ndarray, weights, starts, pos: List[int], B: int):
    """:func:`_cut` on NumPy arrays (the collection's eager path: no torch
    dispatch per table)."""
    if pos == list(range(pos[0], pos[0] + len(pos))):
        lo, hi = starts[pos[0]], starts[pos[-1] + 1]
        return (values[lo:hi], offsets[pos[0] * B:(pos[-1] + 1) * B + 1] - lo,
                None if weights is None else weights[lo:hi])
    parts = [(starts[p], starts[p + 1]) for p in pos]
    base = np.cumsum([0] + [hi - lo for lo, hi in parts])
    off = np.concatenate([np.zeros(1, np.int64)] + [offsets[p * B + 1:(p + 1) * B + 1] - lo + base[i]
                                                    for i, (p, (lo, _)) in enumerate(zip(pos, parts))])
    return (np.concatenate([values[lo:hi] for lo, hi in parts]), off,
            None if weights is None else np.concatenate([weights[lo:hi] for lo, hi in parts]))


class _PooledCollection(torch.autograd.Function):
    """Every table of an :class:`EmbeddingBagCollection` as one autograd
    node. Forward: the KJT is read as NumPy once, each table's features are
    cut out of it and pooled by the table's native call (GIL released),
    and each result lands in its columns of the one ``(B, sum of dims)``
    output (no torch op per table, no torch.cat). Backward: each table's
    fused pooled backward (its optimizer step, in native code) reads its
    columns of the one ``grad_output`` in place (a strided view; a table
    with several features gets one NumPy copy into feature-major order).
    ``plan``: per table ``(table, optimizer, mode, positions, column, dim,
    insert)``."""

    @staticmethod
    def forward(ctx, anchor, values, offsets, weights, plan, B: int, width: int):
        v_all, off_all, _ = _checks.bags(values.detach().numpy(), offsets.detach().numpy(), True)
        w_all = None if weights is None else _checks.finite(
            _checks.floats(weights.detach().numpy(), "per_sample_weights", (v_all.shape[0],)), "per_sample_weights")
        starts = off_all[::B].tolist() if B else [0] * (max(p for e in plan for p in e[3]) + 2)
        out = torch.empty((B, width), dtype=torch.float32)
        out_np = out.numpy()
        saved = []
        for t, opt, mode, pos, col, dim, insert in plan:
            v, o, w = _cut_np(v_all, off_all, w_all, starts, pos, B)
            F = len(pos)
            pooled = np.empty((F * B, dim), dtype=np.float32)
            ids = np.empty((v.shape[0],), dtype=np.uint32)
            if isinstance(t, FrequencyTable):
                cs, epoch = t._t.pooled_lookup_ids(v, o, F * B, mode, w, pooled, insert, ids, None)
                t._account(None, cs)  # totals, and evicted rows to the table's on_evict
            else:
                epoch = t._t.pooled_lookup_ids(v, o, F * B, mode, w, pooled, insert, ids)
            # feature-major bags (F * B, dim) -> the KeyedTensor's (B, F * dim) columns
            out_np[:, col:col + F * dim].reshape(B, F, dim)[...] = pooled.reshape(F, B, dim).transpose(1, 0, 2)
            saved.append((v, o, w, ids, epoch))
        ctx.plan, ctx.saved, ctx.B = plan, saved, B
        return out

    @staticmethod
    def backward(ctx, grad):
        g_all = grad.detach().contiguous().numpy()
        B, specs = ctx.B, {}
        for (t, opt, mode, pos, col, dim, _), (v, o, w, ids, epoch) in zip(ctx.plan, ctx.saved):
            if opt is None:
                continue
            if id(opt) not in specs:  # the tables usually share one optimizer: build its native spec once
                specs[id(opt)] = opt._spec()
            F = len(pos)
            g = g_all[:, col:col + dim] if F == 1 else np.ascontiguousarray(
                g_all[:, col:col + F * dim].reshape(B, F, dim).transpose(1, 0, 2)).reshape(F * B, dim)
            # On a FrequencyTable its own binding: values that read the default row update the cold row.
            t._t.apply_pooled_gradients(v, o, F * B, mode, w, None, g, specs[id(opt)], ids, epoch)
        return torch.zeros((0,), dtype=torch.float32), None, None, None, None, None, None


def _reset(modules) -> None:
    for m in modules:
        keys, _ = m.table.export()
        m.table.erase(keys)


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
    frequency: ``None`` or a dict of ``embedlookup.FrequencyTable`` options
        (``policy``, ``admit_count``, ``half_life``, ``default_row``, ...):
        each table is then a FrequencyTable with a budget of
        ``num_embeddings`` rows (raw IDs under a memory budget: admission,
        eviction; IDs without a row read its default row).
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
                 capacity: Optional[str] = None, frequency: Optional[dict] = None, seed: int = 0,
                 num_threads: int | None = None):
        super().__init__()
        _check_args(device, capacity, frequency, tables, EmbeddingBagConfig)
        self._is_weighted = bool(is_weighted)
        self._embedding_bag_configs = list(tables)
        self._device = torch.device("cpu")
        self.embedding_bags = nn.ModuleDict()
        self._lengths_per_embedding: List[int] = []
        for i, cfg in enumerate(tables):
            _check_config(i, cfg, EmbeddingBagConfig, self.embedding_bags)
            if cfg.pooling not in _MODES:
                raise ValueError(f"tables[{i}] ({cfg.name!r}): pooling must be PoolingType.SUM or MEAN, "
                                 f"got {cfg.pooling}")
            if self._is_weighted and cfg.pooling != PoolingType.SUM:
                raise ValueError(f"tables[{i}] ({cfg.name!r}): is_weighted=True needs PoolingType.SUM "
                                 f"(per-sample weights with mean pooling are not defined), got {cfg.pooling}")
            self.embedding_bags[cfg.name] = HashEmbeddingBag(
                cfg.embedding_dim, mode=_MODES[cfg.pooling], include_last_offset=True,
                **_table_kwargs(i, cfg, optimizer, capacity, frequency, seed, num_threads))
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
        _reset(self.embedding_bags.values())

    def memory_usage(self) -> Dict[str, dict]:
        """Native memory per table (see ``EmbeddingTable.memory_usage``)."""
        return {name: bag.table.memory_usage() for name, bag in self.embedding_bags.items()}

    # ----------------------------------------------------------------- forward
    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        _check_features(features)
        weights = None
        if self._is_weighted:
            weights = features.weights_or_none()
            if weights is None:
                raise ValueError("features: this collection is weighted (is_weighted=True) but the "
                                 "KeyedJaggedTensor has no weights")
        if self._one_node_ok(weights):
            return self._forward_one_node(features, weights)
        B, cuts = _cut_tables(features, list(self.embedding_bags), self._feature_names, weights)
        pieces = []
        for bag, (v, o, w, pos) in zip(self.embedding_bags.values(), cuts):
            out = bag(v, o, w)  # (len(pos) * B, dim): feature-major bags
            dim = out.shape[1]
            pieces.append(out.reshape(len(pos), B, dim).transpose(0, 1).reshape(B, len(pos) * dim))
        return KeyedTensor(keys=self._embedding_names, values=torch.cat(pieces, dim=1),
                           length_per_key=self._lengths_per_embedding)

    def _one_node_ok(self, weights) -> bool:
        """Eager, in-process tables, no gradient asked for the weights: the
        whole collection is one autograd node (:class:`_PooledCollection`).
        Under torch.compile, over parameter-server clients, or with weights
        that require grad, each table is its own op (the path above)."""
        return (not torch.compiler.is_compiling() and not any(b._ps for b in self.embedding_bags.values())
                and (weights is None or not weights.requires_grad))

    def _forward_one_node(self, features: KeyedJaggedTensor, weights) -> KeyedTensor:
        keys = features.keys()
        index = {k: i for i, k in enumerate(keys)}
        B = features.stride()
        values, offsets = features.values(), features.offsets()
        if offsets.shape[0] != len(keys) * B + 1:
            raise ValueError(f"features: offsets have {offsets.shape[0]} entries, expected "
                             f"{len(keys)} keys x stride {B} + 1")
        plan, col, anchor = [], 0, None
        for (name, bag), names in zip(self.embedding_bags.items(), self._feature_names):
            missing = [f for f in names if f not in index]
            if missing:
                raise ValueError(f"features: the KeyedJaggedTensor lacks feature(s) {missing} of table {name!r} "
                                 f"(its keys: {keys})")
            plan.append((bag.table, bag.optimizer, bag._mode_id, [index[f] for f in names], col, bag.table.dim,
                         bag._insert()))
            col += len(names) * bag.table.dim
            if anchor is None and bag._grad_anchor.requires_grad:
                anchor = bag._grad_anchor
        if anchor is None:  # frozen tables: nothing to apply, no backward needed
            anchor = torch.zeros(0)
        values = _int_tensor(values, "input").to(torch.int64)  # the per-table path's check and message
        out = _PooledCollection.apply(anchor, values.contiguous(), offsets.to(torch.int64).contiguous(),
                                      None if weights is None else weights.to(torch.float32).contiguous(),
                                      plan, B, col)
        return KeyedTensor(keys=self._embedding_names, values=out, length_per_key=self._lengths_per_embedding)


class EmbeddingCollection(EmbeddingCollectionInterface):
    """Drop-in for ``torchrec.EmbeddingCollection`` (unpooled) over hashed tables.

    Parameters as :class:`EmbeddingBagCollection` (``tables`` are
    ``torchrec.EmbeddingConfig``s, all of one ``embedding_dim`` as TorchRec
    requires), plus TorchRec's ``need_indices`` (each output JaggedTensor
    carries the feature's IDs as its weights).

    ``forward(features: KeyedJaggedTensor) -> Dict[str, JaggedTensor]``: for
    every embedding name (the feature, or ``feature@table`` for a feature
    read by several tables) a JaggedTensor with one row per ID,
    ``(sum of the feature's lengths, dim)``, and the feature's lengths. One
    native call per table per batch (all of the table's features at once).
    ``embeddings[table_name]`` is the table's ``embedlookup.torch.HashEmbedding``.
    """

    def __init__(self, tables: List[EmbeddingConfig], device: Optional[torch.device] = None,
                 need_indices: bool = False, *, optimizer: Optimizer | None = None,
                 capacity: Optional[str] = None, frequency: Optional[dict] = None, seed: int = 0,
                 num_threads: int | None = None):
        super().__init__()
        _check_args(device, capacity, frequency, tables, EmbeddingConfig)
        self._embedding_configs = list(tables)
        self._need_indices = bool(need_indices)
        self._device = torch.device("cpu")
        self.embeddings = nn.ModuleDict()
        dim = tables[0].embedding_dim if isinstance(tables[0], EmbeddingConfig) else None
        for i, cfg in enumerate(tables):
            _check_config(i, cfg, EmbeddingConfig, self.embeddings)
            if cfg.embedding_dim != dim:
                raise ValueError(f"tables[{i}] ({cfg.name!r}): every table of an EmbeddingCollection has one "
                                 f"embedding_dim (TorchRec's rule): expected {dim}, got {cfg.embedding_dim}")
            self.embeddings[cfg.name] = HashEmbedding(
                cfg.embedding_dim, **_table_kwargs(i, cfg, optimizer, capacity, frequency, seed, num_threads))
        self._embedding_dim = int(dim)
        self.optimizer = optimizer
        self._embedding_names_by_table: List[List[str]] = get_embedding_names_by_table(tables)
        self._feature_names: List[List[str]] = [list(cfg.feature_names) for cfg in tables]

    # ---------------------------------------------------- TorchRec's interface
    def embedding_configs(self) -> List[EmbeddingConfig]:
        return self._embedding_configs

    def need_indices(self) -> bool:
        return self._need_indices

    def embedding_dim(self) -> int:
        return self._embedding_dim

    def embedding_names_by_table(self) -> List[List[str]]:
        return self._embedding_names_by_table

    @property
    def device(self) -> torch.device:
        return self._device

    def reset_parameters(self) -> None:
        """Empties every table (rows are drawn again on first lookup)."""
        _reset(self.embeddings.values())

    def memory_usage(self) -> Dict[str, dict]:
        """Native memory per table (see ``EmbeddingTable.memory_usage``)."""
        return {name: m.table.memory_usage() for name, m in self.embeddings.items()}

    # ----------------------------------------------------------------- forward
    def forward(self, features: KeyedJaggedTensor) -> Dict[str, JaggedTensor]:
        _check_features(features)
        lengths = features.lengths()
        out: Dict[str, JaggedTensor] = {}
        if torch.compiler.is_compiling():
            # One lookup per feature: splitting a table's rows per feature
            # would need their data-dependent counts in the graph.
            tables = [(emb, [name], [f]) for emb, names, feats in
                      zip(self.embeddings.values(), self._embedding_names_by_table, self._feature_names)
                      for name, f in zip(names, feats)]
            B, cuts = _cut_tables(features, [n for _, n, _ in tables], [f for _, _, f in tables], None)
            for (emb, (name,), _), (v, _, _, (p,)) in zip(tables, cuts):
                out[name] = JaggedTensor(values=emb(v), lengths=lengths[p * B:(p + 1) * B],
                                         weights=v if self._need_indices else None)
            return out
        B, cuts = _cut_tables(features, list(self.embeddings), self._feature_names, None)
        for emb, names, (v, o, _, pos) in zip(self.embeddings.values(), self._embedding_names_by_table, cuts):
            rows = emb(v)  # (len(v), dim): every ID of the table's features, one native call
            ends = o[B::B].tolist() if B else [0] * len(pos)
            start = 0
            for name, p, end in zip(names, pos, ends):
                out[name] = JaggedTensor(values=rows[start:end], lengths=lengths[p * B:(p + 1) * B],
                                         weights=v[start:end] if self._need_indices else None)
                start = end
        return out
