"""Helpers of the parameter-server tests: a server's whole state against one table's."""

import numpy as np


def whole_state(server):
    """(keys, rows, optimizer state, steps per shard) of every shard, keys sorted."""
    parts = [server.shard_state(i) for i in range(server.num_shards)]
    k = np.concatenate([p[0] for p in parts])
    order = np.argsort(k)
    rows = np.concatenate([p[1] for p in parts])[order]
    st = np.concatenate([p[2] for p in parts])[order]
    return k[order], rows, st, [int(p[3]) for p in parts]


def table_state(t):
    k, r = t.export()
    return k, r, t._t.export_state(k), int(t.step)


def assert_matches_table(server, table):
    """Every row and optimizer state of the server equals the table's, bit for bit, and every shard's step."""
    k, r, s, steps = whole_state(server)
    k2, r2, s2, step = table_state(table)
    np.testing.assert_array_equal(k, k2)
    np.testing.assert_array_equal(r, r2)
    np.testing.assert_array_equal(s, s2)
    assert steps == [step] * server.num_shards
