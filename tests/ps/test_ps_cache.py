"""The trainer-side cache of hot rows (bounded modes).

SGD with lr 1 and rows starting at 0: a push of gradient -c to a key adds c
to its row, so a pulled row reads how many of the client's pushes (with
multiplicity) it holds. The test keeps a ledger of every push: a row pulled
after ``now`` pushes must hold all of the first ``now - S`` pushes and none
that was not sent (the bounded mode's guarantee, cache or not).
"""

import pickle

import numpy as np
import pytest

import embedlookup as el
from ps_helpers import whole_state

N_KEYS, DIM = 64, 4
LOCAL = pytest.mark.parametrize("backend", ["local"], indirect=True)


def _server(make_server, **kw):
    return make_server(DIM, 3, optimizer=el.optim.SGD(lr=1.0), table_options={"initializer": el.init.zeros()}, **kw)


def _schedule(steps, seed):
    """Per step: the keys pushed (duplicates included) and the keys pulled next (hot keys 0..7 most)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        push = rng.integers(0, N_KEYS, size=12)
        pull = np.where(rng.random(24) < 0.8, rng.integers(0, 8, size=24), rng.integers(0, N_KEYS, size=24))
        out.append((push.astype(np.int64), pull.astype(np.int64)))
    return out


def _run_ledger(client, s, steps=40, seed=0, pulls_per_step=2):
    """Pushes and pulls by the schedule; checks every pulled row against the ledger."""
    ledger = np.zeros((steps + 1, N_KEYS), np.int64)  # ledger[t]: per key, sum over the first t pushes
    stale = 0
    for t, (push, pull) in enumerate(_schedule(steps, seed)):
        for _ in range(pulls_per_step):
            rows = client.pull(pull)
            assert (rows == rows[:, :1]).all()
            seen = rows[:, 0].astype(np.int64)
            lo, hi = ledger[max(0, t - s)][pull], ledger[t][pull]
            assert ((lo <= seen) & (seen <= hi)).all(), (t, pull[(seen < lo) | (seen > hi)])
            stale += int(np.count_nonzero(seen < hi))
        client.push(push, -np.ones((push.shape[0], DIM), np.float32))
        ledger[t + 1] = ledger[t]
        np.add.at(ledger[t + 1], push, 1)
    client.flush()
    rows = client.pull(np.arange(N_KEYS))
    return ledger[steps], rows, stale


@LOCAL
@pytest.mark.parametrize("s", [1, 3])
def test_cached_rows_stay_within_s_pushes(make_server, s):
    server = _server(make_server)
    client = server.client(f"bounded:{s}", cache_rows=16)
    total, rows, stale = _run_ledger(client, s)
    # After flush a cached row may still be up to S pushes old; every row is in bound.
    st = client.stats()["cache"]
    assert st["hits"] > 0 and stale > 0  # the cache served rows, some of them behind the shards
    assert st["rows"] <= 16
    client2 = server.client("bounded:1")  # no cache: the shards' rows
    np.testing.assert_array_equal(client2.pull(np.arange(N_KEYS))[:, 0], total.astype(np.float32))


@LOCAL
def test_cache_gives_the_same_model_as_no_cache(make_server):
    """Write-back merges a step's gradients per key: after the same pushes
    the shards hold the same rows and optimizer state as without a cache
    (up to the rounding of the merged sums: numpy adds them in another order
    than the shard's kernel, 1 element in 256 differs by 1 ulp here)."""
    rng = np.random.default_rng(3)
    steps = [(rng.integers(0, N_KEYS, size=20).astype(np.int64), rng.standard_normal((20, DIM)).astype(np.float32))
             for _ in range(15)]
    states = []
    for cache in (None, 8):
        server = make_server(DIM, 3, optimizer=el.optim.Adagrad(lr=0.1))
        c = server.client("bounded:2", cache_rows=cache)
        for keys, grads in steps:
            c.pull(keys)
            c.push(keys, grads)
        c.flush()
        states.append(whole_state(server))
    for a, b in zip(*states):
        # keys, steps: equal; rows and optimizer state: up to the float rounding of the merged sums
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-7)


