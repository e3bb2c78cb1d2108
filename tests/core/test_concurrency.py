"""Readers never see half-written rows; concurrent inserts stay consistent.

Rows hold one value repeated across all columns and every update shifts a
whole row by the same amount, so any torn read shows up as a row whose
columns differ.
"""

import threading

import numpy as np

import embedlookup as el
from reference import init_uniform

DIM = 512  # wide rows widen the window in which a torn read could happen


def uniform_rows(a):
    return np.all(a == a[:, :1], axis=1)


def test_readers_see_whole_rows_while_a_writer_updates():
    keys = np.arange(256, dtype=np.int64)
    t = el.EmbeddingTable(DIM, initializer=el.init.zeros())
    t.assign(keys, np.zeros((len(keys), DIM), np.float32))
    stop = threading.Event()
    torn, reads = [], [0]
    updates = np.zeros(len(keys), np.int64)

    def writer():
        rng = np.random.default_rng(0)
        for _ in range(300):
            k = rng.choice(keys, size=64)  # duplicates merge: each distinct key moves by its count
            t.apply_gradients(k, np.ones((len(k), DIM), np.float32), el.optim.SGD(lr=1.0))
            np.add.at(updates, k, 1)
        stop.set()

    def reader(seed):
        rng = np.random.default_rng(seed)
        offsets = np.arange(0, len(keys), 4, dtype=np.int64)
        while not stop.is_set():
            rows = t.lookup(keys[rng.permutation(len(keys))], insert=False)
            pooled = t.pooled_lookup(keys, offsets, "sum", insert=False)
            reads[0] += 1
            if not (uniform_rows(rows).all() and uniform_rows(pooled).all()):
                torn.append(True)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)] + [threading.Thread(target=writer)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert reads[0] > 3
    assert not torn
    # No update was lost: each row moved by exactly its number of occurrences.
    np.testing.assert_array_equal(t.lookup(keys)[:, 0], -updates.astype(np.float32))
    assert uniform_rows(t.lookup(keys)).all()


def test_concurrent_inserts_give_each_key_one_initial_row():
    init = el.init.uniform(-1, 1, seed=4)
    t = el.EmbeddingTable(8, initializer=init)
    all_keys = np.arange(40000, dtype=np.int64) * 101

    def worker(seed):
        rng = np.random.default_rng(seed)
        for part in np.array_split(rng.permutation(all_keys), 20):
            rows = t.lookup(part)
            np.testing.assert_array_equal(rows, init_uniform(part, 8, -1, 1, 4))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    k, r = t.export()
    np.testing.assert_array_equal(k, all_keys)
    np.testing.assert_array_equal(r, init_uniform(all_keys, 8, -1, 1, 4))


def test_native_calls_release_the_gil():
    # A Python thread keeps running while another thread is inside a long native call.
    t = el.EmbeddingTable(64)
    keys = np.arange(1_000_000, dtype=np.int64)
    ticks = [0]
    done = threading.Event()

    def spinner():
        while not done.is_set():
            ticks[0] += 1

    th = threading.Thread(target=spinner)
    th.start()
    before = ticks[0]
    t.lookup(keys)  # inserts 1 M rows: long enough to observe
    during = ticks[0] - before
    done.set()
    th.join()
    assert during > 1000


def test_concurrent_gradient_calls_lose_no_update():
    # Many keys and large batches, so each call splits its rows over several
    # partitions and OpenMP threads while another call updates the same rows.
    keys = np.arange(20_000, dtype=np.int64)
    t = el.EmbeddingTable(8, initializer=el.init.zeros(), num_threads=2)
    t.assign(keys, np.zeros((len(keys), 8), np.float32))
    batches = [np.random.default_rng(s).choice(keys, size=16_384) for s in range(12)]

    def writer(bs):
        for k in bs:
            t.apply_gradients(k, np.ones((len(k), 8), np.float32), el.optim.SGD(lr=1.0))

    got = []
    threads = [threading.Thread(target=writer, args=(batches[i::3],), daemon=True) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "gradient calls did not finish"
    # A lost counter update would leave a stripe odd and the read spinning:
    # read in a thread so that shows as a failure, not a hung test.
    reader = threading.Thread(target=lambda: got.append(t.lookup(keys, insert=False)), daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert got, "reading the rows back did not finish (a stripe counter was left odd)"
    expected = -np.bincount(np.concatenate(batches), minlength=len(keys)).astype(np.float32)
    np.testing.assert_array_equal(got[0], np.repeat(expected[:, None], 8, axis=1))
