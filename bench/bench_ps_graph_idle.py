"""What an idle Ray compiled graph costs the work beside it.

A parameter server's compiled graph (docs/ps.md, "Ray transport") keeps its
shard actors waiting for input in Ray's channel read, which polls with
sched_yield: an idle actor is never asleep. This measures, on this node:

* each shard actor's CPU while the graph is idle (fraction of a core, over
  ``--idle-s`` seconds with nothing else running);
* the in-process fused training step (W1 shapes: 1 M x 64 rows, batch
  4096 x 32, Adagrad, all cores) with an idle graph alive against the same
  with the graph torn down, in interleaved rounds; the median of per-round
  ratios (a trainer's own work between its pulls and pushes pays this).

    PYTHONPATH=python python bench/bench_ps_graph_idle.py --rounds 15
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (each: 4 steps per case)")
    p.add_argument("--idle-s", type=float, default=3.0, help="seconds of idle-CPU sampling")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)

    import ray

    import embedlookup as el
    from embedlookup import optim, ps

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rng = np.random.default_rng(0)
    dim, bags, pooling = 64, 4096, 32
    batches = [(rng.integers(0, a.rows, bags * pooling).astype(np.int64),
                np.arange(0, bags * pooling, pooling, dtype=np.int64),
                rng.standard_normal((bags, dim)).astype(np.float32)) for _ in range(4)]
    table = el.EmbeddingTable(dim, optimizer=optim.Adagrad(lr=0.05))
    opt = optim.Adagrad(lr=0.05)
    for k, o, _ in batches:
        table.pooled_lookup(k, o)

    def steps() -> float:
        t = time.perf_counter()
        for k, o, g in batches:
            _, ids = table.pooled_lookup(k, o, return_ids=True)
            table.apply_pooled_gradients(k, o, g, opt, forward_ids=ids)
        return (time.perf_counter() - t) / len(batches)

    server = ps.ParameterServer(dim, 2, optimizer=optim.Adagrad(lr=0.05), backend="ray", transport="graph",
                                table_options={"num_threads": 1})
    client = server.client()
    client.pull(batches[0][0][:100])  # builds the graph
    backend = server._b
    assert backend.graph_stats()["graph"]
    pids = [client._resolve(i, backend.submit(i, "pid"), "pid", ()) for i in range(2)]
    c0 = [_cpu_s(q) for q in pids]
    t0 = time.monotonic()
    time.sleep(a.idle_s)
    idle = [(_cpu_s(q) - c) / (time.monotonic() - t0) for q, c in zip(pids, c0)]
    print(f"shard actors' CPU with the graph idle: {', '.join(f'{x:.2f}' for x in idle)} of a core", flush=True)

    with_graph, without, ratio = [], [], []
    for r in range(a.rounds):
        first_alive = r % 2 == 0  # alternate the order within a round
        pair = {}
        for alive in (first_alive, not first_alive):
            if alive:
                backend._resume_graph()
                client.pull(batches[0][0][:1])
            else:
                backend._suspend_graph()
            steps()  # one untimed pass after the switch
            pair[alive] = steps()
        backend._suspend_graph()
        with_graph.append(pair[True])
        without.append(pair[False])
        ratio.append(pair[True] / pair[False])
        print(f"round {r + 1}/{a.rounds}: step {pair[False] * 1e3:.2f} ms without, {pair[True] * 1e3:.2f} ms with "
              f"an idle graph", flush=True)
    out = {"idle_actor_core_fraction": idle, "step_ms_without_graph": float(np.median(without)) * 1e3,
           "step_ms_with_idle_graph": float(np.median(with_graph)) * 1e3,
           "slowdown_median_of_round_ratios": float(np.median(ratio)), "rounds": a.rounds}
    print(f"in-process step: {out['step_ms_without_graph']:.2f} ms without, {out['step_ms_with_idle_graph']:.2f} ms "
          f"with an idle graph alive; median per-round ratio {out['slowdown_median_of_round_ratios']:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    server.shutdown()
    ray.shutdown()
    return out


if __name__ == "__main__":
    main()
