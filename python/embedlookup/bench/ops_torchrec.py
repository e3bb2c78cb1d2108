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

from .._checks import huge_copy, huge_empty
from .ops import EPS_ADAGRAD, LR, Case, Skip, _nthreads, _probe_torch, _tbatches, _torch, _unique_rows, implements, \
    subject
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


# ------------------------------------------------------- lookup and training
def _sparse_grads(torch, ebc) -> None:
    """TorchRec's unsharded collections build their nn.EmbeddingBag / nn.Embedding
    with dense gradients: every backward would write (and Adagrad would step)
    the whole table. Sparse gradients + torch.optim.Adagrad is the cheapest
    way to train them unsharded on CPU, so that is what the suite times."""
    mods = getattr(ebc, "embedding_bags", None) or ebc.embeddings
    for m in mods.values():
        m.sparse = True


@implements("lookup", "torchrec")
def _(data):
    torchrec = _torchrec()
    torch = _torch()
    torch.set_num_threads(_nthreads(data.workload))
    w = data.workload
    ec = torchrec.EmbeddingCollection(tables=[torchrec.EmbeddingConfig(
        name="t", embedding_dim=w.dim, num_embeddings=w.rows, feature_names=["f"])])
    with torch.no_grad():
        ec.embeddings["t"].weight.copy_(torch.from_numpy(data.dense))
    tb = _tbatches(data)

    def run(b):
        i, _, off, _ = tb[id(b)]
        with torch.inference_mode():
            return ec(torchrec.KeyedJaggedTensor(keys=["f"], values=i, offsets=off))["f"].values()

    return Case(run, lambda b: run(b).numpy().copy())


def _train_case(torch, forward, weight, slots_of, data):
    """forward(b) -> pooled output; one training step = forward, backward of
    the batch's gradient, torch.optim.Adagrad on the (sparse) gradient. The
    output checked: the forward, then the updated rows of the batch's keys
    (``slots_of(b)``: their rows in ``weight``)."""
    opt = torch.optim.Adagrad([weight], lr=LR, eps=EPS_ADAGRAD)
    tb = _tbatches(data)

    def run(b):
        opt.zero_grad(set_to_none=True)
        out = forward(b)
        out.backward(tb[id(b)][3])
        opt.step()
        return out

    def output(b):
        fwd = run(b).detach().numpy().copy()
        return np.concatenate([fwd, weight.detach()[slots_of(b)].numpy()])

    return Case(run, output)


@implements("train_adagrad", "torchrec")
def _(data):
    torchrec = _torchrec()
    torch = _torch()
    torch.set_num_threads(_nthreads(data.workload))
    ebc = _ebc(torchrec, torch, data.workload, data.dense, torchrec.PoolingType.SUM)
    _sparse_grads(torch, ebc)
    tb = _tbatches(data)

    def forward(b):
        i, _, off, _ = tb[id(b)]
        return ebc(torchrec.KeyedJaggedTensor(keys=["f"], values=i, offsets=off)).values()

    return _train_case(torch, forward, ebc.embedding_bags["t"].weight,
                       lambda b: torch.from_numpy(_unique_rows(b)), data)


# ------------------------------------------------------------- torchrec-zch
subject(
    "torchrec-zch",
    "peer",
    "TorchRec's managed-collision collections (MCHManagedCollisionModule, DistanceLFU, eviction every 4 "
    "batches) on raw IDs; pooled: MC-EBC in eval mode; lookup: MC-EC; training: MC-EBC in training mode "
    "(profile + remap + evict) with sparse gradients + torch.optim.Adagrad",
    lambda: (_torchrec(), None)[1],
)

ZCH_EVICTION_INTERVAL = 4


def _raw_ids(data):
    """Per batch, the keys as MCH takes them (in [0, 2**63 - 1): the sign bit
    cleared, checked 1:1 on the workload's keys), as torch tensors, and the
    same for all keys."""
    if "zch_ids" not in data.cache:
        torch = _torch()
        keys = data.keys & np.int64(2**63 - 1)
        if np.unique(keys).size != keys.size:  # pragma: no cover - 2 of 1e6 random 63-bit keys colliding
            raise Skip("the workload's keys collide once their sign bit is cleared")
        data.cache["zch_ids"] = (keys, {id(b): torch.from_numpy(keys[b.idx]) for b in data.batches})
    return data.cache["zch_ids"]


