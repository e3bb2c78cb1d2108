"""The delta log and Replica: rows equal the source's at each published
version, gaps / corrupt cuts / foreign chains re-bootstrap, rollback,
retention, and bad arguments."""

import os

import numpy as np
import pytest

import embedlookup as el
from embedlookup.serving import CorruptCutError, DeltaLog, NoCutError, Replica, TableSource
from reference import pooled
from serving_helpers import ShardedSource


def _train(src, rng, n_keys=300, k=60, stamp=None):
    keys = rng.choice(n_keys, k, replace=False).astype(np.int64)
    rows = rng.normal(size=(k, src.dim)).astype(np.float32) if stamp is None else np.full((k, src.dim), stamp,
                                                                                           np.float32)
    src.assign(keys, rows)


def _check_equal(replica, src, n_keys=320):
    keys = np.arange(n_keys, dtype=np.int64)
    want, want_found = src.rows(keys)
    got, found = replica.find(keys)
    np.testing.assert_array_equal(found, want_found)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_replica_follows_source_exactly(tmp_path, num_shards):
    rng = np.random.default_rng(num_shards)
    src = ShardedSource(num_shards, 8)
    log = DeltaLog(tmp_path, src, checkpoint_every=4)
    _train(src, rng)
    log.publish()
    rep = Replica(tmp_path)
    _check_equal(rep, src)
    for i in range(9):
        _train(src, rng)
        if i % 3 == 0:
            src.erase(rng.choice(300, 10, replace=False))
        m = log.publish()
        assert rep.poll() == 1 and rep.version == m.seq
        _check_equal(rep, src)
    # pooled lookups (every mode) against the NumPy oracle over the source's rows
    values = rng.integers(0, 340, 200).astype(np.int64)  # some keys the model does not hold
    offsets = np.sort(rng.choice(np.arange(1, 200), 30, replace=False))
    offsets = np.concatenate([[0], offsets, [offsets[-1]]]).astype(np.int64)  # with an empty bag
    rows, _ = src.rows(values)
    w = rng.random(200).astype(np.float32)
    for mode in ("sum", "mean", "max"):
        np.testing.assert_allclose(rep.pooled_lookup(values, offsets, mode), pooled(rows, offsets, mode),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rep.pooled_lookup(values, offsets, "sum", per_sample_weights=w),
                               pooled(rows, offsets, "sum", w), rtol=1e-5, atol=1e-5)
    # a replica never inserts
    before = len(rep)
    rep.find(np.arange(1000, 1100))
    rep.pooled_lookup(np.arange(1000, 1100), np.array([0, 50]))
    assert len(rep) == before


def test_table_source_and_frequency_table_evictions(tmp_path):
    t = el.FrequencyTable(4, budget_rows=50, policy="lru", evict_fraction=0.0, on_evict="drop")
    log = DeltaLog(tmp_path, TableSource(t))
    t.lookup(np.arange(50))
    log.publish()
    rep = Replica(tmp_path)
    assert rep.find(np.arange(50))[1].all()
    t.lookup(np.arange(100, 120))  # evicts 20 rows (LRU: keys 0..19)
    log.publish()
    rep.poll()
    want, want_found = t.find(np.arange(120))
    got, found = rep.find(np.arange(120))
    assert not found[:20].any() and found[100:].all()
    np.testing.assert_array_equal(found, want_found)
    np.testing.assert_array_equal(got[found], want[want_found])


def test_manifest_and_files(tmp_path):
    t = el.EmbeddingTable(16)
    log = DeltaLog(tmp_path, TableSource(t), checkpoint_every=2)
    t.lookup(np.arange(100))
    m1 = log.publish()
    t.assign(np.arange(10), np.ones((10, 16), np.float32))
    m2 = log.publish()
    m3 = log.publish()
    assert (m1.seq, m2.seq, m3.seq) == (1, 2, 3)
    assert m1.has_checkpoint and not m2.has_checkpoint and m3.has_checkpoint
    assert m2.since == m1.versions and m3.since == m2.versions and m2.versions == (t.version,)
    assert m2.rows == (10,) and m3.rows == (0,)
    assert m1.checkpoint_versions == m1.versions
    d = log.transport.deltas(m2)[0]
    assert d.nbytes == m2.deltas[0].bytes == el.storage.delta_info(d)["rows"] * 0 + d.nbytes
    assert el.storage.delta_info(d)["from_version"] == m1.versions[0]


