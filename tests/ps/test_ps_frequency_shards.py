"""FrequencyTable shards: admission and eviction per shard."""

import numpy as np
import pytest

import embedlookup as el

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
    with pytest.raises(ValueError, match="durable_dir"):
        server.__class__(4, 2, table="frequency", optimizer=el.optim.SGD(), durable_dir="/tmp/x-never")
