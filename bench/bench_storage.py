#!/usr/bin/env python3
"""Storage benchmarks: disk, checkpoints, a DRAM + file tier, mmap vs pread.

A thin wrapper: the code is embedlookup.bench.storage_tiers, also runnable as
`python3 -m embedlookup.bench.storage_tiers`.

    PYTHONPATH=python python3 bench/bench_storage.py --help
"""

from embedlookup.bench.storage_tiers import main

if __name__ == "__main__":
    main()  # returns the figures (a dict) for callers from Python
