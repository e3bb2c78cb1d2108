"""The hashed embedding table: int64 keys -> float32 rows, collision-free."""

from __future__ import annotations

import numpy as np

from . import _checks, _core
from . import quantize as _quantize
from . import init as _init
from .optim import Optimizer
from .storage import _StorageMethods

__all__ = ["EmbeddingTable"]


def _table_options(dim, initializer, capacity, num_threads, row_type="fp32", rounding_seed=0):
    """The native TableOptions (native/include/embedlookup/options.h), by name."""
    o = _core.TableOptions()
    o.dim = dim
    o.init = initializer._spec()
    o.capacity = capacity or 0
    o.num_threads = int(num_threads or 0)
    o.row_type = _quantize.row_type_id(row_type)
    o.rounding_seed = int(rounding_seed)
    return o


def _row_type_args(dim, row_type, rounding_seed):
    """Checks a constructor's row_type / rounding_seed (ValueError naming them)."""
    _quantize.row_type_id(row_type)
    if row_type == "int4" and dim % 2:
        raise ValueError(f"row_type 'int4' packs two elements per byte: dim must be even, got {dim}")
    if isinstance(rounding_seed, bool) or not isinstance(rounding_seed, (int, np.integer)) \
            or not 0 <= rounding_seed < 2 ** 64:
        raise ValueError(f"rounding_seed must be an int in [0, 2**64), got {rounding_seed!r}")


