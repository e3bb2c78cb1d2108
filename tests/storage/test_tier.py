"""FileTier on its own and under a table: values against an untiered table / hand-made rows."""

import numpy as np
import pytest

import embedlookup as el
from storage_helpers import assert_same
from reference import init_uniform, pooled

DIM = 16


def rows_for(keys, gen=0.0):
    keys = np.asarray(keys)
    return (keys[:, None] * 0.5 + np.arange(DIM)[None, :] + gen).astype(np.float32)


def test_file_tier_round_trip_and_reopen(tmp_path):
    p = tmp_path / "tier"
    t = el.storage.FileTier(p, 100, dim=DIM, state_floats=2)
    keys = np.array([5, -3, 1 << 62, 7], np.int64)
    st = np.arange(8, dtype=np.float32).reshape(4, 2)
    t.set(keys, rows_for(keys), state=st, versions=np.array([1, 2, 3, 4], np.uint64))
    t.set(keys[:1], rows_for(keys[:1], 100.0), versions=np.array([9], np.uint64))  # overwrite
    rows, state, ver, found = t.get_full(np.array([5, 6, -3], np.int64))
    np.testing.assert_array_equal(found, [True, False, True])
    np.testing.assert_array_equal(rows[0], rows_for([5], 100.0)[0])
    np.testing.assert_array_equal(rows[1], np.zeros(DIM, np.float32))
    np.testing.assert_array_equal(rows[2], rows_for([-3])[0])
    np.testing.assert_array_equal(state[2], [2, 3])
    np.testing.assert_array_equal(state[0], [0, 0])  # overwritten without state: zeros
    np.testing.assert_array_equal(ver, [9, 0, 2])
    assert t.erase(np.array([7, 8])) == 1
    assert len(t) == 3
    np.testing.assert_array_equal(t.keys(), np.sort(keys[:3]))
    np.testing.assert_array_equal(t.keys(since_version=2), [5, 1 << 62])
    t.close()
    u = el.storage.FileTier(p, dim=DIM, state_floats=2)  # capacity from the file
    assert (len(u), u.capacity, u.recovered) == (3, 100, False)
    rows, found = u.get(keys)
    np.testing.assert_array_equal(found, [True, True, True, False])
    np.testing.assert_array_equal(rows[:3], np.concatenate([rows_for([5], 100.0), rows_for(keys[1:3])]))
    s = u.stats()
    assert s["reads"] == 3 and s["bytes_read"] == 3 * (DIM + 2) * 4  # rows + state
    u.close()


def test_many_overwrites_reuse_slots(tmp_path):
    t = el.storage.FileTier(tmp_path / "t", 50, dim=DIM)
    keys = np.arange(50)
    for g in range(40):  # 2000 writes into 50 + slack slots: flushes reclaim old copies
        t.set(keys, rows_for(keys, g))
    np.testing.assert_array_equal(t.get(keys)[0], rows_for(keys, 39))
    assert t.stats()["writes"] == 2000


def test_scattered_overwrites_against_a_model_and_after_reopen(tmp_path):
    # Writes go to the lowest free slots, close slots share one pwrite and the
    # slots between are rewritten with their own bytes: random overwrites,
    # inserts, erases and flushes must leave exactly the model's rows, in the
    # open tier and after a clean reopen (which re-checks every slot's CRC).
    rng = np.random.default_rng(7)
    p = tmp_path / "tier"
    t = el.storage.FileTier(p, 3000, dim=DIM)
    model = {}
    for step in range(40):
        keys = np.unique(rng.integers(0, 2500, int(rng.integers(1, 900))))
        if step % 7 == 3 and model:
            gone = rng.choice(np.array(sorted(model)), size=min(200, len(model)), replace=False)
            assert t.erase(gone) == len(gone)
            for k in gone:
                del model[int(k)]
        rows = rows_for(keys, float(step))
        t.set(keys, rows)
        model.update({int(k): r for k, r in zip(keys, rows)})
        if step % 5 == 4:
            t.flush()
        probe = np.arange(-5, 2600, dtype=np.int64)
        got, found = t.get(probe)
        want = np.array([k in model for k in probe])
        np.testing.assert_array_equal(found, want)
        np.testing.assert_array_equal(got[want], np.stack([model[int(k)] for k in probe[want]]))
    st = t.stats()
    assert st["writes"] > 10000  # the loop did overwrite a lot
    t.close()
    u = el.storage.FileTier(p, dim=DIM)
    assert not u.recovered and len(u) == len(model)
    keys = np.array(sorted(model), np.int64)
    got, found = u.get(keys)
    assert found.all()
    np.testing.assert_array_equal(got, np.stack([model[int(k)] for k in keys]))


def test_full_tier_raises_and_keeps_everything(tmp_path):
    t = el.storage.FileTier(tmp_path / "t", 10, dim=DIM)
    t.set(np.arange(8), rows_for(np.arange(8)))
    with pytest.raises(el.storage.TierFullError, match="full"):
        t.set(np.arange(5, 15), rows_for(np.arange(5, 15), 1.0))
    assert len(t) == 8
    np.testing.assert_array_equal(t.get(np.arange(8))[0], rows_for(np.arange(8)))


