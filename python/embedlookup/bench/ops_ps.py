"""The parameter server as a subject of the suite (``embedlookup bench --suite ps``).

``ps_step`` is one training step of the embedding layer as a trainer runs it
through the parameter server: ``client.pooled_pull`` of the batch (sum
pooling; each shard pools its own keys and returns per-bag partial sums) and
``client.push_pooled`` of the batch's output gradient (the fused backward,
Adagrad applied on the shards), with a ``sync`` client, so every call is
complete when it returns. embedlookup's reference is the same step on one
in-process table: ``pooled_lookup`` + ``apply_pooled_gradients``.

``ps_call`` is the same on one bag of one key: the fixed cost of a pull and
a push round trip (latency, not bandwidth).

``ps_step_bounded`` is ps_step with a ``bounded:2`` client (a push returns
while the shards apply it), and ``ps_step_cache`` adds the trainer-side
cache (``cache_rows`` = a fifth of the rows): the cache's effect on step
time is ps_step_cache against ps_step_bounded (suite ``ps-cache``, Zipf
keys). Their check reads the rows through a second, sync client after a
flush (the cache serves rows up to 2 pushes old by design).

Subjects (kind "backend"), each a server of ``SHARDS`` shards holding the
workload's rows (the shards' initializer is the workload's, which is
deterministic per key, and every key is pulled once before timing):

* ``ps-local``: ``backend="local"``, the shards in this process;
* ``ps-ray``: ``backend="ray"``, one Ray actor per shard on a local Ray
  cluster (the running one, else the server starts one), with
  ``transport="tasks"`` (one actor task per shard and call); skipped where
  ray is not importable. The default transport, "auto", uses a compiled
  graph during a stream of calls and drops it when idle, which the
  interleaved rounds here would turn into a rebuild per round: it is timed
  alone by bench/bench_ps_isolated.py (subject ray-auto);
* ``ps-ray-graph``: the same with ``transport="graph"`` (the data calls
  through a Ray compiled graph, docs/ps.md "Ray transport"), ``ps_step`` and
  ``ps_call`` only. Its actors poll for input even while idle, so in an
  interleaved run they take CPU from the other subjects' rounds (the
  in-process reference's too, which flatters every ratio of the run);
  bench/bench_ps_isolated.py times each subject in its own process.

Beside the times, the report gets per subject and op (results entries and a note):
``overhead_ms_per_call``, its median time minus embedlookup's (the cost of
going through the server), and ``moved_bytes_per_call``, the bytes one step
moves between the client and the shards as the client counts them
(``bytes_sent`` + ``bytes_received`` over one step: what every shard
receives, its own keys of the batch, one offset per bag and for the push the
output gradient, plus each shard's partial bags received; the gradient
counts once per shard that receives it, though the Ray backend puts it in
the object store once). Framing, pickling and request ids are not counted.

Threads: the in-process table runs on the workload's threads (0: all
cores); each shard gets that many divided by the shards (at least one), so
both sides use the same cores.
"""

from __future__ import annotations

import functools
import os
import numpy as np

from .ops import EPS_ADAGRAD, LR, Case, Skip, _train_el, _el_opt, _unique_rows, implements, operation, subject
from .workloads import WorkloadData

SHARDS = 2

# (workload name, op, subject) -> bytes one call moves between client and shards
_MOVED: dict = {}


def _annotate(op: str, report: dict) -> None:
    """Adds ``overhead_ms_per_call`` and ``moved_bytes_per_call`` to the PS
    subjects' results of ``op``, and one note per subject and workload."""
    ok = [r for r in report["results"] if r["op"] == op and r["status"] == "ok"]
    el = {(r["workload"], r["op"]): r for r in ok if r["subject"] == "embedlookup"}
    for r in report["results"]:
        if r["op"] != op or r["subject"] == "embedlookup":
            continue
        moved = _MOVED.get((r["workload"], r["op"], r["subject"]))
        if moved is not None:
            r["moved_bytes_per_call"] = moved
        ref = el.get((r["workload"], r["op"]))
        if r["status"] != "ok" or ref is None:
            continue
        r["overhead_ms_per_call"] = (r["median_s"] - ref["median_s"]) * 1e3
        share = 1.0 / r["speedup_vs_embedlookup"] if r.get("speedup_vs_embedlookup") else float("nan")
        report["notes"].append(
            f"{r['workload']} {r['op']} {r['subject']}: {share:.0%} of the in-process table's speed, "
            f"overhead {r['overhead_ms_per_call']:.3f} ms/call, "
            f"{(moved or 0) / 2**20:.3f} MiB moved between client and {SHARDS} shards per call")


_OPS = ("ps_step", "ps_call", "ps_step_bounded", "ps_step_cache")
#: ps_step_bounded / ps_step_cache: the client's staleness bound and the cache's rows (a fifth of uniform-1m's
#: and zipf-1m's rows: Zipf's hot rows fit; a uniform batch would mostly miss).
BOUND, CACHE_FRACTION = 2, 0.2
def _step_rows(w, b):
    return b.keys.shape[0] + b.distinct


