"""Fault-campaign regressions for storage: versions must be ints in [0, 2**63),
paths must not hold a NUL byte, and headers that would corrupt a table (rows
at to_version 0, NaN initializer parameters) are refused before any change."""

import os
import struct

import numpy as np
import pytest

import embedlookup as el
from storage_helpers import assert_same

DIM = 4


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected 0x82F63B78, init / final XOR 0xFFFFFFFF), as docs/format.md."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def patched(buf: bytes, offset: int, fmt: str, value) -> bytes:
    """``buf`` with one header field rewritten and the header CRC (bytes [0, 316) at 316) redone."""
    b = bytearray(buf)
    struct.pack_into("<" + fmt, b, offset, value)
    struct.pack_into("<I", b, 316, crc32c(bytes(b[:316])))
    return bytes(b)


def small_table(**kw):
    t = el.EmbeddingTable(DIM, initializer=el.init.uniform(-0.5, 0.5, seed=9), optimizer=el.optim.SGD(lr=0.1), **kw)
    t.lookup(np.array([1, 2, 3]))
    t.apply_gradients(np.array([2]), np.ones((1, DIM), np.float32))
    return t


def table_state(t):
    k, r = t.export()
    return k.copy(), r.copy(), len(t), t.step, t.version


def assert_state(t, snap):
    k, r, n, step, version = snap
    k2, r2 = t.export()
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(r2, r)
    assert (len(t), t.step, t.version) == (n, step, version)


# -------------------------------------------------------------- F: versions
@pytest.mark.parametrize("versions,exc,match", [
    ([-1], ValueError, r"versions must lie in \[0, 2\*\*63\), got -1"),
    ([2**63], ValueError, r"versions must lie in \[0, 2\*\*63\)"),
    (np.array([2**64 - 1], np.uint64), ValueError, r"versions must lie in \[0, 2\*\*63\)"),
    ([np.nan], TypeError, "versions must hold integers"),
    ([1.7], TypeError, "versions must hold integers"),
    ([True], TypeError, "versions must hold integers"),
])
def test_file_tier_set_versions_checked(tmp_path, versions, exc, match):
    tier = el.storage.FileTier(tmp_path / "t.bin", 16, dim=DIM)
    tier.set(np.array([5]), np.ones((1, DIM), np.float32), versions=np.array([7]))
    with pytest.raises(exc, match=match):
        tier.set(np.array([5]), np.zeros((1, DIM), np.float32), versions=versions)
    rows, _, vers, found = tier.get_full(np.array([5]))
    np.testing.assert_array_equal(rows, np.ones((1, DIM), np.float32))  # the old row and version
    assert list(vers) == [7] and list(found) == [True] and len(tier) == 1


def test_file_tier_good_versions_round_trip(tmp_path):
    tier = el.storage.FileTier(tmp_path / "t.bin", 16, dim=DIM)
    tier.set(np.array([5, 6]), np.ones((2, DIM), np.float32), versions=np.array([0, 2**63 - 1], np.int64))
    assert list(tier.get_full(np.array([5, 6]))[2]) == [0, 2**63 - 1]
    assert list(tier.keys(since_version=0)) == [6]


@pytest.mark.parametrize("since,exc", [(1.7, TypeError), (None, TypeError), ("a", TypeError), (True, TypeError),
                                       (-1, ValueError), (2**63, ValueError), (2**64, ValueError)])
def test_since_version_checked_everywhere(tmp_path, since, exc):
    t = small_table()
    snap = table_state(t)
    with pytest.raises(exc, match="since_version must be an int in"):
        t.export_delta(since)
    with pytest.raises(exc, match="since_version must be an int in"):
        t.save_delta(tmp_path / "d.snap", since)
    assert not os.path.exists(tmp_path / "d.snap")
    tier = el.storage.FileTier(tmp_path / "t.bin", 16, dim=DIM)
    with pytest.raises(exc, match="since_version must be an int in"):
        tier.keys(since)
    assert_state(t, snap)