def _stamped_log(tmp_path, n_cuts, checkpoint_every, num_shards=2, keep_checkpoints=10):
    src = ShardedSource(num_shards, 4)
    log = DeltaLog(tmp_path, src, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints)
    keys = np.arange(64, dtype=np.int64)
    for c in range(1, n_cuts + 1):
        src.assign(keys[: 16 + 4 * c], np.full((16 + 4 * c, 4), c, np.float32))
        log.publish()
    return src, log, keys


def _served(rep, keys):
    rows, found = rep.find(keys)
    return rows[:, 0], found


def test_gap_rebootstraps_from_a_later_snapshot(tmp_path):
    src, log, keys = _stamped_log(tmp_path, 2, 3)
    rep = Replica(tmp_path)
    assert rep.version == 2
    for c in range(3, 8):  # cuts 3..7; snapshots at 1, 4, 7
        src.assign(keys[:30], np.full((30, 4), c, np.float32))
        log.publish()
    log.transport.delete(3)  # a gap after the replica's version
    assert rep.poll() > 0
    assert rep.version == 7 and rep.stats["bootstraps"] == 2
    np.testing.assert_array_equal(_served(rep, keys)[0], src.rows(keys)[0][:, 0])


def test_corrupt_cut_keeps_the_last_whole_version(tmp_path):
    src, log, keys = _stamped_log(tmp_path, 2, 100)
    rep = Replica(tmp_path)
    src.assign(keys, np.full((64, 4), 3, np.float32))
    m3 = log.publish()
    path = os.path.join(tmp_path, "cuts", f"{m3.seq:012d}", m3.deltas[1].name)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0x40
    open(path, "wb").write(bytes(raw))
    with pytest.raises(CorruptCutError, match="SHA-256"):
        log.transport.deltas(m3)
    before = _served(rep, keys)
    assert rep.poll() == 0
    assert rep.version == 2 and "SHA-256" in rep.last_error
    reads = rep.stats["snapshot_reads"]
    for _ in range(3):  # no newer snapshot: the old one is not read again
        src.assign(keys[:4], np.full((4, 4), 9, np.float32))
        log.publish()
        assert rep.poll() == 0 and rep.version == 2
    assert rep.stats["snapshot_reads"] == reads
    np.testing.assert_array_equal(_served(rep, keys)[0], before[0])  # cut 2, whole
    # a later snapshot lets it move past the bad cut
    src.assign(keys, np.full((64, 4), 4, np.float32))
    log.publish(checkpoint=True)
    assert rep.poll() > 0 and rep.version == 7
    np.testing.assert_array_equal(_served(rep, keys)[0], np.full(64, 4, np.float32))


def test_foreign_chain_rebootstraps(tmp_path):
    src, log, keys = _stamped_log(tmp_path, 2, 100)
    rep = Replica(tmp_path)
    # a new publisher on the same folder (a restarted trainer, another table)
    src2 = ShardedSource(2, 4)
    src2.assign(keys, np.full((64, 4), -1, np.float32))
    log2 = DeltaLog(tmp_path, src2)
    m = log2.publish()
    assert m.seq == 3 and m.has_checkpoint
    assert rep.poll() > 0 and rep.version == 3
    np.testing.assert_array_equal(_served(rep, keys)[0], np.full(64, -1, np.float32))


def test_rollback_and_resume(tmp_path):
    src, log, keys = _stamped_log(tmp_path, 9, 4)
    rep = Replica(tmp_path)
    assert rep.version == 9
    for v in (2, 6, 5, 9):
        rep.rollback(v)
        rows, found = _served(rep, keys)
        assert rep.version == v and rep.pinned
        assert found.sum() == 16 + 4 * v and np.all(rows[found] == v)
    rep.rollback(3)
    src.assign(keys, np.full((64, 4), 10, np.float32))
    log.publish()
    assert rep.poll() == 0 and rep.version == 3  # pinned
    rep.resume()
    assert rep.poll() == 7 and rep.version == 10
    assert np.all(_served(rep, keys)[0] == 10)
    # at construction
    rep2 = Replica(tmp_path, version=4)
    assert rep2.version == 4 and rep2.pinned and np.all(_served(rep2, keys)[0][_served(rep2, keys)[1]] == 4)


