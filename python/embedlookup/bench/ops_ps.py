"""The parameter server as a subject of the suite (``embedlookup bench --suite ps``).

``ps_step`` is one training step of the embedding layer as a trainer runs it
through the parameter server: ``client.pooled_pull`` of the batch (sum
pooling; each shard pools its own keys and returns per-bag partial sums) and
``client.push_pooled`` of the batch's output gradient (the fused backward,
Adagrad applied on the shards), with a ``sync`` client, so every call is
complete when it returns. embedlookup's reference is the same step on one
in-process table: ``pooled_lookup`` + ``apply_pooled_gradients``.

Subjects (kind "backend"), each a server of ``SHARDS`` shards holding the
workload's rows (the shards' initializer is the workload's, which is
deterministic per key, and every key is pulled once before timing):

* ``ps-local``: ``backend="local"``, the shards in this process;
* ``ps-ray``: ``backend="ray"``, one Ray actor per shard on a local Ray
  cluster (started by the first case, stopped at exit); skipped where ray is
  not importable.

Beside the times, the report gets per subject (results entries and a note):
``overhead_ms_per_call``, its median time minus embedlookup's (the cost of
going through the server), and ``moved_bytes_per_call``, the bytes one step
moves between the client and the shards. That is counted from the arrays
each shard receives and returns: its keys (8 B each) and bag offsets (8 B
per bag) twice (pull and push), its partial bags (batch x dim x 4 B) on the
pull and the output gradient (batch x dim x 4 B) on the push. Framing,
pickling and request ids are not counted.
"""

from __future__ import annotations

import atexit
import statistics

import numpy as np

from .ops import EPS_ADAGRAD, LR, Case, Skip, _train_el, _el_opt, _unique_rows, implements, operation, subject
from .workloads import WorkloadData

SHARDS = 2

# (workload name, subject) -> bytes one step moves between client and shards
_MOVED: dict = {}


def moved_bytes(data: WorkloadData, num_shards: int) -> int:
    """Bytes one ``ps_step`` moves between the client and the shards,
    averaged over the workload's batches: every shard that holds keys of the
    batch gets its keys and the offsets of every bag on the pull and again on
    the push, returns every bag's partial sum and gets every bag's gradient."""
    from ..sharding import shard_of

    w = data.workload
    per = []
    for b in data.batches:
        contacted = np.unique(shard_of(b.keys, num_shards)).size
        per.append(2 * 8 * b.keys.shape[0] + 2 * contacted * w.batch * (8 + 4 * w.dim))
    return int(statistics.mean(per))


def _annotate(report: dict) -> None:
    """Adds ``overhead_ms_per_call`` and ``moved_bytes_per_call`` to the PS
    subjects' results of ``ps_step``, and one note per subject."""
    el = {r["workload"]: r for r in report["results"]
          if r["op"] == "ps_step" and r["subject"] == "embedlookup" and r["status"] == "ok"}
    for r in report["results"]:
        if r["op"] != "ps_step" or r["subject"] == "embedlookup":
            continue
        moved = _MOVED.get((r["workload"], r["subject"]))
        if moved is not None:
            r["moved_bytes_per_call"] = moved
        ref = el.get(r["workload"])
        if r["status"] != "ok" or ref is None:
            continue
        r["overhead_ms_per_call"] = (r["median_s"] - ref["median_s"]) * 1e3
        share = 1.0 / r["speedup_vs_embedlookup"] if r.get("speedup_vs_embedlookup") else float("nan")
        report["notes"].append(
            f"{r['workload']} ps_step {r['subject']}: {share:.0%} of the in-process fused step's speed, "
            f"overhead {r['overhead_ms_per_call']:.2f} ms/call, "
            f"{(moved or 0) / 2**20:.2f} MiB moved between client and {SHARDS} shards per step")


operation(
    "ps_step",
    "a training step through the parameter server (2 shards, sync client): pooled_pull (sum) + push_pooled "
    "(Adagrad on the shards); embedlookup: pooled_lookup + apply_pooled_gradients on one table; "
    "rows = keys read + distinct rows updated",
    lambda w, b: b.keys.shape[0] + b.distinct,
).annotate = _annotate


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
        f"sync client", _probe_ray)

implements("ps_step", "embedlookup")(_train_el(_el_opt("Adagrad", lr=LR, eps=EPS_ADAGRAD)))

_ray_started = []


def _ps_case(backend: str, subject_name: str):
    def factory(data: WorkloadData) -> Case:
        from .. import optim, ps

        w = data.workload
        if backend == "ray":
            import ray

            if not ray.is_initialized() and not _ray_started:
                # one local cluster for the whole run, stopped at exit
                ray.init(num_cpus=max(2, SHARDS), include_dashboard=False, log_to_driver=False)
                _ray_started.append(True)
                atexit.register(ray.shutdown)
        server = ps.ParameterServer(w.dim, SHARDS, table="embedding",
                                    table_options={"initializer": data.initializer(),
                                                   "num_threads": w.threads or None},
                                    optimizer=optim.Adagrad(lr=LR, eps=EPS_ADAGRAD), backend=backend)
        client = server.client(mode="sync")
        step = 1 << 17
        for lo in range(0, w.rows, step):  # every row on its shard before timing, as in the table
            client.pull(data.keys[lo:lo + step])
        _MOVED[(w.name, subject_name)] = moved_bytes(data, SHARDS)

        def run(b):
            out = client.pooled_pull(b.keys, b.offsets, "sum")
            client.push_pooled(b.keys, b.offsets, b.grad, "sum")
            return out

        def output(b):
            fwd = np.asarray(run(b)).copy()
            return np.concatenate([fwd, client.pull(data.keys[_unique_rows(b)])])

        run.server = server  # lives as long as the case
        return Case(run, output)

    return factory


implements("ps_step", "ps-local")(_ps_case("local", "ps-local"))
implements("ps_step", "ps-ray")(_ps_case("ray", "ps-ray"))
