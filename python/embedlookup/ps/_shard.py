"""One parameter-server shard: a table, the server-side optimizer, the
per-client sequence numbers that make pushes idempotent, and durability
(snapshot + log of acknowledged pushes).

The same class runs in-process (backend "local") and inside a Ray actor
(backend "ray"). Every call is made by one thread at a time (the local
backend's per-shard worker thread, or the actor's single executor), which is
what orders pushes; the lock only guards the direct calls tests make.

Durable layout of ``<durable_dir>/shard-<i>/``:

- ``snapshot.json``: ``{"gen", "pushes", "last"}`` written atomically (temp +
  fsync + rename): the checkpoint and log generation in force, the pushes
  applied before the checkpoint, and each client's last applied sequence
  number at the checkpoint.
- ``snapshot-<gen>.ckpt``: ``EmbeddingTable.save`` of the table at that point
  (the first one when the shard is created).
- ``snapshot-<gen>.ckpt.freq.npz`` (FrequencyTable shards): what the
  checkpoint does not hold, ``FrequencyTable.frequency_state`` (scores, last
  steps, clock, admission sketch, default cold row).
- ``log-<gen>.bin``: every push applied after that checkpoint, appended and
  fsynced before it was acknowledged (``_log.py``). A FrequencyTable shard
  also logs its training pulls (they admit, score and evict), unsynced: the
  next push's fsync carries them.
- ``incarnation``: how many times this shard has started on this directory.

Recovery (start, Ray restart after a kill): load the checkpoint, replay the
log in order (each record is the exact table call that was made, so the rows
and optimizer state, and a FrequencyTable's scores, sketch and admissions,
come back bit for bit: its admission and eviction order break ties by key,
not by row id), rebuild the sequence numbers. A FrequencyTable shard loses
at most the pulls made after its last push (never a push): they were
never acknowledged as changes.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time

import numpy as np

from .. import _checks, _core
from ._log import PushLog, fsync_dir, read_log

#: Row ids kept per shard from pooled pulls for the pushes that follow (one per client, the newest).
RESOLVED_KEPT = 64

# Push outcomes (the first element of a push's reply).
APPLIED, DUPLICATE, GAP, FROZEN, REJECTED = "applied", "duplicate", "gap", "frozen", "rejected"

#: Log records of a FrequencyTable shard's training pulls (not pushes: no client, no sequence number).
PULLS = ("pull", "pooled_pull")


def _crc32c_table():
    t = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC32C = _crc32c_table()


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as docs/format.md: only for the 316-byte header patched below."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def raise_version(table, target: int) -> None:
    """Moves ``table.version`` up to ``target`` without changing a row: an
    empty delta of the table itself whose ``to_version`` is patched (header
    field at byte 48, header CRC at byte 316, docs/format.md)."""
    if table.version >= target:
        return
    d = bytearray(table.export_delta(table.version).tobytes())
    struct.pack_into("<Q", d, 48, int(target))
    struct.pack_into("<I", d, 316, _crc32c(bytes(d[:316])))
    table.apply_delta(np.frombuffer(bytes(d), np.uint8))


class Parts:
    """Shards' parts of one batch in one object, so that one ``put`` serves
    every shard (Ray: one object-store write and one object per call instead
    of one per shard): a call's ``Parts`` argument stands for the arrays of
    the receiving shard's part, ``parts[shard index]``, spliced in its place."""

    __slots__ = ("parts",)

    def __init__(self, parts: dict):
        self.parts = parts

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for p in self.parts.values() for a in p if a is not None)

    def __getstate__(self):
        return self.parts

    def __setstate__(self, parts):
        self.parts = parts


def call(core, method: str, args: tuple):
    """``core.method(*args)``, its wall time added to ``core.busy[method]``
    (what ``stats()["busy_s"]`` reports: where a shard's time goes, against
    what the client waits). A :class:`Parts` argument is replaced by this
    shard's part."""
    if any(type(a) is Parts for a in args):
        args = tuple(x for a in args for x in (a.parts[core.index] if type(a) is Parts else (a,)))
    t0 = time.perf_counter()
    try:
        return getattr(core, method)(*args)
    finally:
        core.busy[method] = core.busy.get(method, 0.0) + (time.perf_counter() - t0)


