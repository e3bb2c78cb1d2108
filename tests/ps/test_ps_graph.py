"""The Ray backend's compiled-graph transport: the data calls of a client go
through one Ray compiled graph over the shard actors instead of one actor
task per shard and call. Same results bit for bit as one table, failures
fall back to tasks (and the graph is built again), one process holds the
graph at a time, bad input is refused as by task."""

import os
import time

import numpy as np
import pytest

import embedlookup as el
from embedlookup import ps
from embedlookup.ps import _backends

from ps_helpers import assert_matches_table

RAY = pytest.mark.parametrize("backend", ["ray"], indirect=True)


def _batch(rng, bags=16, rows=300, dim=8):
    lengths = rng.integers(0, 6, bags)
    off = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    values = rng.integers(0, rows, int(lengths.sum())).astype(np.int64)
    return values, off, rng.standard_normal((bags, dim)).astype(np.float32)


def _steps(client, ref, rng, n, mode="sum"):
    """n training steps through the client and the same on the reference
    table (pooled results: the shards' partial sums are added in another
    order than one table's, so equal up to rounding; rows: bit for bit)."""
    for _ in range(n):
        v, off, g = _batch(rng)
        np.testing.assert_allclose(client.pooled_pull(v, off, mode=mode), ref.pooled_lookup(v, off, mode=mode),
                                   rtol=1e-5, atol=1e-6)
        client.push_pooled(v, off, g, mode=mode)
        ref.apply_pooled_gradients(v, off, g, mode=mode)


def _graph_server(make_server, n_keys):
    """(server through a graph, reference table, client, keys): the keys
    pulled once through the graph, equal to the reference's rows."""
    opt = el.optim.Adagrad(lr=0.1)
    server = make_server(4, 2, optimizer=opt, transport="graph")
    ref = el.EmbeddingTable(4, optimizer=opt, initializer=el.init.uniform())
    client = server.client()
    keys = np.arange(n_keys, dtype=np.int64)
    np.testing.assert_array_equal(client.pull(keys), ref.lookup(keys))
    assert client.stats()["transport"]["graph"]
    return server, ref, client, keys


@RAY
def test_graph_trains_bit_for_bit_as_one_table(make_server):
    opt = el.optim.Adagrad(lr=0.1)
    init = el.init.uniform(seed=4)
    server = make_server(8, 3, optimizer=opt, table_options={"initializer": init}, transport="graph")
    ref = el.EmbeddingTable(8, optimizer=opt, initializer=init)
    client = server.client()
    rng = np.random.default_rng(0)
    _steps(client, ref, rng, 6)
    _steps(client, ref, rng, 3, mode="mean")
    keys = rng.integers(0, 400, 50).astype(np.int64)  # plain pull and push, new keys among them
    np.testing.assert_array_equal(client.pull(keys), ref.lookup(keys))
    g = rng.standard_normal((50, 8)).astype(np.float32)
    client.push(keys, g)
    ref.apply_gradients(keys, g)
    assert_matches_table(server, ref)
    st = client.stats()["transport"]
    assert st["graph"] and st["graph_builds"] == 1 and st["graph_failures"] == 0, st
    assert st["graph_calls"] == 2 * 9 + 2, st  # every data call went through it


@RAY
def test_auto_builds_the_graph_after_a_few_calls(make_server):
    server = make_server(4, 2, transport="auto")
    client = server.client()
    keys = np.arange(10, dtype=np.int64)
    for _ in range(_backends.GRAPH_AFTER - 1):
        client.pull(keys)
    assert not client.stats()["transport"]["graph"]
    client.pull(keys)
    st = client.stats()["transport"]
    assert st["graph"] and st["graph_calls"] == 1, st


@RAY
def test_the_default_builds_a_graph_only_for_a_stream_of_calls(make_server, monkeypatch):
    server = make_server(4, 2)  # backend="ray", transport left to its default
    client = server.client()
    assert client.stats()["transport"]["transport"] == "auto"
    keys = np.arange(10, dtype=np.int64)
    monkeypatch.setattr(_backends, "GRAPH_WINDOW_S", 0.2)
    for _ in range(_backends.GRAPH_AFTER + 4):  # scattered calls: 8 of them span more than the window
        client.pull(keys)
        time.sleep(0.06)
    assert not client.stats()["transport"]["graph"]
    monkeypatch.setattr(_backends, "GRAPH_WINDOW_S", 30.0)  # a stream (wide window: a slow CI machine)
    for _ in range(_backends.GRAPH_AFTER):
        client.pull(keys)
    st = client.stats()["transport"]
    assert st["graph"] and st["graph_builds"] == 1, st


