"""Versions, export_delta / apply_delta: contents, round trips, validation, atomicity."""

import threading

import numpy as np
import pytest

import embedlookup as el
from reference import init_uniform
from storage_helpers import push_delta

DIM = 8


def uniform_table(**kw):
    return el.EmbeddingTable(DIM, initializer=el.init.uniform(-1, 1, seed=7), **kw)


def test_versions_grow_with_every_change_and_not_with_reads():
    t = uniform_table(optimizer=el.optim.SGD(lr=0.1))
    assert t.version == 0
    t.lookup(np.arange(4))
    v1 = t.version
    assert v1 > 0
    t.lookup(np.arange(4))
    t.find(np.arange(10))
    t.pooled_lookup(np.arange(4), np.array([0, 2]), insert=False)
    assert t.version == v1  # reads of existing keys change nothing
    t.assign(np.array([1]), np.ones((1, DIM), np.float32))
    v2 = t.version
    t.apply_gradients(np.array([2]), np.ones((1, DIM), np.float32))
    v3 = t.version
    assert t.erase(np.array([99])) == 0
    assert t.version == v3  # erasing nothing is no change
    t.erase(np.array([3]))
    assert v1 < v2 < v3 < t.version


def test_delta_contents_hand_checked():
    t = uniform_table(optimizer=el.optim.Adagrad(lr=0.5))
    t.lookup(np.array([10, 20, 30, 40], np.int64))
    base = t.version
    t.assign(np.array([20], np.int64), np.full((1, DIM), 2.0, np.float32))
    t.apply_gradients(np.array([30], np.int64), np.full((1, DIM), 1.0, np.float32))
    t.erase(np.array([40], np.int64))
    t.lookup(np.array([50], np.int64))
    d = t.export_delta(base)
    info = el.storage.delta_info(d)
    assert info["kind"] == "delta" and info["from_version"] == base and info["to_version"] == t.version
    assert info["rows"] == 3 and info["tombstones"] == 1 and info["dim"] == DIM
    # Decode by hand (docs/format.md): sections table at offset 128, 24 bytes per entry.
    buf = bytes(d)
    sec = [np.frombuffer(buf, np.uint64, 2, 128 + 24 * i) for i in range(6)]
    keys = np.frombuffer(buf, np.int64, 3, int(sec[0][0]))
    rows = np.frombuffer(buf, np.float32, 3 * DIM, int(sec[2][0])).reshape(3, DIM)
    state = np.frombuffer(buf, np.float32, 3 * DIM, int(sec[3][0])).reshape(3, DIM)
    dead = np.frombuffer(buf, np.int64, 1, int(sec[4][0]))
    np.testing.assert_array_equal(keys, [20, 30, 50])
    np.testing.assert_array_equal(dead, [40])
    np.testing.assert_array_equal(rows[0], np.full(DIM, 2.0, np.float32))
    # Adagrad, one step with g = 1 from w0: state = 1, w = w0 - 0.5 * 1 / (1 + eps)
    w0 = init_uniform(np.array([30]), DIM, -1, 1, 7)[0]
    np.testing.assert_allclose(rows[1], w0 - 0.5, rtol=1e-6)
    np.testing.assert_array_equal(state[1], np.ones(DIM, np.float32))
    np.testing.assert_array_equal(rows[2], init_uniform(np.array([50]), DIM, -1, 1, 7)[0])
    np.testing.assert_array_equal(state[0], np.zeros(DIM, np.float32))


def test_delta_bytes_are_rows_plus_header():
    dim = 64
    t = el.EmbeddingTable(dim)
    t.lookup(np.arange(100_000))
    base = t.version
    changed = np.arange(0, 100_000, 10)
    t.assign(changed, np.ones((changed.size, dim), np.float32))
    d = t.export_delta(base)
    payload = changed.size * dim * 4
    header = el._core.snapshot_header_bytes() + 64  # header + alignment slack + end marker
    assert payload <= d.nbytes <= 1.05 * payload + header


def test_replica_follows_source_with_deltas():
    src = uniform_table(optimizer=el.optim.Adam(lr=0.01))
    rng = np.random.default_rng(0)
    replica = el.EmbeddingTable(DIM)
    seen = 0
    for step in range(5):
        keys = rng.integers(0, 50, 40)
        src.lookup(keys)
        g = rng.standard_normal((40, DIM)).astype(np.float32)
        src.apply_gradients(keys, g)
        if step == 2:
            src.erase(np.array([keys[0]]))
        seen = push_delta(src, replica, seen)
    assert replica.version == src.version and replica.step == src.step
    # optimizer state travelled: one more identical step on both stays identical
    k = src.export()[0][:5]
    g = np.ones((5, DIM), np.float32)
    src.apply_gradients(k, g)
    replica.apply_gradients(k, g, el.optim.Adam(lr=0.01))
    np.testing.assert_array_equal(src.lookup(k), replica.lookup(k))


