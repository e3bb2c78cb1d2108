"""Below memory: the file tier, checkpoints and versioned deltas.

* :class:`FileTier` -- rows in a file of fixed-size slots (SSD or a DAX
  persistent-memory file system) that survives a killed process.
* A table built with ``tier=FileTier(...)`` reads keys it lacks through from
  the tier and writes rows it sheds back to it (``memory_rows`` budget,
  :meth:`EmbeddingTable.demote`).
* ``table.save(path)`` / ``EmbeddingTable.load(path, deltas=[...])``,
  ``table.export_delta(since_version)`` / ``table.apply_delta(delta)``.

Formats and guarantees: docs/storage.md, docs/format.md.
"""

from __future__ import annotations

import numpy as np

from . import _checks, _core
from . import init as _init

__all__ = ["FileTier", "Prefetch", "TierFullError", "TierIOError", "SnapshotFormatError", "TierFormatError",
           "TierLockedError", "delta_info", "file_info"]

TierFullError = _core.TierFullError
SnapshotFormatError = _core.SnapshotFormatError
TierFormatError = _core.TierFormatError
TierLockedError = _core.TierLockedError  # a RuntimeError: the tier file is open in another FileTier
# A read, write or sync of the tier file failed (device error, full disk): an
# OSError carrying the errno, and a RuntimeError (as write failures were).
TierIOError = _core.TierIOError

_IO_MODES = {"mmap": 0, "pread": 1, "direct": 2, "aio": 3, "uring": 4}


def _inject_io_fault(op: str, nth: int, errno: int) -> None:
    """Test hook (private): the ``nth`` next ``op`` ("read": a block read of
    io="pread"/"direct", "write": a pwrite, "sync": an fdatasync) of any tier
    file fails with ``errno``; ``nth=0`` disarms it."""
    _core._inject_io_fault(op, int(nth), int(errno))

_STATE_FLOATS = {0: lambda d: 0, 1: lambda d: 0, 2: lambda d: d, 3: lambda d: 1, 4: lambda d: 2 * d}


def _state_floats(kind: int, dim: int) -> int:
    return _STATE_FLOATS[int(kind)](dim)


def _optim_kind(opt) -> int:
    from . import optim

    if opt is None or isinstance(opt, optim.SGD):
        return 0
    if isinstance(opt, optim.Adagrad):
        return 3 if opt.rowwise else 2
    return 4 if isinstance(opt, optim.Adam) else 0


def _positive_int(x, name: str, allow_none: bool = False):
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x <= 0:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {x!r}")
    return int(x)


