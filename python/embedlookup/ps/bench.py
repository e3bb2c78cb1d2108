"""Parameter-server costs, measured in one process, interleaved:

- per-call overhead: a sync ``pull`` / ``push`` of one key through each
  backend, against the in-process table's ``lookup`` / ``apply_gradients``;
- the W1 training step (1 M x 64 rows, batch 4096 bags x pooling 32 = 131 072
  keys, uniform, 2 shards, Adagrad): ``pooled_pull`` + ``push_pooled`` (sync)
  through each backend against the in-process table's fused step
  (``pooled_lookup`` + ``apply_pooled_gradients``), with the bytes the client
  sends and receives per step.

Two in-process baselines: the table with every core, and with one thread;
each shard gets cores / shards threads (the shards together have as many as
the first). Throughput ratios are against the faster baseline. No durability (durable_dir=None) unless
``--durable DIR``, which adds the local backend with the push log fsynced on
every push. ``--table frequency``: FrequencyTable shards and baselines (admit
every key, no budget: the same rows, plus the frequency policy's work; durable,
their pulls are logged too).

Run: ``PYTHONPATH=python python -m embedlookup.ps.bench [--repeats 9] [--backends local,ray]``
(``--rows 100000`` for a quick look). ``run(...)`` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import embedlookup as el

from ._server import ParameterServer


def _median_ms(fn, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def _fill(fill, rows, chunk=1 << 17):
    for lo in range(0, rows, chunk):
        fill(np.arange(lo, min(rows, lo + chunk), dtype=np.int64))


def _log_bytes(server) -> int:
    """Bytes the shards have appended to their push logs (0 without durable_dir)."""
    return 0 if server is None else sum(s["log_bytes"] for s in server.stats()["shards"])


def run(rows=1_000_000, dim=64, batch=4096, pooling=32, shards=2, backends=("local", "ray"), repeats=9,
        calls=200, durable=None, seed=0, log=print, table="embedding") -> dict:
    opt = el.optim.Adagrad(lr=0.01)
    init = el.init.uniform(-0.01, 0.01, seed=1)
    rng = np.random.default_rng(seed)
    values = rng.integers(0, rows, batch * pooling).astype(np.int64)
    offsets = np.arange(batch, dtype=np.int64) * pooling
    grad = rng.standard_normal((batch, dim)).astype(np.float32)
    one_key, one_grad = np.array([rows // 2], np.int64), np.ones((1, dim), np.float32)

    # Two in-process baselines: all cores (the shards together get as many
    # threads) and one thread (on an oversubscribed machine a 2-thread OpenMP
    # step can be slower than one thread). Ratios are against the faster.
    cls = el.FrequencyTable if table == "frequency" else el.EmbeddingTable
    tables = {"in-process": cls(dim, initializer=init, optimizer=opt),
              "in-process-1t": cls(dim, initializer=init, optimizer=opt, num_threads=1)}
    for t in tables.values():
        _fill(t.lookup, rows)
    subjects = dict(tables)
    servers = {}
    specs = [(b, b, None) for b in backends]
    if durable:
        specs.append(("local+fsync", "local", durable))
    for label, backend, ddir in specs:
        log(f"starting {label} with {shards} shards of {rows} rows...")
        s = ParameterServer(dim, shards, table=table, optimizer=opt, backend=backend, durable_dir=ddir,
                            snapshot_every=None, table_options={"initializer": init})
        servers[label] = s
        c = s.client("sync")
        _fill(c.pull, rows)
        subjects[label] = c

    def step_fn(c):
        if isinstance(c, el.EmbeddingTable):
            return lambda: (c.pooled_lookup(values, offsets), c.apply_pooled_gradients(values, offsets, grad))
        return lambda: (c.pooled_pull(values, offsets), c.push_pooled(values, offsets, grad))

    out = {"workload": dict(rows=rows, dim=dim, batch=batch, pooling=pooling, shards=shards, table=table),
           "subjects": {}}
    try:
        for name, c in subjects.items():  # warm up, and bytes of one step
            remote = name not in tables
            b0 = (c.bytes_sent, c.bytes_received) if remote else (0, 0)
            logged = _log_bytes(servers.get(name))
            step_fn(c)()
            res = out["subjects"].setdefault(name, {"step_ms": []})
            if remote:
                res["bytes_sent_per_step"] = c.bytes_sent - b0[0]
                res["bytes_received_per_step"] = c.bytes_received - b0[1]
                res["log_bytes_per_step"] = _log_bytes(servers.get(name)) - logged
        for r in range(repeats):  # interleaved rounds
            for name, c in subjects.items():
                res = out["subjects"][name]
                t0 = time.perf_counter()
                step_fn(c)()
                res["step_ms"].append(1e3 * (time.perf_counter() - t0))
            log(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {out['subjects'][n]['step_ms'][-1]:.1f} ms"
                                                         for n in subjects))
        base = min(statistics.median(out["subjects"][n]["step_ms"]) for n in tables)
        out["in_process_best_ms"] = base
        for name, c in subjects.items():
            res = out["subjects"][name]
            res["step_ms_median"] = statistics.median(res["step_ms"])
            res["throughput_vs_in_process"] = base / res["step_ms_median"]
            if name in tables:
                res["pull_call_ms"] = _median_ms(lambda: c.lookup(one_key), calls)
                res["push_call_ms"] = _median_ms(lambda: c.apply_gradients(one_key, one_grad), calls)
            else:
                res["pull_call_ms"] = _median_ms(lambda: c.pull(one_key), calls)
                res["push_call_ms"] = _median_ms(lambda: c.push(one_key, one_grad), calls)
    finally:
        for s in servers.values():
            s.shutdown()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in (("rows", 1_000_000), ("dim", 64), ("batch", 4096), ("pooling", 32), ("shards", 2),
                          ("repeats", 9), ("calls", 200)):  # W1 by default; calls: per-call overhead samples
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--backends", default="local,ray")
    p.add_argument("--durable", default=None, help="also the local backend with a fsynced push log in DIR")
    p.add_argument("--table", default="embedding", choices=("embedding", "frequency"), help="the shards' table")
    p.add_argument("--json", default=None, help="write the figures to this file")
    a = p.parse_args(argv)
    res = run(a.rows, a.dim, a.batch, a.pooling, a.shards, tuple(b for b in a.backends.split(",") if b), a.repeats,
              a.calls, a.durable, table=a.table)
    cols = ("step ms", "vs in-process", "pull call ms", "push call ms", "MB sent/step", "MB recv/step",
            "MB log/step")
    print(f"{'subject':<14}" + "".join(f"{c:>15}" for c in cols) + "   (vs the faster in-process)")
    for name, r in res["subjects"].items():
        cells = (f"{r['step_ms_median']:.1f}", f"{r['throughput_vs_in_process']:.0%}", f"{r['pull_call_ms']:.3f}",
                 f"{r['push_call_ms']:.3f}", f"{r.get('bytes_sent_per_step', 0) / 1e6:.2f}",
                 f"{r.get('bytes_received_per_step', 0) / 1e6:.2f}", f"{r.get('log_bytes_per_step', 0) / 1e6:.2f}")
        print(f"{name:<14}" + "".join(f"{c:>15}" for c in cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
