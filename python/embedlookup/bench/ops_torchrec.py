"""TorchRec as a subject of the suite, and the raw-ID comparison against
TorchRec's managed-collision collection.

``torchrec`` (kind "peer"): ``torchrec.EmbeddingBagCollection`` (one table,
``num_embeddings`` = the workload's rows, the same rows as every subject) on
the batch's dense remapped row numbers, a ``KeyedJaggedTensor`` in and a
``KeyedTensor`` out, for ``pooled_sum`` and ``pooled_mean``. Skipped where
torchrec is not importable.

:func:`raw_id_forward` is a measurement (not part of the suite, not a test):
the pooled forward on raw int64 IDs of ``embedlookup.torchrec.EmbeddingBagCollection``
against TorchRec's ``ManagedCollisionEmbeddingBagCollection`` with an
``MCHManagedCollisionModule`` (sort-based zero-collision remapping of raw IDs
to ``zch_size`` rows), with TorchRec's plain EBC on already-remapped row
numbers as the floor. ``bench/bench_torchrec.py`` runs it.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .ops import Case, Skip, _nthreads, _tbatches, _torch, implements, subject
from .workloads import Workload, WorkloadData


def _torchrec():
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchrec
    except Exception as e:  # noqa: BLE001 - any import failure means "not here"
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise Skip(f"torchrec is not importable ({type(e).__name__}: {first}); "
                   f"pip install --no-deps torchrec==1.8.0 (see docs/torchrec.md)") from None
    return torchrec


subject(
    "torchrec",
    "peer",
    "torchrec.EmbeddingBagCollection (unsharded, CPU) on dense remapped row numbers, KJT in, KeyedTensor out",
    lambda: (_torchrec(), None)[1],
)


def _ebc(torchrec, torch, w: Workload, dense: np.ndarray, pooling, cfg=None):
    if cfg is None:
        cfg = torchrec.EmbeddingBagConfig(name="t", embedding_dim=w.dim, num_embeddings=dense.shape[0],
                                          feature_names=["f"], pooling=pooling)
    ebc = torchrec.EmbeddingBagCollection(tables=[cfg])
    with torch.no_grad():
        ebc.embedding_bags["t"].weight.copy_(torch.from_numpy(dense))
    return ebc


for _m in ("sum", "mean"):

    @implements(f"pooled_{_m}", "torchrec")
    def _trec(data, mode=_m):
        torchrec = _torchrec()
        torch = _torch()
        torch.set_num_threads(_nthreads(data.workload))
        pooling = torchrec.PoolingType.SUM if mode == "sum" else torchrec.PoolingType.MEAN
        ebc = _ebc(torchrec, torch, data.workload, data.dense, pooling)
        tb = _tbatches(data)

        def run(b):
            i, _, off, _ = tb[id(b)]
            with torch.inference_mode():
                return ebc(torchrec.KeyedJaggedTensor(keys=["f"], values=i, offsets=off)).values()

        return Case(run, lambda b: run(b).numpy().copy())


def raw_id_forward(w: Workload, repeats: int = 11, warmup: int = 3, eviction_interval: int = 4) -> dict:
    """Median forward times (ms) on raw int64 IDs, interleaved in one process:
    ``embedlookup`` (our EBC over the hashed table), ``torchrec_mc`` (TorchRec's
    MC-EBC: MCH remap + EBC; training mode, as it runs while training),
    ``torchrec_remapped`` (TorchRec's EBC on row numbers remapped beforehand,
    for free). Ours is checked equal to ``torchrec_remapped`` first.
    ``eviction_interval``: MCH's (it merges its ID history and evicts every
    that many training forwards; it buffers that many batches of IDs)."""
    torchrec = _torchrec()
    torch = _torch()
    from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
    from torchrec.modules.mc_modules import (DistanceLFU_EvictionPolicy, ManagedCollisionCollection,
                                             MCHManagedCollisionModule)

    from ..torchrec import EmbeddingBagCollection

    threads = _nthreads(w)
    torch.set_num_threads(threads)
    data = WorkloadData.generate(w)
    keys = data.keys & np.int64(2**63 - 1)  # MCH takes IDs in [0, input_hash_size)
    cfg = torchrec.EmbeddingBagConfig(name="t", embedding_dim=w.dim, num_embeddings=w.rows, feature_names=["f"])
    ours = EmbeddingBagCollection([cfg], num_threads=threads)
    ours.embedding_bags["t"].table.assign(keys, data.dense)
    plain = _ebc(torchrec, torch, w, data.dense, torchrec.PoolingType.SUM)
    mc = ManagedCollisionEmbeddingBagCollection(
        _ebc(torchrec, torch, w, data.dense, None, cfg),
        ManagedCollisionCollection(
            {"t": MCHManagedCollisionModule(zch_size=w.rows, device=torch.device("cpu"),
                                            eviction_policy=DistanceLFU_EvictionPolicy(),
                                            eviction_interval=eviction_interval, input_hash_size=2**63 - 1)},
            [cfg]))
    off = torch.from_numpy(data.batches[0].offsets_full)
    raw = [torchrec.KeyedJaggedTensor(keys=["f"], values=torch.from_numpy(keys[b.idx]), offsets=off)
           for b in data.batches]
    dense = [torchrec.KeyedJaggedTensor(keys=["f"], values=torch.from_numpy(b.idx), offsets=off)
             for b in data.batches]
    subjects = {
        "embedlookup": lambda i: ours(raw[i]).values(),
        "torchrec_mc": lambda i: mc(raw[i])[0].values(),
        "torchrec_remapped": lambda i: plain(dense[i]).values(),
    }
    with torch.no_grad():
        torch.testing.assert_close(ours(raw[0]).values(), plain(dense[0]).values(), rtol=1e-5, atol=1e-5)
        for _ in range(warmup):
            for i in range(len(raw)):
                for f in subjects.values():
                    f(i)
        times = {s: [] for s in subjects}
        names = list(subjects)
        for r in range(repeats):
            for s in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
                i = r % len(raw)
                t0 = time.perf_counter()
                subjects[s](i)
                times[s].append(time.perf_counter() - t0)
    row_bytes = w.dim * 4
    out = {"workload": w.describe(), "threads": threads, "results": {}}
    for s, t in times.items():
        med = statistics.median(t)
        out["results"][s] = {"ms": med * 1e3, "GB/s": w.lookups * row_bytes / med / 1e9}
    return out


def main(argv=None) -> None:
    """``python -m embedlookup.bench.ops_torchrec [workload tokens] [--repeats N]``: runs
    :func:`raw_id_forward` and prints one line per subject."""
    import argparse
    import json

    from .workloads import parse_workload

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", nargs="*", default=["dist=zipf", "rows=1e6", "threads=1"],
                   help="workload name and/or key=value tokens (default: dist=zipf rows=1e6 threads=1)")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--eviction-interval", type=int, default=4, help="MCH's eviction_interval (default 4)")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    res = raw_id_forward(parse_workload(a.workload), repeats=a.repeats, eviction_interval=a.eviction_interval)
    print(f"{res['workload']}, {res['threads']} thread(s); median of {a.repeats} forwards; "
          f"MCH eviction_interval {a.eviction_interval}")
    base = res["results"]["torchrec_mc"]["ms"]
    for s, r in res["results"].items():
        print(f"  {s:18s} {r['ms']:9.2f} ms  {r['GB/s']:6.2f} GB/s  {base / r['ms']:5.2f}x torchrec_mc")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
