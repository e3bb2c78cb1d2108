#!/usr/bin/env python3
"""OpenCL pooled-lookup benchmark (thin wrapper; the code is embedlookup.opencl.bench).

PYTHONPATH=python python3 bench/bench_opencl.py --platform portable --rows 100000 --dim 64 --alpha 1.05
"""

from embedlookup.opencl.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