def test_export_delta_int_versions_still_work(tmp_path):
    t = small_table()
    v = t.save(tmp_path / "c.snap")
    replica = el.EmbeddingTable.load(tmp_path / "c.snap")
    t.apply_gradients(np.array([3]), np.ones((1, DIM), np.float32))
    replica.apply_delta(t.export_delta(np.int64(v)))  # NumPy ints are ints
    assert_same(replica, t)


# ------------------------------------------------------------- F: NUL paths
def test_nul_byte_in_paths_rejected(tmp_path):
    t = small_table()
    good = t.save(tmp_path / "ok.snap")
    snap = table_state(t)
    bad = str(tmp_path / "c\0ignored")
    with pytest.raises(ValueError, match="path must not contain a NUL byte"):
        el.storage.FileTier(bad, 16, dim=DIM)
    with pytest.raises(ValueError, match="path must not contain a NUL byte"):
        t.save(bad)
    with pytest.raises(ValueError, match="path must not contain a NUL byte"):
        t.save_delta(bad, good)
    with pytest.raises(ValueError, match="path must not contain a NUL byte"):
        el.EmbeddingTable.load(bad)
    with pytest.raises(ValueError, match=r"deltas\[0\] must not contain a NUL byte"):
        el.EmbeddingTable.load(tmp_path / "ok.snap", deltas=[bad])
    with pytest.raises(ValueError, match="path must not contain a NUL byte"):
        el.storage.file_info(os.fsencode(bad))
    assert sorted(os.listdir(tmp_path)) == ["ok.snap"]  # no truncated "c" file
    assert_state(t, snap)
    assert_same(el.EmbeddingTable.load(tmp_path / "ok.snap"), t)


def test_path_of_wrong_type_names_path():
    with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike"):
        el.storage.FileTier(123, 16, dim=DIM)


# --------------------------------------------------------------- H: headers
def test_checkpoint_with_nan_initializer_refused(tmp_path):
    t = small_table()
    p = tmp_path / "c.snap"
    t.save(p)
    good = p.read_bytes()
    for offset in (100, 104):  # initializer a (low) and b (high), f32
        p.write_bytes(patched(good, offset, "f", float("nan")))
        assert np.isnan(el.storage.file_info(p)["init_a" if offset == 100 else "init_b"])  # the reader took it
        with pytest.raises(el.storage.SnapshotFormatError, match="invalid header"):
            el.EmbeddingTable.load(p)
    p.write_bytes(patched(good, 100, "f", float("inf")))
    with pytest.raises(el.storage.SnapshotFormatError, match="uniform: low"):
        el.EmbeddingTable.load(p)
    p.write_bytes(good)
    assert_same(el.EmbeddingTable.load(p), t)  # the untouched file still loads


def test_delta_with_rows_at_to_version_zero_refused(tmp_path):
    src = small_table()
    base = src.save(tmp_path / "c.snap")
    src.apply_gradients(np.array([1]), np.ones((1, DIM), np.float32))
    d = bytes(src.export_delta(base))
    assert el.storage.delta_info(d)["rows"] == 1
    bad = patched(patched(d, 40, "Q", 0), 48, "Q", 0)  # from_version = to_version = 0, one row
    replica = el.EmbeddingTable.load(tmp_path / "c.snap")
    snap = table_state(replica)
    with pytest.raises(el.storage.SnapshotFormatError, match="to_version=0 is not after from_version=0"):
        replica.apply_delta(bad)
    assert_state(replica, snap)
    (tmp_path / "d.snap").write_bytes(bad)
    with pytest.raises(el.storage.SnapshotFormatError, match=r"deltas\[0\].*to_version=0"):
        el.EmbeddingTable.load(tmp_path / "c.snap", deltas=[tmp_path / "d.snap"])
    # The same delta unpatched applies, giving the source's rows.
    replica.apply_delta(d)
    assert_same(replica, src)


def test_empty_table_checkpoint_at_version_zero_still_loads(tmp_path):
    t = el.EmbeddingTable(DIM)
    assert t.save(tmp_path / "e.snap") == 0
    u = el.EmbeddingTable.load(tmp_path / "e.snap")
    assert len(u) == 0 and u.dim == DIM
    u.apply_delta(t.export_delta(0))  # an empty delta 0 -> 0
    assert len(u) == 0
