"""OpenCL kernels over compressed rows (fp16, bf16, int8, int4) against the NumPy oracle.

Raw rows come from ``reference.quantize_rows``; the device decodes them where it
reads them. Its lookups must equal ``reference.dequantize_rows`` bit for bit,
and its pooled results must equal, bit for bit, the same kernels run over those
dequantized rows stored as fp32 (same per-column order of operations), and
``reference.pooled`` to a float32 rounding.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pyopencl", reason="pyopencl is not installed (pip install 'embedlookup[opencl]')")

import reference
from embedlookup import _row_layout
from embedlookup import opencl as elcl

_DEVICES = elcl.available_devices()
if not _DEVICES:
    pytest.skip("no OpenCL platform with a device is installed", allow_module_level=True)

PLATFORM = os.environ.get("EMBEDLOOKUP_OPENCL_PLATFORM") or next(
    (p for p, _ in _DEVICES if "portable" in p.lower()), _DEVICES[0][0]
)
KINDS = ("fp16", "bf16", "int8", "int4")
DIM = 14  # even (int4), not a multiple of 4 or 8: padded rows and a partial column chunk
N = 300
KEYS = np.arange(N, dtype=np.int64) * 104729 - 77_777


def _rows(dim=DIM, n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, dim)) * rng.uniform(0.01, 3.0, (n, 1))).astype(np.float32)
    x[5] = 0.25  # a constant row: int scale 0
    x[6, :] = 0.0
    return x


@pytest.fixture(scope="module", params=[(k, v) for k in KINDS for v in elcl.VARIANTS], ids=str)
def tables(request):
    kind, variant = request.param
    raw = reference.quantize_rows(_rows(), kind)
    deq = reference.dequantize_rows(raw, kind, DIM)
    dev = elcl.OpenCLTable.from_raw(KEYS, raw, kind, DIM, platform=PLATFORM, variant=variant)
    dense = elcl.OpenCLTable.from_raw(KEYS, deq, "fp32", DIM, platform=PLATFORM, variant=variant)
    return kind, dev, dense, deq


def _gathered(deq, values):
    pos = np.searchsorted(KEYS, values).clip(0, N - 1)
    hit = KEYS[pos] == values
    return np.where(hit[:, None], deq[pos], 0).astype(np.float32), hit


def _bags(seed, n_bags=80, max_len=12):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, n_bags)
    lengths[::9] = 0
    values = rng.choice(KEYS[:60], int(lengths.sum()))
    values[rng.random(values.size) < 0.15] = -5  # absent
    return values, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def test_find_decodes_rows_exactly(tables):
    kind, dev, _, deq = tables
    probe = np.concatenate([KEYS[::-3], [-5, 12345678]]).astype(np.int64)
    rows, found = dev.find(probe)
    want, hit = _gathered(deq, probe)
    np.testing.assert_array_equal(found, hit)
    np.testing.assert_array_equal(rows, want)
    assert dev.kind == kind and dev.row_bytes == reference.row_bytes(kind, DIM)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_pooled_modes(tables, mode):
    _, dev, dense, deq = tables
    values, offsets = _bags(1)
    got = dev.pooled_lookup(values, offsets, mode)
    np.testing.assert_array_equal(got, dense.pooled_lookup(values, offsets, mode))
    np.testing.assert_allclose(got, reference.pooled(_gathered(deq, values)[0], offsets, mode), rtol=1e-5,
                               atol=1e-5)


def test_pooled_weighted_and_last_offset(tables):
    _, dev, dense, deq = tables
    values, offsets = _bags(2)
    w = np.random.default_rng(3).standard_normal(values.size).astype(np.float32)
    got = dev.pooled_lookup(values, offsets, "sum", per_sample_weights=w)
    np.testing.assert_array_equal(got, dense.pooled_lookup(values, offsets, "sum", per_sample_weights=w))
    np.testing.assert_allclose(got, reference.pooled(_gathered(deq, values)[0], offsets, "sum", w), rtol=1e-5,
                               atol=1e-5)
    off = np.append(offsets, values.size)
    got = dev.pooled_lookup(values, off, "mean", include_last_offset=True)
    np.testing.assert_allclose(got, reference.pooled(_gathered(deq, values)[0], off, "mean", None, True),
                               rtol=1e-5, atol=1e-5)


def test_hand_computed_int8_and_int4_rows():
    """One int8 row [0, 1, 2, 255] with scale 0.5, bias -1 and one int4 row
    (codes 1, 15, 0, 7 packed low nibble first) with scale 2, bias 3."""
    int8 = np.zeros((1, 12), np.uint8)
    int8[0, :4] = [0, 1, 2, 255]
    int8[0, 4:12] = np.frombuffer(np.array([0.5, -1.0], np.float32).tobytes(), np.uint8)
    int4 = np.zeros((1, 12), np.uint8)
    int4[0, :2] = [1 | (15 << 4), 0 | (7 << 4)]
    int4[0, 4:12] = np.frombuffer(np.array([2.0, 3.0], np.float32).tobytes(), np.uint8)
    for variant in elcl.VARIANTS:
        d8 = elcl.OpenCLTable.from_raw([42], int8, "int8", 4, platform=PLATFORM, variant=variant)
        np.testing.assert_array_equal(d8.find([42])[0], [[-1.0, -0.5, 0.0, 126.5]])
        d4 = elcl.OpenCLTable.from_raw([42], int4, "int4", 4, platform=PLATFORM, variant=variant)
        np.testing.assert_array_equal(d4.pooled_lookup([42, 42], [0], "sum"), [[10.0, 66.0, 6.0, 34.0]])


def test_wide_rows_int4():
    """dim 130 (> one work group of 64 columns, odd number of nibble pairs)."""
    x = _rows(dim=130, n=40, seed=7)
    raw = reference.quantize_rows(x, "int4")
    deq = reference.dequantize_rows(raw, "int4", 130)
    keys = np.arange(40, dtype=np.int64)
    for variant in elcl.VARIANTS:
        dev = elcl.OpenCLTable.from_raw(keys, raw, "int4", 130, platform=PLATFORM, variant=variant)
        np.testing.assert_array_equal(dev.find(keys[::-1])[0], deq[::-1])


def test_fp32_from_raw_bytes_equals_float_rows():
    x = _rows(n=20)
    keys = np.arange(20, dtype=np.int64)
    a = elcl.OpenCLTable.from_raw(keys, x, "fp32", DIM, platform=PLATFORM)
    b = elcl.OpenCLTable.from_raw(keys, reference.quantize_rows(x, "fp32"), "fp32", DIM, platform=PLATFORM)
    np.testing.assert_array_equal(a.find(keys)[0], x)
    np.testing.assert_array_equal(b.find(keys)[0], x)


def test_row_bytes_match_the_oracle():
    for kind in reference.ROW_KINDS:
        for dim in (2, 6, 13, 64) if kind != "int4" else (2, 6, 14, 64):
            assert _row_layout.row_bytes(kind, dim) == reference.row_bytes(kind, dim)
    assert _row_layout.row_bytes("int8", 64) == 72 and _row_layout.row_bytes("int4", 64) == 40


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(kind="int3"), ValueError, "kind must be one of"),
        (dict(kind="int4", dim=5, rows=np.zeros((3, 12), np.uint8)), ValueError, "even dim"),
        (dict(rows=np.zeros((3, 11), np.uint8)), ValueError, r"shape \(n, 12\)"),
        (dict(rows=np.zeros((3, 12), np.int8)), TypeError, "uint8"),
        (dict(keys=np.array([1, 2], np.int64)), ValueError, "differ in number"),
        (dict(keys=np.array([1, 2, 1], np.int64)), ValueError, "distinct"),
        (dict(keys=np.array([1.0, 2.0, 3.0])), TypeError, "keys"),
        (dict(dim=0), ValueError, "dim must be"),
    ],
)
def test_bad_input(kwargs, err, match):
    args = dict(keys=np.array([1, 2, 3], np.int64), rows=np.zeros((3, 12), np.uint8), kind="int8", dim=4)
    args.update(kwargs)
    rows_before = np.array(args["rows"], copy=True)
    with pytest.raises(err, match=match):
        elcl.OpenCLTable.from_raw(args["keys"], args["rows"], args["kind"], args["dim"], platform=PLATFORM)
    np.testing.assert_array_equal(args["rows"], rows_before)


@pytest.mark.parametrize("variant", elcl.VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_built_from_a_cpu_table_of_the_same_row_type(kind, variant):
    """OpenCLTable(table) of a CPU table storing compressed rows keeps them in
    that type (its export_raw) and answers as the CPU engine: found rows as
    its find, pooled bags as its pooled_lookup(insert=False)."""
    import embedlookup as el

    table = el.EmbeddingTable(DIM, row_type=kind)
    table.assign(KEYS, _rows())
    dev = elcl.OpenCLTable(table, platform=PLATFORM, variant=variant)
    assert dev.kind == kind and dev.row_bytes == reference.row_bytes(kind, DIM)
    probe = np.concatenate([KEYS[::5], [-5]]).astype(np.int64)
    rows, found = dev.find(probe)
    want_rows, want_found = table.find(probe)
    np.testing.assert_array_equal(found, want_found)
    np.testing.assert_allclose(rows, want_rows, rtol=1e-6, atol=1e-7)
    # and the oracle's decoding of the very bytes the table stores
    _, raw = table.export_raw()
    np.testing.assert_array_equal(rows[:-1], reference.dequantize_rows(raw, kind, DIM)[::5])
    values, offsets = _bags(6)
    for mode in ("sum", "mean", "max"):
        np.testing.assert_allclose(dev.pooled_lookup(values, offsets, mode),
                                   table.pooled_lookup(values, offsets, mode, insert=False), rtol=1e-5, atol=1e-5)