class FileTier:
    """Rows in a file of fixed-size slots, with its own persistent key index.

    ``FileTier(path, capacity)`` creates the file when absent (capacity rows,
    allocated in full) or reopens it (``capacity`` then must match or be
    None). ``dim`` and ``state_floats`` (optimizer-state floats per row) fix the
    slot size; a table given an unopened tier opens it with its own dim and its
    optimizer's state size.

    ``row_type`` (``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"``, ``"int4"``;
    docs/compressed.md): how the file stores rows. ``None`` (default): a
    table's own row type when the table opens the tier (so a tiered int8
    table's file holds its 72-byte rows of dim 64, not 256-byte fp32 ones),
    fp32 when opened alone with ``dim=``. Rows move between a table and a tier
    of its row type bit for bit. A tier of another row type than its table's
    must be asked for by name (``row_type=``): rows then convert through fp32
    (encoded with round-to-nearest-even, as ``assign`` does); otherwise
    attaching raises ``ValueError``, as does opening a file that holds
    another row type than ``row_type``. ``get``/``set`` always take fp32 rows,
    ``get_raw`` gives the stored bytes.

    Ranges: ``capacity`` 1 .. ``FileTier.MAX_CAPACITY`` (about 4.04e9),
    ``dim`` 1 .. 2**20, ``state_floats`` 0 .. 2**21 (``ValueError`` naming the
    argument otherwise). One user at a time: the file is locked while open; a
    second ``FileTier`` on it (this process or another) raises
    ``TierLockedError`` (a ``RuntimeError``) until the first is closed. A
    failed open leaves the file unchanged; a failed create leaves no file.

    Guarantees: a process killed at any instant leaves a file that reopens,
    every row holding a whole value written at or after its last
    :meth:`flush` (never a torn mix); writes acknowledged by ``flush()``
    survive. A write that would pass ``capacity`` raises ``TierFullError`` and
    writes nothing.
    """

    def __init__(self, path, capacity: int | None = None, *, dim: int | None = None, state_floats: int = 0,
                 io: str = "mmap", io_threads: int = 32, io_buffer_bytes: int = 16 << 20, io_align: int = 4096,
                 row_type: str | None = None):
        self.path = _checks.path(path, "path")
        if row_type is not None:
            from . import quantize

            quantize.row_type_id(row_type)  # ValueError naming row_type
        self._row_type = row_type
        self._capacity = _positive_int(capacity, "capacity", allow_none=True)
        if self._capacity is not None and self._capacity > _core.FileTier.MAX_CAPACITY:
            raise ValueError(f"capacity must be at most {_core.FileTier.MAX_CAPACITY} rows "
                             f"(slot ids are 32-bit), got {capacity!r}")
        if isinstance(state_floats, bool) or not isinstance(state_floats, (int, np.integer)) or state_floats < 0:
            raise ValueError(f"state_floats must be an int >= 0, got {state_floats!r}")
        if state_floats > _core.FileTier.MAX_STATE_FLOATS:
            raise ValueError(f"state_floats must be at most {_core.FileTier.MAX_STATE_FLOATS}, got {state_floats!r}")
        self._native = None
        self._io = self._io_args(io, io_threads, io_buffer_bytes, io_align)
        if dim is not None:
            dim = _positive_int(dim, "dim")
            if dim > _core.FileTier.MAX_DIM:
                raise ValueError(f"dim must be at most {_core.FileTier.MAX_DIM}, got {dim!r}")
            if row_type == "int4" and dim % 2:
                raise ValueError(f"dim must be even for row_type 'int4', got {dim}")
            self._open(dim, int(state_floats))

    @staticmethod
    def _io_args(io, threads, buffer_bytes, align):
        if io not in _IO_MODES:
            raise ValueError(f"io must be one of {sorted(_IO_MODES)}, got {io!r}")
        for name, v, lo in (("io_threads", threads, 1), ("io_buffer_bytes", buffer_bytes, 1), ("io_align", align, 512)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        if int(align) & (int(align) - 1):
            raise ValueError(f"io_align must be a power of two, got {align!r}")
        return (io, int(threads), int(buffer_bytes), int(align))

    def set_io(self, io: str, *, threads: int = 32, buffer_bytes: int = 16 << 20, align: int = 4096) -> None:
        """How reads reach the file (docs/storage.md, "Reading from the device"):
        ``"mmap"`` copies from the page cache through a mapping (default);
        ``"pread"`` / ``"direct"`` read each slot's enclosing ``align``-byte
        blocks with ``threads`` positioned reads in flight, ``"direct"``
        through O_DIRECT (the page cache bypassed: every read reaches the
        device; ``ValueError`` where the file system refuses it). ``"aio"``
        reads as ``"direct"`` does, with the ``threads`` requests in flight
        through one Linux AIO context from the calling thread instead of a
        thread each (less CPU per read: no thread wake-ups); writes as
        ``"direct"``. ``"uring"`` reads as ``"aio"`` does, through an
        io_uring ring (the least CPU per read, at the device's rate or above;
        ``ValueError`` where the kernel or a sandbox refuses io_uring).
        ``buffer_bytes`` bounds the I/O buffer (a batch is read in rounds)."""
        args = self._io_args(io, threads, buffer_bytes, align)
        if self._native is not None:
            self._native.set_io(_IO_MODES[args[0]], *args[1:])
        self._io = args

    def io_info(self) -> dict:
        """The read mode, queue depth, alignment, one I/O buffer's bytes
        (``io_buffer_bytes``) and the buffers allocated (``io_buffers``: one
        per read in flight at once, e.g. a batch's and a prefetch's), the
        block reads issued (``device_reads``) and their bytes (``device_bytes``:
        the enclosing blocks, more than the rows served), the seconds spent in
        block reads (``read_seconds``), in writes (``write_seconds``) and
        waiting for the tier's locks (``lock_wait_seconds``), summed over
        callers, and the rows read again because a write replaced their slot
        during the read (``stale_reads``)."""
        return dict(self._n().io_info())

    def _open(self, dim: int, state_floats: int, table_row_type: str | None = None):
        """Opens the file (once); ``table_row_type``: the row type of the table
        opening it (None: opened alone)."""
        from . import quantize

        want = self._row_type or table_row_type or "fp32"
        if self._native is None:
            try:
                native = _core.FileTier(self.path, dim, state_floats, self._capacity or 0, quantize.row_type_id(want))
            except TierFormatError as e:
                if " rows, expected " not in str(e):
                    raise
                raise ValueError(f"tier: {e}; name the file's row type (FileTier(..., row_type=...)) to open it "
                                 f"as it is: a table of another row type then converts its rows through fp32"
                                 ) from None
            if self._io[0] != "mmap":
                try:
                    native.set_io(_IO_MODES[self._io[0]], *self._io[1:])
                except BaseException:
                    native.close()
                    raise
            self._native = native
        elif self._native.dim != dim or self._native.state_floats != state_floats:
            raise ValueError(f"tier: '{self.path}' is open with dim={self._native.dim}, "
                             f"state_floats={self._native.state_floats}; needed dim={dim}, state_floats={state_floats}")
        if table_row_type is not None and self._row_type is None and self.row_type != table_row_type:
            raise ValueError(f"tier: '{self.path}' stores {self.row_type} rows but the table stores "
                             f"{table_row_type} rows; give FileTier(..., row_type={self.row_type!r}) to convert "
                             f"them through fp32, or a tier of the table's row type")
        return self._native

    def _n(self):
        if self._native is None:
            raise RuntimeError(f"tier '{self.path}' is not open yet: give dim=... or attach it to a table")
        return self._native

    # ------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._n().dim

    @property
    def state_floats(self) -> int:
        return self._n().state_floats

    @property
    def slot_bytes(self) -> int:
        """Bytes one row takes in the file: its row_bytes and state floats,
        rounded up to 64 (fp32) or 8 (compressed row types)."""
        return self._n().slot_bytes

    @property
    def row_type(self) -> str:
        """How the file stores rows ("fp32", "fp16", "bf16", "int8" or "int4")."""
        from . import quantize

        return quantize.ROW_TYPES[self._n().row_type]

    @property
    def capacity(self) -> int:
        return self._n().capacity

    @property
    def recovered(self) -> bool:
        """True when the file was opened after an unclean shutdown (and verified slot by slot)."""
        return self._n().recovered

    def __len__(self) -> int:
        return len(self._n())

    def __repr__(self) -> str:
        if self._native is None:
            return f"FileTier({self.path!r}, capacity={self._capacity}, unopened)"
        return f"FileTier({self.path!r}, dim={self.dim}, capacity={self.capacity}, rows={len(self)})"

    # ------------------------------------------------------------ row access
    def get(self, keys):
        """(rows, found): rows of held keys, zeros and found=False for others."""
        rows, _, _, found = self._n().get(_checks.keys_1d(keys, "keys"))
        return rows, found

    def get_raw(self, keys):
        """(rows, found): the stored bytes of held keys, ``(n, row_bytes)``
        uint8 in the file's row type (docs/compressed.md); zeros and
        found=False for others."""
        return self._n().get_raw(_checks.keys_1d(keys, "keys"))

    def get_full(self, keys):
        """(rows, state, versions, found) with optimizer state and row versions."""
        return self._n().get(_checks.keys_1d(keys, "keys"))

    def set(self, keys, rows, state=None, versions=None) -> None:
        """Inserts or overwrites rows (last of duplicated keys wins).
        ``versions``: integers in [0, 2**63), one per key."""
        t = self._n()
        k = _checks.keys_1d(keys, "keys")
        r = _checks.floats(rows, "rows", (k.shape[0], t.dim))
        s = None
        if state is not None:
            s = _checks.floats(state, "state", (k.shape[0], t.state_floats))
        v = None if versions is None else _checks.versions(versions, "versions", k.shape[0])
        t.set(k, r, s, v)

    def erase(self, keys) -> int:
        """Removes keys; returns how many were held."""
        return self._n().erase(_checks.keys_1d(keys, "keys"))

    def keys(self, since_version: int = 0) -> np.ndarray:
        """Sorted keys whose row version is > since_version (an int in [0, 2**63))."""
        return self._n().keys(_checks.version(since_version, "since_version"))

    def flush(self) -> None:
        """Makes every write so far durable (fdatasync)."""
        self._n().flush()

    def close(self) -> None:
        """Flushes, marks the file cleanly closed (with the directory's checksum)
        and releases its lock. Idempotent."""
        if self._native is not None:
            self._native.close()

    def stats(self) -> dict:
        """Rows and bytes read / written, erases, flushes."""
        return dict(self._n().stats())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _delta_buffer(delta, name: str = "delta"):
    if isinstance(delta, (bytes, bytearray, memoryview)):
        return delta
    if isinstance(delta, np.ndarray) and delta.dtype == np.uint8 and delta.ndim == 1:
        return np.ascontiguousarray(delta)
    raise TypeError(f"{name} must be bytes, bytearray, memoryview or a 1-D uint8 array "
                    f"(from export_delta), got {type(delta).__name__}")


def delta_info(delta) -> dict:
    """Header of an exported delta or checkpoint (kind, dim, versions, row and tombstone counts...)."""
    return dict(_core.snapshot_info(_delta_buffer(delta)))


def file_info(path) -> dict:
    """Header of a checkpoint or delta file written by save() / save_delta()."""
    return dict(_core.snapshot_file_info(_checks.path(path, "path")))


def _row_type_arg(row_type, dim: int) -> int:
    """The native id of a row_type argument (None: -1, the table's own type)."""
    if row_type is None:
        return -1
    from . import quantize

    t = quantize.row_type_id(row_type)
    if row_type == "int4" and dim % 2:
        raise ValueError(f"row_type 'int4' packs two elements per byte: dim must be even, got {dim}")
    return t


def _check_header(info: dict, what: str) -> None:
    """Header fields the native reader accepts but that would corrupt a table,
    refused before the table is touched: rows (or tombstones) stamped with a
    version not after the delta's start (``to_version <= from_version``; a
    delta or checkpoint with rows at to_version 0 would leave rows that no
    later export_delta(0) sees), and initializer parameters giving non-finite
    rows (NaN or inf in the header)."""
    changes = int(info.get("rows", 0)) + int(info.get("tombstones", 0))
    if changes and int(info["to_version"]) <= int(info["from_version"]):
        raise SnapshotFormatError(f"{what}: holds {changes} changed rows/tombstones but to_version="
                                  f"{info['to_version']} is not after from_version={info['from_version']}")
    if "init_kind" in info:
        try:
            _init.check(_init.Initializer(info["init_kind"], info["init_a"], info["init_b"], info["init_seed"]))
        except (TypeError, ValueError) as e:
            raise SnapshotFormatError(f"{what}: invalid header: {e}") from None


class _StorageMethods:
    """EmbeddingTable's versions, deltas, checkpoints and tier (mixed into EmbeddingTable)."""

    def _attach_tier(self, tier, memory_rows, promote):
        if not isinstance(tier, FileTier):
            raise TypeError(f"tier must be an embedlookup.storage.FileTier, got {type(tier).__name__}")
        memory_rows = _positive_int(memory_rows, "memory_rows", allow_none=True)
        kind = _optim_kind(self.optimizer)
        native = tier._open(self._dim, _state_floats(kind, self._dim), self.row_type)
        self._t.attach_tier(native, memory_rows or 0, bool(promote))
        self.tier = tier

    # ------------------------------------------------------------ versions
    @property
    def version(self) -> int:
        """The table's version: it grows with every change (insert, assign,
        gradient step, erase, applied delta)."""
        return self._t.version

    def export_delta(self, since_version: int = 0, *, with_versions: bool = False,
                     row_type: str | None = None) -> np.ndarray:
        """Rows changed after ``since_version`` (with optimizer state) and
        tombstones of keys erased after it, encoded (docs/format.md) as a 1-D
        uint8 array; ``delta_info(d)["to_version"]`` is where the next delta
        starts. Lookups continue while it is taken. ``row_type`` (default: the
        table's): the rows' storage type in the delta, e.g. ``"int8"`` from an
        fp32 trainer for a replica (about 3.5x fewer row bytes at dim 64;
        docs/compressed.md)."""
        since = _checks.version(since_version, "since_version")
        return self._t.export_delta(since, False, bool(with_versions), _row_type_arg(row_type, self._dim))

    def apply_delta(self, delta, *, convert: bool = False) -> None:
        """Applies a delta from export_delta() atomically: a concurrent reader
        sees all of it or none. Raises (table unchanged) for a corrupt or
        truncated delta (``SnapshotFormatError``), another dim, another table's
        delta, or one out of order (``ValueError``), or too many rows
        (``TableFullError``). A delta whose rows are of another row type than
        the table's raises ``ValueError`` unless ``convert=True`` (then its rows
        are stored in the table's type, rounding to nearest even)."""
        buf = _delta_buffer(delta)
        _check_header(delta_info(buf), "delta")
        self._t.apply_delta(buf, bool(convert))

    # ---------------------------------------------------------- checkpoints
    def save(self, path, *, row_type: str | None = None) -> int:
        """Writes the whole table (rows, optimizer state, versions,
        configuration) to ``path`` atomically (temp file + rename). Lookups
        continue meanwhile. Returns the version saved: pass it to
        save_delta() for the next incremental checkpoint. ``row_type``
        (default: the table's) stores the rows in another type."""
        return self._t.save(_checks.path(path, "path"), 0, True, _row_type_arg(row_type, self._dim))

    def save_delta(self, path, since_version: int, *, row_type: str | None = None) -> int:
        """Writes the changes after ``since_version`` (an incremental
        checkpoint); returns the version it reaches. ``since_version``: an
        int in [0, 2**63)."""
        p = _checks.path(path, "path")
        return self._t.save(p, _checks.version(since_version, "since_version"), False,
                            _row_type_arg(row_type, self._dim))

    @classmethod
    def load(cls, path, deltas=(), *, optimizer=None, num_threads=None, tier=None, memory_rows=None,
             promote: bool = True, row_type: str | None = None, **options):
        """A table from a checkpoint written by save(), then the incremental
        checkpoints ``deltas`` (paths from save_delta, oldest first) replayed.
        Raises ``SnapshotFormatError`` for truncated, corrupt or foreign files.
        The table stores the checkpoint's row type; ``row_type=`` converts
        every file's rows to that type instead. Without it, a delta of
        another row type raises ``ValueError`` (table not returned)."""
        path = _checks.path(path, "path")
        deltas = [_checks.path(d, f"deltas[{i}]") for i, d in enumerate(deltas)]
        info = file_info(path)
        if info["kind"] != "checkpoint":
            raise ValueError(f"path: '{path}' is a delta, not a full checkpoint; "
                             "load the checkpoint and pass deltas=[...]")
        _check_header(info, f"path '{path}'")
        for i, d in enumerate(deltas):
            _check_header(file_info(d), f"deltas[{i}] '{d}'")
        initializer = _init.Initializer(info["init_kind"], info["init_a"], info["init_b"], info["init_seed"])
        convert = row_type is not None
        if row_type is None:
            row_type = info.get("row_type", "fp32")
        _row_type_arg(row_type, info["dim"])
        # options: the class's own constructor options (FrequencyTable: budget, policy, cold rows, ...)
        table = cls(info["dim"], initializer=initializer, optimizer=optimizer, num_threads=num_threads,
                    row_type=row_type, **cls._load_options(info, options))
        if tier is not None:
            if optimizer is None and info["state_floats"]:
                tier._open(info["dim"], info["state_floats"])
            table._attach_tier(tier, memory_rows, promote)
        table._t.apply_file(path, convert)
        for d in deltas:
            table._t.apply_file(d, convert)
        return table

    @staticmethod
    def _load_options(info: dict, options: dict) -> dict:
        if options:
            raise TypeError(f"load() got unexpected keyword argument(s) {', '.join(sorted(options))}")
        return {"capacity": info["capacity"] or None}

    # ----------------------------------------------------------------- tier
    def _prefetch_keys(self, keys, feature):
        if feature is not None:
            raise ValueError("feature: only a FrequencyTable namespaces keys by feature")
        return _checks.keys_1d(keys, "keys")

    def prefetch(self, keys, *, feature=None) -> "Prefetch":
        """Starts reading the tier rows of ``keys`` (a future batch's keys, in
        any order, duplicates allowed) that have no row in memory, on a
        background thread, and returns at once with a :class:`Prefetch`
        handle. The next lookups and updates take those rows from the staging
        area instead of the tier. A prefetch never changes the table and never
        serves a stale row: a key written back, erased or replaced by a delta
        after it started is read again. Its I/O error is raised by
        ``handle.wait()``; without a wait the lookup reads those rows itself.
        ``feature``: FrequencyTable's per-feature namespace, as in its lookups.
        Needs a tier (``ValueError`` otherwise)."""
        k = self._prefetch_keys(keys, feature)
        if getattr(self, "tier", None) is None:
            raise ValueError("prefetch: this table has no tier (tier=embedlookup.storage.FileTier(...))")
        return Prefetch(self, self._t.prefetch(k))

    def wait_prefetches(self) -> None:
        """Waits for every prefetch in flight (raises the first error)."""
        self._t.wait_all_prefetches()

    def set_prefetch_limit(self, rows: int) -> None:
        """At most ``rows`` prefetched rows are staged (default 2**20); the
        oldest prefetch's unused rows make room first, keys past the limit are
        left to the lookup. Staged rows are memory outside ``memory_rows``:
        ``tier_stats()["memory"]`` reports them."""
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0:
            raise ValueError(f"rows must be an int >= 0, got {rows!r}")
        self._t.set_max_staged_rows(int(rows))

    def demote(self, keys) -> int:
        """Moves the rows of ``keys`` (those in memory) to the tier; returns how many."""
        return self._t.demote(_checks.keys_1d(keys, "keys"))

    def tier_stats(self) -> dict:
        """Memory-tier hits and ratio, tier hits, promotions, demotions, rows
        per tier, and the tier's reads/writes/bytes."""
        c = dict(self._t.tier_counters())
        tot = c["memory_hits"] + c["tier_hits"]
        c["hit_ratio"] = c["memory_hits"] / tot if tot else 1.0
        tier = getattr(self, "tier", None)
        if tier is not None:
            c["tier_rows"] = len(tier)
            c.update({f"tier_{k}": v for k, v in tier.stats().items()})
            io = tier.io_info()
            c["tier_io"] = io["io"]
            c["tier_queue_depth"] = io["queue_depth"]
            c["tier_device_reads"] = io["device_reads"]
            c["tier_device_bytes"] = io["device_bytes"]
            c.update(dict(self._t.prefetch_counters()))
            # The table's whole memory: DRAM rows (with index, state, metadata),
            # staged prefetched rows, and the tier's I/O buffer.
            table_bytes = int(self.memory_usage()["total_bytes"])
            io_bytes = io["io_buffer_bytes"] * io["io_buffers"]
            c["memory"] = {"table_bytes": table_bytes, "staged_bytes": c["staged_bytes"],
                           "io_buffer_bytes": io_bytes,
                           "total_bytes": table_bytes + c["staged_bytes"] + io_bytes}
        return c


class Prefetch:
    """A prefetch in flight (from ``table.prefetch(keys)``): ``wait()`` blocks
    until its rows are staged and raises its I/O error (a ``TierIOError``), if
    any; waiting again returns at once."""

    def __init__(self, table, ticket: int):
        self._table, self._ticket = table, ticket

    def wait(self) -> None:
        self._table._t.wait_prefetch(self._ticket)
