"""CudaTable against the CPU engine (and the NumPy oracle) on the same inputs.

Skipped as a whole (tests/cuda/conftest.py) where no GPU or CUDA build exists.
"""

import numpy as np
import pytest

import embedlookup as el
from reference import init_uniform, pooled

torch = pytest.importorskip("torch")
elc = pytest.importorskip("embedlookup.cuda")

DEV = "cuda"
I64 = np.iinfo(np.int64)
UNIFORM = el.init.uniform(-0.5, 0.5, seed=3)


def keys_with_edges(rng, n, span=10**12):
    k = rng.integers(-span, span, size=n, dtype=np.int64)
    k[:6] = [I64.min, I64.max, -1, 0, 1, I64.min]  # the index's sentinel value is a key like any other
    k[6:12] = k[12:18]  # duplicates
    return k


def cuda(a):
    return torch.from_numpy(np.ascontiguousarray(a)).to(DEV)


def host(t):
    return t.cpu().numpy()


def pair(dim, initializer=UNIFORM, **kw):
    return el.EmbeddingTable(dim, initializer=initializer, **kw), elc.CudaTable(dim, initializer=initializer, **kw)


def assert_same_table(cpu, gpu, rtol=1e-6, atol=1e-7):
    kc, rc = cpu.export()
    kg, rg = gpu.export()
    np.testing.assert_array_equal(host(kg), kc)
    np.testing.assert_allclose(host(rg), rc, rtol=rtol, atol=atol)
    assert len(gpu) == len(cpu)


# ------------------------------------------------------------------- lookup
@pytest.mark.parametrize("dim", [64, 13, 600])
@pytest.mark.parametrize("initializer,tol", [
    (UNIFORM, 1e-6),
    (el.init.normal(0.1, 0.5, seed=9), 1e-5),  # libm vs CUDA sin/cos/log differ in the last bits
    (el.init.constant(0.25), 0.0),
    (el.init.zeros(), 0.0),
])
def test_lookup_inserts_the_cpu_rows(dim, initializer, tol):
    rng = np.random.default_rng(dim)
    keys = keys_with_edges(rng, 3000)
    cpu, gpu = pair(dim, initializer)
    want = cpu.lookup(keys)
    got = gpu.lookup(cuda(keys))
    assert got.device.type == "cuda" and got.dtype == torch.float32 and tuple(got.shape) == (3000, dim)
    np.testing.assert_allclose(host(got), want, rtol=tol, atol=tol)
    if initializer is UNIFORM:
        np.testing.assert_allclose(host(got), init_uniform(keys, dim, -0.5, 0.5, 3), rtol=1e-6, atol=1e-7)
    assert_same_table(cpu, gpu, rtol=tol, atol=tol)
    # Looking the same keys up again returns the same rows, inserting nothing.
    np.testing.assert_array_equal(host(gpu.lookup(cuda(keys))), host(got))
    assert len(gpu) == len(np.unique(keys))


def test_find_never_inserts():
    rng = np.random.default_rng(1)
    keys = keys_with_edges(rng, 500)
    cpu, gpu = pair(16)
    cpu.lookup(keys[:250])
    gpu.lookup(cuda(keys[:250]))
    probe = np.concatenate([keys, rng.integers(0, 10**6, 100)])
    rows_c, found_c = cpu.find(probe)
    rows_g, found_g = gpu.find(cuda(probe))
    np.testing.assert_array_equal(host(found_g), found_c)
    np.testing.assert_allclose(host(rows_g), rows_c, rtol=1e-6, atol=1e-7)
    assert not host(rows_g)[~found_c].any()
    assert len(gpu) == len(cpu) == len(np.unique(keys[:250]))
    # insert=False lookups do not insert either.
    host(gpu.lookup(cuda(probe), insert=False))
    assert len(gpu) == len(cpu)


def test_growth_rehash_and_arena_growth():
    # Starts at 1024 rows: three batches force several regrowths.
    rng = np.random.default_rng(2)
    cpu, gpu = pair(8)
    for _ in range(3):
        keys = rng.integers(-(10**15), 10**15, size=100_000, dtype=np.int64)
        np.testing.assert_allclose(host(gpu.lookup(cuda(keys))), cpu.lookup(keys), rtol=1e-6, atol=1e-7)
    assert_same_table(cpu, gpu)
    mem = gpu.memory_usage()
    assert mem["rows"] == len(cpu) and mem["row_capacity"] >= len(cpu)
    assert mem["index_bytes"] >= 16 * 2 * len(cpu)  # load <= 0.5


