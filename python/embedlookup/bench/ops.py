"""Benchmarked operations and the implementations that run them.

An :class:`Operation` names what is measured (``pooled_sum``, ``update``,
...) and how many bytes one call moves; an implementation of it for one
*subject* (``embedlookup``, a peer such as ``torch``, a backend such as
``opencl``) is a factory ``f(data) -> Case`` registered with
:func:`implements`. The storage and eviction operations (:mod:`.ops_storage`)
and backends (OpenCL, CUDA) plug in the same way, from any module imported
before the run::

    @operation("evict", "evict 10% coldest rows", rows=lambda w, b: ...)
    ...
    @implements("evict", "embedlookup")
    def _(data): ...

Every op must have an ``embedlookup`` implementation: it is the reference
each other subject's output is checked against before anything is timed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .._checks import huge_copy, huge_empty
from .workloads import Batch, Workload, WorkloadData

__all__ = ["OPS", "SUBJECTS", "Case", "Operation", "Skip", "Subject", "implements", "operation", "subject"]


class Skip(Exception):
    """Raised by a factory (or a subject's probe) when it cannot run here; the message says why."""


@dataclass
class Case:
    """One subject's prepared implementation of one operation on one workload.

    ``run(batch)`` is the timed call. ``output(batch)`` runs the operation
    once from the case's initial state and returns what must equal the
    reference (called once, before any ``run``). ``after()`` runs untimed
    after each timed sample (e.g. to undo inserts). ``close()`` runs once
    when the op is done with the case (e.g. stops a server)."""

    run: Callable[[Batch], object]
    output: Callable[[Batch], np.ndarray]
    after: Callable[[], None] | None = None
    close: Callable[[], None] | None = None
    max_inner: int = 1000


@dataclass
class Operation:
    name: str
    doc: str
    rows: Callable[[Workload, Batch], int]  # rows moved per call (x row bytes = effective bytes)
    impls: dict = field(default_factory=dict)  # subject -> factory(data) -> Case
    rounds: int | None = None  # at most this many rounds (a heavy op, e.g. a whole-table checkpoint)
    # Called with the finished report: adds the op's own figures to its results and notes.
    annotate: Callable[[dict], None] | None = None
    # Of `rows`, those read and written back (a training step's distinct rows and
    # state): the suite's own limit for the op counts them at the measured
    # read-modify-write rate and the rest at the gather rate.
    rmw_rows: Callable[[Workload, Batch], float] | None = None


@dataclass
class Subject:
    name: str
    kind: str  # "embedlookup" | "backend" | "peer" | "floor"
    doc: str
    probe: Callable[[], None] = lambda: None  # raises Skip when unavailable


OPS: dict[str, Operation] = {}
SUBJECTS: dict[str, Subject] = {}


def operation(
    name: str, doc: str, rows: Callable[[Workload, Batch], int], rounds: int | None = None
) -> Operation:
    op = OPS.setdefault(name, Operation(name, doc, rows, rounds=rounds))
    return op


def subject(name: str, kind: str, doc: str, probe: Callable[[], None] | None = None) -> Subject:
    s = Subject(name, kind, doc, probe or (lambda: None))
    SUBJECTS[name] = s
    return s


def implements(op: str, who: str):
    """Registers ``factory(data) -> Case`` as ``who``'s implementation of ``op``."""

    def deco(factory):
        if op not in OPS:
            raise KeyError(f"implements: unknown operation {op!r}; register it with operation() first")
        if who not in SUBJECTS:
            raise KeyError(f"implements: unknown subject {who!r}; register it with subject() first")
        OPS[op].impls[who] = factory
        return factory

    return deco


# --------------------------------------------------------------- subjects
def _probe_torch():
    try:
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not here"
        raise Skip(f"torch is not importable ({type(e).__name__}: {e})") from None


def _fbgemm():
    _probe_torch()
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import fbgemm_gpu  # noqa: F401
            from fbgemm_gpu.split_embedding_configs import EmbOptimType
            from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
            from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
                ComputeDevice,
                SplitTableBatchedEmbeddingBagsCodegen,
            )
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise Skip(
            f"fbgemm_gpu is not importable ({type(e).__name__}: {first}); "
            f"pip install fbgemm-gpu-cpu==1.8.0 (pairs with torch 2.13)"
        ) from None
    return SplitTableBatchedEmbeddingBagsCodegen, EmbeddingLocation, ComputeDevice, PoolingMode, EmbOptimType