def _zch(data, unpooled: bool, pooling=None):
    """A managed-collision collection over the workload: zch_size = rows + 1
    (MCH keeps its last slot for IDs it does not hold), warmed up the way it
    learns IDs in training (training-mode profiling of every key, then its
    eviction pass admits them all: there is room), then each key's row
    copied to the slot MCH gave it. Returns (module, slots of all keys)."""
    torchrec = _torchrec()
    torch = _torch()
    from torchrec.modules.mc_embedding_modules import (ManagedCollisionEmbeddingBagCollection,
                                                       ManagedCollisionEmbeddingCollection)
    from torchrec.modules.mc_modules import (DistanceLFU_EvictionPolicy, ManagedCollisionCollection,
                                             MCHManagedCollisionModule)
    from torchrec.sparse.jagged_tensor import JaggedTensor

    torch.set_num_threads(_nthreads(data.workload))
    w = data.workload
    keys, _ = _raw_ids(data)
    n = w.rows + 1
    mch = MCHManagedCollisionModule(zch_size=n, device=torch.device("cpu"),
                                    eviction_policy=DistanceLFU_EvictionPolicy(),
                                    eviction_interval=ZCH_EVICTION_INTERVAL, input_hash_size=2**63 - 1)
    if unpooled:
        cfg = torchrec.EmbeddingConfig(name="t", embedding_dim=w.dim, num_embeddings=n, feature_names=["f"])
        emb = torchrec.EmbeddingCollection(tables=[cfg])
        mc = ManagedCollisionEmbeddingCollection(emb, ManagedCollisionCollection({"t": mch}, [cfg]))
        weight = emb.embeddings["t"].weight
    else:
        cfg = torchrec.EmbeddingBagConfig(name="t", embedding_dim=w.dim, num_embeddings=n, feature_names=["f"],
                                          pooling=pooling)
        emb = torchrec.EmbeddingBagCollection(tables=[cfg])
        mc = ManagedCollisionEmbeddingBagCollection(emb, ManagedCollisionCollection({"t": mch}, [cfg]))
        weight = emb.embedding_bags["t"].weight
    jt = {"f": JaggedTensor(values=torch.from_numpy(keys), lengths=torch.ones(keys.shape[0], dtype=torch.int64))}
    mch.train()
    with torch.no_grad():
        for _ in range(ZCH_EVICTION_INTERVAL):  # the last call runs MCH's eviction pass, which admits the IDs
            mch.profile(jt)
        slots = mch.remap(jt)["f"].values()
        if int((slots == n - 1).sum()):
            raise RuntimeError("torchrec-zch: MCH did not admit every key of the workload")
        weight[slots] = torch.from_numpy(data.dense)
    return mc, weight, slots


def _zch_pooled(mode: str):
    @implements(f"pooled_{mode}", "torchrec-zch")
    def _(data):
        torchrec = _torchrec()
        torch = _torch()
        pooling = torchrec.PoolingType.SUM if mode == "sum" else torchrec.PoolingType.MEAN
        mc, _, _ = _zch(data, False, pooling)
        mc.eval()  # a forward without training: remap only (no profiling, no eviction)
        _, raw = _raw_ids(data)
        tb = _tbatches(data)

        def run(b):
            with torch.inference_mode():
                kjt = torchrec.KeyedJaggedTensor(keys=["f"], values=raw[id(b)], offsets=tb[id(b)][2])
                return mc(kjt)[0].values()

        return Case(run, lambda b: run(b).numpy().copy())


for _m in ("sum", "mean"):
    _zch_pooled(_m)


@implements("lookup", "torchrec-zch")
def _(data):
    torchrec = _torchrec()
    torch = _torch()
    mc, _, _ = _zch(data, True)
    mc.eval()
    _, raw = _raw_ids(data)
    tb = _tbatches(data)

    def run(b):
        with torch.inference_mode():
            kjt = torchrec.KeyedJaggedTensor(keys=["f"], values=raw[id(b)], offsets=tb[id(b)][2])
            return mc(kjt)[0]["f"].values()

    return Case(run, lambda b: run(b).numpy().copy())


