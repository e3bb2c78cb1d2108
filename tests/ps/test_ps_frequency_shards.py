"""FrequencyTable shards: admission and eviction per shard, durability and save / load."""

import numpy as np
import pytest

import embedlookup as el
from embedlookup import ps
from embedlookup.sharding import shard_of

LOCAL = pytest.mark.parametrize("backend", ["local"], indirect=True)


@LOCAL
def test_one_frequency_shard_equals_the_table(make_server):
    """One shard sees exactly the table's calls: rows, scores' effects (admission) and eviction agree."""
    opts = {"admit_count": 2, "budget_rows": 40, "policy": "lfu", "evict_fraction": 0.0,
            "initializer": el.init.uniform(seed=4)}
    opt = el.optim.Adagrad(lr=0.1)
    server = make_server(4, 1, table="frequency", optimizer=opt, table_options=opts)
    ref = el.FrequencyTable(4, optimizer=opt, **opts)
    client = server.client()
    rng = np.random.default_rng(0)
    for _ in range(10):
        values = rng.zipf(1.5, 48).astype(np.int64) % 100
        off = np.arange(0, 48, 4, dtype=np.int64)
        np.testing.assert_array_equal(client.pooled_pull(values, off), ref.pooled_lookup(values, off))
        g = rng.standard_normal((12, 4)).astype(np.float32)
        client.push_pooled(values, off, g)
        ref.apply_pooled_gradients(values, off, g)
    k, r, _, _ = server.shard_state(0)
    k2, r2 = ref.export()
    np.testing.assert_array_equal(k, k2)
    np.testing.assert_array_equal(r, r2)
    assert len(k) <= 40


@LOCAL
def test_frequency_shards_admit_per_shard(make_server):
    server = make_server(4, 2, table="frequency", table_options={"admit_count": 2})
    client = server.client()
    keys = np.arange(50, dtype=np.int64)
    ref = el.FrequencyTable(4, admit_count=2, initializer=el.init.uniform())
    np.testing.assert_array_equal(client.pull(keys), np.zeros((50, 4), np.float32))
    ref.lookup(keys)
    assert server.stats()["rows"] == 0  # seen once: not admitted, the default (zero) row is read
    np.testing.assert_array_equal(client.pull(keys), ref.lookup(keys))  # second sighting: admitted
    assert server.stats()["rows"] == 50 and all(s["rows"] > 0 for s in server.stats()["shards"])


@LOCAL
def test_cold_row_type_shards_refuse_durability_and_save(make_server, tmp_path):
    """Int8 cold rows load back as fp32: a log replayed over them would not be
    exact, so such shards are refused a durable_dir (nothing created) and save."""
    opts = {"cold_row_type": "int8", "budget_bytes": 1 << 20, "policy": "lfu"}
    with pytest.raises(ValueError, match="durable_dir: FrequencyTable shards with cold_row_type"):
        ps.ParameterServer(4, 2, table="frequency", table_options=opts, optimizer=el.optim.SGD(),
                           durable_dir=tmp_path / "d")
    assert not (tmp_path / "d").exists()
    server = make_server(4, 2, table="frequency", table_options=opts)
    with pytest.raises(ValueError, match="save: FrequencyTable shards with cold_row_type"):
        server.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _freq_steps(clients, rng, steps, dim, kill=None):
    """Pooled pull + push and a plain pull per step, the same calls on every
    client (their results must agree); ``kill(step)`` between calls."""
    for step in range(steps):
        lengths = rng.integers(1, 6, 16)
        off = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        values = (rng.zipf(1.3, int(lengths.sum())) % 400).astype(np.int64)
        outs = [c.pooled_pull(values, off, mode="mean") for c in clients]
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])
        g = rng.standard_normal((16, dim)).astype(np.float32)
        for c in clients:
            c.push_pooled(values, off, g, mode="mean")
        if kill is not None:
            kill(step, "after push")
        keys = (rng.zipf(1.2, 40) % 500).astype(np.int64)
        outs = [c.pull(keys) for c in clients]
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])
        if kill is not None:
            kill(step, "after pull")  # the pull is logged unsynced; a restart replays it


