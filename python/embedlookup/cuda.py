"""The hashed embedding table on a CUDA GPU.

``CudaTable`` has the CPU :class:`~embedlookup.EmbeddingTable`'s semantics
(the same hash, initializers, EmbeddingBag pooling and fused optimizers, with
duplicates merged the same way), but keeps its index, rows and optimizer
state in device memory and takes device arrays: torch CUDA tensors, or any
object exposing ``__cuda_array_interface__`` or DLPack (CuPy, JAX, Numba...).
Arrays of the right dtype are borrowed, never copied; results are torch CUDA
tensors. Every call runs on torch's current stream of the table's device.

Quick start::

    import torch, embedlookup as el
    from embedlookup.cuda import CudaTable
    t = CudaTable(64, initializer=el.init.normal(std=0.01, seed=1))
    keys = torch.tensor([7, 42, 7], device="cuda")
    out = t.pooled_lookup(keys, torch.tensor([0, 2], device="cuda"), mode="sum")
    t.apply_gradients(keys, torch.ones(3, 64, device="cuda"), el.optim.Adagrad(lr=0.1))

    cpu = t.to_table()                 # an EmbeddingTable with the same rows
    t2 = CudaTable.from_table(cpu)     # and back

Needs torch with CUDA and an embedlookup built with the CUDA backend (the
default where nvcc is found at build time); :func:`is_available` says whether
both hold, :func:`unavailable_reason` why not.
"""

from __future__ import annotations

import numpy as np

from . import _checks, _core, _row_layout
from . import init as _init
from .optim import Optimizer

__all__ = ["CachedCudaTable", "CudaRawTable", "CudaTable", "CudaUnavailableError", "DeviceMemoryError", "is_built", "is_available",
           "unavailable_reason"]


class CudaUnavailableError(RuntimeError):
    """CUDA tables cannot be used here: no CUDA build, no torch with CUDA, or no GPU."""


DeviceMemoryError = getattr(_core, "DeviceMemoryError", MemoryError)


def is_built() -> bool:
    """Whether this embedlookup was compiled with the CUDA backend."""
    return bool(getattr(_core, "cuda_built", False))


def unavailable_reason() -> str | None:
    """Why CUDA tables cannot be used here, or None when they can."""
    if not is_built():
        return ("embedlookup was built without its CUDA backend (nvcc was not found at build time, or "
                "EMBEDLOOKUP_CUDA=OFF); rebuild with nvcc on PATH, e.g. scripts/dev-build -DEMBEDLOOKUP_CUDA=ON")
    n, why = _core.cuda_device_count()
    if n == 0:
        return f"no CUDA GPU is visible ({why or 'the driver reports 0 devices'})"
    try:
        import torch
    except ImportError:
        return "CudaTable needs torch (pip install torch) to allocate its results"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} cannot use CUDA (a CPU-only build, or no GPU visible to it)"
    return None


def is_available() -> bool:
    """Whether CudaTable can be used: CUDA backend built, torch with CUDA, a GPU."""
    return unavailable_reason() is None


def _torch():
    why = unavailable_reason()
    if why is not None:
        raise CudaUnavailableError(why)
    import torch

    return torch


def _rethrow_oom(fn, *args):
    """Runs a native call; on device OOM frees torch's cached blocks and tries once more
    (the native call changes nothing before its allocations succeed)."""
    try:
        return fn(*args)
    except DeviceMemoryError:
        import torch

        torch.cuda.empty_cache()
        return fn(*args)


