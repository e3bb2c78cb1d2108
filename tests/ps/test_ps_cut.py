"""Global cuts: every push is in a cut on every shard or on none.

Rows start at 0 and take SGD with lr 1. Client A's pushes carry gradient -1 in
column 0 of every key of A's key set, client B's -1 in column 1 of every key
of B's set, and both sets span every shard: in a consistent cut, column 0 of
every row of A's set holds the same count (A's pushes in the cut) and column 1
of every row of B's set the same count for B. Counts are small integers:
exact in float32.
"""

import threading
import time

import numpy as np
import pytest

import embedlookup as el
from embedlookup import ps
from embedlookup.ps._shard import ShardCore
from embedlookup.sharding import shard_of

KEYS_A = np.arange(0, 60, dtype=np.int64)
KEYS_B = np.arange(40, 100, dtype=np.int64)  # overlaps A on 40..59
LOCAL = pytest.mark.parametrize("backend", ["local"], indirect=True)


def _counts(cut, dim=2):
    """Per shard: the set of A counts and of B counts over the rows of its keys (absent row: 0)."""
    out = []
    for d in cut.deltas:
        t = el.EmbeddingTable(dim)
        t.apply_delta(d)
        k, r = t.export()
        have = dict(zip(k.tolist(), r.tolist()))
        for keys, col in ((KEYS_A, 0), (KEYS_B, 1)):
            mine = keys[shard_of(keys, cut.num_shards) == len(out) // 2]
            out.append({have.get(int(x), [0.0, 0.0])[col] for x in mine})
    return out  # [A on shard 0, B on shard 0, A on shard 1, ...]


def _server(make_server, **kw):
    return make_server(2, 3, optimizer=el.optim.SGD(lr=1.0), table_options={"initializer": el.init.zeros(),
                                                                             "num_threads": 1}, **kw)


def _two_clients_and_cuts(server, pushes, min_cuts):
    clients = {"A": (server.client("bounded:2"), KEYS_A, 0, 2), "B": (server.client("sync"), KEYS_B, 1, 0)}
    issued = {"A": 0, "B": 0}
    returned = {"A": 0, "B": 0}
    errors = []

    def run(name):
        c, keys, col, _ = clients[name]
        g = np.zeros((keys.shape[0], 2), np.float32)
        g[:, col] = -1.0
        try:
            for _ in range(pushes):
                issued[name] += 1
                c.push(keys, g)
                returned[name] += 1
            c.flush()
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in clients]
    for t in threads:
        t.start()
    cuts, mixed = 0, 0
    while any(t.is_alive() for t in threads) or cuts < min_cuts:
        lo = {n: max(0, returned[n] - clients[n][3]) for n in clients}  # acknowledged before the cut
        cut = server.export_cut(None)
        hi = dict(issued)
        sets = _counts(cut)
        a = set().union(*sets[0::2])
        b = set().union(*sets[1::2])
        if len(a) != 1 or len(b) != 1:
            mixed += 1
            continue
        (a,), (b,) = a, b
        assert lo["A"] <= a <= hi["A"] and lo["B"] <= b <= hi["B"], (lo, a, b, hi)
        cuts += 1
    for t in threads:
        t.join()
    assert not errors, errors
    return cuts, mixed


@pytest.mark.parametrize("backend", ["local", "ray"], indirect=True)
def test_no_cut_splits_a_push(make_server, backend, tmp_path):
    server = _server(make_server, durable_dir=tmp_path / "d", snapshot_every=7)
    cuts, mixed = _two_clients_and_cuts(server, pushes=60 if backend == "local" else 25, min_cuts=10)
    assert mixed == 0 and cuts >= 10
    # Every push applied exactly once on every shard, held pushes included.
    st = server.stats()
    pushes = 60 if backend == "local" else 25
    assert st["pushes_applied"] == 2 * pushes * 3 and st["duplicates_dropped"] == 0
    final = _counts(server.export_cut(None))
    assert final == [{float(pushes)}] * 6
    if backend == "local":  # the log holds the cut-applied pushes: a restart comes back to the same rows
        for i in range(3):
            server.kill_shard(i)
        assert _counts(server.export_cut(None)) == [{float(pushes)}] * 6


@LOCAL
def test_a_lagging_shard_gets_the_push_another_shard_applied(make_server, monkeypatch):
    """The push reaches shard 0 before the cut and shard 2 only after the cut froze it:
    the cut applies it on shard 2 (before this change, the cut split it)."""
    server = _server(make_server)
    c = server.client("sync")
    submit = server._b.submit
    late = 2

    def slow_submit(i, method, *args):
        if method == "push" and i == late:
            time.sleep(0.3)  # the cut freezes every shard meanwhile
        return submit(i, method, *args)

    monkeypatch.setattr(server._b, "submit", slow_submit)
    g = np.zeros((KEYS_A.shape[0], 2), np.float32)
    g[:, 0] = -1.0
    t = threading.Thread(target=c.push, args=(KEYS_A, g))
    t.start()
    deadline = time.monotonic() + 5
    while server.stats()["shards"][0]["pushes_applied"] == 0:  # applied on shard 0
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cut = server.export_cut(None)
    t.join()
    assert _counts(cut)[0::2] == [{1.0}] * 3
    st = server.stats()["shards"]
    assert st[late]["cut_applied"] == 1 and st[late]["duplicates_dropped"] == 0
    assert [s["pushes_applied"] for s in st] == [1, 1, 1]
    assert c.duplicates == 0


