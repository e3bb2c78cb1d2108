"""The file tier read from the device: parallel block reads (pread / O_DIRECT),
prefetch into a staging area, and I/O faults injected at the I/O layer.

Every value is checked against a plain dict of rows kept beside the table
(the reference) or against the tier's mmap reads."""

import errno

import numpy as np
import pytest

import embedlookup as el
from embedlookup import storage
from reference import RefOptimizer, init_uniform


def _io_mode(path):
    """'direct' where the file system takes O_DIRECT (ext4, xfs), else 'pread'
    (tmpfs): both run the same parallel block-read code."""
    t = storage.FileTier(path / "probe.tier", 8, dim=4)
    try:
        t.set_io("direct", threads=2)
        return "direct"
    except ValueError:
        return "pread"
    finally:
        t.close()


def _uring_refused(path):
    """Why io='uring' cannot run here (a kernel or sandbox that refuses
    io_uring), or None."""
    from embedlookup.bench import ssd

    return ssd.uring_refused(str(path))


@pytest.fixture(params=["threads", "aio", "uring"])
def io(tmp_path, request):
    """Each test three times: the thread pool ('direct', or 'pread' without
    O_DIRECT), Linux AIO ('aio') and io_uring ('uring'), both O_DIRECT only."""
    mode = _io_mode(tmp_path)
    if request.param == "threads":
        return mode
    if mode != "direct":
        pytest.skip(f"io={request.param!r} needs O_DIRECT, which this file system refuses")
    if request.param == "uring" and (why := _uring_refused(tmp_path)):
        pytest.skip(why)
    return request.param


@pytest.fixture(autouse=True)
def _disarm():
    yield
    for op in ("read", "write", "sync"):
        storage._inject_io_fault(op, 0, 0)


@pytest.mark.parametrize("dim,state", [(64, 0), (40, 0), (13, 13), (1100, 0)])
def test_parallel_reads_equal_mapped_reads(tmp_path, io, dim, state):
    # slot bytes 256 (16 per block), 192 and 128+ (slots straddle blocks), 4416 (a slot spans two blocks)
    rng = np.random.default_rng(dim)
    n = 3000 if dim < 1000 else 300
    keys = rng.permutation(10 * n)[:n].astype(np.int64)
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    st = rng.standard_normal((n, state)).astype(np.float32) if state else None
    t = storage.FileTier(tmp_path / "t.tier", n + 10, dim=dim, state_floats=state)
    t.set(keys, rows, st, versions=np.arange(1, n + 1))
    t.flush()
    ask = np.concatenate([keys[rng.permutation(n)], np.array([-5, 10**12], np.int64), keys[:50]])
    want = t.get_full(ask)
    t.set_io(io, threads=7, buffer_bytes=3 * 4096 + 5000)  # a small buffer: the batch goes in many rounds
    got = t.get_full(ask)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    assert not got[3][n:n + 2].any() and got[3].sum() == n + 50
    info = t.io_info()
    assert info["io"] == io and info["queue_depth"] == 7 and info["device_reads"] > 0
    # Whole blocks: at least the slots' bytes, a multiple of the alignment.
    assert info["device_bytes"] >= n * (dim + state) * 4 and info["device_bytes"] % 4096 == 0
    t.close()


def test_io_arguments_are_checked(tmp_path):
    t = storage.FileTier(tmp_path / "t.tier", 16, dim=4)
    t.set(np.array([1], np.int64), np.ones((1, 4), np.float32))
    for kw, msg in ((dict(io="disk"), "io must be"), (dict(io="pread", threads=0), "io_threads"),
                    (dict(io="pread", align=1000), "power of two"), (dict(io="pread", buffer_bytes=True), "io_buffer")):
        with pytest.raises(ValueError, match=msg):
            t.set_io(kw.pop("io"), **kw)
    assert t.io_info()["io"] == "mmap"  # unchanged
    np.testing.assert_array_equal(t.get(np.array([1], np.int64))[0], np.ones((1, 4)))
    with pytest.raises(ValueError, match="io must be"):
        storage.FileTier(tmp_path / "u.tier", 16, dim=4, io="io_uring")
    t.close()


def _table(tmp_path, io, memory_rows=40, optimizer=None, capacity=4096):
    tier = storage.FileTier(tmp_path / "rows.tier", capacity, io=io, io_threads=4)
    return el.EmbeddingTable(8, initializer=el.init.uniform(-1, 1, seed=5), optimizer=optimizer, tier=tier,
                             memory_rows=memory_rows), tier