def _frozen_copy(a: np.ndarray) -> np.ndarray:
    return a if not a.flags.writeable else a.copy()


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal(a, b)`` for arrays of one dtype, without reading them
    when both view the same memory with the same layout (then they hold the
    same values whatever they are: the local backend hands a shard the same
    array twice, Ray maps an object-store object once per process)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a is b or (a.strides == b.strides and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]):
        return True
    return bool(np.array_equal(a, b))


class ShardLostError(RuntimeError):
    """A shard without durable storage was restarted: its rows are gone."""


def make_table(kind: str, dim: int, optimizer, options: dict):
    from ..frequency import FrequencyTable
    from ..table import EmbeddingTable

    cls = FrequencyTable if kind == "frequency" else EmbeddingTable
    return cls(dim, optimizer=optimizer, **options)


def freq_path(ckpt: str) -> str:
    """Where a FrequencyTable shard's frequency state sits beside its checkpoint."""
    return ckpt + ".freq.npz"


def _write_atomic(path: str, write, mode: str = "wb") -> None:
    """``write(file)`` into ``path`` durably: a temp file fsynced, renamed
    over ``path``, the directory fsynced (a crash leaves the old or the new)."""
    tmp = path + ".tmp"
    with open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def _write_npz(path: str, arrays: dict) -> None:
    _write_atomic(path, lambda f: np.savez(f, **arrays))


def _write_json(path: str, obj) -> None:
    _write_atomic(path, lambda f: json.dump(obj, f), "w")


