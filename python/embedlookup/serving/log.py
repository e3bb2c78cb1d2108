"""The delta log: numbered, versioned cuts published by a training side and
read by serving replicas.

A *cut* ``seq`` is one model version across every shard. What it holds:

* ``deltas[i]``: shard ``i``'s changes from ``since[i]`` to ``versions[i]``
  (``export_delta`` bytes, docs/format.md);
* every ``checkpoint_every``-th cut also a full snapshot of every shard
  (``checkpoint.versions[i]``, with ``since[i] <= checkpoint.versions[i] <=
  versions[i]``): a new replica loads the snapshot, applies this cut's delta
  on top (which brings it to exactly ``versions``) and follows the later
  deltas. The snapshot itself is never served.

The manifest of a cut names its files with their sizes and SHA-256 and is
written last, atomically; a reader sees a cut whole or not at all. The chain
is ``cut[seq].since == cut[seq - 1].versions``; a reader checks it, so a
missing or foreign cut is a gap, never a silent mix.

Transports: :class:`DirectoryTransport` (a folder: the embedded default, and
what crosses datacenters by any file copy) and, with Ray,
``embedlookup.serving.ray_transport.RayTransport`` (the object store).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..storage import delta_info
from ._periodic import PeriodicOwner

__all__ = ["CorruptCutError", "CutManifest", "DeltaLog", "DirectoryTransport", "FORMAT", "FORMAT_VERSION"]

FORMAT = "embedlookup-delta-log"
FORMAT_VERSION = 1


class CorruptCutError(ValueError):
    """A cut's manifest or files are unreadable, truncated or do not match their checksums."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class CutManifest:
    """What a reader needs to know about cut ``seq`` (see the module doc)."""

    log_id: str
    seq: int
    num_shards: int
    dim: int
    since: tuple
    versions: tuple
    deltas: tuple  # FileEntry per shard
    published_at: float
    rows: tuple = ()  # changed rows per shard (from the delta headers)
    tombstones: tuple = ()
    checkpoint_versions: Optional[tuple] = None
    checkpoint: tuple = ()  # FileEntry per shard, or () without a checkpoint
    extra: dict = field(default_factory=dict)

    @property
    def has_checkpoint(self) -> bool:
        return self.checkpoint_versions is not None

    @property
    def delta_bytes(self) -> int:
        return sum(f.bytes for f in self.deltas)

    @property
    def checkpoint_bytes(self) -> int:
        return sum(f.bytes for f in self.checkpoint)

    def to_json(self) -> str:
        d = asdict(self)
        d = {"format": FORMAT, "format_version": FORMAT_VERSION, **d}
        return json.dumps(d, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text) -> "CutManifest":
        try:
            d = json.loads(text)
            if d.pop("format") != FORMAT:
                raise CorruptCutError("manifest: not an embedlookup delta-log manifest")
            if d.pop("format_version") != FORMAT_VERSION:
                raise CorruptCutError("manifest: unsupported format version")
            d["deltas"] = tuple(FileEntry(**f) for f in d["deltas"])
            d["checkpoint"] = tuple(FileEntry(**f) for f in d["checkpoint"])
            for k in ("since", "versions", "rows", "tombstones"):
                d[k] = tuple(int(x) for x in d[k])
            if d["checkpoint_versions"] is not None:
                d["checkpoint_versions"] = tuple(int(x) for x in d["checkpoint_versions"])
            m = cls(**d)
        except CorruptCutError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CorruptCutError(f"manifest: unreadable ({type(e).__name__}: {e})") from None
        s = m.num_shards
        if not (isinstance(m.seq, int) and m.seq >= 1 and isinstance(s, int) and s >= 1
                and len(m.since) == s and len(m.versions) == s and len(m.deltas) == s
                and all(a <= b for a, b in zip(m.since, m.versions))):
            raise CorruptCutError(f"manifest of cut {m.seq}: inconsistent shard fields")
        if m.has_checkpoint and not (len(m.checkpoint) == s and len(m.checkpoint_versions) == s and all(
                a <= c <= b for a, c, b in zip(m.since, m.checkpoint_versions, m.versions))):
            raise CorruptCutError(f"manifest of cut {m.seq}: inconsistent checkpoint fields")
        return m


def _sha(buf) -> str:
    return hashlib.sha256(memoryview(buf)).hexdigest()


def _check(buf: np.ndarray, entry: FileEntry, what: str) -> np.ndarray:
    if buf.nbytes != entry.bytes:
        raise CorruptCutError(f"{what}: {buf.nbytes} bytes, the manifest says {entry.bytes}")
    if _sha(buf) != entry.sha256:
        raise CorruptCutError(f"{what}: SHA-256 does not match the manifest")
    return buf