class ForwardIds:
    """The row ids a training forward resolved (``pooled_lookup(...,
    return_ids=True)`` or :meth:`EmbeddingTable.resolve`), for its backward:
    ``apply_pooled_gradients(..., forward_ids=...)`` then updates those rows
    without probing the index again (and ``pooled_lookup(..., resolved=...)``
    reads them). If rows were freed or moved in between (eviction, relayout), the
    backward notices by the table's layout epoch and probes instead."""

    __slots__ = ("table", "values", "ids", "epoch")

    def __init__(self, table, values, ids, epoch):
        self.table, self.values, self.ids, self.epoch = table, values, ids, int(epoch)

    @staticmethod
    def ids_for(obj, table, values, name: str) -> np.ndarray:
        """``obj``'s ids for ``values`` of ``table``; ``TypeError`` unless it is a ForwardIds."""
        if not isinstance(obj, ForwardIds):
            raise TypeError(f"{name} must be what pooled_lookup(..., return_ids=True) or resolve() returned, "
                            f"got {type(obj).__name__}")
        return obj.check(table, values, name)

    def check(self, table, values, name: str = "forward_ids") -> np.ndarray:
        """The ids, once ``values`` are known to be the forward's keys of ``table``."""
        if self.table is not table:
            raise ValueError(f"{name}: they come from another table's pooled_lookup or resolve")
        if not _same_array(values, self.values) and not (
            values.shape == self.values.shape and np.array_equal(values, self.values)
        ):
            raise ValueError(f"{name}: values differ from the keys of the forward that produced them")
        return self.ids


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` view the same memory the same way (the keys a
    ForwardIds was made from, passed again, maybe through another view or
    tensor): then they hold the same keys unless the caller wrote to them
    in between, which the ids cannot survive anyway (docs/engine.md). The
    element-wise compare it saves reads both arrays: ~0.03-0.15 ms per
    131 072 keys, up to a tenth of a lookup on resolved ids."""
    return a is b or (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
                      and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _forward_ids_mode(mode: str) -> None:
    if mode == "max":
        raise ValueError("return_ids: mode='max' has no NumPy backward (its gradient needs the forward's "
                         "winners); use embedlookup.torch.HashEmbeddingBag for max pooling")


class EmbeddingTable(_StorageMethods):
    """A growing hash table of embedding rows keyed by int64 IDs.

    Parameters
    ----------
    dim:
        Floats per row.
    initializer:
        How rows of newly seen keys are filled (``embedlookup.init``);
        deterministic per (seed, key). Default ``init.uniform(-0.01, 0.01)``.
    capacity:
        Maximum number of rows, or ``None`` to grow as keys arrive. A call
        that would pass it raises ``TableFullError`` and inserts nothing.
    optimizer:
        Default optimizer for :meth:`apply_gradients`.
    num_threads:
        OpenMP threads per call (default: OpenMP's, i.e. all cores).
    row_type:
        How rows are stored: ``"fp32"`` (default), ``"fp16"``, ``"bf16"``,
        ``"int8"`` or ``"int4"`` (row-wise scale and bias; int4 needs an even
        ``dim``). Lookups always return float32; pooled lookups dequantize in
        registers. ``assign`` rounds to nearest even and refuses values out
        of the type's range. fp16 / bf16 tables train with stochastic
        rounding seeded by ``rounding_seed`` (reproducible); int8 / int4
        tables serve only (docs/compressed.md).
    tier, memory_rows, promote:
        (storage) An ``embedlookup.storage.FileTier`` below memory: missing
        keys are read through from it, rows over the ``memory_rows`` budget
        are written back to it (oldest first, until an eviction policy does
        it). ``promote=True`` copies tier rows into memory when read (the
        tier keeps its durable copy until the row is written back);
        ``promote=False`` serves them in place. See docs/storage.md.

    Concurrency: every method releases the GIL. Lookups and gradient updates
    may run at the same time from several threads; each row a lookup returns
    is entirely from before or entirely from after any concurrent update.
    Calls that insert or erase keys briefly hold the table exclusively.
    """

    def __init__(self, dim: int, *, initializer: _init.Initializer | None = None, capacity: int | None = None,
                 optimizer: Optimizer | None = None, num_threads: int | None = None,
                 tier=None, memory_rows: int | None = None, promote: bool = True, row_type: str = "fp32",
                 rounding_seed: int = 0):
        dim, initializer, capacity = _checks.table_args(dim, initializer, capacity, optimizer)
        _row_type_args(dim, row_type, rounding_seed)
        if num_threads is not None and (not isinstance(num_threads, (int, np.integer)) or num_threads <= 0):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        self._dim = dim
        self.initializer = initializer
        self.capacity = capacity
        self.optimizer = optimizer
        self._t = _core.Table(_table_options(self._dim, initializer, self.capacity, num_threads, row_type,
                                             rounding_seed))
        self.tier = None
        if tier is not None:
            self._attach_tier(tier, memory_rows, promote)
        elif memory_rows is not None:
            raise ValueError("memory_rows needs a tier (tier=embedlookup.storage.FileTier(...))")

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def row_type(self) -> str:
        """How rows are stored: "fp32", "fp16", "bf16", "int8" or "int4"."""
        return _quantize.ROW_TYPES[self._t.row_type]

    @property
    def step(self) -> int:
        """Number of optimizer steps applied (drives lr_decay and Adam's bias correction)."""
        return self._t.step

    def __len__(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return (f"EmbeddingTable(dim={self._dim}, rows={len(self)}, capacity={self.capacity}, "
                f"row_type={self.row_type!r})")

    # ----------------------------------------------------------------- lookups
    def lookup(self, keys, *, insert: bool = True, out=None) -> np.ndarray:
        """Rows of ``keys`` as an (n, dim) float32 array. Missing keys are
        inserted with the initializer (``insert=False``: left out, zeros returned)."""
        k = _checks.keys_1d(keys, "keys")
        o = _checks.out_array(out, "out", (k.shape[0], self._dim), keys=k)
        self._t.lookup(k, o, bool(insert), None)
        return o

    def find(self, keys, *, out=None) -> tuple[np.ndarray, np.ndarray]:
        """Serving-side lookup that never inserts: (rows, found) where missing
        keys get zero rows and ``found[i]`` is False."""
        k = _checks.keys_1d(keys, "keys")
        o = _checks.out_array(out, "out", (k.shape[0], self._dim), keys=k)
        found = np.empty(k.shape[0], dtype=np.bool_)
        self._t.lookup(k, o, False, found)
        return o, found

    def resolve(self, keys, *, insert: bool = True) -> ForwardIds:
        """The rows of ``keys`` (int keys, any shape), resolved now for a
        later :meth:`pooled_lookup` (``resolved=``) and its backward
        (``apply_pooled_gradients(..., forward_ids=)``). A training pipeline
        resolves batch t+1 while batch t computes (as TorchRec remaps IDs in
        its input stage): the lookup then reads only the rows, not an index
        line per key. Missing keys are inserted now (``insert=False``: left
        missing; a lookup over them resolves again); over a tier, the rows
        named are brought into memory (even with ``promote=False``), since an
        id names a memory row. The ids stay valid until
        a row is freed or moved (erase, eviction, relayout): a later call
        notices by the table's layout epoch and resolves again, so a stale
        resolution costs time, never a wrong row (docs/engine.md). The
        lookup checks its values are these keys: passing the same array
        again (or a view or tensor of its memory) costs no compare, so do not
        write to it in between; any other array is compared key by key."""
        k = _checks.keys_1d(_checks.to_numpy(keys, "keys").reshape(-1), "keys")
        ids = np.empty(k.shape[0], dtype=np.uint32)
        epoch = self._t.resolve_ids(k, bool(insert), ids)
        ids.flags.writeable = False
        return ForwardIds(self, k, ids, epoch)

    def pooled_lookup(self, values, offsets=None, mode: str = "sum", per_sample_weights=None,
                      include_last_offset: bool = False, *, insert: bool = True, out=None,
                      return_ids: bool = False, resolved: ForwardIds | None = None):
        """Pooled rows per bag, with ``torch.nn.EmbeddingBag``'s semantics.

        ``values`` (int64 keys) with ``offsets`` (start of each bag), or a 2-D
        ``values`` of equal-length bags (a (B, 0) array is B empty bags).
        ``mode``: "sum", "mean" or "max"; empty bags give zeros;
        ``per_sample_weights`` (finite) only with "sum". ``out`` must not
        overlap the memory of ``values``, ``offsets`` or the weights.
        Missing keys are inserted (``insert=False``: they count as zero rows).
        Returns (n_bags, dim) float32; with ``return_ids=True`` (sum and mean),
        ``(out, forward_ids)``, to pass to :meth:`apply_pooled_gradients`.
        ``resolved``: what :meth:`resolve` returned for these values; the
        lookup then reads the rows by id (same result, no index probe).
        """
        m = _checks.mode_id(mode)
        v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
        w = _checks.bag_weights(per_sample_weights, mode, v.shape[0], getattr(values, "shape", None))
        rid = None if resolved is None else ForwardIds.ids_for(resolved, self, v, "resolved")
        o = _checks.out_array(out, "out", (n_bags, self._dim), values=v, offsets=off, per_sample_weights=w)
        if rid is not None:
            if return_ids:
                _forward_ids_mode(mode)
            # Stale ids (or ids of missing keys): the lookup resolves again,
            # into `fresh`, the ids a backward then needs.
            fresh = np.empty(v.shape[0], dtype=np.uint32) if return_ids else None
            used, epoch = self._t.pooled_lookup_resolved(v, off, n_bags, m, w, o, bool(insert), rid, resolved.epoch,
                                                         fresh)
            if not return_ids:
                return o
            return o, (resolved if used else ForwardIds(self, v, fresh, epoch))
        if return_ids:
            _forward_ids_mode(mode)
            ids = np.empty(v.shape[0], dtype=np.uint32)
            epoch = self._t.pooled_lookup_ids(v, off, n_bags, m, w, o, bool(insert), ids)
            return o, ForwardIds(self, v, ids, epoch)
        self._t.pooled_lookup(v, off, n_bags, m, w, o, bool(insert))
        return o

    # --------------------------------------------------------------- mutations
    def assign(self, keys, rows) -> None:
        """Sets the rows of ``keys`` (inserting missing ones; the last of
        duplicated keys wins). Existing keys keep their optimizer state."""
        k = _checks.keys_1d(keys, "keys")
        r = _checks.finite(_checks.floats(rows, "rows", (k.shape[0], self._dim)), "rows")
        self._t.assign(k, r)

    def erase(self, keys) -> int:
        """Removes ``keys`` (missing ones are ignored); returns how many were removed."""
        return self._t.erase(_checks.keys_1d(keys, "keys"))

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys, rows), sorted by key (rows as float32)."""
        return self._t.export()

    def keys(self) -> np.ndarray:
        """All keys (in memory and in the tier), sorted: ``export()[0]``
        without copying the rows."""
        return self._t.export_keys()

    def export_raw(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys, raw rows), sorted by key, the rows in the table's storage
        type: ``(n, embedlookup.quantize.row_bytes(row_type, dim))`` uint8, the
        layout the CUDA/OpenCL/HLS backends and ``quantize.dequantize_rows`` take."""
        return self._t.export_raw()

    def apply_gradients(self, keys, grads, optimizer: Optimizer | None = None) -> None:
        """One fused optimizer step on the rows of ``keys``.

        ``grads[i]`` is the gradient for ``keys[i]``; gradients of duplicated
        keys are summed first, as a dense gradient would be. All keys must be
        in the table (``KeyMissingError`` otherwise). Non-finite gradients are
        rejected with ``ValueError``. On any error nothing is updated.
        """
        opt = _checks.optimizer(optimizer, self.optimizer)
        k = _checks.keys_1d(keys, "keys")
        g = _checks.floats(grads, "grads", (k.shape[0], self._dim))
        self._t.apply_gradients(k, g, opt._spec())

    def apply_pooled_gradients(self, values, offsets, grad_output, optimizer: Optimizer | None = None,
                               mode: str = "sum", per_sample_weights=None,
                               include_last_offset: bool = False, *, forward_ids: ForwardIds | None = None) -> None:
        """The backward of :meth:`pooled_lookup`, fused with the optimizer step.

        ``grad_output`` (n_bags, dim) is the gradient of the pooled output;
        every key occurrence in bag ``b`` receives ``grad_output[b]`` (times its
        weight for "sum" with ``per_sample_weights``, divided by the bag's
        length for "mean"), duplicates are summed, and one optimizer step is
        applied to each distinct row, as :meth:`apply_gradients` would with
        the expanded per-key gradients, without building them. ``mode="max"``
        needs the forward's winners: use the torch module
        (``embedlookup.torch.HashEmbeddingBag``) for it. Keys must be in the
        table; on any error nothing is updated. ``forward_ids``: what
        ``pooled_lookup(..., return_ids=True)`` returned for these values; the
        step then reuses the forward's row ids instead of probing the index.
        """
        v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
        self._apply_pooled(v, off, n_bags, grad_output, optimizer, mode, per_sample_weights,
                           getattr(values, "shape", None), forward_ids)

    def _apply_pooled(self, v, off, n_bags, grad_output, optimizer, mode, per_sample_weights,
                      values_shape=None, forward_ids: ForwardIds | None = None) -> None:
        """apply_pooled_gradients on checked bags (v: the table's own keys)."""
        opt = _checks.optimizer(optimizer, self.optimizer)
        m = _checks.mode_id(mode)
        if mode == "max":
            raise ValueError("mode='max' is not supported here: its gradient needs the forward's winning rows; "
                             "use embedlookup.torch.HashEmbeddingBag for max pooling")
        w = _checks.bag_weights(per_sample_weights, mode, v.shape[0], values_shape)
        g = _checks.floats(grad_output, "grad_output", (n_bags, self._dim))
        ids, epoch = None, 0
        if forward_ids is not None:
            ids, epoch = ForwardIds.ids_for(forward_ids, self, v, "forward_ids"), forward_ids.epoch
        self._t.apply_pooled_gradients(v, off, n_bags, m, w, None, g, opt._spec(), ids, epoch)

    # ------------------------------------------------------------------ memory
    def memory_usage(self) -> dict:
        """Bytes by part (index, rows, optimizer state, metadata) as allocated,
        and per row: ``row_bytes_per_row`` (the row itself as stored: fp32
        padded to 8 floats, other types ``quantize.row_bytes(row_type, dim)``),
        ``row_type`` and ``overhead_bytes_per_row`` (index + metadata)."""
        m = dict(self._t.memory())
        n = max(m["rows"], 1)
        m["total_bytes"] = m["index_bytes"] + m["row_bytes"] + m["optimizer_state_bytes"] + m["metadata_bytes"]
        m["row_bytes_per_row"] = 4 * self._t.stride
        m["row_type"] = self.row_type
        m["overhead_bytes_per_row"] = (m["index_bytes"] + m["metadata_bytes"]) / n
        return m