def _cuda_device(torch, device):
    """``device`` (None: torch's current; an index, "cuda:1" or a torch.device)
    as a torch.device with an index; ValueError when it is not a visible GPU."""
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if isinstance(device, int):
        dev = torch.device("cuda", device)
    if dev.type != "cuda":
        raise ValueError(f"device must be a CUDA device, got {dev}")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if not 0 <= dev.index < torch.cuda.device_count():
        raise ValueError(f"device {dev} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


class _DeviceArrays:
    """Argument handling shared by the CUDA classes: borrows device arrays on
    ``self._device`` (a torch.device) with ``self._torch``, never copying
    arrays of the right dtype."""

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self):
        """The torch.device holding the table."""
        return self._device

    def _stream(self) -> int:
        return self._torch.cuda.current_stream(self._device).cuda_stream

    # -------------------------------------------------------- argument checks
    def _tensor(self, x, name: str):
        """Borrows x as a torch tensor on this table's device (no copy)."""
        torch = self._torch
        if isinstance(x, torch.Tensor):
            t = x
        elif hasattr(x, "__cuda_array_interface__"):
            try:
                t = torch.as_tensor(x, device=self._device)
            except Exception as e:  # noqa: BLE001 - report any conversion failure as the argument's fault
                raise TypeError(f"{name}: cannot borrow this __cuda_array_interface__ array ({e})") from None
        elif hasattr(x, "__dlpack__"):
            try:
                t = torch.from_dlpack(x)
            except Exception as e:  # noqa: BLE001
                raise TypeError(f"{name}: cannot borrow this array via DLPack ({e})") from None
        else:
            raise TypeError(f"{name} must be a CUDA array (torch CUDA tensor, __cuda_array_interface__ or DLPack), "
                            f"got {type(x).__name__}; host arrays are not copied implicitly")
        if t.device.type != "cuda":
            raise TypeError(f"{name} must be on the GPU ({self._device}), got a tensor on {t.device}; "
                            f"move it with .to('{self._device}')")
        if t.device != self._device:
            raise ValueError(f"{name} is on {t.device} but this table lives on {self._device}")
        return t

    def _keys(self, x, name: str):
        torch = self._torch
        t = self._tensor(x, name)
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
        if t.dtype != torch.int64:
            _checks.integer_dtype(not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool),
                                  t.dtype, name)
            t = t.to(torch.int64)  # a copy: narrower integer keys are widened
        return t.contiguous()

    def _floats(self, x, name: str, shape: tuple):
        torch = self._torch
        t = self._tensor(x, name)
        if t.dtype != torch.float32:
            _checks.float_dtype(t.dtype.is_floating_point, t.dtype, name)
            t = t.to(torch.float32)
        _checks.shape_is(t.shape, shape, name)
        return t.contiguous()

    def _out(self, out, shape: tuple):
        torch = self._torch
        if out is None:
            return torch.empty(shape, dtype=torch.float32, device=self._device)
        t = self._tensor(out, "out")
        if t.dtype != torch.float32 or tuple(t.shape) != tuple(shape) or not t.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 CUDA tensor of shape {tuple(shape)}, "
                             f"got {t.dtype} {tuple(t.shape)}")
        return t


    def _bags(self, values, offsets, include_last_offset: bool, mode: str, per_sample_weights):
        """The checked device arguments of a pooled lookup: (keys, offsets,
        n_bags, weights pointer or 0, equal_length). ``equal_length``: a 2-D
        ``values`` of equal-length bags, whose offsets are well formed by
        construction."""
        torch = self._torch
        v = self._tensor(values, "values")
        layout = _checks.bag_layout(tuple(v.shape), offsets is not None, include_last_offset)
        if layout is not None:
            n_bags, length = layout
            v = self._keys(v.reshape(-1), "values")
            off = torch.arange(0, n_bags, dtype=torch.int64, device=self._device) * length
        else:
            v = self._keys(v, "values")
            off = self._keys(offsets, "offsets")
            n_bags = _checks.bag_count(off.shape[0], include_last_offset)
            if off.shape[0] == 0 and v.shape[0]:
                raise ValueError(f"offsets is empty but values holds {v.shape[0]} keys")
        w = 0
        if per_sample_weights is not None:
            _checks.weights_mode(mode)
            w = self._floats(per_sample_weights, "per_sample_weights", (v.shape[0],)).data_ptr()
        return v, off, n_bags, w, layout is not None