def _init_rows(keys):
    return init_uniform(keys, 8, -1.0, 1.0, 5)


def test_prefetched_rows_are_served_and_consumed(tmp_path, io):
    t, tier = _table(tmp_path, io)
    keys = np.arange(500, dtype=np.int64)
    t.lookup(keys)  # 460 rows go down to the tier (budget 40)
    h = t.prefetch(keys[:200])
    h.wait()
    h.wait()  # again: returns at once
    s = t.tier_stats()
    assert s["prefetched_rows"] > 0 and s["staged_rows"] == s["prefetched_rows"]
    reads = s["tier_reads"]
    np.testing.assert_array_equal(t.lookup(keys[:200]), _init_rows(keys[:200]))
    s2 = t.tier_stats()
    assert s2["prefetch_used_rows"] == s["prefetched_rows"]
    assert s2["tier_reads"] == reads  # nothing read again from the tier
    assert s2["memory"]["total_bytes"] == (s2["memory"]["table_bytes"] + s2["staged_bytes"]
                                           + s2["memory"]["io_buffer_bytes"])
    tier.close()


def test_prefetched_row_updated_then_written_back_is_not_served_stale(tmp_path, io):
    opt = el.optim.SGD(lr=0.5)
    t, tier = _table(tmp_path, io, optimizer=opt)
    keys = np.arange(300, dtype=np.int64)
    ref = {int(k): r for k, r in zip(keys, _init_rows(keys))}
    t.lookup(keys)
    victim = keys[:10]  # in the tier only now
    t.prefetch(victim).wait()
    # Gradient: promotes them (consuming the staged copies), then updates in memory.
    g = np.full((10, 8), 0.25, np.float32)
    t.apply_gradients(victim, g)
    RefOptimizer("sgd", lr=0.5).apply(ref, victim, g)
    # Prefetch again (they are in memory now: nothing staged for them), then
    # push them down with new values and prefetch before using them.
    t.prefetch(victim).wait()
    t.assign(victim, np.full((10, 8), 7.0, np.float32))
    for k in victim:
        ref[int(k)] = np.full(8, 7.0, np.float32)
    t.demote(victim)  # written back: the tier copy changes
    t.prefetch(victim).wait()
    t.apply_gradients(victim[:5], g[:5])  # promotes from staging, updates
    RefOptimizer("sgd", lr=0.5).apply(ref, victim[:5], g[:5])
    t.demote(victim[:5])
    # The staged copies of victim[:5] taken before this write-back must be gone.
    np.testing.assert_array_equal(t.lookup(victim), np.stack([ref[int(k)] for k in victim]))
    np.testing.assert_array_equal(t.lookup(keys), np.stack([ref[int(k)] for k in keys]))
    tier.close()


def test_prefetched_row_erased_is_not_served(tmp_path, io):
    t, tier = _table(tmp_path, io)
    keys = np.arange(200, dtype=np.int64)
    t.lookup(keys)
    gone = keys[:20]
    t.prefetch(gone).wait()
    assert t.tier_stats()["staged_rows"] == 20
    assert t.erase(gone) == 20
    assert t.tier_stats()["staged_rows"] == 0
    rows, found = t.find(gone)
    assert not found.any()
    np.testing.assert_array_equal(rows, np.zeros((20, 8), np.float32))
    assert len(t) == 180
    tier.close()


def test_prefetched_row_evicted_by_the_budget_then_read(tmp_path, io):
    # Staged rows of keys that the FIFO budget pushes down and up again, many
    # times, with prefetches one batch ahead: every lookup equals the reference.
    opt = el.optim.SGD(lr=0.1)
    t, tier = _table(tmp_path, io, memory_rows=64, optimizer=opt)
    ref_opt = RefOptimizer("sgd", lr=0.1)
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 400, 96).astype(np.int64) for _ in range(31)]
    ref = {}
    h = t.prefetch(batches[0])
    for i, b in enumerate(batches[:-1]):
        nxt = t.prefetch(batches[i + 1])  # one batch ahead, still in flight while this one trains
        h.wait()
        h = nxt
        out = t.lookup(b)
        for k in np.unique(b):
            ref.setdefault(int(k), _init_rows(np.array([k]))[0])
        # float32 engine vs float64 reference: a stale row would be off by a whole step
        np.testing.assert_allclose(out, np.stack([ref[int(k)] for k in b]), rtol=1e-6, atol=1e-7)
        g = rng.standard_normal((b.shape[0], 8)).astype(np.float32)
        t.apply_gradients(b, g)
        ref_opt.apply(ref, b, g)
        if i % 7 == 3:  # erase some keys that may be staged or in flight
            e = b[:5]
            t.erase(e)
            for k in e:
                ref.pop(int(k), None)
    h.wait()
    keys, rows = t.export()
    assert sorted(ref) == keys.tolist()
    np.testing.assert_allclose(rows, np.stack([ref[int(k)] for k in keys]), rtol=1e-6, atol=1e-7)
    assert t.tier_stats()["prefetch_used_rows"] > 0
    tier.close()


