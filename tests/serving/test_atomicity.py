"""Every request is served from one model version while cuts are applied:
the trainer stamps its cut number into every row of every shard; reader
threads check each response holds one stamp, equal to the version it names."""

import threading
import time

import numpy as np

from embedlookup.serving import DeltaLog, Replica
from serving_helpers import ShardedSource, uniform_reads


def test_concurrent_readers_never_see_a_mix(tmp_path):
    S, dim, n = 3, 16, 3000
    src = ShardedSource(S, dim)
    keys = np.arange(n, dtype=np.int64)
    log = DeltaLog(tmp_path, src, checkpoint_every=7)
    src.assign(keys, np.full((n, dim), 1, np.float32))
    log.publish()
    rep = Replica(tmp_path).follow(0.005)
    stop = threading.Event()
    bad, checked, versions_seen = [], [0], set()
    offsets = np.arange(0, n, 4, dtype=np.int64)

    def reader(i):
        rng = np.random.default_rng(i)
        while not stop.is_set():
            with rep.snapshot() as v:
                if i % 2:
                    rows, found = v.find(rng.permutation(keys))
                    stamps = np.unique(rows)
                    ok = found.all() and stamps.tolist() == [v.version]
                else:
                    pooled = v.pooled_lookup(keys, offsets, "sum")
                    ok = np.unique(pooled).tolist() == [4.0 * v.version]
                    stamps = np.unique(pooled) / 4
            if not ok:
                bad.append((v.version, stamps[:5]))
            checked[0] += 1
            versions_seen.add(v.version)
            # the convenience calls too: one version per call
            r = rep.pooled_lookup(keys[:400], offsets[:100], "mean")
            if np.unique(r).size != 1:
                bad.append(("mean", np.unique(r)[:5]))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 3.0
        c = 1
        while time.monotonic() < deadline:
            c += 1
            src.assign(keys, np.full((n, dim), c, np.float32))
            assert log.publish().seq == c
            time.sleep(0.004)
        end = time.monotonic() + 10
        while rep.version != c and time.monotonic() < end:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
        rep.close()
    assert not bad, bad[:5]
    assert rep.version == c and rep.last_error is None
    assert checked[0] > 20 and len(versions_seen) > 3, (checked, versions_seen)
    assert rep.stats["swaps"] >= 3


def test_table_source_publishing_beside_a_trainer_thread_cuts_one_training_state(tmp_path):
    """One table, a trainer thread whose every SGD step (lr 1, gradient -1)
    adds 1 to every row, under the source's lock, and a background
    publisher: every version served holds one step's value in all rows.
    Gradient steps run beside export_delta (both under the table's shared
    lock), so without the source's lock a cut mixes steps: checked below."""
    import embedlookup as el
    from embedlookup.serving import TableSource

    n, dim = 4000, 8
    t = el.EmbeddingTable(dim, optimizer=el.optim.SGD(lr=1.0))
    src = TableSource(t)
    keys = np.arange(n, dtype=np.int64)
    t.assign(keys, np.zeros((n, dim), np.float32))
    log = DeltaLog(tmp_path, src)
    log.publish()
    rep = Replica(tmp_path).follow(0.005)
    stop = threading.Event()

    grads = np.full((n, dim), -1, np.float32)

    def train():
        while not stop.is_set():
            with src.lock:
                t.apply_gradients(keys, grads)

    trainer = threading.Thread(target=train)
    trainer.start()
    log.start(0.01)
    try:
        bad, seen = uniform_reads(rep, keys, 2.0)
    finally:
        log.stop()
        stop.set()
        trainer.join()
        rep.close()
    assert not bad, bad[:5]
    assert len(seen) > 3 and not log.errors
