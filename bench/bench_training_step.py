#!/usr/bin/env python3
"""Training step (forward + backward + update) of HashEmbeddingBag vs torch and FBGEMM.

A thin wrapper: the code is embedlookup.bench.training_step, also runnable as
`python3 -m embedlookup.bench.training_step`.

    PYTHONPATH=python python3 bench/bench_training_step.py --help
"""

from embedlookup.bench.training_step import main

if __name__ == "__main__":
    main()
