"""pytest-benchmark microbenchmarks of embedlookup's kernels beside their peers.

Run from the repository root::

    pytest bench/ --benchmark-only                                  # default workloads
    EMBEDLOOKUP_BENCH_WORKLOADS="small,zipf-1m alpha=1.2" pytest bench/ --benchmark-only

Workloads are ``embedlookup bench`` workload specs separated by commas (a
spec's own parameters by spaces). Each case is checked against embedlookup's
output on the same rows before it is timed, exactly as in ``embedlookup bench``.
"""

import os
import sys

try:
    import embedlookup  # noqa: F401
except ImportError:  # a development checkout: use the in-place build
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

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
