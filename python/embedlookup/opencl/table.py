"""A read-only snapshot of an :class:`~embedlookup.EmbeddingTable` in OpenCL device memory."""

from __future__ import annotations

import os
import threading

import numpy as np

from .. import _checks, _core, _row_layout

# The engine's "no row" sentinel (native/include/embedlookup/row_id.h) as the
# OpenCL kernels' signed 32-bit row ids see it (-1); passed as -DEL_NO_ROW.
_NO_ROW = int(np.array(_core.NO_ROW, np.uint32).view(np.int32))

__all__ = ["VARIANTS", "DeviceMemoryError", "OpenCLTable", "OpenCLUnavailableError", "available_devices"]

VARIANTS = ("ndrange", "single_work_item")
_HERE = os.path.dirname(os.path.abspath(__file__))
# Must equal EL_MAX_PROBE in el_common.cl: the index is built so that every key
# sits fewer than this many slots from its home slot.
_MAX_PROBE = 128
# The single-work-item kernel keeps a bag's accumulator in a private array of
# the row's width; wider rows would not fit an FPGA's registers sensibly.
_SWI_MAX_DIM = 1024


class OpenCLUnavailableError(RuntimeError):
    """pyopencl is not installed, or no OpenCL platform / device matches the request."""


class DeviceMemoryError(MemoryError):
    """The table does not fit the chosen device's memory."""


def _cl():
    try:
        import pyopencl as cl
    except ImportError as e:
        raise OpenCLUnavailableError(
            f"pyopencl is not installed ({e}); install the extra: pip install 'embedlookup[opencl]'"
        ) from None
    return cl


def available_devices() -> list[tuple[str, str]]:
    """(platform name, device name) for every OpenCL device found; empty when
    pyopencl is present but no platform (ICD) is installed."""
    cl = _cl()
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader reports "no platforms" as an error
        return []
    out = []
    for p in platforms:
        try:
            out.extend((p.name, d.name) for d in p.get_devices())
        except cl.Error:  # a platform without devices
            pass
    return out


def _host(x, name: str):
    """Inputs are host arrays: the offsets are validated on the host before
    any device work, and keys go up with them in one transfer."""
    if type(x).__module__.startswith("pyopencl"):
        raise TypeError(
            f"{name}: expected a host array (NumPy or a CPU tensor), got a pyopencl "
            f"{type(x).__name__}; copy it to the host first (.get())"
        )
    return x


def _source(variant: str) -> str:
    """The variant's program with el_common.cl pasted in for its #include, so
    the build needs no -I path (which runtimes split at spaces)."""

    def read(name):
        with open(os.path.join(_HERE, name)) as f:
            return f.read()

    src = read(f"{variant}.cl")
    include = '#include "el_common.cl"'
    assert include in src, f"{variant}.cl must include el_common.cl"
    return src.replace(include, read("el_common.cl"))


def _pick(items, want, what: str, describe):
    """`want`: None (the first), an int index, a case-insensitive substring of
    the name (or vendor), or the pyopencl object itself."""
    names = [describe(x) for x in items]
    if want is None:
        if not items:
            raise OpenCLUnavailableError(f"no OpenCL {what} found")
        return items[0]
    if isinstance(want, (int, np.integer)) and not isinstance(want, bool):
        if 0 <= want < len(items):
            return items[want]
        raise OpenCLUnavailableError(f"{what} index {want} out of range; available: {names}")
    if isinstance(want, str):
        for x, name in zip(items, names):
            if want.lower() in name.lower():
                return x
        raise OpenCLUnavailableError(f"no OpenCL {what} matches {want!r}; available: {names}")
    if any(x == want for x in items):
        return want
    raise OpenCLUnavailableError(f"{what} {want!r} is not one of the available ones: {names}")


