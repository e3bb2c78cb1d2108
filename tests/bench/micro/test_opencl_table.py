"""pytest-benchmark entries for the OpenCL pooled lookup (PoCL by default).

    EMBEDLOOKUP_BENCH_FULL=1 PYTHONPATH=python python3 -m pytest tests/bench/micro/test_opencl_table.py \
        --benchmark-columns=median,ops

(without EMBEDLOOKUP_BENCH_FULL=1, as in the test run, a tiny table and batch).

Each entry reports effective bytes/s (rows read x row bytes / median time) in
its extra_info. The platform: $EMBEDLOOKUP_OPENCL_PLATFORM, else PoCL, else the first.
"""

from __future__ import annotations

import os

import embedlookup as el
import numpy as np
import pytest

pytest.importorskip(
    "pytest_benchmark", reason="pytest-benchmark is not installed (pip install 'embedlookup[test]')"
)
# Real sizes, or tiny ones (the default: the test run); see conftest.py.
FULL = os.environ.get("EMBEDLOOKUP_BENCH_FULL", "") not in ("", "0")
pytest.importorskip("pyopencl", reason="pyopencl is not installed (pip install 'embedlookup[opencl]')")
from embedlookup.bench import opencl_table as bench  # noqa: E402
from embedlookup.opencl import OpenCLTable, available_devices  # noqa: E402

DEVICES = available_devices()
if not DEVICES:
    pytest.skip("no OpenCL platform with a device is installed", allow_module_level=True)
PLATFORM = os.environ.get("EMBEDLOOKUP_OPENCL_PLATFORM") or next(
    (p for p, _ in DEVICES if "portable" in p.lower()), DEVICES[0][0])
ROWS, DIM, BATCH, POOLING = (100_000, 64, 512, 32) if FULL else (5_000, 16, 64, 8)


@pytest.fixture(scope="module", params=[None, 1.05], ids=["uniform", "zipf1.05"])
def workload(request):
    keys, values, offsets = bench.make_workload(ROWS, BATCH, POOLING, request.param)
    table = el.EmbeddingTable(DIM, initializer=el.init.uniform(-0.1, 0.1, seed=0))
    table.lookup(keys)
    return table, values, offsets


@pytest.mark.parametrize("backend", ["cpu_engine", "ndrange", "single_work_item"])
def test_pooled_lookup(benchmark, workload, backend):
    table, values, offsets = workload
    if backend == "cpu_engine":
        def fn():
            return table.pooled_lookup(values, offsets, "sum", insert=False)
    else:
        dev = OpenCLTable(table, platform=PLATFORM, variant=backend)

        def fn():
            return dev.pooled_lookup(values, offsets, "sum")
    np.testing.assert_allclose(fn(), table.pooled_lookup(values, offsets, "sum", insert=False), rtol=1e-6)
    benchmark.pedantic(fn, rounds=7, warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["bytes_per_s"] = len(values) * DIM * 4 / benchmark.stats.stats.median
    benchmark.extra_info["device"] = "cpu" if backend == "cpu_engine" else dev.device.name
