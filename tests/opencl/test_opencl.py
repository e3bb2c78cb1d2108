"""OpenCL backend against the CPU engine (insert=False) and the NumPy oracle.

Runs on whichever OpenCL platform is chosen: $EMBEDLOOKUP_OPENCL_PLATFORM (a
name substring) if set, else PoCL when installed, else the first platform.
Skips with a reason when pyopencl or every platform is missing.
"""

from __future__ import annotations

import os
import sys
import types

import embedlookup as el
import numpy as np
import pytest

pytest.importorskip("pyopencl", reason="pyopencl is not installed (pip install 'embedlookup[opencl]')")

import reference
from embedlookup import opencl as elcl
from embedlookup.opencl import table as cltable

_DEVICES = elcl.available_devices()
if not _DEVICES:
    pytest.skip("no OpenCL platform with a device is installed", allow_module_level=True)


def _platform() -> str:
    want = os.environ.get("EMBEDLOOKUP_OPENCL_PLATFORM")
    if want:
        return want
    names = [p for p, _ in _DEVICES]
    return next((p for p in names if "portable" in p.lower()), names[0])


PLATFORM = _platform()
DIM = 13  # not a multiple of 8: exercises the partial last column chunk
KEYS = (np.arange(600, dtype=np.int64) * 7919 - 1_000_003) ^ (np.arange(600, dtype=np.int64) << 40)


@pytest.fixture(scope="module")
def cpu_table():
    t = el.EmbeddingTable(DIM, initializer=el.init.uniform(-1.0, 1.0, seed=11))
    t.lookup(KEYS)
    return t


@pytest.fixture(scope="module", params=elcl.VARIANTS)
def dev_table(request, cpu_table):
    return elcl.OpenCLTable(cpu_table, platform=PLATFORM, variant=request.param)


def oracle_rows(cpu_table, values):
    """Rows of `values` from the table's export, zero rows for missing keys."""
    keys, rows = cpu_table.export()
    values = np.asarray(values, np.int64)
    pos = np.clip(np.searchsorted(keys, values), 0, max(len(keys) - 1, 0))
    out = np.zeros((values.shape[0], cpu_table.dim), np.float32)
    if len(keys):
        hit = keys[pos] == values
        out[hit] = rows[pos[hit]]
    else:
        hit = np.zeros(values.shape[0], bool)
    return out, hit