def _cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@RAY
def test_the_default_drops_an_idle_graph_and_builds_it_again(make_server, monkeypatch):
    """An idle graph's actors poll (Ray's channel read spins): "auto" tears
    it down after GRAPH_IDLE_S without a data call, the actors then sleep,
    and the next stream of calls builds it again; rows as one table's."""
    import ray

    monkeypatch.setattr(_backends, "GRAPH_IDLE_S", 0.3)
    monkeypatch.setattr(_backends, "GRAPH_WINDOW_S", 30.0)
    opt = el.optim.Adagrad(lr=0.1)
    init = el.init.uniform(seed=2)
    server = make_server(8, 2, optimizer=opt, table_options={"initializer": init})
    ref = el.EmbeddingTable(8, optimizer=opt, initializer=init)
    client = server.client()
    rng = np.random.default_rng(3)
    _steps(client, ref, rng, _backends.GRAPH_AFTER)
    st = client.stats()["transport"]
    assert st["graph"] and st["graph_builds"] == 1, st
    deadline = time.monotonic() + 20
    while client.stats()["transport"]["graph"] and time.monotonic() < deadline:
        time.sleep(0.1)
    st = client.stats()["transport"]
    assert not st["graph"] and st["graph_idle_drops"] == 1 and st["graph_failures"] == 0, st
    pids = ray.get([a.call.remote("pid") for a in server._b.actors])
    before = [_cpu_s(p) for p in pids]
    time.sleep(1.0)
    used = [_cpu_s(p) - b for p, b in zip(pids, before)]
    assert max(used) < 0.3, f"the shard actors still busy after the graph was dropped: {used} s of CPU in 1 s"
    _steps(client, ref, rng, _backends.GRAPH_AFTER)
    st = client.stats()["transport"]
    assert st["graph"] and st["graph_builds"] == 2, st
    assert_matches_table(server, ref)


@RAY
def test_the_default_keeps_a_graph_with_results_in_flight(make_server, monkeypatch):
    """An async push not yet acknowledged (its results unread) keeps the
    graph, however long the client waits; once flushed it is dropped."""
    monkeypatch.setattr(_backends, "GRAPH_IDLE_S", 0.3)
    monkeypatch.setattr(_backends, "GRAPH_WINDOW_S", 30.0)
    server = make_server(4, 2)
    client = server.client(mode="async")
    keys = np.arange(20, dtype=np.int64)
    for _ in range(_backends.GRAPH_AFTER):
        client.pull(keys)
    assert client.stats()["transport"]["graph"]
    client.push(keys, np.ones((20, 4), np.float32))  # returns at once; its results are read by flush()
    time.sleep(1.2)
    st = client.stats()["transport"]
    assert st["graph"] and st["graph_idle_drops"] == 0, st
    client.flush()
    deadline = time.monotonic() + 20
    while client.stats()["transport"]["graph"] and time.monotonic() < deadline:
        time.sleep(0.1)
    st = client.stats()["transport"]
    assert not st["graph"] and st["graph_idle_drops"] == 1, st
    ref = el.EmbeddingTable(4, optimizer=el.optim.Adagrad(lr=0.1), initializer=el.init.uniform())
    ref.lookup(keys)
    ref.apply_gradients(keys, np.ones((20, 4), np.float32))
    np.testing.assert_array_equal(client.pull(keys), ref.lookup(keys))


