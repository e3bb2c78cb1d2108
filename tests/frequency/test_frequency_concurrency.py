"""Threads reading and training while other threads evict and relayout: every
row a reader gets is its key's own row (never torn, never another key's), and
a trained row's values change only by its own updates."""

import threading

import numpy as np

import embedlookup as el

DIM = 16


def _base(keys):
    # Integer-valued rows and integer gradients keep float arithmetic exact.
    return (keys[:, None] * 64 + np.arange(DIM)[None, :]).astype(np.float32)


def test_reads_and_updates_stay_correct_during_eviction_and_relayout():
    t = el.FrequencyTable(DIM, budget_rows=400, policy="lfu", evict_fraction=0.1, half_life=20.0,
                          on_evict="drop", num_threads=2)
    pinned = np.arange(60, dtype=np.int64)
    t.assign(pinned, _base(pinned))
    updates = np.zeros(pinned.size, np.int64)
    stop = threading.Event()
    errors = []

    def guard(fn):
        def run():
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)
                stop.set()
        return run

    def churn(nxt):  # training lookups: pinned keys stay hot, new keys force evictions
        for _ in range(250):
            if stop.is_set():
                return
            fresh = np.arange(nxt, nxt + 50, dtype=np.int64)
            nxt += 50
            t.lookup(np.concatenate([pinned, fresh]))

    def relayout():
        while not stop.is_set():
            t.relayout_step(7)

    def trainer():
        rng = np.random.default_rng(1)
        opt = el.optim.SGD(lr=1.0)
        while not stop.is_set():
            sel = rng.choice(pinned.size, size=8, replace=False)
            t.apply_gradients(pinned[sel], np.ones((8, DIM), np.float32), opt)
            updates[sel] += 1

    def reader():
        while not stop.is_set():
            rows, found = t.find(pinned)
            assert found.all(), "a pinned key lost its row"
            d = rows - _base(pinned)
            # Each row is its own key's base minus a whole number of updates.
            assert np.all(d == d[:, :1]), "torn or foreign row"
            assert np.all(d[:, 0] <= 0) and np.all(d[:, 0] == np.round(d[:, 0]))

    workers = [threading.Thread(target=guard(f)) for f in (relayout, trainer, reader, reader)]
    churners = [threading.Thread(target=guard(lambda s=s: churn(s))) for s in (10_000, 10_000_000)]
    for w in workers + churners:
        w.start()
    for c in churners:
        c.join()
    stop.set()
    for w in workers:
        w.join()
    assert not errors, errors[0]
    s = t.stats()
    assert s["evicted"] > 1000 and s["relayout_moves"] > 0 and len(t) <= 400
    rows, found = t.find(pinned)
    assert found.all()
    np.testing.assert_array_equal(rows, _base(pinned) - updates[:, None].astype(np.float32))