def test_prefetch_on_a_frequency_table(tmp_path, io):
    tier = storage.FileTier(tmp_path / "f.tier", 256, io=io)
    t = el.FrequencyTable(4, initializer=el.init.zeros(), optimizer=el.optim.SGD(lr=1.0), budget_rows=8,
                          policy="lru", evict_fraction=0.5, admit_count=1, tier=tier)
    first = np.arange(1, 9, dtype=np.int64)
    t.lookup(first)
    g = np.arange(32, dtype=np.float32).reshape(8, 4)
    t.apply_gradients(first, g)
    t.lookup(np.arange(100, 108, dtype=np.int64))  # evicts (writes back) the trained rows
    t.prefetch(first).wait()
    assert t.tier_stats()["staged_rows"] > 0
    np.testing.assert_array_equal(t.find(first)[0], -g)  # serving: staged rows copied, not consumed
    np.testing.assert_array_equal(t.lookup(first), -g)  # training: promoted from staging
    with pytest.raises(ValueError, match="feature"):
        el.EmbeddingTable(4).prefetch(first, feature="x")
    tier.close()


def test_prefetch_needs_a_tier():
    t = el.EmbeddingTable(4)
    with pytest.raises(ValueError, match="no tier"):
        t.prefetch(np.arange(3))
    assert len(t) == 0


def test_read_error_raises_for_the_batch_and_changes_nothing(tmp_path, io):
    t, tier = _table(tmp_path, io)
    keys = np.arange(300, dtype=np.int64)
    t.lookup(keys)
    before = t.export()
    version = t.version
    storage._inject_io_fault("read", 1, errno.EIO)
    with pytest.raises(storage.TierIOError, match="read failed") as e:
        t.lookup(keys[:100])
    assert e.value.errno == errno.EIO and isinstance(e.value, OSError)
    after = t.export()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert t.version == version
    np.testing.assert_array_equal(t.lookup(keys), _init_rows(keys))  # the device works again
    tier.close()


def test_prefetch_error_is_raised_by_wait_and_the_lookup_still_serves(tmp_path, io):
    t, tier = _table(tmp_path, io)
    keys = np.arange(300, dtype=np.int64)
    t.lookup(keys)
    storage._inject_io_fault("read", 1, errno.EIO)
    h = t.prefetch(keys[:100])
    with pytest.raises(storage.TierIOError):
        h.wait()
    assert t.tier_stats()["staged_rows"] == 0
    np.testing.assert_array_equal(t.lookup(keys[:100]), _init_rows(keys[:100]))
    tier.close()


@pytest.mark.parametrize("op,code", [("write", errno.ENOSPC), ("write", errno.EIO), ("sync", errno.EIO)])
def test_write_back_failure_loses_no_row(tmp_path, io, op, code):
    opt = el.optim.SGD(lr=1.0)
    t, tier = _table(tmp_path, io, optimizer=opt)
    keys = np.arange(120, dtype=np.int64)
    ref = {int(k): r for k, r in zip(keys, _init_rows(keys))}
    t.lookup(keys)
    g = np.ones((120, 8), np.float32)
    t.apply_gradients(keys, g)  # promotes, updates, writes back over the budget
    RefOptimizer("sgd", lr=1.0).apply(ref, keys, g)
    new = np.arange(1000, 1060, dtype=np.int64)
    storage._inject_io_fault(op, 1, code)
    with pytest.raises(storage.TierIOError) as e:
        t.lookup(new)  # inserts 60 rows, then the budget writes 60 back: the write fails
        tier.flush()  # (for "sync": the write-back succeeded, the durability point fails)
    assert e.value.errno == code
    storage._inject_io_fault(op, 0, 0)
    for k, r in zip(new, _init_rows(new)):
        ref[int(k)] = r
    ks, rows = t.export()
    assert ks.tolist() == sorted(ref)
    np.testing.assert_array_equal(rows, np.stack([ref[int(k)] for k in ks]))
    t.lookup(np.arange(2000, 2010, dtype=np.int64))  # the budget works again
    tier.flush()
    tier.close()