def _opencl():
    try:
        from .. import opencl

        return opencl.OpenCLTable
    except Exception as e:  # noqa: BLE001
        raise Skip(f"embedlookup.opencl is not available ({type(e).__name__}: {e})") from None


subject("embedlookup", "embedlookup", "the hashed table, CPU kernels")
subject(
    "opencl",
    "backend",
    "embedlookup.opencl.OpenCLTable on the first OpenCL device",
    lambda: (_opencl(), None)[1],
)
subject(
    "torch",
    "peer",
    "torch.nn.EmbeddingBag / index_select on a dense matrix (dense remapped indices); "
    "training: EmbeddingBag(sparse=True) + torch.optim",
    _probe_torch,
)
subject(
    "fbgemm",
    "peer",
    "FBGEMM CPU table-batched embedding (fbgemm_gpu SplitTableBatchedEmbeddingBagsCodegen)",
    lambda: (_fbgemm(), None)[1],
)
subject("numpy", "floor", "NumPy take + reduce (equal-size bags) or reduceat on a dense matrix", None)


# -------------------------------------------------------------- operations
def _n(w, b):
    return b.keys.shape[0]


operation("lookup", "rows of batch x pooling keys (no pooling)", _n)
for _m in ("sum", "mean", "max"):
    operation(f"pooled_{_m}", f"pooled lookup, mode={_m!r} (EmbeddingBag semantics)", _n)
operation(
    "update",
    "fused Adagrad step from per-key gradients (duplicates merged); rows = distinct keys",
    lambda w, b: b.distinct,
)


def _train_rows(state_bytes_per_row, backward_only=False):
    """Bytes a training step moves, in rows: the forward reads a row per key;
    the backward reads and writes each distinct row and its optimizer state
    (state_bytes_per_row(w) bytes). Gradients (batch x dim) stay in cache.
    ``backward_only``: the backward's read-and-written part alone."""

    def rows(w, b):
        rmw = 2 * b.distinct * (1 + state_bytes_per_row(w) / w.row_bytes)
        return rmw if backward_only else b.keys.shape[0] + rmw

    return rows


def _train_op(name, doc, state_bytes_per_row):
    op = operation(name, doc, _train_rows(state_bytes_per_row))
    op.rmw_rows = _train_rows(state_bytes_per_row, backward_only=True)
    return op


_train_op(
    "train_adagrad",
    "pooled sum forward + backward + Adagrad step; rows = keys read + distinct rows and their "
    "Adagrad state (a row) read and written",
    lambda w: w.row_bytes,
)
_train_op(
    "train_rowwise",
    "as train_adagrad with row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD; state 4 bytes a row)",
    lambda w: 4,
)
_train_op(
    "train_rowwise_resolved",
    "train_rowwise over keys resolved ahead (EmbeddingTable.resolve, untimed: the input stage, as the "
    "peers' dense indices are remapped before their step)",
    lambda w: 4,
)
_train_op(
    "train_adam",
    "as train_adagrad with lazy sparse Adam (torch.optim.SparseAdam; state two rows)",
    lambda w: 2 * w.row_bytes,
)
operation(
    "insert",
    "insert `batch` new keys into the table (rows written; erased again untimed)",
    lambda w, b: w.batch,
)

LR = 0.01
EPS_ADAGRAD = 1e-8


def _nthreads(w: Workload) -> int:
    return w.threads or os.cpu_count() or 1


