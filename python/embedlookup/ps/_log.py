"""A shard's durable push log: one record per acknowledged push, appended and
fsynced before the push is acknowledged.

Records that are not pushes (a FrequencyTable shard's training pulls, which
change its scores and admissions) are appended without their own fsync; the
next push's fsync makes them durable with it.

File: a sequence of records ``[magic 'PSL1' | u32 crc32(payload) | u64
len(payload) | payload]``, the payload a pickled tuple ``(client, seq, kind,
args)``. A process killed while appending leaves at most one torn record at
the end; :func:`read_log` stops at the first record whose header or checksum
does not verify and truncates the file there (such a record was never
fsynced, so its push was never acknowledged: the client retries it).
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib

_HEAD = struct.Struct("<4sIQ")
_MAGIC = b"PSL1"


def fsync_dir(path: str) -> None:
    """Makes a rename / create in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PushLog:
    """Append-only, fsynced record file (opened for appending, created if absent)."""

    def __init__(self, path: str, *, fsync: bool = True):
        self.path = path
        self._fsync = fsync
        created = not os.path.exists(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if created:
            fsync_dir(os.path.dirname(path) or ".")
        self.records = 0
        self.synced = 0  # records appended with sync=True (pushes, marks)
        self.bytes = 0

    def append(self, client: str, seq: int, kind: str, args: tuple, *, sync: bool = True) -> None:
        """Appends one record; ``sync=False`` leaves it to the next synced
        record's fdatasync (which covers every byte written before it): for
        records no acknowledgement waits on."""
        payload = pickle.dumps((client, seq, kind, args), protocol=5)
        rec = _HEAD.pack(_MAGIC, zlib.crc32(payload), len(payload)) + payload
        os.write(self._fd, rec)
        if self._fsync and sync:
            os.fdatasync(self._fd)
        self.records += 1
        self.synced += sync
        self.bytes += len(rec)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_log(path: str):
    """The records of a log file, oldest first, as (client, seq, kind, args).
    A torn or corrupt tail is cut off (the file is truncated to the last whole
    record)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos + _HEAD.size <= len(data):
        magic, crc, n = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + n
        if magic != _MAGIC or end > len(data):
            break
        payload = data[pos + _HEAD.size:end]
        if zlib.crc32(payload) != crc:
            break
        out.append(pickle.loads(payload))
        pos = end
    if pos != len(data):
        with open(path, "r+b") as f:
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())
    return out