for _name, _doc, _rows in (
    ("ps_step", "a training step through the parameter server (2 shards, sync client): pooled_pull (sum) + "
     "push_pooled (Adagrad on the shards); embedlookup: pooled_lookup + apply_pooled_gradients on one table; "
     "rows = keys read + distinct rows updated", _step_rows),
    ("ps_call", "ps_step on one bag of one key (the batch's first): the fixed cost of a pull and a push round "
     "trip; rows = 2", lambda w, b: 2),
    ("ps_step_bounded", f"ps_step with a bounded:{BOUND} client (a push returns while the shards apply it; at "
     f"most {BOUND} in flight): the same step with overlap, no cache; rows as ps_step", _step_rows),
    ("ps_step_cache", f"ps_step_bounded with the trainer-side cache (cache_rows = {CACHE_FRACTION:g} x the "
     "workload's rows): a pooled pull pools on the client from cached rows and pulls only the missing keys; "
     "rows as ps_step", _step_rows),
):
    operation(_name, _doc, _rows).annotate = functools.partial(_annotate, _name)


def _probe_ps():
    try:
        from .. import ps  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not here"
        raise Skip(f"embedlookup.ps is not importable ({type(e).__name__}: {e})") from None


def _probe_ray():
    _probe_ps()
    try:
        import ray  # noqa: F401
    except Exception as e:  # noqa: BLE001
        raise Skip(f"ray is not importable ({type(e).__name__}: {e}); pip install 'embedlookup[ps]'") from None


subject("ps-local", "backend", f"embedlookup.ps.ParameterServer, backend='local', {SHARDS} shards, sync client",
        _probe_ps)
subject("ps-ray", "backend",
        f"embedlookup.ps.ParameterServer, backend='ray' (one actor per shard, local cluster), {SHARDS} shards, "
        f"sync client (transport='tasks': one actor task per shard and call)", _probe_ray)
subject("ps-ray-graph", "backend",
        "ps-ray with transport='graph': the data calls through a Ray compiled graph (its idle actors poll: "
        "they take CPU from the other subjects' rounds; bench/bench_ps_isolated.py times each alone)",
        _probe_ray)

for _op in ("ps_step", "ps_step_bounded", "ps_step_cache"):  # one reference: the in-process fused step
    implements(_op, "embedlookup")(_train_el(_el_opt("Adagrad", lr=LR, eps=EPS_ADAGRAD)))


def _one_key(b):
    """(keys, offsets, grad) of ps_call: one bag holding the batch's first key."""
    return b.keys[:1], b.offsets[:1], b.grad[:1]


@implements("ps_call", "embedlookup")
def _(data):
    from .. import optim

    t = data.fresh_table()
    opt = optim.Adagrad(lr=LR, eps=EPS_ADAGRAD)

    def run(b):
        k, off, g = _one_key(b)
        out = t.pooled_lookup(k, off, mode="sum")
        t.apply_pooled_gradients(k, off, g, opt)
        return out

    def output(b):
        return np.concatenate([run(b), t.lookup(_one_key(b)[0])])

    return Case(run, output)


def _ps_case(op: str, backend: str, subject_name: str, **server_options):
    def factory(data: WorkloadData) -> Case:
        from .. import optim, ps

        w = data.workload
        threads = max(1, (w.threads or os.cpu_count() or 1) // SHARDS)
        server = ps.ParameterServer(w.dim, SHARDS, table="embedding",
                                    table_options={"initializer": data.initializer(), "num_threads": threads},
                                    optimizer=optim.Adagrad(lr=LR, eps=EPS_ADAGRAD), backend=backend,
                                    **server_options)
        if op == "ps_step_cache":
            client = server.client(mode=f"bounded:{BOUND}", cache_rows=max(1, int(CACHE_FRACTION * w.rows)))
        else:
            client = server.client(mode=f"bounded:{BOUND}" if op == "ps_step_bounded" else "sync")
        exact = server.client(mode="sync")  # reads the rows for the check (a cache serves stale ones)
        step = 1 << 17
        for lo in range(0, w.rows, step):  # every row on its shard before timing, as in the table
            exact.pull(data.keys[lo:lo + step])

        def parts(b):
            return _one_key(b) if op == "ps_call" else (b.keys, b.offsets, b.grad)

        def run(b):
            k, off, g = parts(b)
            out = client.pooled_pull(k, off, "sum")
            client.push_pooled(k, off, g, "sum")
            return out

        def output(b):
            before = client.bytes_sent + client.bytes_received
            fwd = np.asarray(run(b)).copy()
            _MOVED[(w.name, op, subject_name)] = client.bytes_sent + client.bytes_received - before
            k = parts(b)[0] if op == "ps_call" else data.keys[_unique_rows(b)]
            client.flush()  # every push applied
            return np.concatenate([fwd, exact.pull(k)])

        return Case(run, output, close=server.shutdown)  # the op is done: the server's processes stop

    return factory


for _op in _OPS:
    implements(_op, "ps-local")(_ps_case(_op, "local", "ps-local"))
    implements(_op, "ps-ray")(_ps_case(_op, "ray", "ps-ray", transport="tasks"))
for _op in ("ps_step", "ps_call"):
    implements(_op, "ps-ray-graph")(_ps_case(_op, "ray", "ps-ray-graph", transport="graph"))
