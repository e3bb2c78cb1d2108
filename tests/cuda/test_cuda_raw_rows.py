"""CudaRawTable: pooled lookups over compressed rows (fp16, bf16, int8, int4)
decoded on the GPU, against the CPU engine pooling the same rows dequantized
by the NumPy oracle (bit for bit: same per-column order, separately rounded
decode) and against ``reference.pooled``. The argument checks, which run
before any device work, are ``cpu_only``."""

from __future__ import annotations

import numpy as np
import pytest

import embedlookup as el
import embedlookup.cuda as elc
import reference

KINDS = ("fp32", "fp16", "bf16", "int8", "int4")
DIM = 70  # > 64: two lanes' worth of columns per lane group, even (int4), not a multiple of 4
N = 500
KEYS = np.arange(N, dtype=np.int64) * 7919 - 10**12


def _rows(dim=DIM, n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * rng.uniform(0.01, 3.0, (n, 1))).astype(np.float32)
    x[3] = 0.5  # a constant row: scale 0
    return x


@pytest.fixture(scope="module", params=KINDS)
def tables(request):
    torch = pytest.importorskip("torch")
    kind = request.param
    raw = reference.quantize_rows(_rows(), kind)
    deq = reference.dequantize_rows(raw, kind, DIM)
    cpu = el.EmbeddingTable(DIM)
    cpu.assign(KEYS, deq)
    perm = np.random.default_rng(1).permutation(N)  # the device table sorts its keys itself
    return kind, elc.CudaRawTable(KEYS[perm], raw[perm], kind, DIM), cpu, deq, torch


def _bags(seed, n_bags=200, max_len=40):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, n_bags)
    lengths[::7] = 0
    values = rng.choice(KEYS, int(lengths.sum()))
    values[rng.random(values.size) < 0.1] = 12345  # absent
    return values, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_pooled_equals_cpu_engine_over_dequantized_rows(tables, mode):
    kind, dev, cpu, deq, torch = tables
    values, offsets = _bags(2)
    got = dev.pooled_lookup(torch.from_numpy(values).cuda(), torch.from_numpy(offsets).cuda(), mode).cpu().numpy()
    np.testing.assert_array_equal(got, cpu.pooled_lookup(values, offsets, mode, insert=False))
    pos = np.searchsorted(KEYS, values).clip(0, N - 1)
    gathered = np.where((KEYS[pos] == values)[:, None], deq[pos], 0).astype(np.float32)
    np.testing.assert_allclose(got, reference.pooled(gathered, offsets, mode), rtol=1e-5, atol=1e-5)


def test_weighted_last_offset_and_2d(tables):
    kind, dev, cpu, deq, torch = tables
    values, offsets = _bags(3)
    w = np.random.default_rng(4).standard_normal(values.size).astype(np.float32)
    v, o, wt = (torch.from_numpy(a).cuda() for a in (values, offsets, w))
    np.testing.assert_allclose(dev.pooled_lookup(v, o, "sum", wt).cpu().numpy(),
                               cpu.pooled_lookup(values, offsets, "sum", w, insert=False), rtol=1e-6, atol=1e-6)
    last = np.append(offsets, values.size)
    np.testing.assert_array_equal(
        dev.pooled_lookup(v, torch.from_numpy(last).cuda(), "mean", include_last_offset=True).cpu().numpy(),
        cpu.pooled_lookup(values, last, "mean", include_last_offset=True, insert=False))
    v2 = values[:60].reshape(12, 5)
    np.testing.assert_array_equal(dev.pooled_lookup(torch.from_numpy(v2).cuda(), None, "max").cpu().numpy(),
                                  cpu.pooled_lookup(v2, None, "max", insert=False))


def test_find_decodes_exactly(tables):
    kind, dev, cpu, deq, torch = tables
    probe = np.concatenate([KEYS[::-3], [12345]])
    rows, found = dev.find(torch.from_numpy(probe).cuda())
    np.testing.assert_array_equal(rows.cpu().numpy()[:-1], deq[::-3])
    assert rows.cpu().numpy()[-1].tolist() == [0.0] * DIM
    assert found.cpu().numpy().tolist() == [True] * (len(probe) - 1) + [False]
    assert dev.memory_usage()["row_bytes"] == N * reference.row_bytes(kind, DIM)


def test_bad_offsets_raise_like_the_cpu_path(tables):
    kind, dev, cpu, deq, torch = tables
    v = torch.from_numpy(KEYS[:4]).cuda()
    with pytest.raises(ValueError, match="non-decreasing"):
        dev.pooled_lookup(v, torch.tensor([0, 3, 1], device="cuda"))
    with pytest.raises(ValueError, match="exceeds"):
        dev.pooled_lookup(v, torch.tensor([0, 5], device="cuda"))
    with pytest.raises(ValueError, match="mode"):
        dev.pooled_lookup(v, torch.tensor([0], device="cuda"), "mean", torch.ones(4, device="cuda"))


def test_from_a_cpu_table_of_the_same_row_type(tables):
    """CudaRawTable.from_table keeps a CPU table's compressed rows (export_raw)
    and pools as the CPU engine does on them."""
    kind, _, _, _, torch = tables
    table = el.EmbeddingTable(DIM, row_type=kind)
    table.assign(KEYS, _rows())
    dev = elc.CudaRawTable.from_table(table)
    assert dev.kind == kind
    values, offsets = _bags(5)
    for mode in ("sum", "mean", "max"):
        got = dev.pooled_lookup(torch.from_numpy(values).cuda(), torch.from_numpy(offsets).cuda(), mode)
        np.testing.assert_allclose(got.cpu().numpy(), table.pooled_lookup(values, offsets, mode, insert=False),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.cpu_only
@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(kind="int3"), ValueError, "kind must be one of"),
        (dict(kind="int4", dim=5), ValueError, "even dim"),
        (dict(rows=np.zeros((3, 11), np.uint8)), ValueError, r"shape \(n, 12\)"),
        (dict(rows=np.zeros((3, 12), np.float64)), TypeError, "uint8"),
        (dict(keys=np.array([1, 2], np.int64)), ValueError, "differ in number"),
        (dict(keys=np.array([5, 2, 5], np.int64)), ValueError, "distinct"),
        (dict(dim=-1), ValueError, "dim must be"),
    ],
)
def test_bad_construction_fails_before_any_device_work(kwargs, err, match):
    args = dict(keys=np.array([1, 2, 3], np.int64), rows=np.zeros((3, 12), np.uint8), kind="int8", dim=4)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        elc.CudaRawTable(args["keys"], args["rows"], args["kind"], args["dim"])


@pytest.mark.cpu_only
def test_unavailable_is_a_clear_error():
    if elc.is_available():
        pytest.skip("CUDA is usable here")
    with pytest.raises(elc.CudaUnavailableError) as e:
        elc.CudaRawTable(np.array([1], np.int64), np.zeros((1, 12), np.uint8), "int8", 4)
    assert str(e.value) == elc.unavailable_reason()


@pytest.mark.cpu_only
@pytest.mark.parametrize("kind", KINDS)
def test_benchmark_rows_are_finite_rows_of_the_layout(kind):
    """The GPU benchmark's synthetic raw rows decode (by the oracle) to finite values."""
    from embedlookup.bench.raw_rows import synthetic_raw_rows

    raw = synthetic_raw_rows(kind, 50, 64, seed=1)
    assert raw.shape == (50, reference.row_bytes(kind, 64)) and raw.dtype == np.uint8
    assert np.isfinite(reference.dequantize_rows(raw, kind, 64)).all()