class CudaTable(_DeviceArrays):
    """A growing hash table of embedding rows keyed by int64 IDs, in GPU memory.

    Parameters
    ----------
    dim:
        Floats per row.
    initializer:
        How rows of newly seen keys are filled (``embedlookup.init``); the
        same rows as a CPU table with the same initializer, key for key.
    capacity:
        Maximum number of rows, or ``None`` to grow as keys arrive. A call
        that would pass it raises ``TableFullError`` and inserts nothing.
    optimizer:
        Default optimizer for :meth:`apply_gradients`.
    device:
        CUDA device (index, ``"cuda:1"`` or ``torch.device``); default: torch's current one.
    expected_rows:
        Rows to allocate up front. Raises ``DeviceMemoryError`` (a
        ``MemoryError``) at once when they cannot fit in device memory.

    Calls from several threads are serialised per table. Results are ready
    in stream order: torch ops on the same stream see them without a sync.
    """

    def __init__(self, dim: int, *, initializer: _init.Initializer | None = None, capacity: int | None = None,
                 optimizer: Optimizer | None = None, device=None, expected_rows: int | None = None):
        torch = _torch()
        dim, initializer, capacity = _checks.table_args(dim, initializer, capacity, optimizer, integer_types=int)
        if expected_rows is not None and (isinstance(expected_rows, bool) or not isinstance(expected_rows, int)
                                          or expected_rows < 0):
            raise ValueError(f"expected_rows must be a non-negative int or None, got {expected_rows!r}")
        dev = _cuda_device(torch, device)
        self._torch = torch
        self._dim = dim
        self._device = dev
        self.initializer = initializer
        self.capacity = capacity
        self.optimizer = optimizer
        self._t = _rethrow_oom(_core.CudaTable, dim, initializer._spec(), capacity or 0, dev.index,
                               expected_rows or 0)

    # ------------------------------------------------------------------ basics
    @property
    def step(self) -> int:
        """Number of optimizer steps applied (drives lr_decay and Adam's bias correction)."""
        return self._t.step

    def __len__(self) -> int:
        return self._t.size(self._stream())

    def __repr__(self) -> str:
        return f"CudaTable(dim={self._dim}, rows={len(self)}, capacity={self.capacity}, device={self._device})"

    # ----------------------------------------------------------------- lookups
    def lookup(self, keys, *, insert: bool = True, out=None):
        """Rows of ``keys`` as an (n, dim) float32 CUDA tensor. Missing keys are
        inserted with the initializer (``insert=False``: zeros returned)."""
        k = self._keys(keys, "keys")
        o = self._out(out, (k.shape[0], self._dim))
        _rethrow_oom(self._t.lookup, k.data_ptr(), k.shape[0], o.data_ptr(), bool(insert), 0, self._stream())
        return o

    def find(self, keys, *, out=None):
        """Lookup that never inserts: (rows, found), zero rows where found is False."""
        k = self._keys(keys, "keys")
        o = self._out(out, (k.shape[0], self._dim))
        found = self._torch.empty(k.shape[0], dtype=self._torch.bool, device=self._device)
        self._t.lookup(k.data_ptr(), k.shape[0], o.data_ptr(), False, found.data_ptr(), self._stream())
        return o, found

    def pooled_lookup(self, values, offsets=None, mode: str = "sum", per_sample_weights=None,
                      include_last_offset: bool = False, *, insert: bool = True, out=None, check: bool = True):
        """Pooled rows per bag, with ``torch.nn.EmbeddingBag``'s semantics.

        ``values`` (int64 keys) with ``offsets`` (start of each bag), or a 2-D
        ``values`` of equal-length bags. ``mode``: "sum", "mean" or "max";
        empty bags give zeros; ``per_sample_weights`` only with "sum". Missing
        keys are inserted (``insert=False``: they count as zero rows).

        ``check=True`` validates the offsets on the GPU first and raises
        ``ValueError`` for bad ones (this waits for the stream). With
        ``check=False`` the call never waits; bad offsets then cannot read or
        write out of bounds, but give undefined bags.
        Returns an (n_bags, dim) float32 CUDA tensor.
        """
        mode_id = _checks.mode_id(mode)
        v, off, n_bags, w, equal_length = self._bags(values, offsets, include_last_offset, mode,
                                                     per_sample_weights)
        check = check and not equal_length
        n = v.shape[0]
        o = self._out(out, (n_bags, self._dim))
        code, index = _rethrow_oom(self._t.pooled_lookup, v.data_ptr(), n, off.data_ptr(), off.shape[0], n_bags,
                                   bool(include_last_offset), mode_id, w, o.data_ptr(), bool(insert),
                                   bool(check), self._stream())
        if code:
            raise ValueError(self._offsets_message(code, index, off, n))
        return o

    @staticmethod
    def _offsets_message(code: int, index: int, off, n: int) -> str:
        # Bits set by the native check (kOffsets* in kernels_cuda.h), reported
        # in the CPU path's order and words.
        problem = "first" if code & 1 else "decreasing" if code & 2 else "past_end" if code & 4 else "last"
        return _checks.offsets_message(problem, off, n, index)

    # --------------------------------------------------------------- mutations
    def assign(self, keys, rows) -> None:
        """Sets the rows of ``keys`` (inserting missing ones; the last of
        duplicated keys wins). Existing keys keep their optimizer state."""
        k = self._keys(keys, "keys")
        r = self._floats(rows, "rows", (k.shape[0], self._dim))
        _rethrow_oom(self._t.assign, k.data_ptr(), k.shape[0], r.data_ptr(), self._stream())

    def export(self):
        """All (keys, rows) as CUDA tensors, sorted by key."""
        torch = self._torch
        s = self._stream()
        n = self._t.size(s)
        keys = torch.empty(n, dtype=torch.int64, device=self._device)
        rows = torch.empty((n, self._dim), dtype=torch.float32, device=self._device)
        _rethrow_oom(self._t.export_rows, keys.data_ptr(), rows.data_ptr(), n, s)
        return keys, rows

    def apply_gradients(self, keys, grads, optimizer: Optimizer | None = None) -> None:
        """One fused optimizer step on the rows of ``keys``, as the CPU table does:
        gradients of duplicated keys are summed (in key order of appearance),
        all keys must exist (``KeyMissingError``), non-finite gradients raise
        ``ValueError``; on any error nothing is updated. Waits for the stream
        (the checks are read back)."""
        opt = _checks.optimizer(optimizer, self.optimizer)
        k = self._keys(keys, "keys")
        g = self._floats(grads, "grads", (k.shape[0], self._dim))
        _rethrow_oom(self._t.apply_gradients, k.data_ptr(), k.shape[0], g.data_ptr(), opt._spec(), self._stream())

    # ------------------------------------------------------------------ memory
    def memory_usage(self) -> dict:
        """Device bytes by part (index, rows, optimizer state, metadata) as allocated."""
        m = dict(self._t.memory(self._stream()))
        m["total_bytes"] = m["index_bytes"] + m["row_bytes"] + m["optimizer_state_bytes"] + m["metadata_bytes"]
        return m

    # -------------------------------------------------------------- transfers
    @classmethod
    def from_table(cls, table, *, device=None) -> CudaTable:
        """A CudaTable holding the rows of a CPU ``EmbeddingTable`` (same dim,
        initializer, capacity, default optimizer). Optimizer state is not
        carried over: the GPU table starts its own at its first update."""
        from .table import EmbeddingTable

        if not isinstance(table, EmbeddingTable):
            raise TypeError(f"table must be an embedlookup.EmbeddingTable, got {type(table).__name__}")
        torch = _torch()
        keys, rows = table.export()
        t = cls(table.dim, initializer=table.initializer, capacity=table.capacity, optimizer=table.optimizer,
                device=device, expected_rows=len(keys))
        if len(keys):
            t.assign(torch.from_numpy(keys).to(t.device), torch.from_numpy(rows).to(t.device))
        return t

    def to_table(self, *, num_threads: int | None = None):
        """A CPU ``EmbeddingTable`` with this table's rows (same dim,
        initializer, capacity, default optimizer; optimizer state not carried)."""
        from .table import EmbeddingTable

        keys, rows = self.export()
        t = EmbeddingTable(self._dim, initializer=self.initializer, capacity=self.capacity,
                           optimizer=self.optimizer, num_threads=num_threads)
        if keys.shape[0]:
            t.assign(keys.cpu().numpy(), rows.cpu().numpy())
        return t