def test_bad_deltas_raise_and_leave_table_unchanged():
    src = uniform_table()
    src.lookup(np.arange(10))
    d1 = src.export_delta(0)
    v1 = src.version
    src.assign(np.array([3]), np.zeros((1, DIM), np.float32))
    d2 = src.export_delta(v1)
    replica = uniform_table()
    with pytest.raises(ValueError, match="out of order"):
        replica.apply_delta(d2)
    assert len(replica) == 0 and replica.version == 0
    replica.apply_delta(d1)
    before = replica.export()
    with pytest.raises(ValueError, match="stale"):
        src2 = uniform_table()
        src2.apply_delta(d1)
        src2.apply_delta(d2)
        src2.apply_delta(d1)
    other = uniform_table()
    other.lookup(np.arange(3))
    with pytest.raises(ValueError, match="another table"):
        replica.apply_delta(other.export_delta(0))
    with pytest.raises(ValueError, match="dim"):
        el.EmbeddingTable(DIM + 1).apply_delta(d1)
    corrupt = bytearray(bytes(d2))
    rows_at = int(np.frombuffer(bytes(d2), np.uint64, 1, 128 + 24 * 2)[0])  # rows section (docs/format.md)
    corrupt[rows_at + 5] ^= 0xFF
    with pytest.raises(el.storage.SnapshotFormatError, match="checksum|corrupt"):
        replica.apply_delta(corrupt)
    with pytest.raises(el.storage.SnapshotFormatError, match="truncated"):
        replica.apply_delta(bytes(d2)[:-9])
    with pytest.raises(el.storage.SnapshotFormatError, match="magic"):
        replica.apply_delta(b"x" * 400)
    with pytest.raises(TypeError, match="delta"):
        replica.apply_delta("not bytes")
    small = el.EmbeddingTable(DIM, capacity=10)
    with pytest.raises(el.TableFullError, match="capacity"):
        small.apply_delta(uniform_table_with(20).export_delta(0))
    assert len(small) == 0 and small.version == 0
    after = replica.export()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    replica.apply_delta(d2)  # the right next delta still applies
    np.testing.assert_array_equal(replica.export()[1], src.export()[1])


def uniform_table_with(n):
    t = uniform_table()
    t.lookup(np.arange(n))
    return t


def test_apply_delta_is_atomic_for_a_concurrent_reader():
    # Every delta sets all 200 rows to one value v; a reader must never see a mix.
    n = 200
    keys = np.arange(n)
    src = el.EmbeddingTable(DIM)
    deltas = []
    seen = 0
    for v in range(1, 41):
        src.assign(keys, np.full((n, DIM), float(v), np.float32))
        deltas.append(src.export_delta(seen))
        seen = src.version
    dst = el.EmbeddingTable(DIM)
    dst.apply_delta(deltas[0])
    stop = threading.Event()
    mixed = []

    def reader():
        while not stop.is_set():
            rows, _ = dst.find(keys)
            if np.unique(rows).size != 1:
                mixed.append(np.unique(rows))

    th = threading.Thread(target=reader)
    th.start()
    for d in deltas[1:]:
        dst.apply_delta(d)
    stop.set()
    th.join()
    assert not mixed
    np.testing.assert_array_equal(dst.find(keys)[0], np.full((n, DIM), 40.0, np.float32))


# The smallest eps accepted (the smallest normal float32; eps=0 is refused: 0/0
# on a zero gradient): sqrt(k) + eps == sqrt(k) in float32, so still exact.
EPS_MIN = float(np.finfo(np.float32).tiny)


def test_export_during_gradient_steps_gives_whole_rows_with_their_state():
    # Every step adds g = 1 to all rows with Adagrad from zero rows: after k steps
    # the accumulator is k and the row is -lr * sum_{i<=k} 1/sqrt(i). A delta taken
    # while steps run must pair each row with its own accumulator.
    n, lr = 2000, 0.1
    keys = np.arange(n)
    t = el.EmbeddingTable(DIM, initializer=el.init.zeros(), optimizer=el.optim.Adagrad(lr=lr, eps=EPS_MIN))
    t.lookup(keys)
    g = np.ones((n, DIM), np.float32)
    t.apply_gradients(keys, g)  # binds the optimizer state before the race
    stop = threading.Event()

    def trainer():
        while not stop.is_set():
            t.apply_gradients(keys, g)

    th = threading.Thread(target=trainer)
    th.start()
    try:
        deltas = []
        while len(deltas) < 10 or (t.step < 4 and len(deltas) < 2000):
            deltas.append(t.export_delta(0))
    finally:
        stop.set()
        th.join()
    assert t.step > 1  # steps ran while the deltas were taken
    expect = -lr * np.cumsum(1.0 / np.sqrt(np.arange(1, t.step + 1)))
    for d in deltas:
        buf = bytes(d)
        sec = [np.frombuffer(buf, np.uint64, 2, 128 + 24 * i) for i in range(6)]
        rows = np.frombuffer(buf, np.float32, n * DIM, int(sec[2][0])).reshape(n, DIM)
        state = np.frombuffer(buf, np.float32, n * DIM, int(sec[3][0])).reshape(n, DIM)
        k = state[:, 0].astype(np.int64)
        assert (state == state[:, :1]).all() and (rows == rows[:, :1]).all()
        w = np.where(k > 0, expect[np.maximum(k, 1) - 1], 0.0)
        np.testing.assert_allclose(rows[:, 0], w, rtol=1e-4, atol=1e-6)