# ----------------------------------------------------------- pooled lookup
def bag_offsets(rng, n, n_bags, last_bag):
    """n_bags offsets over n keys: random bags, two empty ones, and a last bag
    of `last_bag` keys (longer than a warp's 32)."""
    cuts = np.sort(rng.integers(0, n - last_bag + 1, size=n_bags - 2))
    off = np.concatenate([[0], cuts, [n - last_bag]]).astype(np.int64)
    off[3] = off[4] = off[2]  # empty bags in the middle
    return off


@pytest.mark.parametrize("dim", [64, 100, 600])
@pytest.mark.parametrize("mode,weighted", [("sum", False), ("sum", True), ("mean", False), ("max", False)])
@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("insert", [True, False])
def test_pooled_lookup_matches_cpu(dim, mode, weighted, include_last_offset, insert):
    rng = np.random.default_rng(dim + 7 * insert)
    n, n_bags = 3000, 120
    values = keys_with_edges(rng, n, span=2000)  # repeats within and across bags
    off = bag_offsets(rng, n, n_bags, last_bag=75)
    if include_last_offset:
        off = np.concatenate([off, [n]])
    w = rng.standard_normal(n).astype(np.float32) if weighted else None
    cpu, gpu = pair(dim)
    if not insert:  # half the keys exist; the rest count as zero rows
        cpu.lookup(values[::2])
        gpu.lookup(cuda(values[::2]))
    want = cpu.pooled_lookup(values, off, mode=mode, per_sample_weights=w,
                             include_last_offset=include_last_offset, insert=insert)
    got = gpu.pooled_lookup(cuda(values), cuda(off), mode=mode, per_sample_weights=None if w is None else cuda(w),
                            include_last_offset=include_last_offset, insert=insert)
    assert tuple(got.shape) == want.shape
    np.testing.assert_allclose(host(got), want, rtol=1e-5, atol=1e-6)
    # And against the oracle, over the rows as the CPU table holds them.
    rows, _ = cpu.find(values)
    np.testing.assert_allclose(host(got), pooled(rows, off, mode, w, include_last_offset), rtol=1e-4, atol=1e-5)
    assert_same_table(cpu, gpu)


def test_pooled_2d_values_and_empty_input():
    rng = np.random.default_rng(3)
    v = rng.integers(0, 500, size=(64, 7), dtype=np.int64)
    cpu, gpu = pair(32)
    np.testing.assert_allclose(host(gpu.pooled_lookup(cuda(v), mode="mean")), cpu.pooled_lookup(v, mode="mean"),
                               rtol=1e-5, atol=1e-6)
    empty = torch.empty(0, dtype=torch.int64, device=DEV)
    out = gpu.pooled_lookup(empty, torch.zeros(5, dtype=torch.int64, device=DEV), mode="max")
    assert tuple(out.shape) == (5, 32) and not out.any()


# ------------------------------------------------------------ optimizers
OPTIMIZERS = [
    el.optim.SGD(lr=0.1, weight_decay=0.01),
    el.optim.Adagrad(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
    el.optim.Adagrad(lr=0.1, rowwise=True, weight_decay=0.01),
    el.optim.Adam(lr=0.01, weight_decay=0.001),
]


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=["sgd", "adagrad", "rowwise_adagrad", "adam"])
@pytest.mark.parametrize("dim", [64, 13])
def test_apply_gradients_matches_cpu(opt, dim):
    rng = np.random.default_rng(dim)
    pool = keys_with_edges(rng, 60)
    cpu, gpu = pair(dim)
    cpu.lookup(pool)
    gpu.lookup(cuda(pool))
    for _ in range(3):
        keys = rng.choice(pool, size=400)  # many duplicates, merged before the step
        grads = rng.standard_normal((400, dim)).astype(np.float32)
        cpu.apply_gradients(keys, grads, opt)
        gpu.apply_gradients(cuda(keys), cuda(grads), opt)
        assert gpu.step == cpu.step
        assert_same_table(cpu, gpu, rtol=1e-4, atol=1e-6)
    # New keys inserted after the state exists get fresh state on both sides.
    fresh = np.arange(10**9, 10**9 + 20, dtype=np.int64)
    cpu.lookup(fresh)
    gpu.lookup(cuda(fresh))
    grads = rng.standard_normal((20, dim)).astype(np.float32)
    cpu.apply_gradients(fresh, grads, opt)
    gpu.apply_gradients(cuda(fresh), cuda(grads), opt)
    assert_same_table(cpu, gpu, rtol=1e-4, atol=1e-6)