@LOCAL
def test_a_client_dead_between_shards_makes_the_cut_fail_clearly_then_resume_heals(make_server):
    server = _server(make_server, timeout_s=0.3, max_retries=1)
    cid = "dead-trainer"
    k = KEYS_A[shard_of(KEYS_A, 3) == 0]
    server._b.submit(0, "push", cid, 0, k, -np.ones((k.shape[0], 2), np.float32)).result()  # shard 0 only
    t0 = time.monotonic()
    with pytest.raises(ps.CutTimeoutError, match="client dead-trainer seq 0"):
        server.export_cut(None)
    assert time.monotonic() - t0 < 5
    other = server.client("sync")  # the shards were thawed: pushes go through
    other.push(KEYS_B, np.zeros((KEYS_B.shape[0], 2), np.float32))
    server.client("sync", client_id=cid)  # resuming the id completes its sequence (skips on shards 1, 2)
    cut = server.export_cut(None)
    assert len(cut.deltas) == 3


def test_shard_holds_pushes_during_a_cut_and_answers_the_retry_once():
    """The protocol on two ShardCores, step by step."""
    kw = dict(num_shards=2, dim=2, table="embedding", table_options={"initializer": el.init.zeros()},
              optimizer=el.optim.SGD(lr=1.0), durable_dir=None, snapshot_every=None)
    s0, s1 = ShardCore(index=0, **kw), ShardCore(index=1, **kw)
    all_keys = np.arange(8, dtype=np.int64)
    k0, keys = all_keys[shard_of(all_keys, 2) == 0], all_keys[shard_of(all_keys, 2) == 1]  # each shard's own
    g0, g = -np.ones((k0.shape[0], 2), np.float32), -np.ones((keys.shape[0], 2), np.float32)
    assert s0.push("c", 0, k0, g0)[0] == "applied"
    assert s1.freeze("t", 10.0) == {}
    assert s0.freeze("t", 10.0) == {"c": 0}
    assert s1.apply_up_to("t", {"c": 0}) == ("missing", {"c": 0})  # not arrived yet
    assert s1.push("c", 0, keys, g)[0] == "frozen"  # arrives: held
    assert s1.push("c", 1, keys, g)[0] == "frozen"  # a later one: held, not in this cut
    assert s1.apply_up_to("t", {"c": 0}) == ("ok", None)
    assert s1.apply_up_to("other", {"c": 0}) == ("lost", None)
    assert s1.frozen_call("t", "last_seq", "c") == ("ok", 0)
    s0.thaw("t")
    s1.thaw("t")
    assert s1.push("c", 0, keys, g) == ("applied", 0)  # the client's retry: answered as applied, once
    assert s1.push("c", 0, keys, g)[0] == "duplicate"
    assert s1.push("c", 1, keys, g)[0] == "applied"
    assert s1.cut_applied == 1 and s1.applied == 2
    rows = s1.pull(keys)
    np.testing.assert_array_equal(rows, np.full_like(rows, 2.0))


@pytest.mark.parametrize("mode", ["sync", "bounded:3"])
def test_serving_scenario_no_mixed_cut(mode):
    """A trainer pushes -1 to every key while cuts are taken: every shard of every cut holds one count."""
    n, dim = 300, 4
    keys = np.arange(n, dtype=np.int64)
    with ps.ParameterServer(dim, 3, optimizer=el.optim.SGD(lr=1.0), backend="local",
                            table_options={"initializer": el.init.constant(0.0), "num_threads": 1}) as server:
        c = server.client(mode=mode)
        c.pull(keys)
        stop = threading.Event()

        def push():
            g = np.full((n, dim), -1.0, np.float32)
            while not stop.is_set():
                c.push(keys, g)

        t = threading.Thread(target=push)
        t.start()
        seen = []
        try:
            for _ in range(25):
                cut = server.export_cut(None)
                vals = set()
                for d in cut.deltas:
                    tb = el.EmbeddingTable(dim)
                    tb.apply_delta(d)
                    vals |= set(np.unique(tb.export()[1]).tolist())
                seen.append(vals)
        finally:
            stop.set()
            t.join()
        assert all(len(v) == 1 for v in seen), seen
        assert max(max(v) for v in seen) > 0  # pushes did run during the cuts