# ------------------------------------------------------------------ transports
class DirectoryTransport:
    """Cuts as files in a folder::

        DIR/cuts/<seq>/shard-<i>.delta        DIR/cuts/<seq>/shard-<i>.checkpoint
        DIR/manifests/<seq>.json              (written last: temp file, fsync, rename)

    ``seq`` is zero-padded to 12 digits, so names sort by sequence.
    """

    def __init__(self, directory, *, fsync: bool = True):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a path, got {type(directory).__name__}")
        self.directory = os.fspath(directory)
        self.fsync = bool(fsync)
        self._cuts = os.path.join(self.directory, "cuts")
        self._manifests = os.path.join(self.directory, "manifests")

    def __repr__(self) -> str:
        return f"DirectoryTransport({self.directory!r})"

    # ---- writer side
    def _write_file(self, path: str, data) -> None:
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(memoryview(data))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def _fsync_dir(self, path: str) -> None:
        if self.fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write(self, manifest: CutManifest, deltas: Sequence, checkpoint: Sequence = ()) -> None:
        d = os.path.join(self._cuts, f"{manifest.seq:012d}")
        os.makedirs(d, exist_ok=True)
        os.makedirs(self._manifests, exist_ok=True)
        for entry, buf in zip(manifest.deltas + manifest.checkpoint, list(deltas) + list(checkpoint)):
            self._write_file(os.path.join(d, entry.name), buf)
        self._fsync_dir(d)
        self._write_file(os.path.join(self._manifests, f"{manifest.seq:012d}.json"), manifest.to_json().encode())
        self._fsync_dir(self._manifests)

    def delete(self, seq: int) -> None:
        """Removes cut ``seq``: the manifest first (readers stop seeing it), then its files."""
        try:
            os.remove(os.path.join(self._manifests, f"{seq:012d}.json"))
        except FileNotFoundError:
            pass
        d = os.path.join(self._cuts, f"{seq:012d}")
        if os.path.isdir(d):
            for name in os.listdir(d):
                os.remove(os.path.join(d, name))
            os.rmdir(d)

    # ---- reader side
    def seqs(self) -> list[int]:
        """Published cuts, ascending."""
        try:
            names = os.listdir(self._manifests)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def manifest(self, seq: int) -> CutManifest:
        try:
            with open(os.path.join(self._manifests, f"{seq:012d}.json"), "rb") as f:
                text = f.read()
        except FileNotFoundError:
            raise CorruptCutError(f"cut {seq}: no manifest (deleted by retention?)") from None
        m = CutManifest.from_json(text)
        if m.seq != seq:
            raise CorruptCutError(f"cut {seq}: its manifest names cut {m.seq}")
        return m

    def _read(self, m: CutManifest, entries) -> tuple:
        out = []
        for i, e in enumerate(entries):
            path = os.path.join(self._cuts, f"{m.seq:012d}", e.name)
            try:
                buf = np.fromfile(path, dtype=np.uint8)
            except (FileNotFoundError, OSError) as err:
                raise CorruptCutError(f"cut {m.seq} shard {i}: cannot read {path}: {err}") from None
            out.append(_check(buf, e, f"cut {m.seq} shard {i} ({e.name})"))
        return tuple(out)

    def deltas(self, m: CutManifest) -> tuple:
        """The cut's delta of every shard, checked against the manifest."""
        return self._read(m, m.deltas)

    def checkpoint(self, m: CutManifest) -> tuple:
        """The cut's full snapshot of every shard, checked against the manifest."""
        if not m.has_checkpoint:
            raise ValueError(f"cut {m.seq} carries no checkpoint")
        return self._read(m, m.checkpoint)


def as_transport(log):
    """A transport from a path (a :class:`DirectoryTransport`) or a transport object."""
    if isinstance(log, (str, os.PathLike)):
        return DirectoryTransport(log)
    for name in ("seqs", "manifest", "deltas", "checkpoint"):
        if not callable(getattr(log, name, None)):
            raise TypeError(f"log must be a folder path or a transport (with seqs/manifest/deltas/checkpoint), "
                            f"got {type(log).__name__}")
    return log


# ------------------------------------------------------------------ publisher
def _entries(bufs, suffix: str) -> tuple:
    return tuple(FileEntry(f"shard-{i:04d}.{suffix}", int(b.nbytes), _sha(b)) for i, b in enumerate(bufs))