def test_update_then_pooled_backward_by_hand():
    # A hand-computed case: SGD on one row reached twice.
    gpu = elc.CudaTable(4, initializer=el.init.constant(1.0))
    k = torch.tensor([5, 9, 5], device=DEV)
    gpu.lookup(k)
    g = torch.tensor([[1.0, 2, 3, 4], [0, 0, 0, 0], [1, 1, 1, 1]], device=DEV)
    gpu.apply_gradients(k, g, el.optim.SGD(lr=0.5))
    rows, found = gpu.find(torch.tensor([5, 9], device=DEV))
    np.testing.assert_allclose(host(rows), [[0.0, -0.5, -1.0, -1.5], [1, 1, 1, 1]])
    assert host(found).all()


# -------------------------------------------------------- transfers, assign
def test_from_table_to_table_round_trip():
    rng = np.random.default_rng(4)
    cpu = el.EmbeddingTable(24, initializer=UNIFORM, optimizer=el.optim.SGD(lr=0.3))
    keys = keys_with_edges(rng, 2000)
    cpu.lookup(keys)
    cpu.apply_gradients(keys, rng.standard_normal((2000, 24)).astype(np.float32))
    gpu = elc.CudaTable.from_table(cpu)
    assert gpu.dim == 24 and gpu.initializer == cpu.initializer and gpu.optimizer == cpu.optimizer
    kc, rc = cpu.export()
    kg, rg = gpu.export()
    np.testing.assert_array_equal(host(kg), kc)
    np.testing.assert_array_equal(host(rg), rc)  # copied, not recomputed: bit for bit
    back = gpu.to_table()
    kb, rb = back.export()
    np.testing.assert_array_equal(kb, kc)
    np.testing.assert_array_equal(rb, rc)
    # Both keep inserting the same rows for new keys.
    new = np.arange(-50, 50, dtype=np.int64) * 7919
    np.testing.assert_allclose(host(gpu.lookup(cuda(new))), back.lookup(new), rtol=1e-6, atol=1e-7)


def test_assign_last_duplicate_wins():
    cpu, gpu = pair(8)
    keys = np.array([5, 7, 5, 11, 7], dtype=np.int64)
    rows = np.arange(40, dtype=np.float32).reshape(5, 8)
    cpu.assign(keys, rows)
    gpu.assign(cuda(keys), cuda(rows))
    assert_same_table(cpu, gpu, rtol=0, atol=0)
    np.testing.assert_array_equal(host(gpu.find(cuda(np.array([5])))[0]), rows[2:3])


def test_capacity_full_changes_nothing():
    cpu, gpu = pair(8, capacity=100)
    first = np.arange(90, dtype=np.int64)
    cpu.lookup(first)
    gpu.lookup(cuda(first))
    more = np.arange(80, 120, dtype=np.int64)  # 30 new keys: 120 > 100
    with pytest.raises(el.TableFullError):
        cpu.lookup(more)
    with pytest.raises(el.TableFullError, match="capacity 100"):
        gpu.lookup(cuda(more))
    with pytest.raises(el.TableFullError):
        gpu.pooled_lookup(cuda(more), torch.tensor([0], device=DEV))
    assert len(gpu) == 90
    assert_same_table(cpu, gpu)
    ok = np.arange(85, 100, dtype=np.int64)  # exactly fills it
    np.testing.assert_allclose(host(gpu.lookup(cuda(ok))), cpu.lookup(ok), rtol=1e-6, atol=1e-7)
    assert len(gpu) == 100


# -------------------------------------------------------------- bad input
def test_bad_arrays_are_named():
    gpu = elc.CudaTable(8)
    with pytest.raises(TypeError, match="keys must be on the GPU"):
        gpu.lookup(torch.arange(4))
    with pytest.raises(TypeError, match="keys must be (on the GPU|a CUDA array)"):
        gpu.lookup(np.arange(4))
    with pytest.raises(TypeError, match="keys must be a CUDA array"):
        gpu.lookup([1, 2, 3])
    with pytest.raises(TypeError, match="keys must hold integers"):
        gpu.lookup(torch.ones(4, device=DEV))
    with pytest.raises(ValueError, match="keys must be 1-D"):
        gpu.lookup(torch.ones((2, 2), dtype=torch.int64, device=DEV))
    k = torch.arange(4, device=DEV)
    gpu.lookup(k)
    with pytest.raises(ValueError, match=r"grads must have shape \(4, 8\)"):
        gpu.apply_gradients(k, torch.ones(4, 7, device=DEV), el.optim.SGD())
    with pytest.raises(ValueError, match="per_sample_weights are only supported with mode='sum'"):
        gpu.pooled_lookup(k, torch.tensor([0], device=DEV), mode="mean", per_sample_weights=torch.ones(4, device=DEV))
    with pytest.raises(ValueError, match="out must be"):
        gpu.lookup(k, out=torch.empty(4, 9, device=DEV))
    assert len(gpu) == 4


