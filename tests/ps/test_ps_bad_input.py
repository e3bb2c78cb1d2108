"""Bad input: every client call checks its arguments before anything is sent
(clear exception naming the argument, nothing pushed, no sequence number
used); a shard that refuses a push leaves its rows unchanged; a dead or
stalled shard past the retry budget raises instead of hanging."""

import threading
import time

import numpy as np
import pytest

import embedlookup as el
from embedlookup import ps
from embedlookup.ps._shard import ShardCore

from ps_helpers import whole_state

LOCAL = pytest.mark.parametrize("backend", ["local"], indirect=True)

V = np.array([1, 2, 3, 4], np.int64)
OFF = np.array([0, 2], np.int64)
G2 = np.ones((2, 4), np.float32)

BAD_CALLS = [
    ("pull", (np.zeros((2, 2), np.int64),), {}, ValueError, "keys"),
    ("pull", (np.array([1.5]),), {}, TypeError, "keys"),
    ("pooled_pull", (V, np.array([1, 2], np.int64)), {}, ValueError, "offsets"),
    ("pooled_pull", (V, OFF), {"mode": "median"}, ValueError, "mode"),
    ("pooled_pull", (V, OFF), {"mode": "mean", "per_sample_weights": np.ones(4)}, ValueError, "per_sample_weights"),
    ("pooled_pull", (V, None), {}, ValueError, "offsets"),
    ("push", (V, np.ones((3, 4), np.float32)), {}, ValueError, "grads"),
    ("push", (V, np.full((4, 4), np.nan, np.float32)), {}, ValueError, "grads"),
    ("push", (V, np.ones((4, 4), np.int32)), {}, TypeError, "grads"),
    ("push", (V.astype(np.float64), np.ones((4, 4), np.float32)), {}, TypeError, "keys"),
    ("push_pooled", (V, OFF, np.ones((3, 4), np.float32)), {}, ValueError, "grad_output"),
    ("push_pooled", (V, OFF, np.full((2, 4), np.inf, np.float32)), {}, ValueError, "grad_output"),
    ("push_pooled", (V, OFF, G2), {"mode": "max"}, ValueError, "max"),
    ("push_pooled", (V, np.array([0, 5], np.int64), G2), {}, ValueError, "offsets"),
    ("push_pooled", (V, OFF, G2), {"per_sample_weights": np.array([1, 1, np.nan, 1], np.float32)}, ValueError,
     "per_sample_weights"),
]


@LOCAL  # the checks run in the client, before any backend is involved
@pytest.mark.parametrize("method,args,kw,exc,word", BAD_CALLS, ids=[f"{c[0]}-{c[4]}-{i}" for i, c in
                                                                   enumerate(BAD_CALLS)])
def test_bad_call_sends_nothing(make_server, method, args, kw, exc, word):
    server = make_server(4, 2)
    client = server.client("bounded:2")
    client.pull(V)
    before = whole_state(server)
    with pytest.raises(exc, match=word):
        getattr(client, method)(*args, **kw)
    client.flush()
    after = whole_state(server)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert client.pushes == 0 and server.stats()["pushes_applied"] == 0
    client.push(V, np.ones((4, 4), np.float32))  # the client still works: no sequence number was used
    assert server.stats()["pushes_applied"] == 2


@LOCAL
def test_server_arguments(backend, tmp_path):
    opt = el.optim.SGD()
    cases = [
        (dict(dim=0, num_shards=1, optimizer=opt), ValueError, "dim"),
        (dict(dim=4, num_shards=0, optimizer=opt), ValueError, "num_shards"),
        (dict(dim=4, num_shards=1), ValueError, "optimizer"),
        (dict(dim=4, num_shards=1, optimizer="sgd"), TypeError, "optimizer"),
        (dict(dim=4, num_shards=1, optimizer=opt, table="dense"), ValueError, "table"),
        (dict(dim=4, num_shards=1, optimizer=opt, backend="mpi"), ValueError, "backend"),
        (dict(dim=4, num_shards=1, optimizer=opt, timeout_s=0), ValueError, "timeout_s"),
        (dict(dim=4, num_shards=1, optimizer=opt, max_retries=-1), ValueError, "max_retries"),
        (dict(dim=4, num_shards=1, optimizer=opt, snapshot_every=0), ValueError, "snapshot_every"),
        (dict(dim=4, num_shards=1, optimizer=opt, table_options={"capacity": -3}), ValueError, "capacity"),
        (dict(dim=4, num_shards=1, optimizer=opt, table_options={"dim": 3}), ValueError, "dim"),
        (dict(dim=4, num_shards=1, optimizer=opt, table_options={"colour": 1}), TypeError, "colour"),
        (dict(dim=4, num_shards=1, optimizer=opt, actor_options={}), ValueError, "actor_options.*backend='ray'"),
        # checked before Ray is started or reached:
        (dict(dim=4, num_shards=2, optimizer=opt, backend="ray", actor_options=[{}]), TypeError, "actor_options"),
        (dict(dim=4, num_shards=1, optimizer=opt, backend="ray", actor_options="SPREAD"), TypeError, "actor_options"),
        (dict(dim=4, num_shards=1, optimizer=opt, backend="ray", actor_options={"name": "x"}), ValueError,
         "actor_options"),
    ]
    for kw, exc, word in cases:
        with pytest.raises(exc, match=word):
            ps.ParameterServer(**kw)
    with ps.ParameterServer(4, 2, optimizer=opt, durable_dir=tmp_path):
        pass
    with pytest.raises(ValueError, match="durable_dir"):  # another server's directory
        ps.ParameterServer(8, 2, optimizer=opt, durable_dir=tmp_path)
    with ps.ParameterServer(4, 1, optimizer=opt) as s:
        with pytest.raises(ValueError, match="mode"):
            s.client("bounded:x")
        with pytest.raises(TypeError, match="client_id"):
            s.client(client_id=7)