@implements("train_adagrad", "torchrec-zch")
def _(data):
    torchrec = _torchrec()
    torch = _torch()
    mc, weight, slots = _zch(data, False, torchrec.PoolingType.SUM)
    _sparse_grads(torch, mc._embedding_module)
    mc.train()
    _, raw = _raw_ids(data)
    tb = _tbatches(data)

    def forward(b):
        return mc(torchrec.KeyedJaggedTensor(keys=["f"], values=raw[id(b)], offsets=tb[id(b)][2]))[0].values()

    return _train_case(torch, forward, weight, lambda b: slots[torch.from_numpy(_unique_rows(b))], data)


# ----------------------------------------------------------------- remap+eb
subject(
    "remap+eb",
    "peer",
    "raw IDs remapped through a sorted vocabulary (np.searchsorted, unknown IDs to a zero row), then "
    "torch.nn.EmbeddingBag / index_select; training: EmbeddingBag(sparse=True) + torch.optim.Adagrad",
    _probe_torch,
)


class _Vocabulary:
    """What a NumPy/torch user with raw IDs writes: the known IDs sorted once,
    each batch's IDs found by binary search; unknown IDs read row ``n`` (zeros)."""

    def __init__(self, keys: np.ndarray):
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        n = self.sorted.shape[0]
        pos = np.minimum(np.searchsorted(self.sorted, ids), n - 1)
        pos[self.sorted[pos] != ids] = n
        return pos


def _remap(data):
    """The vocabulary and the rows in its order (plus the zero row), shared by the read-only ops."""
    if "remap_eb" not in data.cache:
        voc = _Vocabulary(data.keys)
        w = data.workload
        # On huge pages, as every subject's large arrays (EmbeddingBag reads them in place).
        rows = huge_empty((w.rows + 1, w.dim))
        rows[: w.rows] = data.dense[voc.order]
        rows[w.rows] = 0.0
        data.cache["remap_eb"] = (voc, rows)
    return data.cache["remap_eb"]


def _remap_pooled(mode: str):
    @implements(f"pooled_{mode}", "remap+eb")
    def _(data):
        torch = _torch()
        torch.set_num_threads(_nthreads(data.workload))
        voc, rows = _remap(data)
        bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(rows), freeze=True, mode=mode)
        tb = _tbatches(data)

        def run(b):
            with torch.inference_mode():
                return bag(torch.from_numpy(voc.rows(b.keys)), tb[id(b)][1])

        return Case(run, lambda b: run(b).numpy().copy())


for _m in ("sum", "mean"):
    _remap_pooled(_m)


@implements("resolve", "remap+eb")
def _(data):
    voc, _ = _remap(data)

    def run(b):
        return voc.rows(b.keys)

    # Vocabulary positions back to the workload's row numbers (embedlookup's output).
    return Case(run, lambda b: voc.order[run(b)].astype(np.int64))


@implements("lookup", "remap+eb")
def _(data):
    torch = _torch()
    torch.set_num_threads(_nthreads(data.workload))
    voc, rows = _remap(data)
    weight = torch.from_numpy(rows)

    def run(b):
        return torch.index_select(weight, 0, torch.from_numpy(voc.rows(b.keys)))

    return Case(run, lambda b: run(b).numpy().copy())


@implements("train_adagrad", "remap+eb")
def _(data):
    torch = _torch()
    torch.set_num_threads(_nthreads(data.workload))
    voc, rows = _remap(data)
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(huge_copy(rows)), freeze=False, mode="sum",
                                                sparse=True)
    tb = _tbatches(data)
    slot = np.empty(data.workload.rows, np.int64)
    slot[voc.order] = np.arange(data.workload.rows)  # dense row -> its row in vocabulary order

    def forward(b):
        return bag(torch.from_numpy(voc.rows(b.keys)), tb[id(b)][1])

    return _train_case(torch, forward, bag.weight, lambda b: torch.from_numpy(slot[_unique_rows(b)]), data)


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