class DeltaLog(PeriodicOwner):
    """Publishes cuts of a cut source into a transport (a folder path or a
    transport object).

    * ``publish()`` publishes one cut now (every k steps: call it from the
      training loop, or use :meth:`step_hook`); thread-safe.
    * ``start(period)`` publishes every ``period`` seconds from a background
      thread until :meth:`stop`.
    * Every ``checkpoint_every``-th cut (and the first one this object
      publishes) also carries a full snapshot of every shard.
    * Retention: the newest ``keep_checkpoints`` cuts that carry a snapshot
      are kept with every cut after the oldest of them; older cuts are
      deleted. A replica may roll back to any kept cut.

    A log folder that already holds cuts is continued: numbering goes on
    after its last cut, and the first cut published carries a snapshot and
    starts a new chain (readers re-bootstrap from it).
    """

    def __init__(self, log, source, *, checkpoint_every: int = 10, keep_checkpoints: int = 2):
        for name in ("num_shards", "dim", "export_cut"):
            if not hasattr(source, name):
                raise TypeError(f"source must be a cut source (num_shards, dim, export_cut), "
                                f"got {type(source).__name__}")
        for name, v in (("checkpoint_every", checkpoint_every), ("keep_checkpoints", keep_checkpoints)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.transport = as_transport(log)
        self.source = source
        self.num_shards, self.dim = int(source.num_shards), int(source.dim)
        self.checkpoint_every, self.keep_checkpoints = int(checkpoint_every), int(keep_checkpoints)
        self.log_id = secrets.token_hex(8)
        self._lock = threading.Lock()
        seqs = self.transport.seqs()
        self._seq = seqs[-1] if seqs else 0
        self._versions: Optional[tuple] = None  # None: the next cut carries a snapshot
        self._since_checkpoint = 0
        self._checkpoints: list[int] = [s for s in seqs if self._has_checkpoint(s)]
        self._steps = 0
        self.latest: Optional[CutManifest] = None
        self.errors: list[str] = []  # background publishes that failed (the thread goes on)

    def _has_checkpoint(self, seq) -> bool:
        try:
            return self.transport.manifest(seq).has_checkpoint
        except CorruptCutError:
            return False

    @property
    def seq(self) -> int:
        """The last published cut (0: none yet)."""
        return self._seq

    def publish(self, *, checkpoint: Optional[bool] = None) -> CutManifest:
        """Publishes the changes since the last cut as cut ``seq + 1`` (with a
        full snapshot when due, or when ``checkpoint=True``); returns its manifest."""
        with self._lock:
            full = (self._versions is None or checkpoint is True
                    or (checkpoint is None and self._since_checkpoint + 1 >= self.checkpoint_every))
            snap = None
            if full:
                snap = self.source.export_cut(None)
                since = self._versions if self._versions is not None else tuple(snap.versions)
            else:
                since = self._versions
            cut = self.source.export_cut(since)
            if cut.num_shards != self.num_shards or tuple(int(s) for s in cut.since) != tuple(since):
                raise RuntimeError("source: export_cut returned a cut that does not start where it was asked to")
            if snap is not None and any(not (a <= c <= b) for a, c, b in
                                        zip(cut.since, snap.versions, cut.versions)):
                raise RuntimeError("source: versions went backwards between two export_cut calls")
            infos = [delta_info(d) for d in cut.deltas]
            seq = self._seq + 1
            m = CutManifest(
                log_id=self.log_id, seq=seq, num_shards=self.num_shards, dim=self.dim,
                since=tuple(int(s) for s in cut.since), versions=tuple(int(v) for v in cut.versions),
                deltas=_entries(cut.deltas, "delta"), published_at=time.time(),
                rows=tuple(int(i["rows"]) for i in infos), tombstones=tuple(int(i["tombstones"]) for i in infos),
                checkpoint_versions=None if snap is None else tuple(int(v) for v in snap.versions),
                checkpoint=() if snap is None else _entries(snap.deltas, "checkpoint"))
            self.transport.write(m, cut.deltas, () if snap is None else snap.deltas)
            self._seq, self._versions, self.latest = seq, m.versions, m
            if full:
                self._since_checkpoint = 0
                self._checkpoints.append(seq)
                self._retain()
            else:
                self._since_checkpoint += 1
            return m

    def _retain(self) -> None:
        if len(self._checkpoints) <= self.keep_checkpoints:
            return
        oldest_kept = self._checkpoints[-self.keep_checkpoints]
        for s in self.transport.seqs():
            if s < oldest_kept:
                self.transport.delete(s)
        self._checkpoints = self._checkpoints[-self.keep_checkpoints:]

    def step_hook(self, every: int):
        """A callable for the training loop: call it after each step; every
        ``every``-th call publishes a cut (and returns its manifest; None otherwise)."""
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")

        def hook():
            self._steps += 1
            if self._steps % every == 0:
                return self.publish()
            return None

        return hook

    def start(self, period: float) -> "DeltaLog":
        """Publishes every ``period`` seconds (> 0) from a daemon thread;
        failures go to ``errors`` and the thread goes on."""
        self._start_loop(self.publish, period, "embedlookup-delta-log",
                         lambda e: self.errors.append(f"{time.time():.3f}: {type(e).__name__}: {e}"),
                         "this DeltaLog is already publishing in the background")
        return self

    def stop(self) -> None:
        """Stops the background thread (after its current publish)."""
        self._halt()
