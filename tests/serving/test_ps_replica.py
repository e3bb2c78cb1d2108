"""A parameter server's cuts feed a replica (contract A): after pushes, the
replica's rows are the server's; and, while a client pushes and a publisher
cuts in the background, every version the replica serves should hold one
push count in every row of every shard."""

import threading

import numpy as np

import embedlookup as el
from embedlookup.ps import ParameterServer
from embedlookup.serving import DeltaLog, Replica
from serving_helpers import uniform_reads

N, DIM, S = 900, 8, 3
KEYS = np.arange(N, dtype=np.int64)


def _server():
    return ParameterServer(DIM, S, optimizer=el.optim.SGD(lr=1.0), backend="local",
                           table_options={"initializer": el.init.constant(0.0), "num_threads": 1})


def test_parameter_server_cuts_feed_a_replica(tmp_path):
    rng = np.random.default_rng(0)
    with _server() as server:
        client = server.client(mode="sync")
        client.pull(KEYS)  # inserts every key (rows of zeros)
        log = DeltaLog(tmp_path, server, checkpoint_every=3)
        log.publish()
        rep = Replica(tmp_path)
        assert rep.num_shards == S
        for _ in range(7):
            k = rng.choice(N, 200, replace=False).astype(np.int64)
            client.push(k, rng.normal(size=(200, DIM)).astype(np.float32))
            log.publish()
            assert rep.poll() == 1
            want = client.pull(KEYS)
            rows, found = rep.find(KEYS)
            assert found.all()
            np.testing.assert_array_equal(rows, want)
        vals = np.arange(0, N, 3, dtype=np.int64)
        np.testing.assert_allclose(rep.pooled_lookup(vals, np.arange(0, vals.size, 5), "mean"),
                                   client.pooled_pull(vals, np.arange(0, vals.size, 5), "mean"), rtol=1e-6, atol=1e-6)
        assert Replica(tmp_path).version == rep.version  # a new replica bootstraps to the same version


def test_parameter_server_cuts_are_served_whole_under_concurrent_pushes(tmp_path):
    with _server() as server:
        client = server.client(mode="async")
        client.pull(KEYS)
        log = DeltaLog(tmp_path, server, checkpoint_every=5)
        log.publish()
        rep = Replica(tmp_path).follow(0.005)
        stop = threading.Event()

        def push():
            g = np.full((N, DIM), -1.0, np.float32)  # SGD, lr 1: every row gains 1 per push
            while not stop.is_set():
                client.push(KEYS, g)

        pusher = threading.Thread(target=push)
        pusher.start()
        log.start(0.02)
        try:
            bad, seen = uniform_reads(rep, KEYS, 2.5)
        finally:
            log.stop()
            stop.set()
            pusher.join()
            client.flush()
            rep.close()
        assert len(seen) > 2 and not log.errors
        assert not bad, bad[:5]