def random_bags(rng, n_bags, max_len, missing_frac=0.2):
    lengths = rng.integers(0, max_len + 1, n_bags)
    lengths[:: max(n_bags // 5, 1)] = 0  # some empty bags, the first one included
    n = int(lengths.sum())
    values = rng.choice(KEYS[:50], n)  # few distinct keys: many duplicates
    miss = rng.random(n) < missing_frac
    values[miss] = rng.integers(-(2**62), 2**62, int(miss.sum()))  # (almost surely) absent keys
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return values, offsets


def check(dev_table, cpu_table, values, offsets, mode, weights=None, include_last_offset=False, exact=True):
    got = dev_table.pooled_lookup(
        values, offsets, mode=mode, per_sample_weights=weights, include_last_offset=include_last_offset
    )
    n_before = len(cpu_table)
    want = cpu_table.pooled_lookup(
        values,
        offsets,
        mode=mode,
        per_sample_weights=weights,
        include_last_offset=include_last_offset,
        insert=False,
    )
    assert len(cpu_table) == n_before
    rows, _ = oracle_rows(cpu_table, values)
    oracle = reference.pooled(rows, offsets, mode, weights, include_last_offset)
    assert got.shape == want.shape == oracle.shape
    if exact:  # same per-column order of float operations as the CPU engine
        np.testing.assert_array_equal(got, want)
    else:  # weights: a fused multiply-add may round once where the CPU rounds twice
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, oracle, rtol=1e-5, atol=1e-5)
    return got


# ------------------------------------------------------------------ hashing
def test_device_hash_equals_engine_hash(dev_table):
    keys = np.concatenate([KEYS, [0, 1, -1, 2**63 - 1, -(2**63), 0x9E3779B97F4A7C15 - 2**64]]).astype(
        np.int64
    )
    np.testing.assert_array_equal(dev_table.hash_keys(keys), reference.hash_key(keys))


# ------------------------------------------------------------------ pooled lookup
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_modes_with_duplicates_missing_and_empty_bags(dev_table, cpu_table, mode):
    rng = np.random.default_rng(1)
    values, offsets = random_bags(rng, 64, 9)
    got = check(dev_table, cpu_table, values, offsets, mode)
    lengths = np.diff(np.append(offsets, len(values)))
    assert np.all(got[lengths == 0] == 0) and (lengths == 0).any()


def test_weighted_sum(dev_table, cpu_table):
    rng = np.random.default_rng(2)
    values, offsets = random_bags(rng, 50, 7)
    weights = rng.standard_normal(len(values)).astype(np.float32)
    check(dev_table, cpu_table, values, offsets, "sum", weights, exact=False)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_include_last_offset(dev_table, cpu_table, mode):
    rng = np.random.default_rng(3)
    values, offsets = random_bags(rng, 20, 5)
    offsets = np.append(offsets, len(values))
    got = check(dev_table, cpu_table, values, offsets, mode, include_last_offset=True)
    assert got.shape == (20, DIM)


def test_hand_computed_bags(dev_table, cpu_table):
    k0, k1 = KEYS[3], KEYS[7]
    r0, r1 = cpu_table.find([k0, k1])[0]
    absent = np.int64(-12345)
    values = np.array([k0, k1, k0, absent, k1], np.int64)
    offsets = np.array([0, 3, 3], np.int64)  # bags: [k0 k1 k0], [], [absent k1]
    np.testing.assert_array_equal(
        dev_table.pooled_lookup(values, offsets, "sum"),
        np.stack([r0 + r1 + r0, np.zeros(DIM), np.zeros(DIM) + r1]).astype(np.float32),
    )
    np.testing.assert_allclose(dev_table.pooled_lookup(values, offsets, "mean")[2], r1 / 2, rtol=1e-6)
    np.testing.assert_array_equal(dev_table.pooled_lookup(values, offsets, "max")[2], np.maximum(r1, 0))


def test_all_empty_and_no_bags(dev_table, cpu_table):
    empty = np.zeros(0, np.int64)
    assert dev_table.pooled_lookup(empty, np.zeros(4, np.int64), "max").tolist() == [[0.0] * DIM] * 4
    assert dev_table.pooled_lookup(empty, empty, "sum").shape == (0, DIM)


def test_2d_values(dev_table, cpu_table):
    values = KEYS[:24].reshape(6, 4).copy()
    values[2, 1] = 99  # absent
    got = dev_table.pooled_lookup(values, None, "mean")
    np.testing.assert_array_equal(got, cpu_table.pooled_lookup(values, None, "mean", insert=False))


def test_larger_random_batch(dev_table, cpu_table):
    rng = np.random.default_rng(4)
    values, offsets = random_bags(rng, 300, 40)
    for mode in ("sum", "max"):
        check(dev_table, cpu_table, values, offsets, mode)


# ------------------------------------------------------------------ find
def test_find(dev_table, cpu_table):
    rng = np.random.default_rng(5)
    keys = np.concatenate([rng.choice(KEYS, 200), [7, -7, 2**63 - 1], KEYS[:3]]).astype(np.int64)
    rows, found = dev_table.find(keys)
    want_rows, want_found = cpu_table.find(keys)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(found, want_found)
    o_rows, o_found = oracle_rows(cpu_table, keys)
    np.testing.assert_array_equal(rows, o_rows)
    np.testing.assert_array_equal(found, o_found)
    assert found.sum() == 203
    assert dev_table.find(np.zeros(0, np.int64))[0].shape == (0, DIM)


def test_uint64_keys_are_reinterpreted(dev_table, cpu_table):
    keys = KEYS[:10].view(np.uint64)
    np.testing.assert_array_equal(dev_table.find(keys)[0], cpu_table.find(KEYS[:10])[0])


@pytest.mark.parametrize("variant", elcl.VARIANTS)
def test_colliding_keys_and_wraparound(variant):
    """Eight keys whose home is the index's last slot (capacity 16): they fill a
    cluster that wraps to slot 0, and absent keys with the same home probe
    through it to the empty slot."""
    cand = np.arange(1, 200_000, dtype=np.int64)
    same = cand[(reference.hash_key(cand) & np.uint64(15)) == np.uint64(15)]
    keys, absent = same[:8], same[8:12]
    t = el.EmbeddingTable(3, initializer=el.init.uniform(-1, 1, seed=2))
    t.lookup(keys)
    d = elcl.OpenCLTable(t, platform=PLATFORM, variant=variant)
    assert d.index_capacity == 16 and d.longest_probe == 8
    probe = np.concatenate([absent, keys[::-1]])
    rows, found = d.find(probe)
    np.testing.assert_array_equal(found, [False] * 4 + [True] * 8)
    np.testing.assert_array_equal(rows, t.find(probe)[0])
    offs = np.array([0, 2, 7], np.int64)
    np.testing.assert_array_equal(
        d.pooled_lookup(probe, offs, "sum"), t.pooled_lookup(probe, offs, insert=False)
    )


@pytest.mark.parametrize("variant", elcl.VARIANTS)
def test_probe_bound_grows_the_index(variant, monkeypatch):
    """With a probe bound of 4 slots, the eight colliding keys cannot share one
    cluster: the index doubles until every key is within the bound, and the
    kernels (built with the same bound) still find every key."""
    monkeypatch.setattr(cltable, "_MAX_PROBE", 4)
    cand = np.arange(1, 200_000, dtype=np.int64)
    same = cand[(reference.hash_key(cand) & np.uint64(15)) == np.uint64(15)]
    keys, absent = same[:8], same[8:12]
    assert cltable.build_index(keys, reference.hash_key(keys), 16) is None
    t = el.EmbeddingTable(5, initializer=el.init.uniform(-1, 1, seed=3))
    t.lookup(keys)
    d = elcl.OpenCLTable(t, platform=PLATFORM, variant=variant)
    assert d.index_capacity > 16 and d.longest_probe <= 4
    probe = np.concatenate([keys, absent])
    rows, found = d.find(probe)
    np.testing.assert_array_equal(found, [True] * 8 + [False] * 4)
    np.testing.assert_array_equal(rows, t.find(probe)[0])


@pytest.mark.parametrize("variant", elcl.VARIANTS)
def test_empty_table_and_wide_rows(variant):
    t = el.EmbeddingTable(70)
    d = elcl.OpenCLTable(t, platform=PLATFORM, variant=variant)
    assert len(d) == 0
    out = d.pooled_lookup(np.array([1, 2, 3], np.int64), np.array([0, 1], np.int64), "max")
    np.testing.assert_array_equal(out, np.zeros((2, 70), np.float32))
    t.lookup(np.arange(40, dtype=np.int64))  # 70 columns: EL_MAX_DIM 72, a partial chunk in the SWI loop
    d = elcl.OpenCLTable(t, platform=PLATFORM, variant=variant)
    v, o = np.arange(45, dtype=np.int64)[::-1].copy(), np.array([0, 10, 10, 30], np.int64)
    np.testing.assert_array_equal(d.pooled_lookup(v, o, "mean"), t.pooled_lookup(v, o, "mean", insert=False))


def test_snapshot_is_independent_of_later_changes(cpu_table):
    t = el.EmbeddingTable(4, initializer=el.init.uniform(0, 1, seed=4))
    t.lookup(np.array([1, 2], np.int64))
    before = t.find(np.array([1, 2], np.int64))[0]
    d = elcl.OpenCLTable(t, platform=PLATFORM)
    t.assign(np.array([1], np.int64), np.full((1, 4), 9, np.float32))
    np.testing.assert_array_equal(d.find(np.array([1, 2], np.int64))[0], before)


# ------------------------------------------------------------------ bad input
def test_bad_arguments_raise_clear_errors(dev_table):
    with pytest.raises(TypeError, match="values must hold integers"):
        dev_table.pooled_lookup(np.array([1.5, 2.0]), np.array([0], np.int64))
    with pytest.raises(TypeError, match="offsets must hold integers"):
        dev_table.pooled_lookup(np.array([1, 2], np.int64), np.array([0.0]))
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        dev_table.pooled_lookup(np.array([1, 2, 3], np.int64), np.array([0, 2, 1], np.int64))
    with pytest.raises(ValueError, match="only supported with mode='sum'"):
        dev_table.pooled_lookup(
            np.array([1], np.int64), np.array([0], np.int64), "max", per_sample_weights=np.ones(1, np.float32)
        )
    with pytest.raises(ValueError, match="per_sample_weights must have shape"):
        dev_table.pooled_lookup(
            np.array([1], np.int64), np.array([0], np.int64), per_sample_weights=np.ones(2)
        )
    with pytest.raises(ValueError, match="mode must be one of"):
        dev_table.pooled_lookup(np.array([1], np.int64), np.array([0], np.int64), "median")
    with pytest.raises(ValueError, match="keys must be 1-D"):
        dev_table.find(np.zeros((2, 2), np.int64))


def test_array_on_another_device_is_rejected(dev_table):
    class OnGpu:  # what a CUDA tensor does when asked for host memory
        def __dlpack__(self, stream=None):
            raise BufferError("array is on device cuda:0")

        def __dlpack_device__(self):
            return (2, 0)

    with pytest.raises(TypeError, match="values: cannot borrow this array from CPU memory"):
        dev_table.pooled_lookup(OnGpu(), np.array([0], np.int64))


def test_device_arrays_are_rejected_with_a_clear_error(dev_table):
    import pyopencl.array as cla

    on_dev = cla.to_device(dev_table._queue, np.arange(3, dtype=np.int64))
    with pytest.raises(TypeError, match="values: expected a host array .* got a pyopencl Array"):
        dev_table.pooled_lookup(on_dev, np.array([0], np.int64))
    with pytest.raises(TypeError, match="keys: expected a host array"):
        dev_table.find(on_dev)


def test_bad_construction(cpu_table):
    with pytest.raises(TypeError, match="table must be an embedlookup.EmbeddingTable"):
        elcl.OpenCLTable(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="variant must be one of"):
        elcl.OpenCLTable(cpu_table, platform=PLATFORM, variant="fpga")
    with pytest.raises(elcl.OpenCLUnavailableError, match="no OpenCL platform matches 'no-such-vendor'"):
        elcl.OpenCLTable(cpu_table, platform="no-such-vendor")
    with pytest.raises(elcl.OpenCLUnavailableError, match="index 99 out of range"):
        elcl.OpenCLTable(cpu_table, platform=PLATFORM, device=99)
    wide = el.EmbeddingTable(1025)
    with pytest.raises(ValueError, match="single_work_item' takes dim <= 1024"):
        elcl.OpenCLTable(wide, platform=PLATFORM, variant="single_work_item")


def test_table_larger_than_device_memory_is_refused(cpu_table, monkeypatch):
    small = types.SimpleNamespace(name="tiny", max_mem_alloc_size=1000, global_mem_size=1500)
    with pytest.raises(elcl.DeviceMemoryError, match="rows need 4096 bytes in one buffer"):
        cltable._check_fits(small, {"rows": 4096, "index": 100})
    with pytest.raises(elcl.DeviceMemoryError, match="needs 1800 bytes, the device has 1500"):
        cltable._check_fits(small, {"rows": 900, "index": 900})
    cltable._check_fits(small, {"rows": 700, "index": 700})
    # End to end: a device reporting little memory refuses the real table.
    real = cltable._select_device

    def shrunk(platform, device):
        plat, dev = real(platform, device)
        return plat, types.SimpleNamespace(
            name=dev.name, type=dev.type, max_mem_alloc_size=1024, global_mem_size=4096
        )

    monkeypatch.setattr(cltable, "_select_device", shrunk)
    with pytest.raises(elcl.DeviceMemoryError, match="table does not fit the device"):
        elcl.OpenCLTable(cpu_table, platform=PLATFORM, variant="ndrange")


def test_missing_platform_and_missing_pyopencl(cpu_table, monkeypatch):
    import pyopencl

    monkeypatch.setattr(pyopencl, "get_platforms", list)
    with pytest.raises(elcl.OpenCLUnavailableError, match="no OpenCL platform found"):
        elcl.OpenCLTable(cpu_table)
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # import fails as if not installed
    with pytest.raises(elcl.OpenCLUnavailableError, match="pyopencl is not installed"):
        elcl.OpenCLTable(cpu_table)


# ------------------------------------------------------------------ profiling and the benchmark
def test_profile_records_kernel_time(cpu_table):
    d = elcl.OpenCLTable(cpu_table, platform=PLATFORM, variant="ndrange", profile=True)
    assert d.last_kernel_seconds is None
    d.pooled_lookup(KEYS[:8], np.array([0, 4], np.int64))
    assert 0 < d.last_kernel_seconds < 10


def test_bench_smoke():
    """The benchmark checks its own results against the CPU engine before timing."""
    from embedlookup.bench import opencl_table as bench

    r = bench.bench_pooled(platform=PLATFORM, rows=500, dim=8, batch=16, pooling=4, alpha=1.2, repeats=1)
    assert r["rows_read_bytes"] == 16 * 4 * 8 * 4 and r["keys"] == "zipf(1.2)"
    for name in (
        "cpu_engine",
        "cpu_engine_1thread",
        "ndrange_call",
        "ndrange_device",
        "single_work_item_call",
        "single_work_item_device",
    ):
        assert r[f"{name}_s"] > 0 and r[f"{name}_bytes_per_s"] == pytest.approx(
            r["rows_read_bytes"] / r[f"{name}_s"]
        )
    assert r["device_copy_bytes_per_s"] > 0
    keys, values, offsets = bench.make_workload(1000, 8, 5, None, seed=1)
    assert (
        len(np.unique(keys)) == 1000
        and np.isin(values, keys).all()
        and offsets.tolist() == list(range(0, 40, 5))
    )


def test_concurrent_calls_from_threads(dev_table, cpu_table):
    """Kernel objects hold their arguments between set and enqueue; calls from
    several threads must not mix them up."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    jobs = [random_bags(rng, 20 + i, 6) + (mode,) for i, mode in enumerate(["sum", "mean", "max"] * 4)]

    def one(job):
        values, offsets, mode = job
        return dev_table.pooled_lookup(values, offsets, mode)

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(one, jobs))
    for (values, offsets, mode), got in zip(jobs, results):
        np.testing.assert_array_equal(got, cpu_table.pooled_lookup(values, offsets, mode, insert=False))


def test_auto_variant_follows_the_device_type(cpu_table):
    import pyopencl as cl

    d = elcl.OpenCLTable(cpu_table, platform=PLATFORM)
    is_accel = bool(d.device.type & cl.device_type.ACCELERATOR)
    assert d.variant == ("single_work_item" if is_accel else "ndrange")
    np.testing.assert_array_equal(d.find(KEYS[:5])[0], cpu_table.find(KEYS[:5])[0])


def test_compute_units_limits_the_device_and_keeps_results(cpu_table):
    full = elcl.OpenCLTable(cpu_table, platform=PLATFORM)
    rng = np.random.default_rng(5)
    values, offsets = random_bags(rng, 40, 9)
    if full.device.max_compute_units > 1:
        try:
            one = elcl.OpenCLTable(cpu_table, platform=PLATFORM, compute_units=1)
        except elcl.OpenCLUnavailableError as e:
            pytest.skip(f"device cannot be partitioned: {e}")
        assert one.device.max_compute_units == 1
        check(one, cpu_table, values, offsets, "sum")
    # asking for more than the device has keeps the whole device
    more = elcl.OpenCLTable(cpu_table, platform=PLATFORM, compute_units=full.device.max_compute_units + 3)
    assert more.device.max_compute_units == full.device.max_compute_units
    check(more, cpu_table, values, offsets, "mean")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="compute_units"):
            elcl.OpenCLTable(cpu_table, platform=PLATFORM, compute_units=bad)