def test_bad_tier_files(tmp_path):
    p = tmp_path / "t"
    el.storage.FileTier(p, 10, dim=DIM).close()
    with pytest.raises(el.storage.TierFormatError, match="dim 16, expected 8"):
        el.storage.FileTier(p, dim=8)
    with pytest.raises(el.storage.TierFormatError, match="state"):
        el.storage.FileTier(p, dim=DIM, state_floats=1)
    with pytest.raises(ValueError, match="capacity"):
        el.storage.FileTier(p, 11, dim=DIM)
    data = p.read_bytes()
    (tmp_path / "short").write_bytes(data[:5000])
    with pytest.raises(el.storage.TierFormatError, match="truncated"):
        el.storage.FileTier(tmp_path / "short", dim=DIM)
    (tmp_path / "foreign").write_bytes(b"\x7fELF" + data[4:])
    with pytest.raises(el.storage.TierFormatError, match="magic"):
        el.storage.FileTier(tmp_path / "foreign", dim=DIM)
    bad = bytearray(data)
    bad[40] ^= 1  # capacity field
    (tmp_path / "hdr").write_bytes(bytes(bad))
    with pytest.raises(el.storage.TierFormatError, match="checksum"):
        el.storage.FileTier(tmp_path / "hdr", dim=DIM)
    with pytest.raises(ValueError, match="capacity"):
        el.storage.FileTier(tmp_path / "absent", dim=DIM)


def test_corrupt_slot_after_crash_is_dropped_not_returned(tmp_path):
    p = tmp_path / "t"
    t = el.storage.FileTier(p, 10, dim=DIM)
    t.set(np.array([1, 2]), rows_for([1, 2]))
    t.flush()
    del t  # a clean close ...
    raw = bytearray(p.read_bytes())
    raw[512:516] = b"\0\0\0\0"  # ... then mark the file dirty (as a crash leaves it)
    data_off = int(np.frombuffer(bytes(raw), np.uint64, 1, 72)[0])
    raw[data_off + 3] ^= 0xFF  # corrupt slot 0's data (key 1)
    p.write_bytes(bytes(raw))
    u = el.storage.FileTier(p, dim=DIM)
    assert u.recovered
    rows, found = u.get(np.array([1, 2]))
    np.testing.assert_array_equal(found, [False, True])
    np.testing.assert_array_equal(rows[1], rows_for([2])[0])


def _pair(tmp_path, memory_rows, promote=True, optimizer=None, name="tier"):
    init = el.init.uniform(-1, 1, seed=11)
    tier = el.storage.FileTier(tmp_path / name, 10_000)
    a = el.EmbeddingTable(DIM, initializer=init, optimizer=optimizer, tier=tier, memory_rows=memory_rows,
                          promote=promote)
    b = el.EmbeddingTable(DIM, initializer=init, optimizer=optimizer)
    return a, b


@pytest.mark.parametrize("promote", [True, False])
def test_table_reads_through_and_writes_back(tmp_path, promote):
    a, b = _pair(tmp_path, memory_rows=50, promote=promote)
    keys = np.arange(400)
    np.testing.assert_array_equal(a.lookup(keys), init_uniform(keys, DIM, -1, 1, 11))
    b.lookup(keys)
    st = a.tier_stats()
    assert st["memory_rows"] == 50 and st["tier_rows"] == 350 and st["demotions"] == 350
    assert len(a) == 400
    rng = np.random.default_rng(0)
    for mode in ("sum", "mean", "max"):
        v = rng.integers(0, 400, 300)
        off = np.sort(rng.choice(300, 40, replace=False))
        off[0] = 0
        w = rng.random(300).astype(np.float32) if mode == "sum" else None
        got = a.pooled_lookup(v, off, mode=mode, per_sample_weights=w, insert=False)
        want = pooled(init_uniform(v, DIM, -1, 1, 11), off, mode, w)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        rows, found = a.find(v)
        assert found.all()
        np.testing.assert_array_equal(rows, init_uniform(v, DIM, -1, 1, 11))
    st = a.tier_stats()
    assert st["tier_hits"] > 0 and 0 < st["hit_ratio"] < 1
    if promote:
        assert st["promotions"] > 0
    else:
        assert st["promotions"] == 0 and st["memory_rows"] == 50
    assert_same(a, b)


