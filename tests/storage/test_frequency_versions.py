"""The frequency-aware table keeps versions: admissions, assigns,
erases, evictions and relayout all reach a replica through deltas."""

import numpy as np

import embedlookup as el
from storage_helpers import push_delta


def test_frequency_table_replica_follows_through_deltas(tmp_path):
    dim = 8
    src = el.FrequencyTable(dim, initializer=el.init.uniform(-1, 1, seed=2), optimizer=el.optim.Adagrad(lr=0.1),
                            budget_rows=300, policy="lfu", half_life=50)
    replica = el.EmbeddingTable(dim)
    rng = np.random.default_rng(0)
    seen = 0
    for step in range(12):
        k = rng.zipf(1.3, 400) % 2000
        src.lookup(k)  # admits, and evicts beyond the budget
        src.apply_gradients(k, rng.standard_normal((k.size, dim)).astype(np.float32))
        if step == 4:
            src.assign(np.array([1, 2]), np.ones((2, dim), np.float32))
            src.erase(np.array([k[0]]))
        if step % 5 == 3:
            src.relayout()
        seen = push_delta(src, replica, seen)
    assert src.stats()["evicted"] > 0
    src.save(tmp_path / "f")
    np.testing.assert_array_equal(el.EmbeddingTable.load(tmp_path / "f").export()[1], src.export()[1])
