"""save / load of the whole sharded model, resharding on load, and global cuts."""

import threading

import numpy as np
import pytest

import embedlookup as el
from embedlookup import ps
from embedlookup.sharding import shard_of

from ps_helpers import assert_matches_table, whole_state


def _train(client, ref, rng, steps, dim):
    for _ in range(steps):
        lengths = rng.integers(0, 5, 12)
        off = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        values = rng.integers(0, 300, int(lengths.sum())).astype(np.int64)
        client.pooled_pull(values, off)
        ref.pooled_lookup(values, off)
        g = rng.standard_normal((12, dim)).astype(np.float32)
        client.push_pooled(values, off, g)
        ref.apply_pooled_gradients(values, off, g)


@pytest.mark.parametrize("backend,new_shards", [("local", 2), ("local", 3), ("local", 1), ("ray", 3)],
                         indirect=["backend"])
def test_save_load_reshard(make_server, backend, tmp_path, new_shards):
    opt = el.optim.Adam(lr=0.01)
    init = el.init.normal(std=0.1, seed=2)
    server = make_server(8, 2, optimizer=opt, table_options={"initializer": init})
    ref = el.EmbeddingTable(8, initializer=init, optimizer=opt)
    rng = np.random.default_rng(1)
    _train(server.client(), ref, rng, 5, 8)
    server.save(tmp_path / "model")
    server.shutdown()
    with ps.ParameterServer.load(tmp_path / "model", num_shards=new_shards, backend=backend) as loaded:
        assert loaded.num_shards == new_shards
        assert_matches_table(loaded, ref)  # rows, optimizer state and step preserved
        for i in range(new_shards):  # every row on the shard the rule names
            k = loaded.shard_state(i)[0]
            assert (shard_of(k, new_shards) == i).all()
        _train(loaded.client(), ref, rng, 3, 8)  # training goes on exactly
        assert_matches_table(loaded, ref)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_load_errors(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match="path"):
        ps.ParameterServer.load(tmp_path / "nothing")


def test_export_cut_builds_a_replica(make_server):
    """A full cut applied to fresh tables gives the shards' rows; the next
    cut from its versions carries exactly the rows changed since."""
    server = make_server(8, 3)
    ref = el.EmbeddingTable(8, optimizer=server.optimizer, initializer=el.init.uniform())
    client = server.client()
    rng = np.random.default_rng(3)
    _train(client, ref, rng, 3, 8)
    cut = server.export_cut()
    assert cut.num_shards == 3 and cut.since == (0, 0, 0)
    replicas = [el.EmbeddingTable(8) for _ in range(3)]
    for t, d in zip(replicas, cut.deltas):
        t.apply_delta(d)
    _train(client, ref, rng, 2, 8)
    cut2 = server.export_cut(since=cut.versions)
    assert cut2.since == cut.versions
    for t, d in zip(replicas, cut2.deltas):
        t.apply_delta(d)
    k, r, _, _ = whole_state(server)
    rk = np.concatenate([t.export()[0] for t in replicas])
    rr = np.concatenate([t.export()[1] for t in replicas])
    order = np.argsort(rk)
    np.testing.assert_array_equal(rk[order], k)
    np.testing.assert_array_equal(rr[order], r)
    assert_matches_table(server, ref)
    with pytest.raises(ValueError, match="since"):
        server.export_cut(since=(0, 0))
    with pytest.raises(TypeError, match="since"):
        server.export_cut(since=(0, 0, "x"))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_cut_holds_back_pushes(make_server):
    """While a cut is taken no shard applies a push: a push meanwhile waits
    (FROZEN, retried by the client) and lands after the cut."""
    server = make_server(4, 2)
    client = server.client("sync")
    keys = np.arange(10, dtype=np.int64)
    client.pull(keys)
    before = [s["version"] for s in server.stats()["shards"]]
    done = threading.Event()
    seen = {}

    def while_frozen():
        t = threading.Thread(target=lambda: (client.push(keys, np.ones((10, 4), np.float32)), done.set()),
                             daemon=True)
        t.start()
        seen["held"] = not done.wait(0.3)
        seen["versions"] = [s["version"] for s in server.stats()["shards"]]
        return t

    t = server._frozen(while_frozen)
    assert seen["held"] and seen["versions"] == before
    assert done.wait(10)
    t.join()
    assert all(s["version"] > b for s, b in zip(server.stats()["shards"], before))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("snapshot_every", [None, 3])
def test_replica_follows_across_a_shard_restart(make_server, tmp_path, snapshot_every):
    """Cut, train, restart the shards (replaying their logs from an old
    checkpoint), train: the next cut from the replica's versions still
    carries every change, so the replica equals the shards."""
    server = make_server(8, 2, durable_dir=tmp_path, snapshot_every=snapshot_every)
    ref = el.EmbeddingTable(8, optimizer=server.optimizer, initializer=el.init.uniform())
    client = server.client()
    rng = np.random.default_rng(7)
    _train(client, ref, rng, 4, 8)
    cut = server.export_cut()
    replicas = [el.EmbeddingTable(8) for _ in range(2)]
    for t, d in zip(replicas, cut.deltas):
        t.apply_delta(d)
    _train(client, ref, rng, 2, 8)
    server.kill_shard(0)
    server.kill_shard(1)
    _train(client, ref, rng, 1, 8)
    cut2 = server.export_cut(since=cut.versions)
    for t, d in zip(replicas, cut2.deltas):
        t.apply_delta(d)
    for i, t in enumerate(replicas):
        k, r, _, _ = server.shard_state(i)
        k2, r2 = t.export()
        m = np.isin(k2, k)  # the replica may also hold rows only pulled before the restart (initial rows)
        np.testing.assert_array_equal(k2[m], k)
        np.testing.assert_array_equal(r2[m], r)
    assert_matches_table(server, ref)