def test_updates_of_tier_rows_keep_optimizer_state(tmp_path):
    opt = el.optim.Adagrad(lr=0.3)
    a, b = _pair(tmp_path, memory_rows=20, optimizer=opt)
    rng = np.random.default_rng(1)
    for _ in range(6):
        k = rng.integers(0, 200, 64)
        a.lookup(k)
        b.lookup(k)
        g = rng.standard_normal((64, DIM)).astype(np.float32)
        a.apply_gradients(k, g)
        b.apply_gradients(k, g)
        assert a.tier_stats()["memory_rows"] <= 20
    a.assign(np.array([3, 500]), np.ones((2, DIM), np.float32))
    b.assign(np.array([3, 500]), np.ones((2, DIM), np.float32))
    assert a.erase(np.array([4, 5, 6, 999])) == b.erase(np.array([4, 5, 6, 999]))
    assert_same(a, b)
    assert a.tier.state_floats == DIM  # the tier holds Adagrad's accumulators
    # a delta from the tiered table carries tier rows too
    r = el.EmbeddingTable(DIM)
    r.apply_delta(a.export_delta(0))
    assert_same(r, b)


def test_demote_and_checkpoint_with_tier(tmp_path):
    a, b = _pair(tmp_path, memory_rows=None)
    keys = np.arange(100)
    a.lookup(keys)
    b.lookup(keys)
    assert a.demote(np.arange(0, 100, 2)) == 50
    assert a.demote(np.array([0, 1000])) == 0  # already below / unknown
    st = a.tier_stats()
    assert (st["memory_rows"], st["tier_rows"], st["demotions"]) == (50, 50, 50)
    a.save(tmp_path / "c")
    assert_same(el.EmbeddingTable.load(tmp_path / "c"), b)
    # and back into a tiered table
    tier2 = el.storage.FileTier(tmp_path / "tier2", 1000)
    c = el.EmbeddingTable.load(tmp_path / "c", tier=tier2, memory_rows=10)
    assert_same(c, b)
    assert c.tier_stats()["memory_rows"] == 10


def test_full_tier_under_a_table_loses_nothing(tmp_path):
    tier = el.storage.FileTier(tmp_path / "t", 10)
    a = el.EmbeddingTable(DIM, initializer=el.init.uniform(-1, 1, seed=11), tier=tier)
    a.lookup(np.arange(30))
    with pytest.raises(el.storage.TierFullError):
        a.demote(np.arange(20))
    assert len(a) == 30 and a.tier_stats()["tier_rows"] == 0
    np.testing.assert_array_equal(a.find(np.arange(30))[0], init_uniform(np.arange(30), DIM, -1, 1, 11))


def test_a_new_table_over_a_reopened_tier_reads_its_rows(tmp_path):
    a, b = _pair(tmp_path, memory_rows=10)
    keys = np.arange(60)
    a.lookup(keys)
    b.lookup(keys)
    a.assign(np.array([7]), np.full((1, DIM), 3.0, np.float32))
    b.assign(np.array([7]), np.full((1, DIM), 3.0, np.float32))
    a.demote(a.export()[0])  # everything to the file
    v = a.version
    a.tier.close()
    del a
    tier = el.storage.FileTier(tmp_path / "tier")
    c = el.EmbeddingTable(DIM, initializer=el.init.uniform(-1, 1, seed=11), tier=tier, memory_rows=10)
    assert len(c) == 60 and c.version >= v  # versions continue above the tier's rows
    assert_same(c, b)
    np.testing.assert_array_equal(c.lookup(keys), b.lookup(keys))


def test_damaged_slot_in_a_clean_file_is_reported(tmp_path):
    p = tmp_path / "t"
    t = el.storage.FileTier(p, 10, dim=DIM)
    t.set(np.array([1, 2]), rows_for([1, 2]))
    t.close()
    raw = bytearray(p.read_bytes())
    data_off = int(np.frombuffer(bytes(raw), np.uint64, 1, 72)[0])
    raw[data_off + 3] ^= 0xFF  # bit rot in slot 0 (key 1) of a cleanly closed file
    p.write_bytes(bytes(raw))
    with pytest.raises(el.storage.TierFormatError, match="key 1.*checksum"):
        el.storage.FileTier(p, dim=DIM)


@pytest.mark.parametrize("promote", [True, False])
def test_resolved_lookups_over_a_tier_equal_an_untiered_table(tmp_path, promote):
    # Ids resolved ahead while rows move between memory and the tier: a
    # resolution promotes the rows it names (the budget may demote others,
    # which moves the layout epoch), and a lookup over ids that went stale
    # resolves again. Every result equals the untiered table's.
    a, b = _pair(tmp_path, memory_rows=60, promote=promote)
    rng = np.random.default_rng(4)
    b.lookup(np.arange(300))
    a.lookup(np.arange(300))  # 240 rows now in the tier
    for step in range(6):
        values = rng.integers(0, 300, 64)
        offsets = np.arange(0, 64, 8)
        r = a.resolve(values)
        if step % 2:
            a.lookup(rng.integers(0, 300, 100))  # other keys in between: demotions move the epoch
        got = a.pooled_lookup(values, offsets, resolved=r)
        want = b.pooled_lookup(values, offsets)
        if promote:  # every row read from memory, in key order: bit for bit
            np.testing.assert_array_equal(got, want)
        else:  # stale ids fall back to serving tier rows in place, summed in another order
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got, pooled(b.find(values)[0], offsets, "sum"), rtol=1e-6, atol=1e-6)
    assert a.tier_stats()["memory_rows"] <= 60
