"""CachedCudaTable (rows in host memory, hot rows in HBM) against the CPU
engine: lookups, pooled lookups and training steps on Zipf batches with a
cache much smaller than the key set, so rows are evicted, written back and
filled again between the steps; the final rows (after a flush) must equal the
CPU EmbeddingTable's after the same steps: no update lost. Argument checks run
everywhere (they come before the GPU is needed)."""

import numpy as np
import pytest

import embedlookup as el
from embedlookup.cuda import CachedCudaTable, CudaUnavailableError, is_available


def zipf_keys(rng, n, n_keys=400, a=1.05):
    p = 1.0 / np.arange(1, n_keys + 1) ** a
    return (rng.choice(n_keys, size=n, p=p / p.sum()) * 31 + 5).astype(np.int64)


@pytest.mark.parametrize("opt", [el.optim.SGD(lr=0.1), el.optim.Adagrad(lr=0.1),
                                 el.optim.Adagrad(lr=0.1, rowwise=True), el.optim.Adam(lr=0.01)])
def test_training_with_evictions_matches_the_cpu_engine(opt):
    import torch

    dim = 20
    init = el.init.uniform(-0.1, 0.1, seed=4)
    gpu = CachedCudaTable(dim, hbm_rows=16, host_rows=1000, initializer=init, optimizer=opt, half_life=2.0)
    cpu = el.EmbeddingTable(dim, initializer=init, optimizer=opt)
    rng = np.random.default_rng(1)
    for _ in range(25):
        keys = zipf_keys(rng, 64)
        off = np.arange(0, 64, 4, dtype=np.int64)
        got = gpu.pooled_lookup(keys, off, mode="sum").cpu().numpy()
        want = cpu.pooled_lookup(keys, off, mode="sum")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        g = rng.normal(size=(64, dim)).astype(np.float32)
        gpu.apply_gradients(keys, torch.from_numpy(g).cuda())
        cpu.apply_gradients(keys, g, opt)
    assert gpu.memory()["hits"] > 0 and gpu.memory()["misses"] > 0
    keys, rows = gpu.export()
    np.testing.assert_allclose(rows, cpu.lookup(keys, insert=False), rtol=1e-5, atol=1e-6)
    assert len(gpu) == len(cpu)


def test_lookup_and_modes_match_the_cpu_engine():
    dim = 33  # two column blocks of the pooled kernel's lanes
    init = el.init.normal(std=0.1, seed=2)
    gpu = CachedCudaTable(dim, hbm_rows=8, host_rows=500, initializer=init)
    cpu = el.EmbeddingTable(dim, initializer=init)
    rng = np.random.default_rng(5)
    keys = zipf_keys(rng, 90)
    np.testing.assert_array_equal(gpu.lookup(keys).cpu().numpy(), cpu.lookup(keys))
    off = np.array([0, 0, 7, 30, 61], dtype=np.int64)
    w = rng.random(90).astype(np.float32)
    for mode, ws in (("sum", None), ("mean", None), ("max", None), ("sum", w)):
        np.testing.assert_allclose(gpu.pooled_lookup(keys, off, mode=mode, per_sample_weights=ws).cpu().numpy(),
                                   cpu.pooled_lookup(keys, off, mode=mode, per_sample_weights=ws),
                                   rtol=1e-5, atol=1e-6)
    absent = np.array([10**12, 10**12 + 1])
    assert not gpu.lookup(absent, insert=False).cpu().numpy().any() and len(gpu) == len(cpu)


def test_host_capacity_is_checked_before_anything_changes():
    gpu = CachedCudaTable(4, hbm_rows=2, host_rows=3)
    gpu.lookup(np.array([1, 2]))
    with pytest.raises(MemoryError, match="host_rows"):
        gpu.lookup(np.array([3, 4]))
    assert len(gpu) == 2


@pytest.mark.cpu_only
def test_arguments_are_checked_everywhere():
    for kw, msg in ((dict(dim=0, hbm_rows=1, host_rows=1), "dim"), (dict(dim=4, hbm_rows=0, host_rows=1), "hbm_rows"),
                    (dict(dim=4, hbm_rows=1, host_rows=True), "host_rows"),
                    (dict(dim=4, hbm_rows=1, host_rows=4, half_life=-1.0), "half_life"),
                    (dict(dim=4, hbm_rows=1, host_rows=4, sketch_width=6), "sketch_width")):
        with pytest.raises(ValueError, match=msg):
            CachedCudaTable(**kw)
    with pytest.raises(TypeError, match="optimizer"):
        CachedCudaTable(4, hbm_rows=1, host_rows=4, optimizer="sgd")
    if not is_available():
        with pytest.raises(CudaUnavailableError):
            CachedCudaTable(4, hbm_rows=1, host_rows=4)
