"""pytest-benchmark microbenchmarks of embedlookup's kernels beside their peers.

They run with the tests (``python -m pytest tests``) on tiny workloads, so
that they stay quick there; for figures, run them alone on real sizes, from
the repository root::

    EMBEDLOOKUP_BENCH_FULL=1 pytest tests/bench/micro --benchmark-only     # uniform-1m, zipf-1m
    EMBEDLOOKUP_BENCH_WORKLOADS="small,zipf-1m alpha=1.2" pytest tests/bench/micro --benchmark-only

``EMBEDLOOKUP_BENCH_FULL=1`` switches every microbenchmark here to its real
size; ``EMBEDLOOKUP_BENCH_WORKLOADS`` names test_kernels.py's workloads.

Workloads are ``embedlookup bench`` workload specs separated by commas (a
spec's own parameters by spaces). Each case is checked against embedlookup's
output on the same rows before it is timed, exactly as in ``embedlookup bench``.
"""

import os
import sys

try:
    import embedlookup  # noqa: F401
except ImportError:  # a development checkout: use the in-place build
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "python"))

import pytest
from embedlookup.bench import WorkloadData, parse_workload


@pytest.fixture(scope="session")
def workload_data():
    """WorkloadData by spec, generated once per session and kept (they are large: one at a time)."""
    cache = {}

    def get(spec):
        if spec not in cache:
            cache.clear()
            cache[spec] = WorkloadData.generate(parse_workload(spec.split()))
        return cache[spec]

    return get