def test_random_damage_is_rejected_or_harmless():
    # Any flipped byte or cut either raises a clear error (table unchanged) or
    # lands in padding and applies the exact same rows.
    src = uniform_table(optimizer=el.optim.Adagrad(lr=0.1))
    src.lookup(np.arange(50))
    src.apply_gradients(np.arange(10), np.ones((10, DIM), np.float32))
    src.erase(np.array([3]))
    good = bytes(src.export_delta(0))
    want = src.export()
    rng = np.random.default_rng(5)
    for trial in range(300):
        blob = bytearray(good)
        if trial % 3 == 0:
            blob = blob[: int(rng.integers(0, len(good)))]
        else:
            blob[int(rng.integers(0, len(good)))] ^= int(rng.integers(1, 256))
        dst = uniform_table()
        try:
            dst.apply_delta(bytes(blob))
        except (el.storage.SnapshotFormatError, ValueError) as e:
            assert str(e)
            assert len(dst) == 0 and dst.version == 0
            continue
        got = dst.export()
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_a_parallel_training_step_stamps_exactly_its_rows():
    # The fused update stamps versions inside its partitions, on 2 threads:
    # the delta since the step's start holds exactly the rows it trained.
    t = el.EmbeddingTable(DIM, initializer=el.init.uniform(-1, 1, seed=7), optimizer=el.optim.Adagrad(lr=0.1),
                          num_threads=2)
    keys = np.arange(20_000, dtype=np.int64) * 7919
    t.lookup(keys)
    rng = np.random.default_rng(5)
    replica = el.EmbeddingTable(DIM)
    replica.apply_delta(t.export_delta(0))
    for step in range(3):
        values = keys[rng.integers(0, len(keys), 8192)]
        offsets = np.arange(0, 8192, 8, dtype=np.int64)
        base = t.version
        t.pooled_lookup(values, offsets)
        t.apply_pooled_gradients(values, offsets, rng.standard_normal((1024, DIM)).astype(np.float32))
        assert t.version == base + 1  # one new version per step
        d = t.export_delta(base)
        assert el.storage.delta_info(d)["rows"] == len(np.unique(values))
        replica.apply_delta(d)  # the step's delta alone brings the replica level with every row
        np.testing.assert_array_equal(replica.export()[1], t.export()[1])


def _tombstones(delta) -> dict:
    """{key: version} of a delta's tombstones, decoded by hand (docs/format.md)."""
    buf = bytes(delta)
    n = el.storage.delta_info(delta)["tombstones"]
    sec = [np.frombuffer(buf, np.uint64, 2, 128 + 24 * i) for i in range(6)]
    keys = np.frombuffer(buf, np.int64, n, int(sec[4][0]))
    versions = np.frombuffer(buf, np.uint64, n, int(sec[5][0]))
    return dict(zip(keys.tolist(), versions.tolist()))


def test_tombstones_under_heavy_erase_and_reinsert_churn_match_a_dict_model():
    # Thousands of keys erased and re-inserted over many rounds (negative and
    # huge keys too): the tombstone map grows, shifts entries back on erase
    # and must still hold exactly the keys erased and not back since.
    rng = np.random.default_rng(3)
    pool = np.concatenate([rng.integers(-2**62, 2**62, 3000), np.arange(-500, 500)]).astype(np.int64)
    t = uniform_table()
    live, dead = set(), {}  # the model: live keys; erased key -> version of its erase
    marks = [t.version]
    for _ in range(60):
        ins = np.unique(rng.choice(pool, 400))
        t.lookup(ins)
        for k in ins.tolist():
            live.add(k)
            dead.pop(k, None)  # a key back in the table has no tombstone
        era = np.unique(rng.choice(pool, 300))
        before = t.version
        n = t.erase(era)
        gone = [k for k in era.tolist() if k in live]
        assert n == len(gone)
        for k in gone:
            live.discard(k)
            dead[k] = before + 1  # the erase's version
        marks.append(t.version)
    for since in (marks[0], marks[20], marks[45], marks[-1]):
        want = {k: v for k, v in dead.items() if v > since}
        assert _tombstones(t.export_delta(since)) == want
