"""Read-only serving replicas that follow a delta log.

A :class:`Replica` of an S-shard model holds S read-only tables (keys routed
by ``embedlookup.sharding.shard_of``) twice: an *active* generation that
requests read and a *standby* one that cuts are applied to. Applying a batch
of cuts: apply them to the standby, swap it in (one pointer assignment under
a lock), wait until no request still reads the old generation (reader
counts), then apply the same cuts to it, so it becomes the next standby.
Every request is served from one generation, hence one model version across
every shard, while cuts are applied; it costs twice the rows in memory.
(A single table's ``apply_delta`` is atomic on its own, but S shards would
switch one by one, and the version a response names could not be tied to the
rows it read.)
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Optional

import numpy as np

from .. import _checks
from ..sharding import shard_of
from ..table import EmbeddingTable
from ._periodic import PeriodicOwner
from .log import CorruptCutError, CutManifest, as_transport

__all__ = ["Replica", "ReplicaView", "NoCutError"]


class NoCutError(RuntimeError):
    """The log holds no cut a replica can be built from (yet), or not the one asked for."""


class _Generation:
    __slots__ = ("tables", "seq", "versions", "published_at", "applied_at", "log_id", "readers")

    def __init__(self, tables, log_id):
        self.tables, self.log_id = tables, log_id
        self.seq, self.versions, self.published_at, self.applied_at = 0, None, 0.0, 0.0
        self.readers = 0

    def apply(self, m: CutManifest, deltas, checkpoint=None) -> None:
        if checkpoint is not None:
            for t, c in zip(self.tables, checkpoint):
                t.apply_delta(c)
        for t, d in zip(self.tables, deltas):
            t.apply_delta(d)
        self.seq, self.versions, self.published_at = m.seq, m.versions, m.published_at


class ReplicaView:
    """One model version of a replica, pinned while the ``with`` block runs
    (:meth:`Replica.snapshot`): every call reads the same rows."""

    def __init__(self, gen: _Generation, dim: int):
        self._g, self.dim = gen, dim

    @property
    def version(self) -> int:
        """The model version served: the sequence number of the last cut applied."""
        return self._g.seq

    @property
    def shard_versions(self) -> tuple:
        return self._g.versions

    @property
    def published_at(self) -> float:
        """When the training side published this version (``time.time()``)."""
        return self._g.published_at

    def find(self, keys, *, out=None):
        """(rows, found): rows of ``keys`` (n, dim) float32; keys the model
        does not hold get zero rows and ``found[i] = False``. Never inserts."""
        tables = self._g.tables
        if len(tables) == 1:
            return tables[0].find(keys, out=out)
        k = _checks.keys_1d(keys, "keys")
        o = _checks.out_array(out, "out", (k.shape[0], self.dim), keys=k)
        found = np.empty(k.shape[0], np.bool_)
        sh = shard_of(k, len(tables))
        for s, t in enumerate(tables):
            idx = np.flatnonzero(sh == s)
            if idx.size:
                o[idx], found[idx] = t.find(k[idx])
        return o, found

    def pooled_lookup(self, values, offsets=None, mode: str = "sum", per_sample_weights=None,
                      include_last_offset: bool = False) -> np.ndarray:
        """``torch.nn.EmbeddingBag``'s pooling over the served rows
        (``EmbeddingTable.pooled_lookup`` with ``insert=False``): keys the
        model does not hold count as zero rows (and in "mean" they count in
        the bag's length). Returns (n_bags, dim) float32."""
        tables = self._g.tables
        if len(tables) == 1:
            return tables[0].pooled_lookup(values, offsets, mode, per_sample_weights, include_last_offset,
                                           insert=False)
        _checks.mode_id(mode)
        v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
        w = _checks.bag_weights(per_sample_weights, mode, v.shape[0], getattr(values, "shape", None))
        starts = off[:n_bags]
        lengths = np.diff(np.append(starts, v.shape[0] if not include_last_offset else off[-1]))
        bag = np.repeat(np.arange(n_bags, dtype=np.int64), lengths)
        v = v[: bag.shape[0]]
        sh = shard_of(v, len(tables))
        order = np.argsort(sh, kind="stable")  # by shard, bags in order within each shard
        bounds = np.searchsorted(sh[order], np.arange(len(tables) + 1))
        out = np.zeros((n_bags, self.dim), np.float32)
        if mode == "max":
            out.fill(-np.inf)
        part_mode = "max" if mode == "max" else "sum"
        for s, t in enumerate(tables):
            sel = order[bounds[s]:bounds[s + 1]]
            if not sel.size:
                continue
            b = bag[sel]
            sub_off = np.searchsorted(b, np.arange(n_bags, dtype=np.int64)).astype(np.int64)
            part = t.pooled_lookup(v[sel], sub_off, part_mode, None if w is None else w[sel], insert=False)
            if mode == "max":
                has = np.bincount(b, minlength=n_bags) > 0  # a shard's empty sub-bag says nothing
                np.maximum(out, np.where(has[:, None], part, -np.inf), out=out)
            else:
                out += part
        if mode == "max":
            out[~np.isfinite(out)] = 0.0  # empty bags give zeros
        elif mode == "mean":
            nz = lengths > 0
            out[nz] /= lengths[nz, None].astype(np.float32)
        return out


class Replica(PeriodicOwner):
    """A read-only copy of a model that follows a delta log.

    ``Replica(log)``: ``log`` is a folder path (``DirectoryTransport``) or a
    transport object. The replica bootstraps from the newest cut carrying a
    snapshot (plus the deltas after it); ``version=`` bootstraps at an
    earlier kept cut instead and stays there (pinned) until :meth:`resume`.

    Reads: :meth:`find`, :meth:`pooled_lookup` (never insert; missing keys
    read zero rows: a key the model does not hold contributes nothing to a
    sum, as ``insert=False`` on a table) and :meth:`snapshot` (one pinned
    version for several calls, with the version number).

    Refresh: :meth:`poll` applies every new cut; :meth:`follow` polls from a
    background thread every ``period`` seconds. A gap in the chain, a cut of
    another log or a cut whose files fail their checksums makes the replica
    re-bootstrap from the newest usable snapshot; until that succeeds it keeps
    serving the last whole version it had (``last_error`` says why) and never
    serves a mix. :meth:`rollback` goes back to an earlier kept version.
    """

    def __init__(self, log, *, version: Optional[int] = None, num_threads: Optional[int] = None):
        self.transport = as_transport(log)
        self.num_threads = num_threads
        self._cv = threading.Condition()
        self._write = threading.Lock()
        self._pinned = False
        self._bad: set = set()  # (log_id, seq) of cuts that failed their checks
        self._stuck = None  # (log_id, seq) of the snapshot whose chain last reached nothing new
        self.last_error: Optional[str] = None
        # poll_seconds: the last poll that applied something (read, check, apply twice, swap)
        self.stats = {"cuts_applied": 0, "bootstraps": 0, "swaps": 0, "errors": 0, "poll_seconds": 0.0,
                      "snapshot_reads": 0}
        with self._write:
            self._active, self._standby = self._build(version)
            self._pinned = version is not None

    # -------------------------------------------------------------- basics
    @property
    def num_shards(self) -> int:
        return len(self._active.tables)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def version(self) -> int:
        """The model version served now (sequence number of the last cut applied)."""
        return self._active.seq

    @property
    def shard_versions(self) -> tuple:
        return self._active.versions

    @property
    def pinned(self) -> bool:
        return self._pinned

    def __len__(self) -> int:
        with self.snapshot() as v:
            return sum(len(t) for t in v._g.tables)

    def __repr__(self) -> str:
        return f"Replica({self.transport!r}, version={self.version}, shards={self.num_shards}, dim={self._dim})"

    # -------------------------------------------------------------- reads
    @contextlib.contextmanager
    def snapshot(self):
        """``with replica.snapshot() as view:`` -- a :class:`ReplicaView` of
        one version; cuts applied meanwhile wait to reuse its tables, never
        change them under it."""
        with self._cv:
            g = self._active
            g.readers += 1
        try:
            yield ReplicaView(g, self._dim)
        finally:
            with self._cv:
                g.readers -= 1
                if g.readers == 0:
                    self._cv.notify_all()

    def find(self, keys, *, out=None):
        """(rows, found) from the current version (see ReplicaView.find)."""
        with self.snapshot() as v:
            return v.find(keys, out=out)

    def pooled_lookup(self, values, offsets=None, mode: str = "sum", per_sample_weights=None,
                      include_last_offset: bool = False) -> np.ndarray:
        """Pooled rows per bag from the current version (see ReplicaView.pooled_lookup)."""
        with self.snapshot() as v:
            return v.pooled_lookup(values, offsets, mode, per_sample_weights, include_last_offset)

    # -------------------------------------------------------------- building
    def _new_generation(self, m: CutManifest) -> _Generation:
        self._dim = m.dim
        return _Generation([EmbeddingTable(m.dim, num_threads=self.num_threads) for _ in range(m.num_shards)],
                           m.log_id)

    def _chain(self, start: CutManifest, seqs: list, target: Optional[int]):
        """Manifests and deltas after ``start`` while the chain holds, up to
        ``target`` (or the newest). Stops before the first bad cut."""
        out, prev = [], start
        for s in seqs:
            if s <= start.seq or (target is not None and s > target):
                continue
            if s != prev.seq + 1 or (prev.log_id, s) in self._bad:
                break
            try:
                m = self.transport.manifest(s)
                if m.log_id != prev.log_id or m.since != prev.versions or m.num_shards != prev.num_shards:
                    raise CorruptCutError(f"cut {s} does not continue cut {prev.seq} (another chain)")
                d = self.transport.deltas(m)
            except CorruptCutError as e:
                self._note_bad(prev.log_id, s, e)
                break
            out.append((m, d))
            prev = m
        return out

    def _note_bad(self, log_id, seq, e) -> None:
        self._bad.add((log_id, seq))
        self.last_error = f"{type(e).__name__}: {e}"
        self.stats["errors"] += 1

    def _build(self, target: Optional[int] = None, newer_than: int = 0, skip_stuck: bool = False):
        """Two generations built from the newest usable snapshot (at or
        before ``target``), plus the deltas after it: (active, standby);
        None when that reaches no further than ``newer_than``. With
        ``skip_stuck``, a snapshot whose chain went no further last time is
        not read again (a bad cut after it stops it until a newer snapshot)."""
        seqs = self.transport.seqs()
        if not seqs:
            raise NoCutError(f"the log {self.transport!r} holds no cut yet (nothing published there, or no such folder)")
        cands = [s for s in reversed(seqs) if target is None or s <= target]
        why = None
        for s in cands:
            try:
                m = self.transport.manifest(s)
                if not m.has_checkpoint:
                    continue
                if skip_stuck and (m.log_id, s) == self._stuck:
                    return None
                snap, d = self.transport.checkpoint(m), self.transport.deltas(m)
                self.stats["snapshot_reads"] += 1
            except CorruptCutError as e:
                why = e
                self._note_bad(None, s, e)
                continue
            chain = [(m, d)] + self._chain(m, seqs, target)
            reached = chain[-1][0].seq
            if target is not None and reached != target:
                raise NoCutError(f"cannot rebuild version {target}: the chain from snapshot {s} stops at {reached}"
                                 f" ({self.last_error})")
            if reached <= newer_than:
                self._stuck = (m.log_id, s)
                return None
            gens = []
            for _ in range(2):
                g = self._new_generation(m)
                g.apply(m, d, snap)
                for mm, dd in chain[1:]:
                    g.apply(mm, dd)
                g.applied_at = time.time()
                gens.append(g)
            self.stats["bootstraps"] += 1
            self.stats["cuts_applied"] += len(chain)
            return gens[0], gens[1]
        if target is not None:
            raise NoCutError(f"no usable snapshot at or before version {target} in the log (kept: {seqs[0]}.."
                             f"{seqs[-1]}){f'; {why}' if why else ''}")
        raise NoCutError(f"no usable snapshot in the log{f': {why}' if why else ''}")

    def _swap(self, new: _Generation) -> _Generation:
        """Makes ``new`` active; returns the old generation once no request reads it."""
        with self._cv:
            old, self._active = self._active, new
            self.stats["swaps"] += 1
            while old.readers:
                self._cv.wait()
        return old

    # -------------------------------------------------------------- refresh
    def poll(self) -> int:
        """Applies every cut published after the current version (one swap);
        re-bootstraps on a gap or a bad cut. Returns the cuts applied (a
        bootstrap counts its whole chain); 0 when pinned or up to date."""
        with self._write:
            if self._pinned:
                return 0
            t0 = time.perf_counter()
            n = self._poll_locked()
            if n:
                self.stats["poll_seconds"] = time.perf_counter() - t0
            return n

    def _poll_locked(self) -> int:
        seqs = self.transport.seqs()
        cur = self._active
        newer = [s for s in seqs if s > cur.seq]
        if not newer:
            return 0
        chain = self._chain(_Anchor(cur), seqs, None) if self._standby is not None else []
        if chain:
            standby = self._standby
            self._standby = None  # until it is known whole again
            try:
                for m, d in chain:
                    standby.apply(m, d)
            except Exception as e:  # noqa: BLE001 - the standby is unknown now: rebuild, keep serving
                self._note_bad(cur.log_id, chain[0][0].seq, e)
                return self._rebootstrap(cur.seq)
            standby.applied_at = time.time()
            old = self._swap(standby)
            try:
                for m, d in chain:
                    old.apply(m, d)
                self._standby = old
            except Exception as e:  # noqa: BLE001 - not expected (these bytes applied once): rebuilt next poll
                self._note_bad(cur.log_id, chain[0][0].seq, e)
            self.stats["cuts_applied"] += len(chain)
            if chain[-1][0].seq == newer[-1]:
                self.last_error = None
                return len(chain)
        # a gap, a bad cut, another chain, or no whole standby
        return len(chain) + self._rebootstrap(self._active.seq)

    def _rebootstrap(self, newer_than: int) -> int:
        """Rebuilds both generations from the newest usable snapshot when
        that reaches past ``newer_than``; returns the versions gained."""
        try:
            whole = self._standby is not None  # else rebuild even at the same version
            built = self._build(None, newer_than if whole else newer_than - 1, skip_stuck=whole)
        except NoCutError as e:
            self.last_error = f"re-bootstrap failed, serving version {self._active.seq}: {e}"
            return 0
        if built is None:
            return 0
        active, standby = built
        self._swap(active)
        self._standby = standby
        return max(active.seq - newer_than, 0)

    def follow(self, period: float = 1.0) -> "Replica":
        """Polls the log every ``period`` seconds from a daemon thread (until :meth:`close`)."""
        self._start_loop(self.poll, period, "embedlookup-replica", self._loop_error,
                         "this replica is already following its log")
        return self

    def _loop_error(self, e: Exception) -> None:
        self.last_error = f"{type(e).__name__}: {e}"
        self.stats["errors"] += 1

    def close(self) -> None:
        """Stops following (the tables stay readable)."""
        self._halt()

    # -------------------------------------------------------------- versions
    def rollback(self, version: int) -> None:
        """Serves the kept version ``version`` (rebuilt from the newest
        snapshot at or before it plus its deltas) and stops following newer
        cuts until :meth:`resume`. Raises ``NoCutError`` (replica unchanged)
        when the log no longer keeps it, ``ValueError`` for a bad argument."""
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
            raise ValueError(f"version must be an int >= 1 (a cut sequence number), got {version!r}")
        with self._write:
            active, standby = self._build(int(version))
            self._swap(active)
            self._standby = standby
            self._pinned = True

    def resume(self) -> None:
        """Follows the log again after :meth:`rollback` (or ``version=``): the
        next poll applies the cuts after the pinned version."""
        with self._write:
            self._pinned = False


class _Anchor:
    """The chain position of a generation, as a manifest-like object for _chain."""

    def __init__(self, g: _Generation):
        self.seq, self.versions, self.log_id, self.num_shards = g.seq, g.versions, g.log_id, len(g.tables)