def _torch():
    import warnings

    import torch

    # torch's sparse optimizers warn on every step that invariant checks are off
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    return torch


def _tbatches(data: WorkloadData):
    """Per batch, torch views of the dense indices and offsets (cached)."""
    if "tbatches" not in data.cache:
        torch = _torch()
        data.cache["tbatches"] = {
            id(b): (
                torch.from_numpy(b.idx),
                torch.from_numpy(b.offsets),
                torch.from_numpy(b.offsets_full),
                torch.from_numpy(b.grad),
            )
            for b in data.batches
        }
    return data.cache["tbatches"]


def _expanded_grad(data: WorkloadData, b: Batch) -> np.ndarray:
    """Per-key gradient of a sum-pooled batch: each bag's gradient repeated for its keys."""
    cache = data.cache.setdefault("expanded_grad", {})
    if id(b) not in cache:
        cache[id(b)] = np.repeat(b.grad, np.diff(b.offsets_full), axis=0)
    return cache[id(b)]


def _fbgemm_table(data: WorkloadData, optimizer: str, **kw):
    """A one-table FBGEMM CPU TBE (sum pooling) holding the workload's rows."""
    TBE, Loc, Dev, Pool, Opt = _fbgemm()
    torch = _torch()
    torch.set_num_threads(_nthreads(data.workload))
    w = data.workload
    emb = TBE(
        embedding_specs=[(w.rows, w.dim, Loc.HOST, Dev.CPU)],
        optimizer=getattr(Opt, optimizer),
        pooling_mode=Pool.SUM,
        **kw,
    )
    with torch.no_grad():
        emb.split_embedding_weights()[0].copy_(torch.from_numpy(data.dense))
    return emb


def _unique_rows(b: Batch) -> np.ndarray:
    return np.unique(b.idx)


# ----------------------------------------------------------- lookup, pooled
@implements("lookup", "embedlookup")
def _(data):
    t, w = data.table, data.workload
    buf = huge_empty((w.lookups, w.dim))

    def run(b):
        return t.lookup(b.keys, out=buf)

    return Case(run, lambda b: run(b).copy())


@implements("lookup", "torch")
def _(data):
    torch = _torch()
    torch.set_num_threads(_nthreads(data.workload))
    weight, tb = torch.from_numpy(data.dense), _tbatches(data)
    buf = torch.from_numpy(huge_empty((data.workload.lookups, data.workload.dim)))

    def run(b):
        return torch.index_select(weight, 0, tb[id(b)][0], out=buf)

    return Case(run, lambda b: run(b).numpy().copy())


@implements("lookup", "numpy")
def _(data):
    buf = huge_empty((data.workload.lookups, data.workload.dim))

    def run(b):
        return np.take(data.dense, b.idx, axis=0, out=buf)

    return Case(run, lambda b: run(b).copy())


def torch_bag_case(data: WorkloadData, dense: np.ndarray, mode: str) -> Case:
    """A dense float32 torch.nn.EmbeddingBag over ``dense`` (the workload's row order)."""
    torch = _torch()
    torch.set_num_threads(_nthreads(data.workload))
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(dense), freeze=True, mode=mode)
    tb = _tbatches(data)

    def run(b):
        with torch.inference_mode():
            i, off, _, _ = tb[id(b)]
            return bag(i, off)

    return Case(run, lambda b: run(b).numpy().copy())


