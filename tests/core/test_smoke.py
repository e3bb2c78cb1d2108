import numpy as np

import embedlookup as el
from reference import init_uniform, pooled


def test_lookup_matches_initializer_and_pooling():
    t = el.EmbeddingTable(16, initializer=el.init.uniform(-0.5, 0.5, seed=3))
    keys = np.array([5, -9, 5, 1 << 60], dtype=np.int64)
    rows = t.lookup(keys)
    np.testing.assert_array_equal(rows, init_uniform(keys, 16, -0.5, 0.5, 3))
    out = t.pooled_lookup(keys, np.array([0, 1], dtype=np.int64), mode="sum")
    np.testing.assert_allclose(out, pooled(rows, np.array([0, 1]), "sum"), rtol=1e-6)