def assert_same_shards(a, b):
    """Rows, optimizer state, step, and the frequency state (scores, last steps,
    clock, sketch, cold row) of every shard equal, bit for bit."""
    for i in range(a.num_shards):
        for x, y in zip(a.shard_state(i), b.shard_state(i)):
            np.testing.assert_array_equal(x, y)
        fa, fb = a.shard_frequency_state(i), b.shard_frequency_state(i)
        assert sorted(fa) == sorted(fb)
        for k in fa:
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=f"shard {i}: {k}")


FREQ_OPTS = {"admit_count": 2, "budget_rows": 60, "policy": "lfu", "evict_fraction": 0.1, "default_row": "cold",
             "sketch_width": 1024, "initializer": el.init.uniform(seed=4), "num_threads": 2}


@LOCAL
def test_durable_frequency_shards_come_back_exactly(make_server, tmp_path):
    """Shards restarted from disk (between any two calls, after pulls that
    admitted and evicted rows since the last push) equal a server that was
    never restarted, in rows, optimizer state, scores, clock, sketch and the
    learned cold row."""
    opt = el.optim.Adagrad(lr=0.1)
    durable = make_server(8, 2, table="frequency", table_options=FREQ_OPTS, optimizer=opt,
                          durable_dir=tmp_path, snapshot_every=3)
    ref = make_server(8, 2, table="frequency", table_options=FREQ_OPTS, optimizer=opt)
    krng = np.random.default_rng(7)
    kills = []

    def kill(step, when):
        if krng.random() < 0.3:
            i = int(krng.integers(2))
            durable.kill_shard(i)
            kills.append((step, when, i))

    _freq_steps([durable.client(), ref.client()], np.random.default_rng(0), 30, 8, kill)
    assert len(kills) >= 10 and {w for _, w, _ in kills} == {"after push", "after pull"}
    st = durable.stats()
    assert st["restarts"] == len(kills)
    assert st["rows"] > 0 and ref.stats()["rows"] == st["rows"]
    assert sum(s["replayed"] for s in st["shards"]) > 0
    # The run did evict and refuse admissions (the reference was never restarted: its counters are whole).
    counters = [ref._b.cores[i].table.stats() for i in range(2)]
    assert all(c["evicted"] > 0 and c["rejected"] > 0 for c in counters), counters
    assert_same_shards(durable, ref)


@pytest.mark.parametrize("backend,new_shards", [("local", 2), ("local", 3), ("ray", 2)], indirect=["backend"])
def test_frequency_save_load(make_server, backend, tmp_path, new_shards):
    """save / load of FrequencyTable shards: with the same shard count the
    loaded server admits, scores and evicts exactly as the saved one goes on
    to; resharded, every row and optimizer state moves and scores restart equal."""
    opt = el.optim.Adagrad(lr=0.1)
    server = make_server(8, 2, table="frequency", table_options=FREQ_OPTS, optimizer=opt)
    rng = np.random.default_rng(1)
    _freq_steps([server.client()], rng, 12, 8)
    before = {i: server.shard_state(i) for i in range(2)}
    server.save(tmp_path / "model")
    with ps.ParameterServer.load(tmp_path / "model", num_shards=new_shards, backend=backend) as loaded:
        assert loaded.table == "frequency" and loaded.num_shards == new_shards
        if new_shards == 2:
            assert_same_shards(loaded, server)
            _freq_steps([loaded.client(), server.client()], rng, 8, 8)  # training goes on identically
            assert_same_shards(loaded, server)
            return
        keys = np.concatenate([before[i][0] for i in range(2)])
        rows = np.concatenate([before[i][1] for i in range(2)])
        got = [loaded.shard_state(i) for i in range(new_shards)]
        k2 = np.concatenate([g[0] for g in got])
        r2 = np.concatenate([g[1] for g in got])
        o1, o2 = np.argsort(keys), np.argsort(k2)
        np.testing.assert_array_equal(keys[o1], k2[o2])
        np.testing.assert_array_equal(rows[o1], r2[o2])
        for i, g in enumerate(got):
            assert (shard_of(g[0], new_shards) == i).all()
            scores = loaded.shard_frequency_state(i)["scores"]
            assert scores.size == g[0].size and np.unique(scores).size <= 1