def _pooled(mode: str):
    op = f"pooled_{mode}"

    @implements(op, "embedlookup")
    def _el(data):
        t, w = data.table, data.workload
        buf = huge_empty((w.batch, w.dim))

        def run(b):
            return t.pooled_lookup(b.keys, b.offsets, mode=mode, out=buf)

        return Case(run, lambda b: run(b).copy())

    @implements(op, "opencl")
    def _ocl(data):
        OpenCLTable = _opencl()
        key = "opencl_table"
        if key not in data.cache:
            # as many compute units (threads on a CPU device) as the others get
            data.cache[key] = OpenCLTable(data.table, compute_units=_nthreads(data.workload))
        ot = data.cache[key]

        def run(b):
            return ot.pooled_lookup(b.keys, b.offsets, mode=mode)

        return Case(run, lambda b: np.asarray(run(b)).copy())

    @implements(op, "torch")
    def _torch_bag(data):
        return torch_bag_case(data, data.dense, mode)

    @implements(op, "fbgemm")
    def _fb(data):
        Pool = _fbgemm()[3]
        if mode == "max":
            raise Skip("FBGEMM's table-batched embedding has no max pooling")
        torch = _torch()
        torch.set_num_threads(_nthreads(data.workload))
        if "fbgemm_tbe" not in data.cache:  # one copy of the rows, shared by sum and mean
            data.cache["fbgemm_tbe"] = _fbgemm_table(data, "EXACT_SGD", learning_rate=0.0)
        emb = data.cache["fbgemm_tbe"]
        pm = Pool.SUM if mode == "sum" else Pool.MEAN
        tb = _tbatches(data)

        def run(b):
            emb.pooling_mode = pm
            with torch.no_grad():
                i, _, off, _ = tb[id(b)]
                return emb(i, off)

        return Case(run, lambda b: run(b).numpy().copy())

    @implements(op, "numpy")
    def _np(data):
        w = data.workload
        rows, pooled = huge_empty((w.lookups, w.dim)), huge_empty((w.batch, w.dim))
        red = {"sum": np.add, "mean": np.add, "max": np.maximum}[mode]
        bags = {}  # per batch, once, not in every timed call: (bag lengths as a column, all equal?)

        def run(b):
            if id(b) not in bags:
                n = np.diff(b.offsets_full)
                bags[id(b)] = (n.astype(np.float32)[:, None], n.size == w.batch and (n == w.pooling).all())
            n, equal = bags[id(b)]
            np.take(data.dense, b.idx, axis=0, out=rows)
            if equal:
                # Bags of one size, as NumPy users pool them: a reduction over
                # the middle axis, ~10x faster than reduceat (which loops per bag).
                out = red.reduce(rows.reshape(w.batch, w.pooling, w.dim), axis=1, out=pooled)
            else:
                out = red.reduceat(rows, b.offsets, axis=0)
            if mode == "mean":
                out /= n
            return out

        return Case(run, lambda b: run(b).copy())


for _m in ("sum", "mean", "max"):
    _pooled(_m)


