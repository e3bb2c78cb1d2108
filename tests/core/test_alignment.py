"""Arrays the package allocates for rows start on a cache-line boundary.

NumPy guarantees 16 bytes only; a 256-byte row at a random offset spans five
cache lines instead of four, which costs every random row access and differs
from one allocation to the next (it moved the benchmark's dense peers by ~8%
between runs)."""

import numpy as np
import pytest

import embedlookup as el
from embedlookup._checks import CACHE_LINE, aligned_empty, huge_copy


@pytest.mark.parametrize("shape", [(0, 64), (1, 1), (3, 5), (1000, 64), 7])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8])
def test_aligned_empty(shape, dtype):
    # a few allocations in a row: NumPy's own offsets differ between them
    for _ in range(4):
        a = aligned_empty(shape, dtype)
        assert a.size == 0 or a.ctypes.data % CACHE_LINE == 0  # an empty array has no data to place
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)
        assert a.dtype == np.dtype(dtype)
        assert a.flags.c_contiguous and a.flags.writeable
        a[...] = 3  # the whole extent is usable
        assert (a == 3).all()


def test_aligned_empty_other_alignment():
    a = aligned_empty((5, 3), np.float64, align=4096)
    assert a.ctypes.data % 4096 == 0


def test_small_copy_is_aligned_and_equals_source():
    src = np.arange(6 * 33, dtype=np.float32).reshape(6, 33)[:, 1:]  # not contiguous
    c = huge_copy(src)  # small: an aligned heap copy
    assert c.ctypes.data % CACHE_LINE == 0 and c.flags.c_contiguous
    np.testing.assert_array_equal(c, src)
    c[0, 0] = -1
    assert src[0, 0] == 1  # a copy, not a view


def test_table_outputs_are_aligned():
    t = el.EmbeddingTable(64, initializer=el.init.uniform(seed=3))
    keys = np.arange(1, 101, dtype=np.int64)
    ref = t.lookup(keys).copy()  # the rows, inserted
    for _ in range(4):
        rows = t.lookup(keys)
        assert rows.ctypes.data % CACHE_LINE == 0
        np.testing.assert_array_equal(rows, ref)
        pooled = t.pooled_lookup(keys, np.array([0, 40], np.int64))
        assert pooled.ctypes.data % CACHE_LINE == 0
        np.testing.assert_allclose(pooled, np.stack([ref[:40].sum(0), ref[40:].sum(0)]), rtol=1e-5, atol=1e-6)


def test_huge_empty_is_a_fresh_aligned_mapping():
    from embedlookup._checks import HUGE_PAGE, huge_copy, huge_empty

    small = huge_empty((10, 64))  # under 2 MiB: the aligned heap array
    assert small.ctypes.data % CACHE_LINE == 0 and small.shape == (10, 64)
    arrays = [huge_empty((131072, 64)) for _ in range(3)]
    assert len({a.ctypes.data for a in arrays}) == 3  # distinct memory
    assert all((a == 0).all() for a in arrays)
    import resource

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for a in arrays:
        assert a.ctypes.data % HUGE_PAGE == 0 and a.dtype == np.float32 and a.flags.c_contiguous
        a[...] = 2.5
    # its pages were faulted in when it was made (16 faults with huge pages, 8192 without)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults < 8
    assert all((a == 2.5).all() for a in arrays)
    src = np.arange(3 * HUGE_PAGE // 8, dtype=np.int64).reshape(3, -1)
    c = huge_copy(src)
    assert c.ctypes.data % HUGE_PAGE == 0
    np.testing.assert_array_equal(c, src)
