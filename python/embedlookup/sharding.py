"""Which shard owns a key: one rule for the parameter server, its clients and
serving replicas.

``shard_of(keys, n)`` hashes each int64 key with MurmurHash3's 64-bit finalizer
(``fmix64``) after XOR with a fixed salt, and maps the hash's top 32 bits onto
``[0, n)`` by multiply-shift: ``(h >> 32) * n >> 32``. It depends only on the
key's bits and ``n``: not on the process, the platform or Python's hash seed, so
every trainer, shard and replica agrees, and a saved model reshards the same way
anywhere. The mixer differs from the table's own bucket hash (splitmix64), so
keys that share a shard still spread over that shard's buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _checks

__all__ = ["SHARD_SALT", "Cut", "shard_of"]

# Any fixed odd constant; changing it reshuffles every saved sharded model.
SHARD_SALT = np.uint64(0x5EED_C0DE_D15C_A11E)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)


def shard_of(keys, num_shards: int) -> np.ndarray:
    """The shard (int64 in ``[0, num_shards)``) of each int64 key."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)) or num_shards < 1:
        raise ValueError(f"num_shards must be an int >= 1, got {num_shards!r}")
    k = _checks.keys_1d(keys, "keys")
    if num_shards == 1:
        return np.zeros(k.shape, np.int64)
    with np.errstate(over="ignore"):
        h = k.view(np.uint64) ^ SHARD_SALT
        h ^= h >> np.uint64(33)
        h *= _M1
        h ^= h >> np.uint64(33)
        h *= _M2
        h ^= h >> np.uint64(33)
        return ((h >> np.uint64(32)) * np.uint64(num_shards) >> np.uint64(32)).astype(np.int64)


@dataclass(frozen=True)
class Cut:
    """One model version across every shard of a sharded model (or the one
    table of an unsharded one): ``deltas[i]`` is shard ``i``'s
    ``export_delta(since[i])``, and all of them were taken with no push
    applied on any shard in between, so a replica that applies the whole cut
    serves exactly one training state. ``versions[i]`` is shard ``i``'s
    version at the cut: the ``since`` of the next cut."""

    since: tuple[int, ...]
    versions: tuple[int, ...]
    deltas: tuple[np.ndarray, ...]

    @property
    def num_shards(self) -> int:
        return len(self.deltas)

    @property
    def nbytes(self) -> int:
        return sum(int(d.nbytes) for d in self.deltas)
