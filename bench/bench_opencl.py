#!/usr/bin/env python3
"""OpenCL pooled-lookup benchmark.

A thin wrapper: the code is embedlookup.bench.opencl_table, also runnable as
`python3 -m embedlookup.bench.opencl_table`.

    PYTHONPATH=python python3 bench/bench_opencl.py --help
"""

from embedlookup.bench.opencl_table import main

if __name__ == "__main__":
    raise SystemExit(main())