def test_retention_and_rollback_past_it(tmp_path):
    src, log, keys = _stamped_log(tmp_path, 10, 3, keep_checkpoints=2)
    # snapshots at 1, 4, 7, 10: keep the newest two and everything after the older
    assert log.transport.seqs() == [7, 8, 9, 10]
    rep = Replica(tmp_path)
    rep.rollback(8)
    with pytest.raises(NoCutError, match="no usable snapshot"):
        rep.rollback(5)
    assert rep.version == 8 and np.all(_served(rep, keys)[0][_served(rep, keys)[1]] == 8)


def test_bad_arguments_change_nothing(tmp_path):
    with pytest.raises(NoCutError, match="no cut"):
        Replica(tmp_path)
    with pytest.raises(TypeError, match="log must be"):
        Replica(42)
    t = el.EmbeddingTable(4)
    with pytest.raises(TypeError, match="source"):
        DeltaLog(tmp_path, t)
    with pytest.raises(ValueError, match="checkpoint_every"):
        DeltaLog(tmp_path, TableSource(t), checkpoint_every=0)
    with pytest.raises(TypeError, match="table must be"):
        TableSource(object())
    with pytest.raises(ValueError, match="since"):
        TableSource(t).export_cut([0, 0])
    log = DeltaLog(tmp_path, TableSource(t))
    t.lookup(np.arange(5))
    log.publish()
    rep = Replica(tmp_path)
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="version"):
            rep.rollback(bad)
    with pytest.raises(NoCutError):
        rep.rollback(7)
    assert rep.version == 1 and not rep.pinned
    with pytest.raises(ValueError, match="period"):
        rep.follow(0)
    with pytest.raises(ValueError, match="offsets"):
        rep.pooled_lookup(np.arange(4), np.array([1, 2]))
    with pytest.raises(ValueError, match="every"):
        log.step_hook(0)
    assert rep.find(np.arange(5))[1].all()


def test_background_publish_and_follow(tmp_path):
    t = el.EmbeddingTable(4)
    src = TableSource(t)
    log = DeltaLog(tmp_path, src)
    with src.lock:
        t.assign(np.arange(8), np.zeros((8, 4), np.float32))
    log.publish()
    rep = Replica(tmp_path).follow(0.02)
    log.start(0.02)
    try:
        with src.lock:
            t.assign(np.arange(8), np.full((8, 4), 5, np.float32))
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not np.all(rep.find(np.arange(8))[0] == 5):
            time.sleep(0.01)
        assert np.all(rep.find(np.arange(8))[0] == 5)
    finally:
        log.stop()
        rep.close()
    assert not log.errors and rep.last_error is None


def test_step_hook(tmp_path):
    t = el.EmbeddingTable(4)
    log = DeltaLog(tmp_path, TableSource(t))
    hook = log.step_hook(3)
    out = [hook() for _ in range(7)]
    assert [m is not None for m in out] == [False, False, True, False, False, True, False]
    assert log.seq == 2


def test_sharded_tables_bad_arguments_change_nothing():
    from embedlookup.serving import ShardedTables

    with pytest.raises(ValueError, match="num_shards"):
        ShardedTables(0, 4)
    m = ShardedTables(3, 4)
    m.assign(np.arange(30), np.ones((30, 4), np.float32))
    v = [t.version for t in m.tables]
    with pytest.raises(ValueError, match="rows"):
        m.assign(np.arange(3), np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="since"):
        m.export_cut([0, 0])
    with pytest.raises(TypeError, match="since"):
        m.export_cut([0, 0, 1.5])
    assert [t.version for t in m.tables] == v
    cut = m.export_cut()
    assert cut.num_shards == 3 and cut.versions == tuple(v)
    assert sum(el.storage.delta_info(d)["rows"] for d in cut.deltas) == 30