@pytest.mark.parametrize("dim", [64, 37])
def test_block_writes_to_every_slot_keep_the_file_exact(tmp_path, io, dim):
    # Overwrites until the last slots (at the file's end, inside a partial
    # block) are used, through whole-block writes; the file keeps its size and
    # reopens (every slot's checksum verified) with the last values.
    rng = np.random.default_rng(dim)
    n = 500
    path = tmp_path / "w.tier"
    t = storage.FileTier(path, n, dim=dim, io=io, io_threads=3)
    size = path.stat().st_size
    keys = np.arange(n, dtype=np.int64) * 3
    for _ in range(4):  # 4 x 500 writes through 564 slots: every slot is used
        rows = rng.standard_normal((n, dim)).astype(np.float32)
        t.set(keys, rows)
    got, found = t.get(keys)
    assert found.all()
    np.testing.assert_array_equal(got, rows)
    t.close()
    assert path.stat().st_size == size
    t = storage.FileTier(path, dim=dim)
    got, found = t.get(keys)
    assert found.all()
    np.testing.assert_array_equal(got, rows)
    t.close()


def test_torch_collection_prefetch_one_batch_ahead(tmp_path, io):
    torch = pytest.importorskip("torch")
    from embedlookup.torch import HashEmbeddingBagCollection

    tier = storage.FileTier(tmp_path / "m.tier", 4096, io=io)
    init = el.init.uniform(-1, 1, seed=9)
    table = el.EmbeddingTable(8, initializer=init, tier=tier, memory_rows=30)
    with_tier = HashEmbeddingBagCollection(["a", "b"], 8, mode="sum", table=table)
    plain = HashEmbeddingBagCollection(["a", "b"], 8, mode="sum", initializer=init)  # all in DRAM: the reference
    rng = np.random.default_rng(1)
    batches = [torch.from_numpy(rng.integers(0, 300, 2 * 16 * 3)) for _ in range(6)]
    lengths = torch.full((2 * 16,), 3, dtype=torch.int64)
    for v in batches:  # every key once, so most live in the tier
        with_tier(values=v, lengths=lengths)
    h = with_tier.prefetch(values=batches[0], lengths=lengths)
    for i, v in enumerate(batches):
        h.wait()
        if i + 1 < len(batches):
            h = with_tier.prefetch(values=batches[i + 1], lengths=lengths)
        got = with_tier(values=v, lengths=lengths)
        want = plain(values=v, lengths=lengths)
        for f in ("a", "b"):
            torch.testing.assert_close(got[f], want[f], rtol=0, atol=0)
    assert table.tier_stats()["prefetch_used_rows"] > 0
    assert plain.prefetch(values=batches[0], lengths=lengths) is None  # no tier: nothing to do
    tier.close()


def test_direct_reads_are_counted_by_the_block_device(tmp_path):
    from embedlookup.bench import ssd

    dev = ssd.block_device(str(tmp_path))
    if dev is None or _io_mode(tmp_path) != "direct":
        pytest.skip("no block device under the temp folder (tmpfs?)")
    t = storage.FileTier(tmp_path / "c.tier", 2000, dim=64)
    keys = np.arange(2000, dtype=np.int64)
    t.set(keys, np.ones((2000, 64), np.float32))
    t.flush()
    t.set_io("direct", threads=4)
    with ssd.DeviceCounter(dev) as c:
        t.get(keys)
    served = t.stats()["bytes_read"]
    # O_DIRECT: every block read reaches the device (other processes' reads only add)
    assert c.bytes >= t.io_info()["device_bytes"] >= served
    assert ssd.label(c.bytes, served) == "device"
    assert ssd.label(0, served) == "cached" and ssd.label(None, served).startswith("unknown")
    t.close()


