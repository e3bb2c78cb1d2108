"""Shared by the storage tests."""

import numpy as np

import embedlookup as el


def assert_same(a, b):
    """Two tables hold the same keys and rows (export() is the reference view)."""
    ka, ra = a.export()
    kb, rb = b.export()
    np.testing.assert_array_equal(ka, kb)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(a.keys(), ka)  # memory and tier keys, without the rows


def push_delta(src, replica, seen: int) -> int:
    """Ships src's changes since `seen` to replica, checks they now agree, returns the new `seen`."""
    d = src.export_delta(seen)
    replica.apply_delta(d)
    assert_same(src, replica)
    return el.storage.delta_info(d)["to_version"]
