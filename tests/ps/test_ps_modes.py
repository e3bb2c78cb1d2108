"""Consistency modes and their guarantees.

Each push adds exactly 1 to every probed row (SGD, lr 1, gradient -1, rows
start at 0: small integers, exact in float32), so a pulled row reads how many
of this client's pushes its shard had applied when the pull ran:

- sync: every pull sees every earlier push;
- bounded:S: at most the last S pushes may be missing, never an older one;
- async: no bound, but every push is applied exactly once by flush().
"""

import threading

import numpy as np
import pytest

import embedlookup as el
from embedlookup import ps
from embedlookup.ps._shard import ShardCore

from ps_helpers import assert_matches_table

KEYS = np.arange(-16, 16, dtype=np.int64)  # spread over every shard
STEPS = 20


def _server(make_server):
    return make_server(4, 3, optimizer=el.optim.SGD(lr=1.0), table_options={"initializer": el.init.zeros()})


def _run(client, steps=STEPS):
    """Push, then pull; returns the (issued, min seen, max seen) of every pull."""
    seen = []
    client.pull(KEYS)
    grad = -np.ones((KEYS.shape[0], 4), np.float32)
    for t in range(steps):
        client.push(KEYS, grad)
        rows = client.pull(KEYS)
        assert (rows == rows[:, :1]).all()
        seen.append((t + 1, int(rows[:, 0].min()), int(rows[:, 0].max())))
    client.flush()
    np.testing.assert_array_equal(client.pull(KEYS), np.full((KEYS.shape[0], 4), steps, np.float32))
    return seen


LOCAL = pytest.mark.parametrize("backend", ["local"], indirect=True)


@LOCAL
def test_sync_sees_every_push(make_server):
    seen = _run(_server(make_server).client("sync"))
    assert all(lo == hi == issued for issued, lo, hi in seen)


@pytest.mark.parametrize("backend,s", [("local", 1), ("local", 3), ("ray", 3)], indirect=["backend"])
def test_bounded_misses_at_most_s_pushes(make_server, s):
    seen = _run(_server(make_server).client(f"bounded:{s}"))
    assert all(issued - s <= lo <= hi <= issued for issued, lo, hi in seen), seen


@LOCAL
def test_async_applies_every_push_once(make_server):
    seen = _run(_server(make_server).client("async"))
    assert all(hi <= issued for issued, lo, hi in seen)


@pytest.fixture
def gated(monkeypatch):
    """Local shards whose pushes wait for gate.set(): pushes stay in flight."""
    gate = threading.Event()
    orig = ShardCore.push

    def slow_push(self, *a):
        gate.wait(10)
        return orig(self, *a)

    monkeypatch.setattr(ShardCore, "push", slow_push)
    yield gate
    gate.set()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_bounded_pushes_overlap_and_stale_pulls_stay_in_bound(make_server, gated):
    """bounded:2 with pushes held back: two pushes return at once (in flight),
    a pull goes out without waiting for their acknowledgements, and a third
    push waits until the oldest is acknowledged."""
    server = _server(make_server)
    client = server.client("bounded:2")
    client.pull(KEYS)
    grad = -np.ones((KEYS.shape[0], 4), np.float32)
    gated.set()
    client.push(KEYS, grad)  # push 1: applied
    client.flush()
    gated.clear()
    client.push(KEYS, grad)
    client.push(KEYS, grad)
    assert client.in_flight == 2  # pushes 2 and 3 have not been applied: the trainer went on
    done = threading.Event()
    out = {}

    def third():
        out["rows"] = client.pull(KEYS)  # allowed now: 2 in flight <= S
        client.push(KEYS, grad)  # 3 in flight > S: waits for push 2
        done.set()

    t = threading.Thread(target=third, daemon=True)
    t.start()
    assert not done.wait(0.3)
    gated.set()
    assert done.wait(10)
    t.join()
    # The pull ran behind pushes 2 and 3 on each shard's queue, or missed them: never push 1.
    assert set(np.unique(out["rows"])) <= {1.0, 2.0, 3.0}
    client.flush()
    np.testing.assert_array_equal(client.pull(KEYS), np.full((KEYS.shape[0], 4), 4, np.float32))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_sync_push_waits_for_every_shard(make_server, gated):
    server = _server(make_server)
    client = server.client("sync")
    client.pull(KEYS)
    done = threading.Event()
    t = threading.Thread(target=lambda: (client.push(KEYS, -np.ones((KEYS.shape[0], 4), np.float32)), done.set()),
                         daemon=True)
    t.start()
    assert not done.wait(0.3)
    gated.set()
    assert done.wait(10)
    t.join()


def test_mode_names():
    assert ps.parse_mode("sync") == ("sync", 0)
    assert ps.parse_mode("bounded:4") == ("bounded", 4)
    assert ps.parse_mode("async") == ("async", None)
    for bad in ("bounded", "bounded:-1", "bounded:x", "eventual", None, 3):
        with pytest.raises(ValueError, match="mode"):
            ps.parse_mode(bad)


@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_push_in_flight_keeps_the_arrays_it_was_given(make_server, monkeypatch, num_shards):
    """bounded / async pushes return before the local shards apply them: the
    caller may reuse its arrays at once; the shards apply what was pushed."""
    gate = threading.Event()
    orig_push, orig_pooled = ShardCore.push, ShardCore.push_pooled
    monkeypatch.setattr(ShardCore, "push", lambda self, *a: (gate.wait(10), orig_push(self, *a))[1])
    monkeypatch.setattr(ShardCore, "push_pooled", lambda self, *a: (gate.wait(10), orig_pooled(self, *a))[1])
    opt, init = el.optim.SGD(lr=1.0), el.init.normal(std=0.1, seed=6)
    server = make_server(4, num_shards, optimizer=opt, table_options={"initializer": init})
    ref = el.EmbeddingTable(4, initializer=init, optimizer=opt)
    c = server.client("bounded:3")
    v = np.arange(12, dtype=np.int64)
    off = np.array([0, 6], np.int64)
    g = np.ones((2, 4), np.float32)
    gk = np.full((12, 4), 0.5, np.float32)
    c.pooled_pull(v, off)
    ref.pooled_lookup(v, off)
    c.push_pooled(v, off, g)  # held at the shards
    c.push(v, gk)
    ref.apply_pooled_gradients(v, off, g)
    ref.apply_gradients(v, gk)
    v[:], g[:], gk[:] = 99, 7.0, 7.0  # the caller reuses its buffers
    gate.set()
    c.flush()
    assert_matches_table(server, ref)
