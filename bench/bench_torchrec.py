#!/usr/bin/env python3
"""Raw-ID pooled forward: embedlookup.torchrec.EmbeddingBagCollection vs TorchRec's
ManagedCollisionEmbeddingBagCollection (MCH) and TorchRec's EBC on pre-remapped rows.

A thin wrapper: the code is embedlookup.bench.ops_torchrec (raw_id_forward).

    PYTHONPATH=python python3 bench/bench_torchrec.py dist=zipf rows=1e6 threads=1 --repeats 11
"""

from embedlookup.bench.ops_torchrec import main

if __name__ == "__main__":
    main()
