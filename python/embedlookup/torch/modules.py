"""Drop-in torch modules over hashed embedding tables.

``HashEmbeddingBag`` / ``HashEmbedding`` take the forward arguments of
``torch.nn.EmbeddingBag`` / ``torch.nn.Embedding`` but index rows by arbitrary
int64 IDs (no ``num_embeddings``: rows are created on first lookup).

Training: the embedding rows are not ``nn.Parameter``s. Each module owns a
fused sparse optimizer (``embedlookup.optim``) that its backward applies, in
native code, to exactly the rows the forward touched, as FBGEMM's fused
table-batched embedding does; no dense gradient is ever built. Consequences:

* ``loss.backward()`` already updated the embeddings; ``optimizer.step()``
  of your dense optimizer (for the MLP) neither needs nor sees them, and
  ``zero_grad()`` has nothing to clear for them.
* Gradient accumulation over k micro-batches applies k updates (one per
  backward), not one update of the summed gradient. Use a k-times-larger
  batch where that matters, or scale the learning rate.
* Calling backward twice through one forward applies two updates.
* ``optimizer=None`` freezes the table (no gradient flows into it).

Each module holds one empty parameter (``_grad_anchor``, 0 elements) so that
autograd calls the backward; it costs nothing in a dense optimizer.

In training mode (``module.train()``) lookups insert unseen keys (initialised
by the initializer); in eval mode they do not, and unseen keys read as zero
rows (the serving path), unless ``insert_in_eval=True``.
"""

from __future__ import annotations

import weakref
from typing import Optional

import numpy as np
import torch
from torch import nn

from .. import _checks
from .. import init as _init
from .. import optim
from ..optim import Optimizer
from ..frequency import FrequencyTable
from ..table import EmbeddingTable, ForwardIds
from . import _frequency, _ops, _ps

__all__ = ["HashEmbeddingBag", "HashEmbedding", "HashEmbeddingBagCollection"]

_STATE_VERSION = 1


def _check_device(t: torch.Tensor, name: str, like: Optional[torch.Tensor] = None) -> None:
    if t.device.type == "cuda":
        raise RuntimeError(f"{name} is on {t.device}, but embedlookup was built without its CUDA backend; "
                           f"pass CPU tensors (e.g. {name}.cpu())")
    if t.device.type != "cpu":
        raise RuntimeError(f"{name} is on {t.device}; embedlookup's torch modules take CPU tensors")
    if like is not None and t.device != like.device:
        raise RuntimeError(f"{name} is on {t.device} but input is on {like.device}; pass both on one device")


def _state_kind(opt: Optimizer) -> int:
    """The native optimizer-state kind an optimizer keeps (OptimKind in optimizer.h)."""
    if isinstance(opt, optim.Adagrad):
        return optim._ROWWISE if opt.rowwise else optim._ADAGRAD
    return optim._ADAM if isinstance(opt, optim.Adam) else optim._SGD


