"""Idempotent pushes and crash recovery: shards killed during training come
back with every acknowledged push applied exactly once.

The ledger is the list of pushes whose call returned (acknowledged); a
reference EmbeddingTable applies each of them once, in order. After the run
every row and optimizer state of the server equals the reference's bit for
bit: a lost push or a push applied twice would change a row."""

import threading

import numpy as np
import pytest

import embedlookup as el

from ps_helpers import assert_matches_table

KILLS = 20


def _train_with_kills(server, kill, rounds, per_round, steps_after=3, seed=0):
    """Trains (pooled pull + push, sync) while a thread kills shards; returns
    (reference table, client, kills done)."""
    dim = server.dim
    ref = el.EmbeddingTable(dim, initializer=el.init.uniform(seed=9), optimizer=server.optimizer)
    client = server.client("sync")
    rng = np.random.default_rng(seed)
    done = {"kills": 0, "error": None}
    finished = threading.Event()

    def killer():
        try:
            krng = np.random.default_rng(seed + 1)
            for _ in range(rounds):
                finished.wait(float(krng.uniform(0.02, 0.15)))
                for i in krng.permutation(server.num_shards)[:per_round]:
                    kill(int(i))
                    done["kills"] += 1
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            done["error"] = e

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    ledger = 0
    after = 0
    while after < steps_after:
        if not t.is_alive():
            after += 1
        lengths = rng.integers(1, 5, 16)
        off = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        values = rng.integers(0, 200, int(lengths.sum())).astype(np.int64)
        client.pooled_pull(values, off, mode="mean")
        ref.pooled_lookup(values, off, mode="mean")
        g = rng.standard_normal((16, dim)).astype(np.float32)
        client.push_pooled(values, off, g, mode="mean")  # returned: acknowledged by every shard
        ref.apply_pooled_gradients(values, off, g, mode="mean")
        ledger += 1
    t.join(60)
    assert done["error"] is None, done["error"]
    assert ledger == client.pushes
    return ref, client, done["kills"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_local_restarts_and_lost_replies(make_server, tmp_path):
    """Local shards: dropped memory (restart from disk) and replies lost after
    the push was applied and logged (the client retries; the shard drops the
    duplicate)."""
    server = make_server(8, 3, durable_dir=tmp_path, snapshot_every=4, optimizer=el.optim.Adam(lr=0.02),
                         table_options={"initializer": el.init.uniform(seed=9)})
    flip = {"n": 0}

    def kill(i):
        flip["n"] += 1
        lose = flip["n"] % 2 == 0
        server.kill_shard(i, lose_next_reply=lose)
        while lose and server._b._lose_reply[i]:  # wait until a push has met the lost reply
            threading.Event().wait(0.005)

    ref, client, kills = _train_with_kills(server, kill, rounds=KILLS // 2, per_round=2)
    assert kills == KILLS
    assert_matches_table(server, ref)
    st = server.stats()
    assert st["restarts"] == KILLS
    # each lost reply: the client retried and the shard dropped the duplicate
    assert len(server._b.lost_replies) == KILLS // 2
    assert client.duplicates == server._b.lost_replies.count("applied"), server._b.lost_replies


@pytest.mark.parametrize("table,transport", [("embedding", "tasks"), ("embedding", "graph"), ("frequency", "tasks")])
@pytest.mark.parametrize("backend", ["ray"], indirect=True)
def test_ray_kill9_during_training(make_server, tmp_path, table, transport):
    """kill -9 (and ray.kill) of shard processes, restarted by Ray, during a
    training run, with the data calls going by actor task or through a
    compiled graph (torn down by each kill, its calls sent again by task).
    FrequencyTable shards (admitting every key, no budget: their rows then
    follow the reference table's) recover through their own log of pulls and
    pushes."""
    server = make_server(8, 4, table=table, durable_dir=tmp_path, snapshot_every=5, optimizer=el.optim.Adam(lr=0.02),
                         table_options={"initializer": el.init.uniform(seed=9)}, max_retries=30, timeout_s=20,
                         transport=transport)
    n = {"kills": 0}

    def kill(i):  # mostly kill -9; every fifth through ray.kill (no_restart=False)
        n["kills"] += 1
        server.kill_shard(i, how="restart" if n["kills"] % 5 == 0 else "sigkill")

    if transport == "graph":  # built before the kills begin (a build needs every shard up)
        server.client().pull(np.zeros(0, np.int64))  # no row inserted: the reference stays equal
        assert server._b.graph_stats()["graph"]
    ref, client, kills = _train_with_kills(server, kill, rounds=KILLS // 4, per_round=4, steps_after=2)
    assert kills == KILLS
    assert_matches_table(server, ref)
    st = server.stats()
    assert st["restarts"] == KILLS
    assert st["pushes_applied"] == client.pushes * server.num_shards
    graph = client.stats()["transport"]
    if transport == "graph":  # the kills did hit the graph
        assert graph["graph_builds"] >= 1 and graph["graph_failures"] >= 1, graph
    else:
        assert graph["graph_builds"] == 0, graph


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_retried_push_is_applied_once(make_server, tmp_path):
    """The same (client, seq) sent twice is applied once; a later seq before
    an earlier one waits (GAP) instead of being applied out of order."""
    server = make_server(4, 2, durable_dir=tmp_path)
    client = server.client()
    keys = np.arange(6, dtype=np.int64)
    client.pull(keys)
    ref = el.EmbeddingTable(4, optimizer=server.optimizer, initializer=el.init.uniform())
    ref.lookup(keys)
    g = np.ones((6, 4), np.float32)
    client.push(keys, g)
    ref.apply_gradients(keys, g)
    # Replay the very same push (seq 0) by hand on every shard.
    pending = [server._b.submit(i, "push", client.client_id, 0, keys[:0], g[:0]) for i in range(2)]
    assert [server._b.result(h, 30)[0] for h in pending] == ["duplicate", "duplicate"]
    # seq 2 before seq 1: refused as a gap, nothing applied.
    h = server._b.submit(0, "push", client.client_id, 2, keys[:0], g[:0])
    assert server._b.result(h, 30)[0] == "gap"
    assert_matches_table(server, ref)
    client.push(keys, g)  # seq 1 goes through
    ref.apply_gradients(keys, g)
    assert_matches_table(server, ref)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_torn_log_tail_is_cut(make_server, tmp_path):
    """A record torn by a crash mid-append (never acknowledged) is dropped at recovery."""
    server = make_server(4, 1, durable_dir=tmp_path, snapshot_every=None)
    client = server.client()
    keys = np.arange(3, dtype=np.int64)
    client.pull(keys)
    client.push(keys, np.ones((3, 4), np.float32))
    before = server.shard_state(0)
    (log,) = (tmp_path / "shard-0").glob("log-*.bin")
    size = log.stat().st_size
    assert size > 0
    with open(log, "ab") as f:
        f.write(b"PSL1\x00\x00\x00\x00\xff\x00\x00\x00\x00\x00\x00\x00partial")
    server.kill_shard(0)
    assert log.stat().st_size == size  # the torn record was cut off
    after = server.shard_state(0)
    for a, b in zip(before[:3], after[:3]):
        np.testing.assert_array_equal(a, b)
    assert after[3] == before[3]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_resumed_client_continues_its_sequence(make_server, tmp_path):
    """A client id used again (a restarted trainer) continues after its last
    acknowledged push instead of having its pushes dropped as duplicates."""
    server = make_server(4, 2, durable_dir=tmp_path)
    keys = np.arange(8, dtype=np.int64)
    a = server.client(client_id="trainer-0")
    a.pull(keys)
    for _ in range(3):
        a.push(keys, np.ones((8, 4), np.float32))
    b = server.client(client_id="trainer-0")
    b.push(keys, np.ones((8, 4), np.float32))
    assert server.stats()["pushes_applied"] == 4 * 2


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_restart_without_durability_refuses_calls(make_server):
    """No durable_dir: a restarted shard has lost its rows and says so
    rather than serve an empty table."""
    from embedlookup import ps

    server = make_server(4, 2)
    client = server.client()
    keys = np.arange(20, dtype=np.int64)
    client.pull(keys)
    server.kill_shard(1)
    with pytest.raises(ps.ShardLostError, match="durable_dir"):
        client.pull(keys)
    with pytest.raises(ps.ShardLostError, match="durable_dir"):
        client.push(keys, np.ones((20, 4), np.float32))
