"""Per-kernel microbenchmarks: every registered (operation, subject) on each workload.

Groups are "<workload> <op>", so pytest-benchmark's table puts embedlookup
next to its peers. A peer that is not installed is skipped with the reason;
a peer whose output differs from embedlookup's fails (it must not report a
number).
"""

import os

import pytest

pytest.importorskip(
    "pytest_benchmark", reason="pytest-benchmark is not installed (pip install 'embedlookup[test]')"
)
# Real sizes, or tiny ones (the default: the test run); see conftest.py.
FULL = os.environ.get("EMBEDLOOKUP_BENCH_FULL", "") not in ("", "0")
from embedlookup.bench import OPS, SUBJECTS, SUITES, Skip, compare_outputs  # noqa: E402

# Workload specs, comma-separated (a spec's own parameters by spaces); tiny
# ones unless EMBEDLOOKUP_BENCH_FULL=1 (conftest.py).
SPECS = [
    s.strip()
    for s in os.environ.get(
        "EMBEDLOOKUP_BENCH_WORKLOADS",
        "uniform-1m,zipf-1m" if FULL else "small threads=1,small-zipf threads=1",
    ).split(",")
    if s.strip()
]

# the default suite's operations, each by every subject that implements it
CASES = [(op, s) for op in SUITES["default"]["ops"] for s in OPS[op].impls]


@pytest.mark.parametrize("op, who", CASES, ids=[f"{o}-{s}" for o, s in CASES])
@pytest.mark.parametrize("spec", SPECS)  # innermost: workloads vary slowest, one in memory at a time
def test_kernel(benchmark, workload_data, spec, op, who):
    data = workload_data(spec)
    try:
        SUBJECTS[who].probe()
        case = OPS[op].impls[who](data)
    except Skip as e:
        pytest.skip(str(e))
    b = data.batches[0]
    out = case.output(b)
    if who != "embedlookup":
        ref = OPS[op].impls["embedlookup"](data).output(b)
        ok, _, msg = compare_outputs(ref, out)
        assert ok, f"{who} {op}: {msg}"
    benchmark.group = f"{spec} {op}"
    w = data.workload
    rows = OPS[op].rows(w, b)
    benchmark.extra_info.update(rows=rows, bytes=rows * w.row_bytes, workload=w.describe())
    benchmark.pedantic(case.run, args=(b,), setup=case.after, rounds=7, warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = round(rows * w.row_bytes / benchmark.stats.stats.median / 1e9, 3)