class ShardCore:
    def __init__(self, index: int, num_shards: int, dim: int, table: str, table_options: dict, optimizer,
                 durable_dir: str | None, snapshot_every: int | None, init_path: str | None = None,
                 init_last: dict | None = None, fsync: bool = True, restarted: bool = False):
        self.index, self.num_shards, self.dim = index, num_shards, dim
        self.kind, self.options, self.optimizer = table, dict(table_options), optimizer
        self.snapshot_every = snapshot_every
        self._fsync = fsync
        self._lock = threading.RLock()
        self._frozen_until = 0.0
        self._freeze_token = None
        self._held: dict = {}  # (client, seq) -> make(): pushes that arrived during a cut
        self._cut_applied: dict[str, dict[int, str | None]] = {}  # applied by a cut; client not yet answered
        # client -> (values, offsets, row ids, layout epoch) of its last pooled pull here: its
        # push_pooled of the same batch reuses the ids instead of probing the index again.
        self._resolved: dict = {}
        self.ids_reused = 0  # pooled pushes applied with their pull's row ids
        self.busy: dict[str, float] = {}  # method -> seconds spent in it (this incarnation)
        self.cut_applied = 0  # pushes a cut applied here because another shard had applied them
        self.lost = False
        self.applied = 0  # pushes applied (over every incarnation when durable)
        self.duplicates = 0  # this incarnation
        self.rejected = 0
        self.replayed = 0
        self.incarnation = 1
        self.log = None
        self.last: dict[str, int] = {}
        self.dir = None if durable_dir is None else os.path.join(durable_dir, f"shard-{index}")
        if self.dir is None:
            if restarted:
                self.lost = True  # a restart without durable storage: the rows are gone
            self.table = self._load(init_path) if init_path else make_table(table, dim, optimizer, self.options)
            self.last = dict(init_last or {})
            return
        os.makedirs(self.dir, exist_ok=True)
        inc_path = os.path.join(self.dir, "incarnation")
        if os.path.exists(inc_path):
            with open(inc_path) as f:
                self.incarnation = int(f.read() or 0) + 1
        _write_json(inc_path, self.incarnation)
        self._recover(init_path, init_last)

    # ------------------------------------------------------------ durability
    def _load(self, path):
        from ..frequency import FrequencyTable
        from ..table import EmbeddingTable

        if self.kind != "frequency":
            opts = {k: v for k, v in self.options.items() if k == "num_threads"}
            return EmbeddingTable.load(path, optimizer=self.optimizer, **opts)
        # The checkpoint holds the initializer and the row type; the rest are the table's options.
        opts = {k: v for k, v in self.options.items() if k not in ("initializer", "row_type")}
        table = FrequencyTable.load(path, optimizer=self.optimizer, **opts)
        freq = freq_path(path)
        if os.path.exists(freq):  # absent: a resharded checkpoint, whose rows start with equal scores
            with np.load(freq) as f:
                table.restore_frequency_state({k: f[k] for k in f.files})
        return table

    def _recover(self, init_path, init_last) -> None:
        meta_path = os.path.join(self.dir, "snapshot.json")
        fresh = not os.path.exists(meta_path)
        if fresh:
            self.gen, self.applied = 0, 0
            self.table = self._load(init_path) if init_path else make_table(self.kind, self.dim, self.optimizer,
                                                                             self.options)
            self.last = dict(init_last or {})
            # A checkpoint at once, even of an empty table: a restart comes back
            # to the loaded state and to the table's lineage (a new table would
            # draw another, and replicas would refuse its deltas).
            self._snapshot()
            return
        else:
            with open(meta_path) as f:
                meta = json.load(f)
            self.gen, self.applied, self.last = int(meta["gen"]), int(meta["pushes"]), dict(meta["last"])
            ckpt = self._ckpt_path(self.gen)
            self.table = self._load(ckpt) if os.path.exists(ckpt) else make_table(
                self.kind, self.dim, self.optimizer, self.options)
        for client, seq, kind, args in read_log(self._log_path(self.gen)):
            self.replayed += 1
            if kind == "mark":  # a version handed out by a cut: later changes must be stamped after it
                raise_version(self.table, args[0])
                continue
            if kind in PULLS:  # a FrequencyTable's training pull: its admissions and scores
                self._replay_pull(kind, args)
                continue
            self._apply(kind, args)
            self.last[client] = seq
            self.applied += kind != "skip"
        self.log = PushLog(self._log_path(self.gen), fsync=self._fsync)
        # Files of other generations: left by a crash in the middle of a snapshot.
        keep = {os.path.basename(p) for p in (self._ckpt_path(self.gen), freq_path(self._ckpt_path(self.gen)),
                                              self._log_path(self.gen))}
        for name in os.listdir(self.dir):
            if name.startswith(("snapshot-", "log-")) and name not in keep:
                os.remove(os.path.join(self.dir, name))

    def _ckpt_path(self, gen):
        return os.path.join(self.dir, f"snapshot-{gen}.ckpt")

    def _log_path(self, gen):
        return os.path.join(self.dir, f"log-{gen}.bin")

    def _snapshot(self) -> None:
        """A new checkpoint + an empty log; the old pair is deleted once the
        new one is in force (snapshot.json names it)."""
        old = getattr(self, "gen", 0)
        gen = old + 1
        new_log = PushLog(self._log_path(gen), fsync=self._fsync)
        self._save_table(self._ckpt_path(gen))
        _write_json(os.path.join(self.dir, "snapshot.json"), {"gen": gen, "pushes": self.applied, "last": self.last})
        if self.log is not None:
            self.log.close()
        self.log, self.gen = new_log, gen
        for p in (self._ckpt_path(old), freq_path(self._ckpt_path(old)), self._log_path(old)):
            if os.path.exists(p):
                os.remove(p)

    def _save_table(self, path: str) -> int:
        """The table's checkpoint at ``path`` (and, for a FrequencyTable, its
        frequency state beside it, written first: a checkpoint that exists is
        complete); returns the version saved."""
        if self.kind == "frequency":
            _write_npz(freq_path(path), self.table.frequency_state(self.table.keys()))
        return self.table.save(path)

    def _log_pull(self, kind: str, args: tuple) -> None:
        """A FrequencyTable shard's training pull, logged after it ran (its
        admissions, scores and evictions are replayed in order with the pushes)."""
        if self.log is not None and self.kind == "frequency":
            self.log.append("", -1, kind, args, sync=False)

    def _replay_pull(self, kind: str, args: tuple) -> None:
        if kind == "pull":
            self.table.lookup(args[0])
        else:
            v, off, w, mode = args
            self.table.pooled_lookup(v, off, mode=mode, per_sample_weights=w)

    # ----------------------------------------------------------- table calls
    def _check_alive(self):
        if self.lost:
            raise ShardLostError(f"shard {self.index} was restarted without durable storage (durable_dir=None): "
                                 "its rows are lost; give ParameterServer a durable_dir to survive restarts")

    def _own(self, keys: np.ndarray, name: str = "keys") -> np.ndarray:
        """``keys`` (the client sends each shard only its own keys, split by
        ``shard_of``) after checking that they are all this shard's: a key
        applied or inserted here while it belongs to another shard would be
        a row no other client sees. One native pass (no GIL)."""
        if self.num_shards > 1 and keys.shape[0]:
            ids = _core.shard_ids(keys, self.num_shards)
            bad = np.flatnonzero(ids != self.index)
            if bad.shape[0]:
                j = int(bad[0])
                raise ValueError(f"{name}: {bad.shape[0]} of {keys.shape[0]} keys belong to other shards (the first, "
                                 f"{int(keys[j])} at position {j}, to shard {int(ids[j])}); this is shard "
                                 f"{self.index} of {self.num_shards}: split keys with sharding.shard_of")
        return keys

    def _apply(self, kind: str, args: tuple, ids=None) -> None:
        """One table update, exactly as logged. Keys the table lacks (a push
        of keys never pulled, or pulled before a restart and only inserted by
        the pull) are inserted with the initializer first, as a pull would.
        ``ids``: (row ids, layout epoch) of a pooled push's keys from the pull
        of the same batch (the native step resolves the keys itself if a row
        was freed or moved since); the result is the same without them."""
        if kind == "skip":
            return
        t = self.table
        for attempt in (0, 1):
            try:
                if kind == "push":
                    keys, grads = args
                    t.apply_gradients(keys, grads)
                elif ids is not None and attempt == 0:
                    v, off, grad_output, w = args
                    g = _checks.floats(grad_output, "grad_output", (off.shape[0], self.dim))
                    t._t.apply_pooled_gradients(v, off, off.shape[0], _checks.MODES["sum"], w, None, g,
                                                self.optimizer._spec(), ids[0], ids[1])
                else:
                    v, off, grad_output, w = args
                    t.apply_pooled_gradients(v, off, grad_output, mode="sum", per_sample_weights=w)
                return
            except _core.KeyMissingError:
                if attempt:
                    raise
                t.lookup(args[0])  # nothing was updated: insert, then apply once

    def pull(self, keys: np.ndarray) -> np.ndarray:
        self._check_alive()
        rows = self.table.lookup(self._own(keys))
        self._log_pull("pull", (keys,))
        return rows

    def pull_fresh(self, client: str, keys: np.ndarray):
        """The rows and the last sequence number of ``client`` applied here:
        the rows hold every push of that client up to it (a trainer-side
        cache stamps its copies with it)."""
        with self._lock:
            self._check_alive()
            rows = self.table.lookup(self._own(keys))
            self._log_pull("pull", (keys,))
            return rows, self.last.get(client, -1)

    def pooled_pull(self, values, offsets, weights, mode: str, client: str | None = None):
        """Per bag, the pooled rows of this shard's part of the batch
        (``values``: its keys, ``offsets``: one per bag of the whole batch,
        as the client split them): partial sums (mode "sum" / "mean", with
        the weights) or the partial max; and for "mean" / "max" the number of
        this shard's keys per bag. With ``client`` (an EmbeddingTable shard,
        not "max"), the row ids the keys resolved to are kept for that
        client's push_pooled of the same batch."""
        self._check_alive()
        v, off, n_bags = _checks.bags(self._own(values, "values"), offsets, False)
        if client is not None and mode != "max" and self.kind == "embedding":
            part = np.empty((n_bags, self.dim), np.float32)
            ids = np.empty(v.shape[0], np.uint32)
            epoch = self.table._t.pooled_lookup_ids(v, off, n_bags, _checks.MODES["sum"], weights, part, True, ids)
            with self._lock:
                self._resolved.pop(client, None)
                while len(self._resolved) >= RESOLVED_KEPT:
                    del self._resolved[next(iter(self._resolved))]
                # Kept as copies unless read-only (Ray's object store): the local backend may hand the
                # caller's own arrays, which it may change before its push.
                self._resolved[client] = (_frozen_copy(v), _frozen_copy(off), ids, epoch)
        else:
            m = "max" if mode == "max" else "sum"
            part = self.table.pooled_lookup(v, off, mode=m, per_sample_weights=weights)
            self._log_pull("pooled_pull", (v, off, weights, m))
        if mode == "sum":
            return part, None
        counts = np.diff(np.append(off, v.shape[0])).astype(np.int32)
        return part, counts

    def push(self, client: str, seq: int, keys, grads):
        return self._push(client, seq, lambda: ("push", (self._own(keys), grads)))

    def push_pooled(self, client: str, seq: int, values, offsets, weights, grad_output):
        """The fused backward on this shard's part of a pooled batch: its keys,
        one offset per bag of the batch, the whole ``grad_output`` and per-key
        weights (a "mean" batch comes as weights 1.0f / bag length, the
        kernel's own scale, so the step is bit for bit the whole batch's).
        When the client's last pooled pull here was the same batch, its row
        ids are reused (the keys are compared, not trusted)."""
        reuse = None

        def make():
            nonlocal reuse
            v, off = np.ascontiguousarray(values), np.ascontiguousarray(offsets)
            r = self._resolved.pop(client, None)
            if r is not None and same_values(r[0], v) and same_values(r[1], off):
                reuse = r  # the keys of the pull, checked there (_own): not hashed again
            else:
                self._own(v, "values")
            w = None if weights is None else np.ascontiguousarray(weights)
            return "pooled", (v, off, grad_output, w)

        def ids(args):
            if reuse is None:
                return None
            self.ids_reused += 1
            return reuse[2], reuse[3]

        return self._push(client, seq, make, ids)

    def _frozen(self, token=None) -> bool:
        return time.monotonic() < self._frozen_until and (token is None or token == self._freeze_token)

    def _push(self, client, seq, make, ids=None):
        """Applies push ``seq`` of ``client`` (``make()`` gives the table
        call) if it is the client's next one and no cut holds pushes back.
        During a cut, a push that is not yet due is held (answered FROZEN:
        the client sends it again after the cut) so that the cut can apply
        it here if another shard applied it before the cut began."""
        with self._lock:
            self._check_alive()
            last = self.last.get(client, -1)
            if seq <= last:
                done = self._cut_applied.get(client)
                if done and seq in done:  # applied by a cut while the client waited: its first answer
                    for s in [s for s in done if s < seq]:
                        del done[s]
                    msg = done.pop(seq)
                    return (REJECTED, msg) if msg else (APPLIED, seq)
                self.duplicates += 1
                return (DUPLICATE, last)
            if self._frozen():
                self._held[(client, seq)] = make
                return (FROZEN, last)
            if seq != last + 1:
                return (GAP, last)
            return self._commit(client, seq, make, ids)

    def _commit(self, client, seq, make, ids=None):
        try:
            kind, args = make()  # checks the keys are this shard's
            self._apply(kind, args, None if ids is None else ids(args))  # on error the table is unchanged
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            # The sequence number is used up (logged as a skip) so the
            # client's next push is not held back; the rows are unchanged.
            kind, args, msg = "skip", (), f"{type(e).__name__}: {e}"
            self.rejected += 1
        else:
            msg = None
            self.applied += 1
        if self.log is not None:
            self.log.append(client, seq, kind, args)  # durable before the acknowledgement
        self.last[client] = seq
        if self.log is not None and self.snapshot_every and self.log.synced >= self.snapshot_every:
            self._snapshot()
        return (REJECTED, msg) if msg else (APPLIED, seq)

    # --------------------------------------------------- clients and cuts
    def last_seq(self, client: str) -> int:
        self._check_alive()
        return self.last.get(client, -1)

    def advance(self, client: str, seq: int) -> int:
        """Moves a client's last sequence number forward to ``seq`` (a
        resumed client whose previous process died mid-push)."""
        with self._lock:
            self._check_alive()
            last = self.last.get(client, -1)
            for s in range(last + 1, seq + 1):
                if self.log is not None:
                    self.log.append(client, s, "skip", ())
                self.last[client] = s
            return self.last.get(client, -1)

    def freeze(self, token: str, timeout_s: float):
        """Holds back pushes (they answer FROZEN and are kept for
        :meth:`apply_up_to`; clients send them again) until :meth:`thaw` or
        ``timeout_s``. Returns every client's last applied sequence number."""
        with self._lock:
            self._check_alive()
            self._freeze_token = token
            self._frozen_until = time.monotonic() + timeout_s
            self._held = {}
            return dict(self.last)

    def apply_up_to(self, token: str, targets: dict):
        """During cut ``token``: applies the held pushes of each client up to
        ``targets[client]`` (in order), so this shard reaches the sequence
        numbers another shard had applied when the cut froze it. Returns
        ("ok", None), ("missing", {client: first missing seq}) when a push has
        not arrived yet (the caller asks again), or ("lost", None) when this
        shard is no longer frozen by ``token`` (restarted, expired)."""
        with self._lock:
            self._check_alive()
            if not self._frozen(token):
                return ("lost", None)
            missing = {}
            for client, target in targets.items():
                last = self.last.get(client, -1)
                for seq in range(last + 1, int(target) + 1):
                    make = self._held.pop((client, seq), None)
                    if make is None:
                        missing[client] = seq
                        break
                    status, info = self._commit(client, seq, make)
                    self._cut_applied.setdefault(client, {})[seq] = info if status == REJECTED else None
                    self.cut_applied += 1
            return ("missing", missing) if missing else ("ok", None)

    def frozen_call(self, token: str, method: str, *args):
        """``method(*args)`` if cut ``token`` still holds this shard: ("ok",
        value), else ("lost", None)."""
        with self._lock:
            self._check_alive()
            if not self._frozen(token):
                return ("lost", None)
            return ("ok", getattr(self, method)(*args))

    def thaw(self, token: str) -> None:
        with self._lock:
            if self._freeze_token == token:
                self._frozen_until = 0.0
                self._freeze_token = None
                self._held = {}

    def export_delta(self, since: int):
        """The delta since ``since`` and the version it reaches. With a log,
        that version is logged first: a restarted shard (whose replay would
        otherwise stamp versions anew from its checkpoint) raises its version
        past it at that point of the replay, so a replica following from it
        misses no later change."""
        with self._lock:
            self._check_alive()
            d = self.table.export_delta(since)
            version = self.table.version
            if self.log is not None:
                self.log.append("", -1, "mark", (version,))
            return d, version

    def save_to(self, path: str):
        """The table's checkpoint at ``path`` and the sequence numbers it holds."""
        with self._lock:
            self._check_alive()
            version = self._save_table(path)
            return version, dict(self.last)

    def stats(self) -> dict:
        return {"shard": self.index, "rows": len(self.table), "version": self.table.version, "step": self.table.step,
                "pushes_applied": self.applied, "duplicates_dropped": self.duplicates, "rejected": self.rejected,
                "replayed": self.replayed, "restarts": self.incarnation - 1, "clients": len(self.last), "cut_applied": self.cut_applied,
                "ids_reused": self.ids_reused, "busy_s": dict(self.busy),
                "log_records": 0 if self.log is None else self.log.records,
                "log_bytes": 0 if self.log is None else self.log.bytes, "pid": os.getpid(), "lost": self.lost}

    def state(self):
        """(keys, rows, optimizer state, step) of the whole table, for tests and resharding."""
        k, r = self.table.export()
        return k, r, self.table._t.export_state(k), self.table.step

    def frequency_state(self) -> dict:
        """FrequencyTable.frequency_state of the whole table (FrequencyTable shards)."""
        if self.kind != "frequency":
            raise ValueError("frequency_state: this shard holds an EmbeddingTable (table='embedding')")
        return self.table.frequency_state(self.table.keys())

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
