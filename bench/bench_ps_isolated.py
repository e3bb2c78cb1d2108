"""The W1 training step through the parameter server, each subject in its
own process, processes alternated: a Ray compiled graph's actors (and the
client waiting on them) poll for input, so a graph alive in the process or
on the node while another subject is timed takes CPU from it; the suite
(``embedlookup bench --suite ps``) keeps every subject's server alive for
the whole run. Here nothing else runs while a subject is timed.

Subjects: ``inprocess`` (one EmbeddingTable: pooled_lookup + fused
apply_pooled_gradients on the forward's ids, all cores), ``local``,
``ray-auto`` (the default transport, "auto": a compiled graph once the
calls come in a stream), ``ray-graph`` (transport="graph"), ``ray-tasks``
(transport="tasks"); 2 shards, one thread each. 1 M x 64 rows, batch 4096 x 32, uniform keys,
Adagrad. Each process: warm-up, then ``--steps`` timed steps; its median.
The ratios are medians over the alternations of (in-process median / the
subject's median) of neighbouring processes. Where the time goes, per step
(medians over the alternations): the client process's CPU time, and each
shard's time inside ``pooled_pull`` / ``push_pooled`` (``busy_s``; the
slower shard's). ``--wait-share 0`` turns the graph client's sleep before
reading off (it then polls from the submission on, as before GraphWait).
``--dense``: every subject's step runs a small MLP (torch) on the pooled
rows between its pull and its push, whose gradient is pushed: a trainer's
own work beside the shards (a compiled graph's actors poll meanwhile).

    PYTHONPATH=python python bench/bench_ps_isolated.py --alternations 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

SUBJECTS = ("inprocess", "local", "ray-auto", "ray-graph", "ray-tasks")


def _dense(dim: int):
    """(pooled rows -> their gradient): a small MLP's forward and backward
    on the pooled batch (64 -> 256 -> 256 -> 1, torch, all cores), the work a
    trainer does between its pull and its push."""
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 1))

    def run(pooled):
        x = torch.from_numpy(pooled).requires_grad_()
        mlp.zero_grad(set_to_none=True)
        mlp(x).sum().backward()
        return x.grad.numpy()
    return run


def setup(subject: str, rows: int, dense: bool = False):
    """(step(values, offsets, grad), the 4 batches, server or None) of one
    subject, every row in place and the step warmed up. dense: the step's
    gradient comes from an MLP run on the pooled rows (_dense), not from the
    batch."""
    import embedlookup as el
    from embedlookup import optim

    rng = np.random.default_rng(0)
    dim, bags, pooling = 64, 4096, 32
    batches = [(rng.integers(0, rows, bags * pooling).astype(np.int64),
                np.arange(0, bags * pooling, pooling, dtype=np.int64),
                rng.standard_normal((bags, dim)).astype(np.float32)) for _ in range(4)]
    opt = optim.Adagrad(lr=0.05)
    server = None
    mlp = _dense(dim) if dense else None
    if subject == "inprocess":
        table = el.EmbeddingTable(dim, optimizer=opt)

        def step(k, o, g):
            out, ids = table.pooled_lookup(k, o, return_ids=True)
            if mlp is not None:
                g = mlp(out)
            table.apply_pooled_gradients(k, o, g, opt, forward_ids=ids)
    else:
        from embedlookup import ps

        kw = {} if subject == "local" else {"backend": "ray"}
        if subject in ("ray-graph", "ray-tasks"):
            kw["transport"] = subject.split("-")[1]  # ray-auto: the default
        if subject != "local":
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        server = ps.ParameterServer(dim, 2, optimizer=opt, table_options={"num_threads": 1}, **kw)
        client = server.client()

        def step(k, o, g):
            out = client.pooled_pull(k, o, "sum")
            if mlp is not None:
                g = mlp(out)
            client.push_pooled(k, o, g, "sum")
        step.client = client
    for lo in range(0, rows, 1 << 17):  # every row in place before timing
        keys = np.arange(lo, min(rows, lo + (1 << 17)), dtype=np.int64)
        step(keys, np.arange(0, keys.shape[0], 32, dtype=np.int64),
             np.zeros(((keys.shape[0] + 31) // 32, dim), np.float32))
    for b in batches * 3:
        step(*b)
    return step, batches, server


def median_step(step, batches, steps: int) -> float:
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(*batches[i % 4])
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _child(subject: str, steps: int, rows: int, wait_share: float | None = None, dense: bool = False) -> dict:
    """The subject's median step, and per step the client process's CPU time
    and the slower shard's time in each data call."""
    if wait_share is not None:
        from embedlookup.ps import _backends

        _backends.WAIT_SHARE = wait_share
    step, batches, server = setup(subject, rows, dense)

    def busy():
        return [] if server is None else [dict(s["busy_s"]) for s in server.stats()["shards"]]

    b0, c0 = busy(), time.process_time()
    med = median_step(step, batches, steps)
    c1, b1 = time.process_time(), busy()
    out = {"step_s": med, "client_cpu_s": (c1 - c0) / steps}
    if hasattr(step, "client") and step.client.stats()["transport"]:  # Ray: did the graph carry the steps?
        out["transport"] = step.client.stats()["transport"]
    for m in ("pooled_pull", "push_pooled"):
        if b1:
            out[f"{m}_s"] = max(b.get(m, 0.0) - a.get(m, 0.0) for a, b in zip(b0, b1)) / steps
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alternations", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--wait-share", type=float, default=None,
                   help="the graph client's WAIT_SHARE (0: it polls from the submission on)")
    p.add_argument("--dense", action="store_true",
                   help="a trainer's step: an MLP on the pooled rows between the pull and the push (every subject)")
    p.add_argument("--subjects", default=",".join(SUBJECTS[1:]),
                   help="comma-separated subjects besides inprocess (always run)")
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, a.steps, a.rows, a.wait_share, a.dense)))
        return {}
    chosen = ("inprocess",) + tuple(x for x in SUBJECTS[1:] if x in a.subjects.split(","))
    runs = {s: [] for s in chosen}
    extra = ([] if a.wait_share is None else ["--wait-share", str(a.wait_share)]) + (["--dense"] if a.dense else [])
    for r in range(a.alternations):
        order = chosen if r % 2 == 0 else chosen[::-1]
        for s in order:
            out = subprocess.run([sys.executable, __file__, "--child", s, "--steps", str(a.steps), "--rows",
                                  str(a.rows), *extra], capture_output=True, text=True, check=True)
            runs[s].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"alternation {r + 1}/{a.alternations} {s}: {runs[s][-1]['step_s'] * 1e3:.2f} ms a step",
                  flush=True)
    med = {s: [x["step_s"] for x in v] for s, v in runs.items()}
    share = {s: float(np.median([i / x for i, x in zip(med["inprocess"], med[s])])) for s in chosen[1:]}
    res = {"step_ms": {s: float(np.median(v)) * 1e3 for s, v in med.items()}, "share_of_inprocess": share,
           "per_step_ms": {s: {k[:-2]: float(np.median([x[k] for x in v])) * 1e3 for k in v[0] if k.endswith("_s") and k != "step_s"}
                           for s, v in runs.items()},
           "transport": {s: v[-1]["transport"] for s, v in runs.items() if "transport" in v[-1]},
           "alternations": a.alternations, "steps": a.steps, "wait_share": a.wait_share, "dense": a.dense}
    for s in chosen[1:]:
        print(f"{s}: {res['step_ms'][s]:.2f} ms a step, {share[s]:.0%} of the in-process step's speed "
              f"({res['step_ms']['inprocess']:.2f} ms)")
    for s in chosen:
        print(f"{s} per step: " + ", ".join(f"{k} {v:.2f} ms" for k, v in res["per_step_ms"][s].items())
              + (f"; transport {res['transport'][s]}" if s in res["transport"] else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
