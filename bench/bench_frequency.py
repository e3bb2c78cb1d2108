#!/usr/bin/env python3
"""Frequency-aware table benchmarks at scale: relayout, hot-region hits, drift.

A thin wrapper: the code is embedlookup.bench.frequency_scale, also runnable as
`python3 -m embedlookup.bench.frequency_scale`.

    PYTHONPATH=python python3 bench/bench_frequency.py --help
"""

from embedlookup.bench.frequency_scale import main

if __name__ == "__main__":
    main()