@pytest.mark.parametrize("offsets,include_last", [
    ([1, 2], False), ([0, 3, 2], False), ([0, 9], False), ([0, 2, 3], True), ([0, 2, 7, 5], True),
])
def test_bad_offsets_same_message_as_cpu_and_nothing_inserted(offsets, include_last):
    cpu, gpu = pair(8)
    values = np.arange(100, 106, dtype=np.int64)
    off = np.array(offsets, dtype=np.int64)
    with pytest.raises(ValueError) as want:
        cpu.pooled_lookup(values, off, include_last_offset=include_last)
    with pytest.raises(ValueError) as got:
        gpu.pooled_lookup(cuda(values), cuda(off), include_last_offset=include_last)
    assert str(got.value) == str(want.value)
    assert len(gpu) == 0


def test_failed_updates_change_nothing():
    rng = np.random.default_rng(5)
    cpu, gpu = pair(8)
    keys = np.arange(10, dtype=np.int64)
    cpu.lookup(keys)
    gpu.lookup(cuda(keys))
    grads = rng.standard_normal((10, 8)).astype(np.float32)
    before = host(gpu.export()[1])
    bad = grads.copy()
    bad[6, 3] = np.nan
    with pytest.raises(ValueError, match="grads: row 6 holds NaN or inf"):
        gpu.apply_gradients(cuda(keys), cuda(bad), el.optim.Adam())
    missing = keys.copy()
    missing[4] = 12345
    with pytest.raises(el.KeyMissingError, match=r"key 12345 \(position 4\)"):
        gpu.apply_gradients(cuda(missing), cuda(grads), el.optim.Adam())
    assert gpu.step == 0
    np.testing.assert_array_equal(host(gpu.export()[1]), before)
    gpu.apply_gradients(cuda(keys), cuda(grads), el.optim.Adam())
    with pytest.raises(ValueError, match="belongs to Adam"):
        gpu.apply_gradients(cuda(keys), cuda(grads), el.optim.SGD())
    assert gpu.step == 1


def test_table_larger_than_device_memory():
    free, total = torch.cuda.mem_get_info()
    rows = min(2**32 - 4, 2 * total // (4 * 4096) + 1)
    with pytest.raises(elc.DeviceMemoryError, match="GiB") as e:
        elc.CudaTable(4096, expected_rows=rows)
    assert isinstance(e.value, MemoryError)


# ------------------------------------------------ zero-copy, other arrays
class CAIArray:
    """An array known only through __cuda_array_interface__ (as CuPy/Numba arrays are)."""

    def __init__(self, t):
        self._t = t
        self.__cuda_array_interface__ = t.__cuda_array_interface__


class DLPackArray:
    """An array known only through DLPack."""

    def __init__(self, t):
        self._t = t

    def __dlpack__(self, *args, **kwargs):
        return self._t.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


def test_cuda_array_interface_and_dlpack_are_borrowed():
    rng = np.random.default_rng(6)
    keys = cuda(keys_with_edges(rng, 300))
    off = cuda(np.array([0, 100, 100, 250], dtype=np.int64))
    gpu = elc.CudaTable(16)
    want = host(gpu.pooled_lookup(keys, off))
    np.testing.assert_array_equal(host(gpu.pooled_lookup(CAIArray(keys), CAIArray(off))), want)
    np.testing.assert_array_equal(host(gpu.pooled_lookup(DLPackArray(keys), DLPackArray(off))), want)
    out = torch.empty(4, 16, device=DEV)
    res = gpu.pooled_lookup(keys, off, out=CAIArray(out))
    assert res.data_ptr() == out.data_ptr()  # written in place
    np.testing.assert_array_equal(host(out), want)
    # Borrowed, not copied: the native call sees the caller's memory.
    assert gpu._keys(CAIArray(keys), "keys").data_ptr() == keys.data_ptr()
    assert gpu._keys(DLPackArray(keys), "keys").data_ptr() == keys.data_ptr()


def test_runs_on_the_current_stream():
    if not hasattr(torch.cuda, "_sleep"):
        pytest.skip("torch.cuda._sleep not available")
    gpu = elc.CudaTable(8, initializer=el.init.uniform(seed=1))
    old = torch.arange(0, 64, device=DEV)
    new = torch.arange(1000, 1064, device=DEV)
    gpu.lookup(old)
    gpu.lookup(new)
    want = host(gpu.lookup(new))
    keys = old.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(20_000_000)  # keeps s busy, so work on any other stream would run first
        keys.copy_(new)
        out = gpu.lookup(keys, insert=False)
        pooled_out = gpu.pooled_lookup(keys, torch.tensor([0], device=DEV), check=False, insert=False)
    s.synchronize()
    np.testing.assert_array_equal(host(out), want)
    np.testing.assert_allclose(host(pooled_out)[0], want.sum(0), rtol=1e-5, atol=1e-6)
