"""A table's whole observable state, for tests that a refused call changed nothing."""

import numpy as np


def table_state(t):
    """Keys, rows, optimizer state, size, step and version of an EmbeddingTable / FrequencyTable."""
    k, r = t.export()
    return k.copy(), r.copy(), t._t.export_state(k).copy(), len(t), t.step, t.version


def assert_same_state(t, snap):
    k, r, s, n, step, version = snap
    k2, r2 = t.export()
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(r2, r)
    np.testing.assert_array_equal(t._t.export_state(k2), s)
    assert (len(t), t.step, t.version) == (n, step, version)