@LOCAL
def test_hits_misses_and_staleness_by_hand(make_server):
    server = _server(make_server)
    c = server.client("bounded:2", cache_rows=100)
    k = np.arange(10, dtype=np.int64)
    other = np.array([1000], np.int64)
    c.pull(k)  # 10 misses (fetched, admitted)
    c.pull(k)  # 10 hits
    assert c.stats()["cache"] == {"rows": 10, "budget_rows": 100, "hits": 10, "misses": 10, "hit_ratio": 0.5}
    c.push(k, -np.ones((10, DIM), np.float32))
    np.testing.assert_array_equal(c.pull(k), np.zeros((10, DIM), np.float32))  # 1 push old: served
    c.push(other, -np.ones((1, DIM), np.float32))
    np.testing.assert_array_equal(c.pull(k), np.zeros((10, DIM), np.float32))  # 2 old: still served
    c.push(other, -np.ones((1, DIM), np.float32))
    c.flush()
    np.testing.assert_array_equal(c.pull(k), np.ones((10, DIM), np.float32))  # 3 old: fetched again
    st = c.stats()["cache"]
    assert (st["hits"], st["misses"]) == (30, 20) and st["hit_ratio"] == 30 / 50
    sent = c.stats()["bytes_received"]
    c.pull(k)  # fresh again: nothing asked of the shards
    assert c.stats()["bytes_received"] == sent


@LOCAL
def test_cache_admission_and_eviction_are_the_frequency_tables(make_server):
    server = _server(make_server)
    c = server.client("bounded:1", cache_rows=4, cache_options={"admit_count": 2, "policy": "lru"})
    a = np.array([1, 2], np.int64)
    c.pull(a)
    c.pull(a)  # first sighting: not admitted, so not cached: misses again
    assert c.stats()["cache"]["hits"] == 0
    c.pull(a)  # admitted on the second sighting and filled: now hits
    assert c.stats()["cache"]["hits"] == 2
    c.pull(np.arange(10, 20, dtype=np.int64))
    c.pull(np.arange(10, 20, dtype=np.int64))
    assert c.stats()["cache"]["rows"] <= 4


@LOCAL
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_pooled_pull_through_the_cache(make_server, mode):
    server = _server(make_server)
    c, ref = server.client("bounded:2", cache_rows=32), server.client("sync")
    rng = np.random.default_rng(1)
    keys = rng.integers(0, N_KEYS, size=40).astype(np.int64)
    ref.push(keys, rng.standard_normal((40, DIM)).astype(np.float32))
    off = np.array([0, 5, 5, 17, 30], np.int64)  # an empty bag included
    w = rng.random(40).astype(np.float32) if mode == "sum" else None
    c.pooled_pull(keys, off, mode=mode, per_sample_weights=w)  # fills the cache
    got = c.pooled_pull(keys, off, mode=mode, per_sample_weights=w)  # from the cache
    assert c.stats()["cache"]["hits"] > 0
    np.testing.assert_allclose(got, ref.pooled_pull(keys, off, mode=mode, per_sample_weights=w), rtol=1e-6, atol=1e-6)


@LOCAL
def test_bad_cache_arguments(make_server):
    server = _server(make_server)
    for mode in ("sync", "async", "bounded:0"):
        with pytest.raises(ValueError, match="cache_rows.*bounded"):
            server.client(mode, cache_rows=8)
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="cache_rows"):
            server.client("bounded:1", cache_rows=bad)
    with pytest.raises(TypeError, match="cache_options"):
        server.client("bounded:1", cache_rows=8, cache_options=[("policy", "lru")])
    with pytest.raises(ValueError, match="cache_options.*budget_rows"):
        server.client("bounded:1", cache_rows=8, cache_options={"budget_rows": 3})
    with pytest.raises(ValueError, match="policy"):
        server.client("bounded:1", cache_rows=8, cache_options={"policy": "fifo"})
    with pytest.raises(ValueError, match="cache_options.*cache_rows"):
        server.client("bounded:1", cache_options={"policy": "lru"})
    c = server.client("bounded:1", cache_rows=8)
    c.pull(np.arange(4))
    before = c.stats()
    for bad in (np.array([1.5, 2.0]), np.zeros((2, 2), np.int64), "keys"):
        with pytest.raises((TypeError, ValueError), match="keys"):
            c.pull(bad)
    assert c.stats() == before  # nothing counted, nothing sent
    assert server.stats()["pushes_applied"] == 0


@pytest.mark.parametrize("backend", ["ray"], indirect=True)
def test_ray_cached_client_in_bound_and_pickled(make_server):
    server = _server(make_server)
    client = server.client("bounded:2", cache_rows=16)
    total, rows, _ = _run_ledger(client, 2, steps=15, pulls_per_step=1)
    assert client.stats()["cache"]["hits"] > 0
    copy = pickle.loads(pickle.dumps(client))
    assert copy.stats()["cache"]["budget_rows"] == 16 and copy.stats()["cache"]["hits"] == 0
    np.testing.assert_array_equal(copy.pull(np.arange(N_KEYS))[:, 0], total.astype(np.float32))