def test_rejected_push_leaves_rows_unchanged(make_server, backend):
    """A push that reaches a shard malformed (bypassing the client's checks)
    is refused there: rows unchanged, the error names the shard, and the
    client goes on. On Ray it goes through the compiled graph: a shard's
    refusal comes back as by task and does not drop the graph."""
    server = make_server(4, 2, **({"transport": "graph"} if backend == "ray" else {}))
    client = server.client()
    keys = np.arange(8, dtype=np.int64)
    client.pull(keys)
    before = whole_state(server)
    bad = [(keys[:2], np.ones((3, 4), np.float32)), (keys[:2], np.full((2, 4), np.nan, np.float32))]
    with pytest.raises(ps.PushRejectedError, match="shard 0.*shard 1"):
        client._send_push("push", bad)
    after = whole_state(server)
    for a, b in zip(before[:3], after[:3]):
        np.testing.assert_array_equal(a, b)
    assert server.stats()["rejected"] == 2
    client.push(keys, np.ones((8, 4), np.float32))
    assert server.stats()["pushes_applied"] == 2
    if backend == "ray":
        st = client.stats()["transport"]
        assert st["graph"] and st["graph_failures"] == 0 and st["graph_calls"] == 3, st


@LOCAL
def test_stalled_shard_raises_within_budget(make_server, monkeypatch):
    gate = threading.Event()
    orig = ShardCore.pull
    monkeypatch.setattr(ShardCore, "pull", lambda self, k: (gate.wait(5), orig(self, k))[1])
    server = make_server(4, 2, timeout_s=0.2, max_retries=2)
    client = server.client()
    t0 = time.monotonic()
    with pytest.raises(ps.ShardUnavailableError, match="timeout_s=0.2.*max_retries=2"):
        client.pull(np.arange(4))
    assert time.monotonic() - t0 < 3
    gate.set()


@pytest.mark.parametrize("backend", ["ray"], indirect=True)
def test_dead_shard_raises(make_server):
    import ray

    server = make_server(4, 2, timeout_s=5, max_retries=2)
    client = server.client()
    client.pull(np.arange(4))
    ray.kill(server._b.actors[1], no_restart=True)
    # ray.kill is asynchronous: a call sent at once may still be served. Wait until the actor is gone.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(server._b.actors[1].node_id.remote(), timeout=5)
        except ray.exceptions.RayError:
            break
        time.sleep(0.05)
    t0 = time.monotonic()
    with pytest.raises(ps.ShardUnavailableError, match="shard 1"):
        client.pull(np.arange(40))
    assert time.monotonic() - t0 < 30


@LOCAL
def test_unreachable_cluster(backend):
    pytest.importorskip("ray")
    import subprocess
    import sys

    code = ("import embedlookup as el\nfrom embedlookup import ps\n"
            "try:\n    ps.ParameterServer(4, 1, optimizer=el.optim.SGD(), backend='ray', address='127.0.0.1:9')\n"
            "except ConnectionError as e:\n    print('ConnectionError', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ConnectionError address" in out.stdout, out.stdout + out.stderr


@LOCAL
def test_closed_client_and_server(make_server):
    server = make_server(4, 1)
    c = server.client()
    c.close()
    with pytest.raises(ps.PSError, match="closed"):
        c.pull([1])
    server.shutdown()
    with pytest.raises(ps.PSError, match="shut down"):
        server.client()