class CudaRawTable(_DeviceArrays):
    """Read-only rows in a storage type (fp32, fp16, bf16, int8, int4) on a GPU.

    ``keys``: distinct int64 keys (n,) and ``rows``: their rows as raw bytes
    ``(n, row_bytes(kind, dim))`` uint8 in the layout of ``kind``
    (``embedlookup._row_layout``; fp32 rows may be float32 (n, dim)), both
    host arrays, uploaded once. Lookups take CUDA arrays like
    :class:`CudaTable` and return float32 CUDA tensors: the kernel
    (``native/cuda/pool_raw_cuda.cu``) decodes each element in registers, so
    the table occupies and the lookups read ``row_bytes`` per row (72 bytes
    for int8 at dim 64 against 256 for fp32). Keys are resolved with a
    binary search over the sorted keys on the device (``torch.searchsorted``);
    missing keys read as zero rows, as a CPU table's ``insert=False``.

    Raises ``ValueError`` / ``TypeError`` for an unknown kind, int4 with an odd
    dim, rows of the wrong shape or dtype, keys that are not distinct or do
    not match the rows in number; ``CudaUnavailableError`` without a GPU.
    """

    def __init__(self, keys, rows, kind: str, dim: int, *, device=None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        dim = int(dim)
        raw = _row_layout.raw_rows(rows, _row_layout.check_kind(kind, dim), dim)
        k = _checks.keys_1d(keys, "keys")
        if k.shape[0] != raw.shape[0]:
            raise ValueError(f"keys and rows differ in number: {k.shape[0]} keys, {raw.shape[0]} rows")
        order = np.argsort(k, kind="stable")
        k, raw = k[order], raw[order]
        if k.shape[0] > 1 and (k[1:] == k[:-1]).any():
            raise ValueError("keys must be distinct (one row per key)")
        torch = _torch()
        self._torch, self._device = torch, _cuda_device(torch, device)
        self._dim, self.kind, self.row_bytes = dim, kind, _row_layout.row_bytes(kind, dim)
        self._keys_dev = torch.from_numpy(k).to(self._device)
        self._rows_dev = torch.from_numpy(raw).to(self._device)

    @classmethod
    def from_table(cls, table, *, device=None) -> CudaRawTable:
        """A snapshot of an ``EmbeddingTable``'s rows in its own storage type
        (``table.row_type``, rows from ``export_raw()``)."""
        from .table import EmbeddingTable

        if not isinstance(table, EmbeddingTable):
            raise TypeError(f"table must be an embedlookup.EmbeddingTable, got {type(table).__name__}")
        keys, raw = table.export_raw()
        return cls(keys, raw, table.row_type, table.dim, device=device)

    def __len__(self) -> int:
        return int(self._keys_dev.shape[0])

    def __repr__(self) -> str:
        return f"CudaRawTable(dim={self._dim}, rows={len(self)}, kind={self.kind!r}, device={self._device})"

    def memory_usage(self) -> dict:
        """Device bytes: the raw rows and the sorted keys."""
        return {"row_bytes": self._rows_dev.numel(), "index_bytes": 8 * len(self), "rows": len(self),
                "row_bytes_per_row": self.row_bytes}

    def _row_ids(self, v):
        """Row numbers of keys v (-1 where missing), on the device."""
        torch = self._torch
        n_rows = len(self)
        if n_rows == 0:
            return torch.full_like(v, -1)
        pos = torch.searchsorted(self._keys_dev, v).clamp_(max=n_rows - 1)
        return torch.where(self._keys_dev[pos] == v, pos, torch.full_like(pos, -1))

    def pooled_lookup(self, values, offsets=None, mode: str = "sum", per_sample_weights=None,
                      include_last_offset: bool = False, *, out=None, check: bool = True):
        """Pooled rows per bag with ``torch.nn.EmbeddingBag``'s semantics, as
        :meth:`CudaTable.pooled_lookup` with ``insert=False``. ``check=True``
        validates the offsets first (copies them to the host: a wait)."""
        torch = self._torch
        mode_id = _checks.mode_id(mode)
        v, off, n_bags, w, equal_length = self._bags(values, offsets, include_last_offset, mode,
                                                     per_sample_weights)
        if check and not equal_length:
            _check_offsets(off.cpu().numpy(), v.shape[0], include_last_offset)
        n = v.shape[0]
        o = self._out(out, (n_bags, self._dim))
        ids = self._row_ids(v)
        with torch.cuda.device(self._device):
            _core.cuda_pool_raw_rows(self._rows_dev.data_ptr(), len(self), self.row_bytes, self._dim,
                                     _row_layout.KIND_IDS[self.kind], ids.data_ptr(), n, off.data_ptr(),
                                     off.shape[0], n_bags, mode_id, w, o.data_ptr(), self._stream())
        return o

    def find(self, keys, *, out=None):
        """(rows, found): the decoded rows of ``keys`` (zero rows where
        missing) as (n, dim) float32 and whether each key is present."""
        torch = self._torch
        k = self._keys(keys, "keys")
        off = torch.arange(k.shape[0], dtype=torch.int64, device=self._device)
        rows = self.pooled_lookup(k, off, "sum", out=out, check=False)
        return rows, self._row_ids(k) >= 0


def _check_offsets(off: np.ndarray, n: int, include_last_offset: bool) -> None:
    """ValueError (worded as the CPU path's) for bad host offsets of n keys."""
    if off.shape[0] == 0:
        return
    if off[0] != 0:
        raise ValueError(_checks.offsets_message("first", off, n))
    dec = np.flatnonzero(off[1:] < off[:-1])
    if dec.size:
        raise ValueError(_checks.offsets_message("decreasing", off, n, int(dec[0]) + 1))
    if off[-1] > n:
        raise ValueError(_checks.offsets_message("past_end", off, n))
    if include_last_offset and off[-1] != n:
        raise ValueError(_checks.offsets_message("last", off, n))


from .cuda_cached import CachedCudaTable  # noqa: E402 - it uses the helpers above