def _finite(w: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` unless every element of ``w`` (as float32)
    is finite: one vectorised pass, before any native call."""
    if w.numel() and not bool(torch.isfinite(w).all()):
        i = int(torch.nonzero(~torch.isfinite(w.reshape(-1)))[0, 0])
        raise ValueError(f"{name} must be finite (after conversion to float32), got "
                         f"{w.reshape(-1)[i].item()} at flat position {i}")


class ResolvedInput(ForwardIds):
    """A batch's keys resolved to row ids ahead of its forward (what
    ``HashEmbeddingBag.resolve`` / ``HashEmbeddingBagCollection.resolve``
    return; pass it as ``forward(..., resolved=)``): the table's
    ``ForwardIds`` (keys, ids, layout epoch; the forward's input is checked
    against the keys, stale ids are resolved again), with the ids also as
    the int32 tensor the forward op takes (same memory)."""

    __slots__ = ("tensor",)

    def __init__(self, table, keys: np.ndarray, tensor: torch.Tensor, epoch: int):
        super().__init__(table, keys, tensor.numpy().view(np.uint32), epoch)
        self.tensor = tensor

    def __repr__(self) -> str:
        return f"ResolvedInput({self.values.shape[0]} keys, epoch {self.epoch})"


def _int_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer IDs, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must hold integers (torch.int64 preferred), got {x.dtype}")
    return x


class _TableModule(nn.Module):
    """Owns one native table, its optimizer and its registry handle; saves and
    loads them through ``state_dict`` (extra state)."""

    def __init__(self, dim, optimizer, initializer, capacity, num_threads, insert_in_eval, table=None):
        super().__init__()
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an embedlookup.optim optimizer (SGD, Adagrad, Adam) or None, "
                            f"got {type(optimizer).__name__}")
        self._ps = table is not None and _ps.is_client(table)
        if table is None:
            self.table = EmbeddingTable(dim, initializer=initializer, capacity=capacity, optimizer=optimizer,
                                        num_threads=num_threads)
        elif self._ps:  # a parameter-server client: rows and optimizer live on its shards (_ps.py)
            optimizer = _ps.check_client(table, dim, initializer, capacity, num_threads, optimizer,
                                         getattr(self, "_mode_id", None))
            self.table = table
        else:  # the caller's table: an EmbeddingTable (maybe over a tier) or a FrequencyTable (_frequency.py)
            optimizer = _frequency.check_table(table, dim, initializer, capacity, num_threads, optimizer)
            self.table = table
        self.optimizer = optimizer
        self.insert_in_eval = bool(insert_in_eval)
        self._num_threads = num_threads
        self._handle = _ops.register_table(self.table, optimizer)
        weakref.finalize(self, _ops.unregister_table, self._handle)
        # Over a parameter server the shards always hold an optimizer: the backward always pushes.
        self._grad_anchor = nn.Parameter(torch.zeros(0), requires_grad=optimizer is not None or self._ps)

    @property
    def embedding_dim(self) -> int:
        return self.table.dim

    def _insert(self) -> bool:
        return self.training or self.insert_in_eval

    def prefetch(self, input):
        """Starts reading, in the background, the tier rows of the keys a later
        ``forward`` will get (``input``: its int keys, any shape), so that the
        device reads overlap the current step: call it for batch t+1 before
        training on batch t (docs/storage.md, "Prefetch"). Returns the table's
        :class:`~embedlookup.storage.Prefetch` handle, or None when the table
        has no tier (nothing to fetch)."""
        if getattr(self.table, "tier", None) is None:
            return None
        x = _int_tensor(input, "input")
        _check_device(x, "input")
        return self.table.prefetch(x.reshape(-1).to(torch.int64).numpy())

    def _resolve_keys(self, keys: torch.Tensor) -> ResolvedInput:
        """Row ids of ``keys`` (1-D int64, contiguous), inserting missing ones
        as the next forward would (training, or insert_in_eval)."""
        if self._ps or isinstance(self.table, FrequencyTable):
            what = "a parameter-server client" if self._ps else "a FrequencyTable"
            raise NotImplementedError(f"resolve: the module's table is {what}, whose lookups resolve their own keys "
                                      "(a FrequencyTable scores and admits them; the shards hold the rows)")
        k = keys.numpy()
        ids = torch.empty((k.shape[0],), dtype=torch.int32)  # the op's input: a tensor, not a read-only array
        epoch = self.table._t.resolve_ids(k, self._insert(), ids.numpy().view(np.uint32))
        return ResolvedInput(self.table, k, ids, epoch)

    def _pool(self, values, offsets, weights, mode_id: int, include_last_offset: bool,
              resolved: ResolvedInput | None = None) -> torch.Tensor:
        if resolved is None:
            return _ops.pooled(self._grad_anchor, values, offsets, weights, self._handle, mode_id,
                               include_last_offset, self._insert())
        if not isinstance(resolved, ResolvedInput):
            raise TypeError(f"resolved must be what this module's resolve() returned, got {type(resolved).__name__}")
        if mode_id == _checks.MODES["max"]:
            raise ValueError("resolved: mode 'max' reads its rows in its own pass; resolve ahead with 'sum' or 'mean'")
        if not torch.compiler.is_compiling():  # data-dependent: eager only
            resolved.check(self.table, values.numpy(), "resolved")  # same table, same keys
        return _ops.pooled(self._grad_anchor, values, offsets, weights, self._handle, mode_id, include_last_offset,
                           self._insert(), resolved.tensor, resolved.epoch)

    # ---------------------------------------------------------- checkpoints
    def get_extra_state(self):
        if self._ps:  # the rows live on the server: checkpoint them with server.save(dir)
            return {"version": _STATE_VERSION, "parameter_server": True, "dim": self.table.dim}
        keys, rows = self.table.export()
        freq = _frequency.extra_state(self.table, keys) if isinstance(self.table, FrequencyTable) else None
        state = self.table._t.export_state(keys)
        opt = self.optimizer
        return {
            "frequency": freq,
            "version": _STATE_VERSION,
            "dim": self.table.dim,
            "keys": torch.from_numpy(keys),
            "rows": torch.from_numpy(rows),
            "optimizer_state": torch.from_numpy(state),
            "optimizer_kind": int(self.table._t.state_kind),
            "optimizer": None if opt is None else (type(opt).__name__, dict(vars(opt))),
            "step": self.table.step,
            "initializer": vars(self.table.initializer).copy(),
            "capacity": self.table.capacity,
        }

    def set_extra_state(self, state):
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("state_dict: not an embedlookup table state (or an unknown version)")
        if state["dim"] != self.table.dim:
            raise ValueError(f"state_dict: saved table has dim {state['dim']}, this module has {self.table.dim}")
        if self._ps or state.get("parameter_server"):
            if self._ps and state.get("parameter_server"):
                return  # nothing of the table is in the state: its rows stay on the server
            raise ValueError("state_dict: a module over a parameter-server client keeps no rows in its state "
                             "(save the server with server.save(dir)); it cannot be loaded into, or from, a "
                             "module over an in-process table")
        keys = _checks.keys_1d(state["keys"].numpy(), "keys")
        rows = _checks.floats(state["rows"].numpy(), "rows", (keys.shape[0], self.table.dim))
        opt_state = np.ascontiguousarray(state["optimizer_state"].numpy(), dtype=np.float32)
        kind = state["optimizer_kind"]
        if opt_state.size and (self.optimizer is None or _state_kind(self.optimizer) != kind):
            raise ValueError("state_dict: the saved optimizer state belongs to another optimizer kind than "
                             f"this module's ({type(self.optimizer).__name__})")
        # Build the new table fully before swapping it in: a failure leaves the module as it was.
        freq = isinstance(self.table, FrequencyTable)
        if freq:
            fresh = _frequency.empty_like(self.table)
            if fresh.budget_rows is not None and keys.shape[0] > fresh.budget_rows:
                raise ValueError(f"state_dict: {keys.shape[0]} saved rows exceed this table's budget of "
                                 f"{fresh.budget_rows} rows")
        elif state.get("frequency") is not None:
            raise ValueError("state_dict: the saved table is a FrequencyTable's; this module's is an EmbeddingTable "
                             "(build the module with table=FrequencyTable(...))")
        elif self.table.tier is not None:
            raise NotImplementedError("state_dict: an EmbeddingTable over a storage tier holds rows outside memory "
                                      "that load_state_dict cannot place; checkpoint it with table.save(path) and "
                                      "EmbeddingTable.load(path, tier=...) instead")
        else:
            fresh = EmbeddingTable(self.table.dim, initializer=self.table.initializer, capacity=self.table.capacity,
                                   optimizer=self.optimizer, num_threads=self._num_threads)
        fresh.assign(keys, rows)
        if opt_state.size:
            fresh._t.import_state(keys, opt_state.reshape(keys.shape[0], -1), self.optimizer._spec())
        fresh._t.set_step(int(state["step"]))
        if freq:
            _frequency.restore(fresh, keys, state)
        self.table = fresh
        _ops.table_of(self._handle).table = fresh


class HashEmbeddingBag(_TableModule):
    """``torch.nn.EmbeddingBag`` over a hashed table keyed by int64 IDs.

    Parameters
    ----------
    embedding_dim: floats per row.
    mode: "sum", "mean" (nn.EmbeddingBag's default) or "max".
    optimizer: ``embedlookup.optim.SGD / Adagrad / Adam`` applied by backward
        (fused, sparse); ``None`` freezes the table.
    initializer: ``embedlookup.init.*`` for new rows (default uniform(-0.01, 0.01)).
    capacity: maximum rows (``None``: unbounded); inserting past it raises
        ``embedlookup.TableFullError``.
    include_last_offset: as nn.EmbeddingBag.
    num_threads: native threads per call (default: OpenMP's).
    insert_in_eval: insert unseen keys in eval mode too.
    table: a table to use instead of a new unbounded one. An
        ``embedlookup.EmbeddingTable`` may sit over a storage tier with a
        memory budget (``tier=``, ``memory_rows=``): lookups read trained rows
        through from the tier and the budget holds. An
        ``embedlookup.FrequencyTable`` (built without ``features``) makes a
        training forward the table's training lookup (scores, admission,
        eviction under its budget; keys without a row read its default row)
        and the backward updates only rows that exist, routing the rest to
        the default row (dropped for ``"zeros"``, summed into the learned
        ``"cold"`` row). ``initializer``, ``capacity`` and ``num_threads``
        then belong to the table (passing them raises); ``optimizer``
        defaults to the table's. A parameter-server client
        (``embedlookup.ps.ParameterServer.client()``) keeps the rows on the
        server's shards: forward = ``client.pooled_pull``, backward =
        ``client.push_pooled`` with the server's optimizer (``optimizer``
        must be None or that optimizer; no "max" mode). See docs/torch.md
        ("Tables of your own") and docs/ps-training.md.

    ``forward(input, offsets=None, per_sample_weights=None, *, resolved=None)``
    as nn.EmbeddingBag: 1-D ``input`` with ``offsets`` or 2-D ``input`` of
    equal-length bags; returns (bags, embedding_dim) float32. padding_idx,
    max_norm and scale_grad_by_freq are not supported.

    ``resolve(input)`` maps a later batch's keys to row ids now (inserting
    missing ones as a training forward would), so that its forward, given
    ``resolved=``, reads only the rows and skips the index probe per key:
    call it for batch t+1 (on a loader thread, say: it releases the GIL)
    while batch t trains, as TorchRec remaps raw IDs in its input stage. The
    forward checks its input equals the resolved keys; ids made stale by a
    freed or moved row are resolved again (slower, never a wrong row). Not
    for "max", a FrequencyTable or a parameter-server client.
    """

    def __init__(self, embedding_dim: int, mode: str = "mean", *, optimizer: Optimizer | None = None,
                 initializer: _init.Initializer | None = None, capacity: int | None = None,
                 include_last_offset: bool = False, num_threads: int | None = None, insert_in_eval: bool = False,
                 table: EmbeddingTable | None = None):
        self._mode_id = _checks.mode_id(mode)
        super().__init__(embedding_dim, optimizer, initializer, capacity, num_threads, insert_in_eval, table)
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)

    def extra_repr(self) -> str:
        if self._ps:
            return f"{self.embedding_dim}, mode={self.mode!r}, optimizer={self.optimizer}, table={self.table!r}"
        return (f"{self.embedding_dim}, mode={self.mode!r}, optimizer={self.optimizer}, rows={len(self.table)}, "
                f"capacity={self.table.capacity}")

    def resolve(self, input) -> ResolvedInput:
        """The row ids of ``input``'s keys (any shape, as ``forward`` takes
        it), for a later ``forward(input, ..., resolved=...)``."""
        x = _int_tensor(input, "input")
        _check_device(x, "input")
        return self._resolve_keys(x.reshape(-1).to(torch.int64).contiguous())

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None, *,
                resolved: ResolvedInput | None = None) -> torch.Tensor:
        x = _int_tensor(input, "input")
        _check_device(x, "input")
        ilo = self.include_last_offset
        if x.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None when input is 2-D (each row is one bag)")
            if ilo:
                raise ValueError("include_last_offset needs 1-D input with offsets")
            bags, length = x.shape
            # B bags of `length` keys; (B, 0) is B empty bags (B rows of zeros, as EmbeddingBag).
            offsets = torch.arange(bags, dtype=torch.int64) * length
            x = x.reshape(-1)
        elif x.dim() == 1:
            if offsets is None:
                raise ValueError("offsets are required when input is 1-D")
            offsets = _int_tensor(offsets, "offsets")
            _check_device(offsets, "offsets", x)
            if offsets.dim() != 1:
                raise ValueError(f"offsets must be 1-D, got shape {tuple(offsets.shape)}")
        else:
            raise ValueError(f"input must be 1-D (with offsets) or 2-D (bags x length), got shape {tuple(x.shape)}")
        w = None
        if per_sample_weights is not None:
            if self.mode != "sum":
                raise ValueError(f"per_sample_weights are only supported with mode='sum', got mode={self.mode!r}")
            if not isinstance(per_sample_weights, torch.Tensor) or not per_sample_weights.is_floating_point():
                raise TypeError("per_sample_weights must be a floating-point torch.Tensor")
            _check_device(per_sample_weights, "per_sample_weights", input)
            if per_sample_weights.shape != input.shape:
                raise ValueError(f"per_sample_weights must have input's shape {tuple(input.shape)}, "
                                 f"got {tuple(per_sample_weights.shape)}")
            # Finiteness is checked in the op (embedlookup::pooled_lookup), where
            # a data-dependent check costs no graph break under torch.compile.
            w = per_sample_weights.reshape(-1).to(torch.float32).contiguous()
        x = x.to(torch.int64).contiguous()
        offsets = offsets.to(torch.int64).contiguous()
        return self._pool(x, offsets, w, self._mode_id, ilo, resolved)


class HashEmbedding(_TableModule):
    """``torch.nn.Embedding`` over a hashed table: ``forward(input)`` maps an
    integer tensor of any shape to ``input.shape + (embedding_dim,)``.
    Parameters as ``HashEmbeddingBag`` (no mode), ``table=`` included."""

    def __init__(self, embedding_dim: int, *, optimizer: Optimizer | None = None,
                 initializer: _init.Initializer | None = None, capacity: int | None = None,
                 num_threads: int | None = None, insert_in_eval: bool = False,
                 table: EmbeddingTable | None = None):
        super().__init__(embedding_dim, optimizer, initializer, capacity, num_threads, insert_in_eval, table)

    def extra_repr(self) -> str:
        if self._ps:
            return f"{self.embedding_dim}, optimizer={self.optimizer}, table={self.table!r}"
        return f"{self.embedding_dim}, optimizer={self.optimizer}, rows={len(self.table)}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = _int_tensor(input, "input")
        _check_device(x, "input")
        flat = x.reshape(-1).to(torch.int64).contiguous()
        # One key per bag, summed: the same op (and fused backward) as bags.
        offsets = torch.arange(flat.shape[0], dtype=torch.int64)
        out = self._pool(flat, offsets, None, _checks.MODES["sum"], False)
        return out.reshape(tuple(x.shape) + (self.embedding_dim,))


class HashEmbeddingBagCollection(nn.Module):
    """Pooled embeddings for many sparse features in one call.

    Input is jagged by feature, laid out as TorchRec's ``KeyedJaggedTensor``:
    ``values`` holds feature 0's IDs for samples 0..B-1, then feature 1's, ...;
    ``lengths`` (F*B) or ``offsets`` (F*B + 1) delimit the bags; optional
    ``weights`` (mode "sum"). A KeyedJaggedTensor (or anything with its
    ``keys()/values()/lengths()/offsets()/weights_or_none()`` methods) may be
    passed instead. Returns ``{feature: (B, embedding_dim)}``.

    ``shared_table=True`` (default) keeps every feature in one table (one
    native call per batch; rows of all features compete for one capacity, as
    in Kraken's global table). Features never collide: a key is stored as
    ``(feature << (64 - bits)) | key`` with ``bits = ceil(log2(F))``, and keys
    that do not fit in ``64 - bits`` bits (two's complement) are rejected (the rule FrequencyTable's
    features follow too: embedlookup/_namespace.py). ``shared_table=False``
    gives each feature its own ``HashEmbeddingBag`` (full 64-bit keys;
    ``capacity`` then applies per table).

    ``table=embedlookup.FrequencyTable(...)`` (with ``shared_table=True``)
    backs the shared table with admission and eviction under one budget for
    all features (see ``HashEmbeddingBag``).

    ``resolve(...)`` (the arguments of a later ``forward``) maps a batch's
    keys to row ids ahead of its forward; ``forward(..., resolved=...)`` then
    reads only rows (``HashEmbeddingBag.resolve``).
    """

    def __init__(self, features, embedding_dim: int, mode: str = "sum", *, optimizer: Optimizer | None = None,
                 initializer: _init.Initializer | None = None, capacity: int | None = None,
                 shared_table: bool = True, num_threads: int | None = None, insert_in_eval: bool = False,
                 table: EmbeddingTable | None = None):
        super().__init__()
        self.features = [str(f) for f in features]
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"features must be a non-empty list of distinct names, got {features!r}")
        _checks.mode_id(mode)
        self.mode = mode
        self.shared_table = bool(shared_table)
        kw = dict(mode=mode, optimizer=optimizer, initializer=initializer, capacity=capacity,
                  include_last_offset=True, num_threads=num_threads, insert_in_eval=insert_in_eval)
        if table is not None and not self.shared_table:
            raise ValueError("table: one FrequencyTable backs one shared table; pass shared_table=True (features "
                             "are namespaced inside it)")
        if self.shared_table:
            self.bag = HashEmbeddingBag(embedding_dim, table=table, **kw)
            self._bits = int(len(self.features) - 1).bit_length()
        else:
            self.bags = nn.ModuleDict({f: HashEmbeddingBag(embedding_dim, **kw) for f in self.features})
        self.embedding_dim = int(embedding_dim)

    def _batch_keys(self, features, values, lengths, offsets):
        """(values, offsets, B) of a future batch, as prefetch and resolve take it."""
        if features is not None:
            values, offsets = features.values(), features.offsets()
        if values is None:
            raise ValueError("values are required")
        values = _int_tensor(values, "values").reshape(-1).to(torch.int64).contiguous()
        F = len(self.features)
        if offsets is None:
            if lengths is None:
                raise ValueError("lengths or offsets are required")
            lengths = _int_tensor(lengths, "lengths")
            offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
        offsets = _int_tensor(offsets, "offsets").to(torch.int64).contiguous()
        if offsets.dim() != 1 or offsets.shape[0] < 1 or (offsets.shape[0] - 1) % F:
            raise ValueError(f"offsets must be 1-D with F*B + 1 entries (F = {F}), got shape {tuple(offsets.shape)}")
        # The bags (first 0, non-decreasing, last == len(values)) before any
        # table sees a slice of them, as forward checks them.
        _checks.bags(values.numpy(), offsets.numpy(), True)
        return values, offsets, (offsets.shape[0] - 1) // F

    def _namespaced(self, values: torch.Tensor, offsets: torch.Tensor, B: int) -> torch.Tensor:
        """The shared table's keys of a batch of B samples a feature: each
        value tagged with its feature (``_ops.namespaced``)."""
        F = len(self.features)
        return _ops.namespaced(values, offsets[::B] if B else offsets[:1].repeat(F + 1), self._bits)

    def prefetch(self, features=None, *, values: Optional[torch.Tensor] = None,
                 lengths: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None):
        """Starts reading the tier rows of a future batch (the arguments of a
        later ``forward``) one batch ahead; returns the Prefetch handle (a list
        of them without a shared table), or None when no table has a tier."""
        values, offsets, B = self._batch_keys(features, values, lengths, offsets)
        if self.shared_table:
            if getattr(self.bag.table, "tier", None) is None:
                return None
            keys = self._namespaced(values, offsets, B)
            return self.bag.prefetch(keys)
        handles = [self.bags[f].prefetch(values[offsets[i * B]:offsets[(i + 1) * B]])
                   for i, f in enumerate(self.features)]
        return None if all(h is None for h in handles) else handles

    def resolve(self, features=None, *, values: Optional[torch.Tensor] = None,
                lengths: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None):
        """A future batch's keys (the arguments of a later ``forward``)
        resolved to row ids now, for ``forward(..., resolved=...)``: that
        forward then reads only rows (see ``HashEmbeddingBag.resolve``).
        Returns a ResolvedInput (a dict of them per feature without a shared
        table)."""
        values, offsets, B = self._batch_keys(features, values, lengths, offsets)
        if self.shared_table:
            keys = self._namespaced(values, offsets, B)
            return self.bag._resolve_keys(keys.contiguous())
        return {f: self.bags[f].resolve(values[offsets[i * B]:offsets[(i + 1) * B]])
                for i, f in enumerate(self.features)}

    def memory_usage(self) -> dict:
        """Native memory of the table(s), summed (see EmbeddingTable.memory_usage)."""
        mods = [self.bag] if self.shared_table else list(self.bags.values())
        if any(m._ps for m in mods):
            raise TypeError("memory_usage: the rows live on a parameter server; see its stats()")
        total: dict = {}
        for m in mods:
            for k, v in m.table.memory_usage().items():
                if k.endswith("_bytes") or k == "rows":
                    total[k] = total.get(k, 0) + v
        return total

    def forward(self, features=None, *, values: Optional[torch.Tensor] = None,
                lengths: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None,
                weights: Optional[torch.Tensor] = None, resolved=None) -> dict:
        if features is not None:
            if values is not None or lengths is not None or offsets is not None:
                raise ValueError("pass either a KeyedJaggedTensor or values/lengths/offsets, not both")
            if not callable(getattr(features, "values", None)):
                raise TypeError(f"features must be a KeyedJaggedTensor, got {type(features).__name__}")
            names = list(features.keys())
            if names != self.features:
                raise ValueError(f"KeyedJaggedTensor keys {names} differ from this module's features {self.features}")
            values, offsets = features.values(), features.offsets()
            weights = features.weights_or_none()
        if values is None:
            raise ValueError("values are required")
        values = _int_tensor(values, "values")
        _check_device(values, "values")
        if values.dim() != 1:
            raise ValueError(f"values must be 1-D, got shape {tuple(values.shape)}")
        F = len(self.features)
        if offsets is None:
            if lengths is None:
                raise ValueError("lengths or offsets are required")
            lengths = _int_tensor(lengths, "lengths")
            _check_device(lengths, "lengths", values)
            if lengths.dim() != 1 or lengths.shape[0] % F:
                raise ValueError(f"lengths must be 1-D with a multiple of {F} (features) entries, "
                                 f"got shape {tuple(lengths.shape)}")
            if not torch.compiler.is_compiling():  # data-dependent: eager only (the ops check again)
                if lengths.numel() and int(lengths.min()) < 0:
                    raise ValueError(f"lengths must be >= 0, got {int(lengths.min())}")
                total = int(lengths.sum())
                if total != values.shape[0]:
                    raise ValueError(f"lengths must sum to len(values)={values.shape[0]}, got sum {total}")
            offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
        else:
            if lengths is not None:
                raise ValueError("pass lengths or offsets, not both")
            offsets = _int_tensor(offsets, "offsets")
            _check_device(offsets, "offsets", values)
            if offsets.dim() != 1 or (offsets.shape[0] - 1) % F or offsets.shape[0] < 1:
                raise ValueError(f"offsets must be 1-D with F*B + 1 entries (F = {F}), got shape "
                                 f"{tuple(offsets.shape)}")
        offsets = offsets.to(torch.int64).contiguous()
        values = values.to(torch.int64).contiguous()
        if weights is not None:
            if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
                raise TypeError("weights must be a floating-point torch.Tensor")
            _check_device(weights, "weights", values)
            if weights.shape != values.shape:
                raise ValueError(f"weights must have values' shape {tuple(values.shape)}, got {tuple(weights.shape)}")
        if not torch.compiler.is_compiling():
            # Data-dependent checks, eager only (a compiled graph would break
            # here; there the ops make the same checks, naming offsets and
            # per_sample_weights): the bags (first offset 0, non-decreasing,
            # last == len(values)) before the shared table's namespacing reads
            # them, and finite weights. One vectorised pass each.
            _checks.bags(values.numpy(), offsets.numpy(), True)
            if weights is not None:
                _finite(weights.to(torch.float32), "weights")
        B = (offsets.shape[0] - 1) // F
        if self.shared_table:
            keys = self._namespaced(values, offsets, B)
            out = self.bag(keys, offsets, weights, resolved=resolved).reshape(F, B, self.embedding_dim)
            # unbind, not out[i]: autograd backs each indexed view with a
            # full (F, B, dim) zero gradient, F of them summed (F^2 B dim
            # floats written: 50 ms of a 55 ms backward at F = 26, B = 2048,
            # dim 64); unbind's backward stacks the F gradients once.
            return dict(zip(self.features, out.unbind(0)))
        if resolved is not None and not isinstance(resolved, dict):
            raise TypeError("resolved: without a shared table, resolve() returns a dict of ResolvedInput per "
                            f"feature; got {type(resolved).__name__}")
        result = {}
        for i, f in enumerate(self.features):
            lo, hi = offsets[i * B], offsets[(i + 1) * B]
            w = None if weights is None else weights[lo:hi]
            result[f] = self.bags[f](values[lo:hi], offsets[i * B:(i + 1) * B + 1] - lo, w,
                                     resolved=None if resolved is None else resolved[f])
        return result
