"""CachedCudaTable's host logic (resolving host rows, carrying out the
policy's plans as write-backs and fills, building the backward's segments,
flush and export) run where there is no GPU: the table on torch CPU tensors,
its four device kernels replaced by NumPy versions that work on the same
addresses. The GPU tests (test_cuda_cached.py) check the real kernels; this
checks that the table drives them so that it equals the CPU engine and no
update is lost across evictions."""

import numpy as np
import pytest

import embedlookup as el
from embedlookup._checks import MODES
from embedlookup.cuda import CachedCudaTable

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.cpu_only
MODE_NAMES = {v: k for k, v in MODES.items()}


def _arr(ptr, n, dtype):
    if n == 0:
        return np.zeros(0, dtype)
    return np.ctypeslib.as_array((np.ctypeslib.as_ctypes_type(np.dtype(dtype)) * n).from_address(ptr))


class NumpyKernels:
    """The semantics of native/cuda/cache_cuda.cu in NumPy (SGD only)."""

    def __init__(self, table):
        self.t = table

    def _mem(self, v):
        hbm_ptr, hs_ptr, host_ptr, ss_ptr, dim, stride, ns = v
        S, H = self.t._policy.slots, self.t._host_cap
        hbm = _arr(hbm_ptr, S * stride, np.float32).reshape(S, stride)
        host = _arr(host_ptr, H * stride, np.float32).reshape(H, stride)
        return hbm, host, dim

    def _rows(self, v, slot, row):
        hbm, host, dim = self._mem(v)
        out = np.zeros((slot.size, dim), np.float32)
        out[slot >= 0] = hbm[slot[slot >= 0], :dim]
        h = (slot < 0) & (row >= 0)
        out[h] = host[row[h], :dim]
        return out

    def cuda_cached_move(self, v, slots_p, rows_p, n, to_host, s):
        hbm, host, _ = self._mem(v)
        slots, rows = _arr(slots_p, n, np.int32), _arr(rows_p, n, np.int64)
        if to_host:
            host[rows] = hbm[slots]
        else:
            hbm[slots] = host[rows]

    def cuda_cached_gather(self, v, slot_p, row_p, n, out_p, s):
        dim = v[4]
        _arr(out_p, n * dim, np.float32)[:] = self._rows(v, _arr(slot_p, n, np.int32), _arr(row_p, n, np.int64)).ravel()

    def cuda_cached_pool(self, v, slot_p, row_p, n, off_p, n_off, n_bags, mode, w_p, out_p, s):
        from reference import pooled

        dim = v[4]
        rows = self._rows(v, _arr(slot_p, n, np.int32), _arr(row_p, n, np.int64))
        w = _arr(w_p, n, np.float32) if w_p else None
        out = pooled(rows, _arr(off_p, n_off, np.int64), MODE_NAMES[mode], w, n_off == n_bags + 1)
        _arr(out_p, n_bags * dim, np.float32)[:] = out.ravel()

    def cuda_cached_update(self, v, ls_p, lh_p, n_loc, seg_p, perm_p, g_p, spec, step, s):
        hbm, host, dim = self._mem(v)
        ls, lh = _arr(ls_p, n_loc, np.int32), _arr(lh_p, n_loc, np.int64)
        seg = _arr(seg_p, n_loc + 1, np.int64)
        perm = _arr(perm_p, seg[-1], np.int64)
        g = _arr(g_p, seg[-1] * dim, np.float32).reshape(-1, dim)
        lr = np.float32(self.t._opt.lr)
        for u in range(n_loc):
            acc = np.zeros(dim, np.float32)
            for p in perm[seg[u]:seg[u + 1]]:
                acc += g[p]
            row = hbm[ls[u]] if ls[u] >= 0 else host[lh[u]]
            row[:dim] -= lr * acc


class CpuCachedTable(CachedCudaTable):
    @staticmethod
    def _open_device(device):
        return torch, torch.device("cpu"), False

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._kernels = NumpyKernels(self)

    def _stream(self):
        return 0

    def _sync(self):
        pass


def zipf_keys(rng, n, n_keys=300, a=1.05):
    p = 1.0 / np.arange(1, n_keys + 1) ** a
    return (rng.choice(n_keys, size=n, p=p / p.sum()) * 13 - 40).astype(np.int64)


def test_training_across_evictions_equals_the_cpu_engine():
    dim, opt = 6, el.optim.SGD(lr=0.05)
    init = el.init.uniform(-0.1, 0.1, seed=8)
    t = CpuCachedTable(dim, hbm_rows=10, host_rows=400, initializer=init, optimizer=opt, half_life=2.0)
    cpu = el.EmbeddingTable(dim, initializer=init, optimizer=opt)
    rng = np.random.default_rng(2)
    evicted_dirty = 0
    orig_plan = t._policy.plan

    def counting_plan(keys, write=False):
        nonlocal evicted_dirty
        p = orig_plan(keys, write=write)
        evicted_dirty += p["writeback_slots"].size
        return p

    t._policy.plan = counting_plan
    for _ in range(30):
        keys = zipf_keys(rng, 48)
        off = np.array([0, 5, 5, 20, 47], dtype=np.int64)
        for mode in ("sum", "max"):
            np.testing.assert_allclose(t.pooled_lookup(keys, off, mode=mode).numpy(),
                                       cpu.pooled_lookup(keys, off, mode=mode), rtol=1e-6, atol=1e-6)
        g = rng.normal(size=(48, dim)).astype(np.float32)
        t.apply_gradients(keys, g)
        cpu.apply_gradients(keys, g, opt)
    assert evicted_dirty > 10  # updated rows were evicted and written back
    keys, rows = t.export()
    np.testing.assert_allclose(rows, cpu.lookup(keys, insert=False), rtol=1e-6, atol=1e-6)
    assert len(t) == len(cpu) and t.memory()["hits"] > 0


def test_lookup_without_insert_reads_zero_rows_and_takes_no_slot():
    t = CpuCachedTable(3, hbm_rows=4, host_rows=10, initializer=el.init.constant(0.5))
    np.testing.assert_array_equal(t.lookup(np.array([1, 2])).numpy(), np.full((2, 3), 0.5, np.float32))
    out = t.lookup(np.array([1, 99, 2]), insert=False).numpy()
    np.testing.assert_array_equal(out, [[0.5] * 3, [0.0] * 3, [0.5] * 3])
    assert len(t) == 2 and t._policy.slot_of(99) == -1
    with pytest.raises(MemoryError, match="host_rows"):
        t.lookup(np.arange(100, 120))
    assert len(t) == 2