# ---------------------------------------------- resolved a batch ahead
# A training or serving pipeline resolves batch t+1's keys while batch t
# computes (TorchRec remaps IDs in its input stage the same way): the lookup
# itself then reads rows by id, as EmbeddingBag reads dense indices. `resolve`
# is that input stage, timed on its own against the NumPy user's remap.
operation(
    "pooled_sum_resolved",
    "pooled sum over keys resolved ahead (EmbeddingTable.resolve, untimed: the input stage) "
    "vs peers on dense indices",
    _n,
)
operation(
    "resolve",
    "keys to row ids, the input stage of *_resolved (index lines, not rows); rows = keys x 64 B / row bytes",
    lambda w, b: max(1, b.keys.shape[0] * 64 // w.row_bytes),
)


def resolved_case(table, data: WorkloadData, mode: str = "sum") -> Case:
    """Pooled lookups of ``table`` over each batch's keys resolved once, before timing."""
    w = data.workload
    buf = huge_empty((w.batch, w.dim))
    res = {id(b): table.resolve(b.keys) for b in data.batches}

    def run(b):
        return table.pooled_lookup(b.keys, b.offsets, mode=mode, out=buf, resolved=res[id(b)])

    return Case(run, lambda b: run(b).copy())


@implements("pooled_sum_resolved", "embedlookup")
def _(data):
    return resolved_case(data.table, data)


implements("pooled_sum_resolved", "torch")(lambda data: torch_bag_case(data, data.dense, "sum"))
implements("pooled_sum_resolved", "fbgemm")(OPS["pooled_sum"].impls["fbgemm"])


@implements("resolve", "embedlookup")
def _(data):
    t = data.table

    def run(b):
        return t.resolve(b.keys).ids

    # Key i holds arena slot i (WorkloadData.generate): the ids are the keys'
    # row numbers, which the remap peer computes too.
    return Case(run, lambda b: run(b).astype(np.int64))


# ------------------------------------------------------------------ update
@implements("update", "embedlookup")
def _(data):
    from .. import optim

    t = data.fresh_table()
    opt = optim.Adagrad(lr=LR, eps=EPS_ADAGRAD)

    def run(b):
        t.apply_gradients(b.keys, _expanded_grad(data, b), opt)

    def output(b):
        run(b)
        return t.lookup(data.keys[_unique_rows(b)])

    return Case(run, output)


@implements("update", "torch")
def _(data):
    torch = _torch()
    torch.set_num_threads(_nthreads(data.workload))
    w = data.workload
    param = torch.nn.Parameter(torch.from_numpy(huge_copy(data.dense)))
    opt = torch.optim.Adagrad([param], lr=LR, eps=EPS_ADAGRAD)
    tb = _tbatches(data)
    tg = {id(b): torch.from_numpy(_expanded_grad(data, b)) for b in data.batches}

    def run(b):
        i = tb[id(b)][0]
        param.grad = torch.sparse_coo_tensor(i[None], tg[id(b)], (w.rows, w.dim), check_invariants=False)
        opt.step()

    def output(b):
        run(b)
        return param.detach()[torch.from_numpy(_unique_rows(b))].numpy().copy()

    return Case(run, output)


# ---------------------------------------------------------------- training
def _train_el(make_opt):
    """The training step as a torch user runs it: HashEmbeddingBag's forward
    keeps the row ids its keys resolved to, and its backward updates those
    rows without probing the index again (the table's NumPy calls
    pooled_lookup + apply_pooled_gradients resolve the keys twice; they are
    timed that way only where torch is missing)."""

    def factory(data):
        t = data.fresh_table()
        opt = make_opt()
        w = data.workload
        try:
            torch = _torch()
            from ..torch import HashEmbeddingBag
        except ImportError:
            torch = None
        if torch is None:
            buf = huge_empty((w.batch, w.dim))

            def run(b):
                out = t.pooled_lookup(b.keys, b.offsets, mode="sum", out=buf)
                t.apply_pooled_gradients(b.keys, b.offsets, b.grad, opt)  # fused backward
                return out

            def fwd(b):
                return run(b).copy()
        else:
            bag = HashEmbeddingBag(w.dim, mode="sum", optimizer=opt, table=t)
            tk = {id(b): (torch.from_numpy(b.keys), torch.from_numpy(b.offsets), torch.from_numpy(b.grad))
                  for b in data.batches}

            def run(b):
                k, off, g = tk[id(b)]
                out = bag(k, off)
                out.backward(g)  # fused backward on the forward's row ids
                return out

            def fwd(b):
                return run(b).detach().numpy().copy()

        def output(b):
            return np.concatenate([fwd(b), t.lookup(data.keys[_unique_rows(b)])])

        return Case(run, output)

    return factory


def _train_torch(make_opt):
    def factory(data):
        torch = _torch()
        torch.set_num_threads(_nthreads(data.workload))
        bag = torch.nn.EmbeddingBag.from_pretrained(
            torch.from_numpy(huge_copy(data.dense)), freeze=False, mode="sum", sparse=True
        )
        opt = make_opt(torch, bag.parameters())
        tb = _tbatches(data)

        def run(b):
            i, off, _, g = tb[id(b)]
            opt.zero_grad(set_to_none=True)
            out = bag(i, off)
            out.backward(g)
            opt.step()
            return out

        def output(b):
            fwd = run(b).detach().numpy().copy()
            rows = bag.weight.detach()[torch.from_numpy(_unique_rows(b))].numpy()
            return np.concatenate([fwd, rows])

        return Case(run, output)

    return factory


def _el_opt(name, **kw):
    def make():
        from .. import optim

        return getattr(optim, name)(**kw)

    return make


implements("train_adagrad", "embedlookup")(_train_el(_el_opt("Adagrad", lr=LR, eps=EPS_ADAGRAD)))
implements("train_adagrad", "torch")(
    _train_torch(lambda torch, p: torch.optim.Adagrad(p, lr=LR, eps=EPS_ADAGRAD))
)
implements("train_adam", "embedlookup")(_train_el(_el_opt("Adam", lr=LR)))
implements("train_adam", "torch")(_train_torch(lambda torch, p: torch.optim.SparseAdam(list(p), lr=LR)))
implements("train_rowwise", "embedlookup")(
    _train_el(_el_opt("Adagrad", lr=LR, eps=EPS_ADAGRAD, rowwise=True))
)


@implements("train_rowwise_resolved", "embedlookup")
def _(data):
    """The NumPy API's step on ids resolved before timing: the lookup reads
    rows by id and the fused backward updates the same ids."""
    from .. import optim

    t = data.fresh_table()
    opt = optim.Adagrad(lr=LR, eps=EPS_ADAGRAD, rowwise=True)
    w = data.workload
    buf = huge_empty((w.batch, w.dim))
    res = {id(b): t.resolve(b.keys) for b in data.batches}

    def run(b):
        out, ids = t.pooled_lookup(b.keys, b.offsets, mode="sum", out=buf, resolved=res[id(b)], return_ids=True)
        t.apply_pooled_gradients(b.keys, b.offsets, b.grad, opt, forward_ids=ids)
        return out

    def output(b):
        fwd = run(b).copy()
        return np.concatenate([fwd, t.lookup(data.keys[_unique_rows(b)])])

    return Case(run, output)


@implements("train_rowwise_resolved", "fbgemm")
@implements("train_rowwise", "fbgemm")
def _(data):
    torch = _torch()
    emb = _fbgemm_table(data, "EXACT_ROWWISE_ADAGRAD", learning_rate=LR, eps=EPS_ADAGRAD)
    tb = _tbatches(data)

    def run(b):
        i, _, off, g = tb[id(b)]
        out = emb(i, off)
        out.backward(g)
        return out

    def output(b):
        fwd = run(b).detach().numpy().copy()
        rows = emb.split_embedding_weights()[0].detach()[torch.from_numpy(_unique_rows(b))].numpy()
        return np.concatenate([fwd, rows])

    return Case(run, output)


# ------------------------------------------------------------------ insert
def fresh_keys(data: WorkloadData, n: int, salt: int) -> np.ndarray:
    """Up to ``n`` keys the workload's table does not hold: a different seed's
    key space (disjoint with overwhelming probability; any overlap, found with
    the table's own index, is dropped)."""
    from .workloads import mix_keys

    pool = mix_keys(n, data.workload.seed + salt)
    return pool[~data.table.find(pool)[1]]


@implements("insert", "embedlookup")
def _(data):
    t, w = data.table, data.workload
    chunks = 64
    pool = fresh_keys(data, chunks * w.batch, 0x5EED)
    per = pool.shape[0] // chunks
    state = {"next": 0, "used": []}
    buf = huge_empty((per, w.dim))

    def run(b):
        k = pool[state["next"] * per : (state["next"] + 1) * per]
        state["next"] = (state["next"] + 1) % chunks
        state["used"].append(k)
        return t.lookup(k, out=buf)

    def after():
        if state["used"]:
            t.erase(np.concatenate(state["used"]))
        state["used"].clear()
        state["next"] = 0

    def output(b):
        out = run(b).copy()
        after()
        return out

    # Bound the keys one sample inserts (a quarter of the table) so samples
    # time inserts, not ever more table growth.
    return Case(run, output, after=after, max_inner=int(min(chunks, max(1, w.rows // (4 * max(per, 1))))))