@RAY
def test_a_killed_shard_drops_the_graph_then_it_is_built_again(make_server, tmp_path):
    opt = el.optim.Adam(lr=0.02)
    init = el.init.uniform(seed=9)
    server = make_server(8, 2, optimizer=opt, table_options={"initializer": init}, durable_dir=tmp_path,
                         transport="graph", timeout_s=20, max_retries=20)
    ref = el.EmbeddingTable(8, optimizer=opt, initializer=init)
    client = server.client()
    rng = np.random.default_rng(1)
    _steps(client, ref, rng, 3)
    server.kill_shard(1, how="sigkill")
    _steps(client, ref, rng, 3)  # the graph fails: these go by task (pushes retried are applied once)
    st = client.stats()["transport"]
    assert st["graph_failures"] == 1 and not st["graph"], st
    _steps(client, ref, rng, _backends.GRAPH_RETRY_AFTER // 2)  # two data calls a step: built again
    st = client.stats()["transport"]
    assert st["graph"] and st["graph_builds"] == 2, st
    assert_matches_table(server, ref)
    assert server.stats()["restarts"] == 1


@RAY
def test_one_process_holds_the_graph(make_server):
    """A second backend on the same shards (another trainer process) is
    refused the shards' claim and goes by task; once the first lets go, it
    builds its own."""
    server, ref, first, keys = _graph_server(make_server, 20)
    opt = server.optimizer
    other = _backends.RayBackend.connect(server.name, 2, "graph")
    second = ps.Client(other, dim=4, timeout_s=30, max_retries=3, server_name=server.name, optimizer=opt)
    g = np.ones((20, 4), np.float32)
    second.push(keys, g)  # by task: the shards are the first process's
    ref.apply_gradients(keys, g)
    assert not second.stats()["transport"]["graph"]
    np.testing.assert_array_equal(first.pull(keys), ref.lookup(keys))  # first's graph sees second's push
    server._b._drop_graph()  # the first lets go (as at its shutdown or exit)
    for _ in range(_backends.GRAPH_RETRY_AFTER):
        np.testing.assert_array_equal(second.pull(keys), ref.lookup(keys))
    assert second.stats()["transport"]["graph"]
    np.testing.assert_array_equal(first.pull(keys), ref.lookup(keys))  # first now by task
    other._drop_graph()


@RAY
@pytest.mark.parametrize("mode", ["bounded:3", "async"])
def test_pushes_in_flight_through_the_graph(make_server, mode):
    """bounded and async clients keep pushes in flight: async more than the
    graph's in-flight executions (those calls go by task, behind the graph's
    on the shard or answered GAP and sent again); every push is applied
    once, in order: the rows equal one table's after a flush."""
    opt = el.optim.Adagrad(lr=0.1)
    init = el.init.uniform(seed=5)
    server = make_server(8, 2, optimizer=opt, table_options={"initializer": init}, transport="graph")
    ref = el.EmbeddingTable(8, optimizer=opt, initializer=init)
    client = server.client(mode)
    rng = np.random.default_rng(2)
    keys = np.arange(64, dtype=np.int64)
    client.pull(keys)
    ref.lookup(keys)
    for _ in range(40):
        k = rng.choice(keys, 48)
        g = rng.standard_normal((48, 8)).astype(np.float32)
        client.push(k, g)
        ref.apply_gradients(k, g)
    client.flush()
    assert_matches_table(server, ref)
    assert client.stats()["transport"]["graph_calls"] > 10


@RAY
def test_suspend_and_resume_the_graph(make_server):
    """_suspend_graph (a measurement helper) tears the graph down and keeps
    it down (calls by task, same results); _resume_graph builds it at the
    next data call."""
    server, ref, client, keys = _graph_server(make_server, 30)
    b = server._b
    b._suspend_graph()
    for _ in range(_backends.GRAPH_RETRY_AFTER + 2):  # no rebuild while suspended, however many calls
        client.push(keys, np.ones((30, 4), np.float32))
        ref.apply_gradients(keys, np.ones((30, 4), np.float32))
    st = client.stats()["transport"]
    assert not st["graph"] and st["graph_builds"] == 1 and st["graph_failures"] == 0, st
    b._resume_graph()
    np.testing.assert_array_equal(client.pull(keys), ref.lookup(keys))
    st = client.stats()["transport"]
    assert st["graph"] and st["graph_builds"] == 2, st
    assert_matches_table(server, ref)


def test_transport_is_checked():
    with pytest.raises(ValueError, match="transport must be one of"):
        ps.ParameterServer(4, 2, optimizer=el.optim.SGD(lr=0.1), backend="ray", transport="rpc")
    with pytest.raises(ValueError, match="transport='graph'.*backend='ray' only"):
        ps.ParameterServer(4, 2, optimizer=el.optim.SGD(lr=0.1), transport="graph")


def test_graph_wait_sleeps_through_the_shards_known_time(monkeypatch):
    """The client reads a graph's result only after the share of the
    shortest recent shard time has passed (Ray's read polls a core while it
    waits); nothing is assumed before enough results came back."""
    now = [100.0]
    monkeypatch.setattr(_backends.time, "perf_counter", lambda: now[0])
    slept = []
    monkeypatch.setattr(_backends.time, "sleep", lambda s: slept.append(s))
    w = _backends.GraphWait()
    times = [0.010, 0.012, 0.009, 0.011, 0.010, 0.013, 0.010, 0.012]
    for t in times[:-1]:  # fewer results than the history holds: no wait
        ex = w.start("push_pooled")
        ex.sleep()
        ex.took(t)
    assert slept == []
    w.start("push_pooled").took(times[-1])
    ex = w.start("push_pooled")
    now[0] += 0.002  # the client's own work after submitting counts
    ex.sleep()
    assert slept == [pytest.approx(_backends.WAIT_SHARE * 0.009 - 0.002)]
    assert w.start("pooled_pull")._until == now[0]  # per method: pulls have no history yet
    for _ in range(_backends.WAIT_HISTORY):  # the history keeps the last WAIT_HISTORY: faster calls lower it
        w.start("push_pooled").took(0.004)
    assert w.start("push_pooled")._until == pytest.approx(now[0] + _backends.WAIT_SHARE * 0.004)
    ex = w.start("push_pooled")
    now[0] += 1.0  # already past the deadline: no sleep
    ex.sleep()
    assert len(slept) == 1