def _select_device(platform, device):
    cl = _cl()
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:
        raise OpenCLUnavailableError(f"no OpenCL platform is installed ({e})") from None
    plat = _pick(platforms, platform, "platform", lambda p: f"{p.name} ({p.vendor})")
    try:
        devices = plat.get_devices()
    except cl.Error:
        devices = []
    dev = _pick(devices, device, f"device on platform {plat.name!r}", lambda d: d.name)
    return plat, dev


def _sub_device(device, compute_units):
    """``device`` limited to ``compute_units`` compute units (itself when it
    has no more than that)."""
    cl = _cl()
    if isinstance(compute_units, bool) or not isinstance(compute_units, int) or compute_units < 1:
        raise ValueError(f"compute_units must be a positive int or None, got {compute_units!r}")
    if compute_units >= device.max_compute_units:
        return device
    try:
        return device.create_sub_devices([cl.device_partition_property.EQUALLY, compute_units])[0]
    except cl.Error as e:
        raise OpenCLUnavailableError(
            f"compute_units={compute_units}: device {device.name!r} cannot be partitioned ({e})"
        ) from None


def _check_fits(device, buffers: dict) -> None:
    """Raises DeviceMemoryError when a buffer passes the device's largest
    allocation or all of them pass its global memory."""
    total = sum(buffers.values())
    biggest = max(buffers, key=buffers.get)
    if buffers[biggest] > device.max_mem_alloc_size:
        raise DeviceMemoryError(
            f"table does not fit the device {device.name!r}: its {biggest} need {buffers[biggest]} bytes "
            f"in one buffer, the device allows at most {device.max_mem_alloc_size} "
            f"(CL_DEVICE_MAX_MEM_ALLOC_SIZE)"
        )
    if total > device.global_mem_size:
        raise DeviceMemoryError(
            f"table does not fit the device {device.name!r}: it needs {total} bytes, the device has "
            f"{device.global_mem_size} bytes of global memory"
        )


def build_index(keys: np.ndarray, hashes: np.ndarray, capacity: int):
    """Linear-probing slots for `keys` (distinct) with home slot hash & mask.

    Vectorised over keys: in round r every unplaced key tries slot home + r;
    where several want the same free slot the first key wins, the others move
    on. A key thus passes only occupied slots, which is what the device's
    probe (stop at the key or at the first empty slot) relies on. Returns
    (slot_keys, slot_rows, longest displacement + 1), or None when some key
    would sit EL_MAX_PROBE or more slots from home.
    """
    mask = np.uint64(capacity - 1)
    slot_keys = np.zeros(capacity, np.int64)
    slot_rows = np.full(capacity, _NO_ROW, np.int32)
    pending = np.arange(keys.shape[0], dtype=np.int64)
    pos = (hashes & mask).astype(np.int64)
    rounds = 0
    while pending.size:
        if rounds >= _MAX_PROBE:
            return None
        p = pos[pending]
        free = slot_rows[p] == _NO_ROW
        taken, first = np.unique(p[free], return_index=True)
        winners = pending[free][first]
        slot_rows[taken] = winners.astype(np.int32)
        slot_keys[taken] = keys[winners]
        placed = np.zeros(keys.shape[0], bool)
        placed[winners] = True
        pending = pending[~placed[pending]]
        pos[pending] = (pos[pending] + 1) & (capacity - 1)
        rounds += 1
    return slot_keys, slot_rows, rounds


