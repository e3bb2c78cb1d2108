"""The key-to-shard rule: hand-computed values, stability and balance."""

import numpy as np
import pytest
from embedlookup.sharding import shard_of

M64 = (1 << 64) - 1


def _fmix_shard(key: int, n: int) -> int:
    # Plain-int restatement of the documented rule, independent of NumPy's uint64 arithmetic.
    h = (key & M64) ^ 0x5EEDC0DED15CA11E
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    h ^= h >> 33
    return ((h >> 32) * n) >> 32


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
def test_matches_the_documented_rule(n):
    keys = [0, 1, -1, 2**63 - 1, -(2**63), 123456789, -987654321]
    got = shard_of(np.array(keys, np.int64), n)
    assert got.tolist() == [_fmix_shard(k, n) if n > 1 else 0 for k in keys]


def test_balanced_on_sequential_ids():
    counts = np.bincount(shard_of(np.arange(100_000), 4), minlength=4)
    assert counts.min() > 24_000 and counts.max() < 26_000


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_shards"):
        shard_of(np.arange(3), 0)
    with pytest.raises(ValueError, match="num_shards"):
        shard_of(np.arange(3), True)
    with pytest.raises(ValueError, match="keys must be 1-D"):
        shard_of(np.zeros((2, 2), np.int64), 2)