def test_the_benchmarks_dense_work_runs_blas_on_the_threads_asked():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from embedlookup.bench import ssd

    def blas_threads():
        return {p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}

    before = blas_threads()
    if not before:
        pytest.skip("numpy reports no BLAS to threadpoolctl")
    with ssd._blas_threads(1)():
        assert blas_threads() == {1}
    assert blas_threads() == before  # restored afterwards
    with ssd._blas_threads(None)():
        assert blas_threads() == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="compute_threads"):
            ssd._blas_threads(bad)
    with pytest.raises(ValueError, match="compute_threads"):
        ssd.run(".", only=(), compute_threads=0)


@pytest.mark.parametrize("mode", ["pread", "fixture"])
def test_a_read_racing_writes_that_reuse_its_slots_returns_current_rows(tmp_path, io, mode):
    # get() reads the device without the tier's lock (a write-back never waits
    # for a read) and checks each slot's entry afterwards: a slot freed and
    # written again during the read is read again. Here a writer rewrites keys
    # into a nearly full tier (slots are reused at once) while readers read;
    # every row returned must be its key's value at the version returned.
    import threading
    import time

    dim, keys = 16, np.arange(24, dtype=np.int64)
    t = storage.FileTier(tmp_path / "race.tier", 40, dim=dim, io=io if mode == "fixture" else mode, io_threads=4)

    def rows_of(k, v):
        return np.repeat((k * 1_000_000 + v).astype(np.float32)[:, None], dim, axis=1)

    t.set(keys, rows_of(keys, np.ones(keys.size, np.int64)), versions=np.ones(keys.size, np.uint64))
    t.flush()
    stop, errors, checked = threading.Event(), [], [0]

    def writer():
        rng, v = np.random.default_rng(0), 1
        while not stop.is_set():
            v += 1
            k = rng.choice(keys, 8, replace=False)
            t.set(k, rows_of(k, np.full(k.size, v)), versions=np.full(k.size, v, np.uint64))
            if v % 7 == 0:
                t.flush()  # frees the slots of superseded flushed values too

    def reader():
        while not stop.is_set():
            rows, _, ver, found = t.get_full(keys)
            if not found.all():
                errors.append("a key was not found")
            want = rows_of(keys, ver.astype(np.int64))
            if not np.array_equal(rows, want):
                bad = np.flatnonzero((rows != want).any(axis=1))
                errors.append(f"keys {keys[bad]}: rows {rows[bad, 0]} at versions {ver[bad]}")
            checked[0] += 1

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (checked[0] < 200 or t.io_info()["stale_reads"] < 5) and not errors:
        time.sleep(0.05)
    stop.set()
    for th in threads:
        th.join()
    t.close()
    assert not errors, errors[:5]
    assert checked[0] >= 200
    assert t.io_info()["stale_reads"] >= 5, "the race was never met: the test proves nothing"


def test_uring_readers_at_once_each_get_their_own_rows(tmp_path):
    # io="uring": each caller reading at the same time takes its own ring.
    # Four threads read disjoint key sets, each batch larger than the queue
    # depth (the ring refilled many times) and than the I/O buffer (rounds);
    # every row must equal the NumPy rows written.
    import threading

    if _io_mode(tmp_path) != "direct":
        pytest.skip("io='uring' needs O_DIRECT, which this file system refuses")
    if why := _uring_refused(tmp_path):
        pytest.skip(why)
    dim, n = 40, 4000
    rng = np.random.default_rng(21)
    keys = rng.permutation(10 * n)[:n].astype(np.int64)
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    t = storage.FileTier(tmp_path / "u.tier", n, dim=dim)
    t.set(keys, rows)
    t.flush()
    t.set_io("uring", threads=5, buffer_bytes=16 * 4096)
    parts = np.array_split(rng.permutation(n), 4)
    errors = []

    def reader(idx):
        for _ in range(5):
            got, found = t.get(keys[idx])
            if not found.all() or not np.array_equal(got, rows[idx]):
                errors.append(f"{int((~found).sum())} not found, {int((got != rows[idx]).any(axis=1).sum())} rows differ")

    threads = [threading.Thread(target=reader, args=(p,)) for p in parts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    info = t.io_info()
    assert not errors, errors[:3]
    assert info["io"] == "uring" and info["queue_depth"] == 5
    assert info["device_bytes"] >= 5 * n * dim * 4  # every row read from the file each time (whole blocks)
    t.close()