class OpenCLTable:
    """A table's rows and a hash index over its keys, held in OpenCL device memory.

    Built from an :class:`~embedlookup.EmbeddingTable` (a snapshot of its
    :meth:`~embedlookup.EmbeddingTable.export`, or of its ``export_raw`` for a
    table storing fp16 / bf16 / int8 / int4 rows, which the device keeps in that
    type; build a new one to pick up later changes), or by :meth:`from_raw`. Keys are hashed and probed on the device with the same
    hash as the CPU engine; missing keys read as zero rows, as the CPU
    engine's ``insert=False``.

    Parameters
    ----------
    table:
        The source ``EmbeddingTable``.
    platform, device:
        Which OpenCL platform and device: an index, a case-insensitive
        substring of the name (e.g. ``platform="portable"`` for PoCL), or the
        pyopencl object. ``None`` takes the first. Raises
        ``OpenCLUnavailableError`` naming the available ones when none matches.
    variant:
        ``"ndrange"``: one work item per (column, bag), for CPUs and GPUs.
        ``"single_work_item"``: one pipelined work item, the form FPGA OpenCL
        compilers build into hardware (see ``single_work_item.cl``; dim at
        most 1024). ``"auto"``: single_work_item on accelerator-type devices
        (FPGAs), ndrange elsewhere.

    profile:
        Time kernels with OpenCL profiling events: after each lookup,
        ``last_kernel_seconds`` holds the device time of its kernels.
    compute_units:
        Use at most this many of the device's compute units (a sub-device
        made by equal partitioning; on a CPU device, one compute unit is one
        thread), e.g. to compare with other libraries at the same thread
        count. ``None``: the whole device.

    Raises ``DeviceMemoryError`` when the rows and index do not fit the
    device's memory.
    """

    def __init__(self, table, *, platform=None, device=None, variant: str = "auto", profile: bool = False,
                 compute_units: int | None = None):
        from ..table import EmbeddingTable

        if not isinstance(table, EmbeddingTable):
            raise TypeError(f"table must be an embedlookup.EmbeddingTable, got {type(table).__name__}")
        kind = table.row_type
        if kind == "fp32":
            keys, rows = table.export()
            rows = np.ascontiguousarray(rows, np.float32).reshape(-1, table.dim)
        else:  # compressed rows go to the device as they are stored
            keys, rows = table.export_raw()
        self._build(keys, rows, kind, table.dim, platform, device, variant, profile, compute_units)

    @classmethod
    def from_raw(cls, keys, rows, kind: str, dim: int, *, platform=None, device=None, variant: str = "auto",
                 profile: bool = False, compute_units: int | None = None) -> OpenCLTable:
        """A device table from rows already in a storage type.

        ``keys``: distinct int64 keys (n,). ``rows``: their rows as raw bytes
        ``(n, row_bytes(kind, dim))`` uint8 in the layout of ``kind`` (``"fp32"``,
        ``"fp16"``, ``"bf16"``, ``"int8"``, ``"int4"``; fp32 rows may also be
        float32 (n, dim)). The kernels decode each element where they read it;
        lookups return float32. Other arguments as the constructor. Raises
        ValueError / TypeError for an unknown kind, int4 with an odd dim, rows
        of the wrong shape or dtype, keys that are not distinct or do not match
        the rows in number.
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        raw = _row_layout.raw_rows(rows, _row_layout.check_kind(kind, int(dim)), int(dim))
        k = _checks.keys_1d(_host(keys, "keys"), "keys")
        if k.shape[0] != raw.shape[0]:
            raise ValueError(f"keys and rows differ in number: {k.shape[0]} keys, {raw.shape[0]} rows")
        if np.unique(k).shape[0] != k.shape[0]:
            raise ValueError("keys must be distinct (one row per key)")
        self = cls.__new__(cls)
        self._build(k, raw, kind, int(dim), platform, device, variant, profile, compute_units)
        return self

    def _build(self, keys, rows, kind, dim, platform, device, variant, profile, compute_units):
        if variant not in ("auto",) + VARIANTS:
            raise ValueError(f"variant must be one of {['auto', *VARIANTS]}, got {variant!r}")
        cl = _cl()
        self.platform, self.device = _select_device(platform, device)
        if compute_units is not None:
            self.device = _sub_device(self.device, compute_units)
        if variant == "auto":
            variant = "single_work_item" if self.device.type & cl.device_type.ACCELERATOR else "ndrange"
        self._dim = dim
        if variant == "single_work_item" and self._dim > _SWI_MAX_DIM:
            raise ValueError(
                f"variant='single_work_item' takes dim <= {_SWI_MAX_DIM}, the table has dim {self._dim}"
            )
        self.variant = variant
        keys = np.ascontiguousarray(keys, np.int64)
        self.kind = kind
        self.row_bytes = _row_layout.row_bytes(kind, dim)
        rows = _row_layout.raw_rows(rows, kind, dim)
        self._n_rows = keys.shape[0]
        capacity = 16
        while capacity < 2 * self._n_rows:  # load factor <= 1/2
            capacity *= 2
        _check_fits(self.device, {"rows": max(rows.nbytes, 4), "index": 12 * capacity})

        self._ctx = cl.Context([self.device])
        self._profile = bool(profile)
        self.last_kernel_seconds = None
        props = cl.command_queue_properties.PROFILING_ENABLE if self._profile else 0
        self._queue = cl.CommandQueue(self._ctx, properties=props)
        max_dim = (self._dim + 7) // 8 * 8
        opts = [f"-DEL_MAX_PROBE={_MAX_PROBE}", f"-DEL_MAX_DIM={max_dim}", f"-DEL_NO_ROW=({_NO_ROW})",
                f"-DEL_ROW_KIND={_row_layout.KIND_IDS[kind]}"]
        prg = cl.Program(self._ctx, _source(variant)).build(options=opts)
        names = ["el_hash_keys"] + (
            ["el_pooled_swi", "el_find_swi"]
            if variant == "single_work_item"
            else ["el_resolve", "el_pool", "el_gather"]
        )
        self._k = {name: cl.Kernel(prg, name) for name in names}
        # A kernel object carries its arguments between set and enqueue:
        # concurrent calls from several threads take turns.
        self._lock = threading.Lock()

        hashes = self._hash(keys)
        while True:
            built = build_index(keys, hashes, capacity)
            if built is not None:
                break
            capacity *= 2  # a rare long cluster: spread the keys further
            _check_fits(self.device, {"rows": max(rows.nbytes, 4), "index": 12 * capacity})
        slot_keys, slot_rows, self.longest_probe = built
        self._mask = np.uint64(capacity - 1)
        mf = cl.mem_flags
        ro = mf.READ_ONLY | mf.COPY_HOST_PTR
        self._rows = cl.Buffer(self._ctx, ro, hostbuf=rows if rows.size else np.zeros(4, np.uint8))
        self._slot_keys = cl.Buffer(self._ctx, ro, hostbuf=slot_keys)
        self._slot_rows = cl.Buffer(self._ctx, ro, hostbuf=slot_rows)
        self._index = (self._slot_keys, self._slot_rows, self._mask)  # the probe's kernel arguments
        self.index_capacity = capacity

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return self._n_rows

    def __repr__(self) -> str:
        return (
            f"OpenCLTable(dim={self._dim}, rows={self._n_rows}, kind={self.kind!r}, variant={self.variant!r}, "
            f"device={self.device.name!r})"
        )

    # ----------------------------------------------------------------- helpers
    def _in(self, a: np.ndarray):
        """A read-only device copy of `a` (a 1-element dummy when empty:
        OpenCL has no zero-size buffers)."""
        cl = _cl()
        if a.size == 0:
            a = np.zeros(1, a.dtype)
        return cl.Buffer(self._ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=a)

    def _outbuf(self, nbytes: int):
        cl = _cl()
        return cl.Buffer(self._ctx, cl.mem_flags.WRITE_ONLY, size=max(int(nbytes), 4))

    def _hash(self, keys: np.ndarray) -> np.ndarray:
        cl = _cl()
        out = np.empty(keys.shape[0], np.uint64)
        if keys.size:
            ob = self._outbuf(out.nbytes)
            global_size = 1 if self.variant == "single_work_item" else keys.size
            self._run("el_hash_keys", (global_size,), None, self._in(keys), ob, np.int64(keys.size))
            cl.enqueue_copy(self._queue, out, ob)
        return out

    def _run(self, name: str, global_size, local_size, *args):
        with self._lock:
            return self._k[name](self._queue, global_size, local_size, *args)

    def _finish(self, events) -> None:
        """Records the kernels' device time (profile=True); call after a blocking read."""
        if self._profile:
            self.last_kernel_seconds = sum((e.profile.end - e.profile.start) * 1e-9 for e in events)

    def _ndrange_2d(self, n: int):
        local = min(self._dim, 64)
        return ((self._dim + local - 1) // local * local, n), (local, 1)

    def _resolve(self, keys_buf, n: int, events: list):
        """NDRange: row ids of n keys (EL_NO_ROW where missing), probed on the device."""
        ids = self._outbuf(4 * n)
        if n:
            events.append(self._run("el_resolve", (n,), None, keys_buf, np.int64(n), *self._index, ids))
        return ids

    # ----------------------------------------------------------------- lookups
    def hash_keys(self, keys) -> np.ndarray:
        """The keys' hashes as computed on the device (uint64); equal to the
        CPU engine's ``hash_key``. For checking a device's arithmetic."""
        return self._hash(_checks.keys_1d(_host(keys, "keys"), "keys"))

    def find(self, keys) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found): rows of ``keys`` as (n, dim) float32, zero rows where
        a key is missing, and ``found[i]`` whether ``keys[i]`` is in the table."""
        cl = _cl()
        k = _checks.keys_1d(_host(keys, "keys"), "keys")
        n = k.shape[0]
        out = np.zeros((n, self._dim), np.float32)
        found = np.zeros(n, np.bool_)
        if n == 0:
            return out, found
        kb, ob, fb = self._in(k), self._outbuf(out.nbytes), self._outbuf(n)
        dim, evs = np.int32(self._dim), []
        if self.variant == "single_work_item":
            evs.append(self._run("el_find_swi", (1,), None, kb, np.int64(n), *self._index, self._rows, dim,
                                 ob, fb))
        else:
            ids = self._resolve(kb, n, evs)
            g, loc = self._ndrange_2d(n)
            evs.append(self._run("el_gather", g, loc, ids, self._rows, dim, ob, fb))
        cl.enqueue_copy(self._queue, out, ob)
        cl.enqueue_copy(self._queue, found.view(np.uint8), fb)
        self._finish(evs)
        return out, found

    def pooled_lookup(self, values, offsets=None, mode: str = "sum", per_sample_weights=None,
                      include_last_offset: bool = False) -> np.ndarray:
        """Pooled rows per bag, with ``torch.nn.EmbeddingBag``'s semantics and
        arguments, as :meth:`embedlookup.EmbeddingTable.pooled_lookup` with
        ``insert=False``: missing keys count as zero rows (also in "mean"'s
        count and "max"). Inputs are host arrays (NumPy, or CPU tensors via
        DLPack). Returns (n_bags, dim) float32 on the host."""
        cl = _cl()
        m = _checks.mode_id(mode)
        values, offsets = _host(values, "values"), _host(offsets, "offsets")
        v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
        w = None if per_sample_weights is None else _host(per_sample_weights, "per_sample_weights")
        w = _checks.bag_weights(w, mode, v.shape[0])
        out = np.zeros((n_bags, self._dim), np.float32)
        if n_bags == 0:
            return out
        n = v.shape[0]
        vb, ob = self._in(v), self._outbuf(out.nbytes)
        wb = self._in(w if w is not None else np.zeros(1, np.float32))
        # Shared tail of both pooling kernels' arguments after the keys / ids.
        bags = (self._in(off), np.int64(off.shape[0]), np.int64(n))
        pool = (wb, np.int32(w is not None), np.int32(m))
        dim, evs = np.int32(self._dim), []
        if self.variant == "single_work_item":
            evs.append(self._run("el_pooled_swi", (1,), None, vb, *bags, np.int64(n_bags), *pool,
                                 *self._index, self._rows, dim, ob))
        else:
            ids = self._resolve(vb, n, evs)
            g, loc = self._ndrange_2d(n_bags)
            evs.append(self._run("el_pool", g, loc, ids, *bags, *pool, self._rows, dim, ob))
        cl.enqueue_copy(self._queue, out, ob)
        self._finish(evs)
        return out
