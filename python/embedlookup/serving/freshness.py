"""``embedlookup bench --suite freshness``: what the delta log and replicas cost
and buy. Five parts (``--ops``, default all):

* ``bytes``     -- cut bytes against changed rows x (row + key + version) + a fixed header;
* ``lag``       -- from a push acknowledged by the trainer to the replica serving it,
                   p50 / p99, at publish periods of 1 s and 10 s;
* ``load``      -- N concurrent HTTP clients against ``embedlookup serve`` while a
                   cut is applied every second: req/s, p50 / p99, failed, mixed;
* ``bandwidth`` -- on paper, from the measured bytes per changed row: a 100 GB model
                   at Ekko's change rate (3 %/hour) and 10x, against a full broadcast;
* ``quality``   -- AUC a replica serves on embedlookup-train's stream at refresh
                   periods of 1, 10 and 100 steps, against the trainer's own and a
                   replica refreshed only by full snapshots every N steps (a plot).

Parameters as ``--workload key=value`` tokens (defaults in ``DEFAULTS``), e.g.
``embedlookup bench --suite freshness --ops bytes,lag --workload lag_s=20``.
Results go to ``--out DIR`` (default bench_results/freshness-<UTC time>/):
results.json, results.md, quality.png.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

__all__ = ["DEFAULTS", "PARTS", "bench_command", "run"]

PARTS = ("bytes", "lag", "load", "bandwidth", "quality")
DEFAULTS = {
    "rows": 200_000,  # rows of the lag / load model
    "dim": 64,
    "bytes_rows": "1000,10000,100000",  # bytes: changed rows per measured cut
    "shards": 4,  # load: the served model's shards
    "periods": "1,10",  # lag: publish periods (s)
    "lag_s": 30.0,  # lag: seconds of probe pushes per period
    "push_rows": 2048,  # rows per training push (lag, load)
    "push_hz": 20.0,  # training pushes per second (lag, load)
    "load_s": 30.0,  # load: seconds of HTTP load
    "clients": 8,  # load: concurrent HTTP clients
    "steps": 300,  # quality: training steps (batches)
    "batch": 512,  # quality: samples per batch
    "refresh": "1,10,100",  # quality: replica refresh periods (steps)
    "full_every": 50,  # quality: full-snapshot refresh period (steps)
    "window": 20,  # quality: steps per AUC window
    "model_gb": 100.0,  # bandwidth: model size
    "change_per_hour": 0.03,  # bandwidth: Ekko's share of parameters changed per hour
}


def _say(msg: str) -> None:
    print(f"[freshness {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _pct(a, q):
    return float(np.percentile(np.asarray(a, float), q)) if len(a) else float("nan")


# ----------------------------------------------------------------- bytes
def part_bytes(p: dict) -> dict:
    """Bytes of one cut (delta file + manifest) for n changed rows of dim
    ``dim``, against n x (row + key + version) + the fixed header (an empty
    cut's bytes), with no optimizer state and with row-wise Adagrad's one float."""
    import embedlookup as el
    from .log import DeltaLog, DirectoryTransport
    from .source import TableSource

    dim, out = int(p["dim"]), []
    for opt_name, opt in (("none", None), ("rowwise_adagrad", el.optim.Adagrad(lr=0.1, rowwise=True))):
        for n in [int(x) for x in str(p["bytes_rows"]).split(",")]:
            d = tempfile.mkdtemp(prefix="el-fresh-bytes-")
            try:
                t = el.EmbeddingTable(dim, optimizer=opt, num_threads=1)
                keys = np.arange(2 * n, dtype=np.int64)
                t.lookup(keys)
                if opt is not None:
                    t.apply_gradients(keys, np.ones((2 * n, dim), np.float32))
                tr = DirectoryTransport(d, fsync=False)
                log = DeltaLog(tr, TableSource(t), checkpoint_every=10**9)
                log.publish()
                empty = log.publish()  # no change: the fixed header
                t.assign(keys[::2], np.ones((n, dim), np.float32))
                m = log.publish()
                man = len(m.to_json().encode())
                fixed = empty.delta_bytes + len(empty.to_json().encode())
                state = 4 if opt is not None else 0
                model = n * (4 * dim + 8 + 8) + fixed
                got = m.delta_bytes + man
                out.append({"optimizer": opt_name, "changed_rows": n, "cut_bytes": got, "delta_file_bytes":
                            m.delta_bytes, "manifest_bytes": man, "fixed_header_bytes": fixed,
                            "bytes_per_changed_row": (got - fixed) / n, "row_bytes": 4 * dim,
                            "state_bytes_per_row": state,
                            "model_bytes": model, "ratio_to_model": got / model})
                _say(f"bytes: {opt_name:16s} n={n:7d}: {got} B, {(got - fixed) / n:.1f} B/row, "
                     f"{got / model:.4f} x (row+key+version)+header")
            finally:
                shutil.rmtree(d, ignore_errors=True)
    return {"rows": out, "max_abs_deviation": max(abs(r["ratio_to_model"] - 1) for r in out)}


# ----------------------------------------------------------------- a trainer
class _Trainer(threading.Thread):
    """Pushes ``push_hz`` gradient steps per second on ``push_rows`` random rows (under the source's lock)."""

    def __init__(self, model, rows: int, push_rows: int, hz: float, seed: int = 0):
        super().__init__(daemon=True)
        self.model, self.rows, self.n, self.dt = model, rows, push_rows, 1.0 / hz
        self.rng = np.random.default_rng(seed)
        self.stop = threading.Event()
        self.pushes = 0

    def run(self):
        import embedlookup as el

        opt = el.optim.SGD(lr=1e-3)
        g = np.full((self.n, self.model.dim), 0.01, np.float32)
        nxt = time.monotonic()
        while not self.stop.is_set():
            keys = self.rng.choice(self.rows, self.n, replace=False).astype(np.int64)
            self.model.apply_gradients(keys, g, opt)
            self.pushes += 1
            nxt += self.dt
            self.stop.wait(max(0.0, nxt - time.monotonic()))


def _filled(num_shards: int, rows: int, dim: int):
    from .source import ShardedTables

    m = ShardedTables(num_shards, dim, num_threads=1)
    keys = np.arange(rows, dtype=np.int64)
    m.assign(keys, np.random.default_rng(0).normal(0, 0.1, (rows, dim)).astype(np.float32))
    return m


# ----------------------------------------------------------------- lag
def part_lag(p: dict) -> dict:
    """Probe pushes (one new key each, acknowledged when assign returns) at
    ~5 per second while the trainer pushes; the publisher cuts every
    ``period`` s; the replica polls every 50 ms; a watcher reads the probes
    from the replica every 2 ms. Lag = first served - acknowledged."""
    from .log import DeltaLog, DirectoryTransport
    from .replica import Replica

    res = {}
    rows, dim = int(p["rows"]), int(p["dim"])
    for period in [float(x) for x in str(p["periods"]).split(",")]:
        d = tempfile.mkdtemp(prefix="el-fresh-lag-")
        model = _filled(1, rows, dim)
        log = DeltaLog(DirectoryTransport(d), model, checkpoint_every=10**9)
        log.publish()
        rep = Replica(d).follow(0.05)
        trainer = _Trainer(model, rows, int(p["push_rows"]), float(p["push_hz"]))
        trainer.start()
        acked, seen = {}, {}
        stop = threading.Event()
        pub_s, poll_s, cut_bytes = [], [], []

        def publish():
            while not stop.wait(period):
                t0 = time.perf_counter()
                m = log.publish()
                pub_s.append(time.perf_counter() - t0)
                cut_bytes.append(m.delta_bytes)

        def watch():
            last = None
            while not stop.is_set():
                pend = np.array([k for k in acked if k not in seen], np.int64)
                if pend.size:
                    _, found = rep.find(pend)
                    now = time.monotonic()
                    for k in pend[found]:
                        seen[int(k)] = now
                if rep.stats["swaps"] != last:
                    last = rep.stats["swaps"]
                    poll_s.append(rep.stats["poll_seconds"])
                time.sleep(0.002)

        pt = threading.Thread(target=publish, daemon=True)
        pt.start()
        w = threading.Thread(target=watch, daemon=True)
        w.start()
        rng = np.random.default_rng(1)
        end = time.monotonic() + float(p["lag_s"])
        k = rows + 1_000_000
        _say(f"lag: period {period:g} s for {p['lag_s']:g} s")
        try:
            while time.monotonic() < end:
                model.assign([k], np.ones((1, dim), np.float32))
                acked[k] = time.monotonic()
                k += 1
                time.sleep(rng.exponential(0.2))
            deadline = time.monotonic() + 2 * period + 10
            while len(seen) < len(acked) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            w.join()
            pt.join()
            trainer.stop.set()
            trainer.join()
            rep.close()
            shutil.rmtree(d, ignore_errors=True)
        lags = [seen[k] - acked[k] for k in acked if k in seen]
        res[f"{period:g}s"] = {"publish_period_s": period, "replica_poll_s": 0.05, "probes": len(acked),
                               "served": len(lags), "p50_s": _pct(lags, 50), "p99_s": _pct(lags, 99),
                               "max_s": max(lags) if lags else None, "trainer_pushes": trainer.pushes,
                               "cuts": log.seq, "publish_p50_s": _pct(pub_s, 50),
                               "replica_poll_p50_s": _pct(poll_s[1:], 50), "cut_bytes_p50": _pct(cut_bytes, 50),
                               "trainer_rows_per_s": int(p["push_rows"]) * float(p["push_hz"])}
        _say(f"lag: period {period:g} s: p50 {res[f'{period:g}s']['p50_s']:.3f} s, "
             f"p99 {res[f'{period:g}s']['p99_s']:.3f} s over {len(lags)}/{len(acked)} probes; "
             f"publish p50 {_pct(pub_s, 50):.3f} s, replica poll p50 {_pct(poll_s[1:], 50):.3f} s, "
             f"cut p50 {_pct(cut_bytes, 50) / 1e6:.1f} MB")
    return res


# ----------------------------------------------------------------- load
def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _handler_alone(log_dir: str, n_keys: int, reps: int = 200) -> float:
    """Median ms of one request's work (JSON parse, pooled lookup, tolist) in
    this process, on an idle replica of the same log: the server's own cost."""
    from .http import Limits, parse_json
    from .replica import Replica

    rep = Replica(log_dir, num_threads=1)
    rng = np.random.default_rng(0)
    body = json.dumps({"bags": rng.integers(0, n_keys, (32, 8)).tolist(), "mode": "sum"}).encode()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        parsed = parse_json(body, Limits())
        with rep.snapshot() as v:
            v.pooled_lookup(*parsed).tolist()
        ts.append(time.perf_counter() - t0)
    return _pct(ts, 50) * 1e3


def part_load(p: dict) -> dict:
    """``embedlookup serve`` (its own process) over an S-shard model; the
    trainer pushes and a cut is published every second, each stamping the
    probe keys' rows with its number; ``clients`` concurrent clients (another
    process, httpx) for ``load_s`` seconds, each checking its answers."""
    import httpx

    from .http import wait_ready
    from .log import DeltaLog, DirectoryTransport

    rows, dim, S = int(p["rows"]), int(p["dim"]), int(p["shards"])
    d = tempfile.mkdtemp(prefix="el-fresh-load-")
    model = _filled(S, rows, dim)
    probes = np.arange(rows, rows + 8, dtype=np.int64)
    log = DeltaLog(DirectoryTransport(d), model, checkpoint_every=30)
    model.assign(probes, np.full((8, dim), 1, np.float32))
    log.publish()
    port = _free_port()
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(x for x in (pkg_parent, env.get("PYTHONPATH", "")) if x)
    server = subprocess.Popen([sys.executable, "-m", "embedlookup.cli", "serve", "--log", d, "--port", str(port),
                               "--period", "0.1", "--threads", "1"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    trainer = _Trainer(model, rows, int(p["push_rows"]), float(p["push_hz"]))
    stop = threading.Event()
    apply_times = []

    def publisher():
        while not stop.wait(1.0):
            with model.lock:
                model.assign(probes, np.full((8, dim), log.seq + 1, np.float32))
                t0 = time.perf_counter()
                log.publish()
                apply_times.append(time.perf_counter() - t0)

    try:
        wait_ready(url, server)
        alone = _handler_alone(d, rows)
        trainer.start()
        pub = threading.Thread(target=publisher, daemon=True)
        pub.start()
        _say(f"load: {p['clients']} clients for {p['load_s']:g} s against {url} ({S} shards)")
        gen = subprocess.run([sys.executable, "-m", "embedlookup.serving._loadgen", url + "/v1/pooled_lookup",
                              str(int(p["clients"])), str(float(p["load_s"])), str(rows), "8"], env=env,
                             capture_output=True, text=True, timeout=float(p["load_s"]) + 120)
        if gen.returncode != 0:
            raise RuntimeError(f"load generator failed: {gen.stderr[-2000:]}")
        res = json.loads(gen.stdout.strip().splitlines()[-1])
        health = httpx.get(url + "/healthz", timeout=5).json()
    finally:
        stop.set()
        trainer.stop.set()
        if trainer.is_alive():
            trainer.join()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(d, ignore_errors=True)
    res.update({"clients": int(p["clients"]), "shards": S, "rows": rows, "dim": dim, "bags_per_request": 32,
                "keys_per_bag": 8, "cuts_published": log.seq, "server_version_at_end": health["version"],
                "server_errors": health["errors"], "replica_last_error": health["last_error"],
                "publish_p50_ms": _pct(apply_times, 50) * 1e3, "handler_alone_ms_p50": alone,
                "server_handler_ms_p50": health["handler_ms_p50"],
                "server_handler_ms_p99": health["handler_ms_p99"]})
    _say(f"load: {res['req_per_s']:.0f} req/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
         f"failed {res['failed']}, mixed {res['mixed']}, versions seen {res['versions_seen']}; in the server's "
         f"handler p50 {res['server_handler_ms_p50']:.2f} ms, p99 {res['server_handler_ms_p99']:.2f} ms "
         f"(alone, idle: {alone:.2f} ms); load average {os.getloadavg()[0]:.1f}")
    return res


# ----------------------------------------------------------------- bandwidth
def part_bandwidth(p: dict, bytes_res: dict | None) -> dict:
    """Paper figures from the measured bytes per changed row (dim 64, no
    optimizer state, the ``bytes`` part): a model of ``model_gb`` GB of fp32
    rows, ``change_per_hour`` of its rows changed per hour (spread evenly;
    a row changed twice within one period ships once, so this is the rate
    of distinct changed rows per period), against broadcasting the whole
    model to 2 replicas every 10 minutes (the field's 2.6 Gbps)."""
    dim = int(p["dim"])
    per_row = 8 + 4 * dim
    fixed = 0
    if bytes_res:
        r = [x for x in bytes_res["rows"] if x["optimizer"] == "none"][-1]
        per_row, fixed = r["bytes_per_changed_row"], r["fixed_header_bytes"]
    model_bytes = float(p["model_gb"]) * 1e9
    rows = model_bytes / (4 * dim)
    broadcast_gbps = 2 * model_bytes * 8 / 600 / 1e9
    out = {"bytes_per_changed_row": per_row, "fixed_bytes_per_cut": fixed, "model_rows": rows,
           "full_broadcast_2_replicas_10min_gbps": broadcast_gbps, "cases": []}
    for mult in (1, 10):
        rate = float(p["change_per_hour"]) * mult
        for period in (60.0, 600.0):
            changed = rows * rate * period / 3600
            b = changed * per_row + fixed
            gbps = b * 8 / period / 1e9
            out["cases"].append({"change_per_hour": rate, "period_s": period, "changed_rows": changed,
                                 "bytes_per_refresh": b, "gbps_per_replica": gbps,
                                 "gbps_2_replicas": 2 * gbps, "broadcast_over_delta": broadcast_gbps / (2 * gbps)})
            _say(f"bandwidth: {rate * 100:g} %/h, period {period:g} s: {b / 1e9:.3f} GB per refresh, "
                 f"{gbps * 1e3:.1f} Mbps per replica, {broadcast_gbps / (2 * gbps):.0f}x less than the broadcast")
    return out


# ----------------------------------------------------------------- quality
def part_quality(p: dict, out_dir: str | None) -> dict:
    """Trains embedlookup-train's collision-free model (hash_table_unbounded)
    on its synthetic stream, publishing a cut after every step. Replicas poll
    every k steps; one more is rebuilt from the newest full snapshot every
    ``full_every`` steps. Each scores batch t before the trainer trains on it
    (progressive validation, as the trainer's own AUC) with the dense layers
    as of its version (they ship beside the cut) and its served rows (missing
    keys: zeros). Bytes: what a k-step publisher ships (one export per k
    steps), and the snapshots' bytes."""
    import torch

    from .. import train as T
    from .log import DeltaLog, DirectoryTransport
    from .replica import Replica
    from .source import TableSource

    torch.manual_seed(0)
    torch.set_num_threads(1)
    steps, W = int(p["steps"]), int(p["window"])
    ks = [int(x) for x in str(p["refresh"]).split(",")]
    full_every = int(p["full_every"])
    stream = T.SyntheticClickStream(batch_size=int(p["batch"]), seed=0)
    cfg = T.RunConfig(dim=16, models=("hash_table_unbounded",), seed=0)
    model, opts = T.build_models(cfg, stream.n_features, stream.n_dense)["hash_table_unbounded"]
    coll = model.embeddings.coll
    table = coll.bag.table
    d = tempfile.mkdtemp(prefix="el-fresh-quality-")
    log = DeltaLog(DirectoryTransport(d, fsync=False), TableSource(table), checkpoint_every=full_every,
                   keep_checkpoints=1)

    class _Rows(torch.nn.Module):
        def forward(self, sparse):
            return self.rows

    def dense_state():
        return ({k: v.clone() for k, v in model.bottom.state_dict().items()},
                {k: v.clone() for k, v in model.top.state_dict().items()})

    scorer = T.DLRM(_Rows(), stream.n_dense, stream.n_features, cfg.dim)
    scorer.eval()

    def score(rep, dense, batch):
        keys = T._namespaced(batch.sparse, coll)
        rows, _ = rep.find(keys)
        scorer.bottom.load_state_dict(dense[0])
        scorer.top.load_state_dict(dense[1])
        scorer.embeddings.rows = torch.from_numpy(rows.reshape(stream.n_features, -1, cfg.dim))
        with torch.no_grad():
            return scorer(batch.dense, batch.sparse).numpy()

    loss_fn = torch.nn.BCEWithLogitsLoss()
    names = ["trainer"] + [f"delta every {k}" for k in ks] + [f"full every {full_every}"]
    preds = {n: [] for n in names}
    labels = []
    dense_at = {}
    reps, rep_dense = {}, {}
    bytes_shipped = {n: 0 for n in names[1:]}
    since = {k: 0 for k in ks}
    t0 = time.perf_counter()
    _say(f"quality: {steps} steps of {p['batch']} samples; replicas every {ks} steps, full every {full_every}")
    for t, batch in enumerate(stream.batches(steps)):
        labels.append(batch.label.numpy())
        model.train()
        logits = model(batch.dense, batch.sparse)
        if t > 0:  # scored by every replica before training on it
            preds["trainer"].append(logits.detach().numpy().copy())
            for k in ks:
                preds[f"delta every {k}"].append(score(reps[k], rep_dense[k], batch))
            preds[names[-1]].append(score(reps["full"], rep_dense["full"], batch))
        loss = loss_fn(logits, batch.label)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        m = log.publish()
        dense_at[m.seq] = dense_state()
        if t == 0:
            for k in ks:
                reps[k], rep_dense[k] = Replica(d), dense_at[m.seq]
                since[k] = table.version
            reps["full"], rep_dense["full"] = Replica(d), dense_at[m.seq]
            bytes_shipped[names[-1]] += m.checkpoint_bytes + m.delta_bytes
            continue
        for k in ks:
            if (t + 1) % k == 0:
                bytes_shipped[f"delta every {k}"] += int(table.export_delta(since[k]).nbytes)
                since[k] = table.version
                reps[k].poll()
                rep_dense[k] = dense_at[reps[k].version]
        if m.has_checkpoint:
            reps["full"] = Replica(d)
            rep_dense["full"] = dense_at[reps["full"].version]
            bytes_shipped[names[-1]] += m.checkpoint_bytes
        keep = {reps[k].version for k in ks} | {reps["full"].version, m.seq}
        dense_at = {s: v for s, v in dense_at.items() if s in keep}
        if (t + 1) % 50 == 0:
            _say(f"quality: step {t + 1}/{steps} ({time.perf_counter() - t0:.0f} s)")
    shutil.rmtree(d, ignore_errors=True)
    y = labels[1:]
    windows = {}
    overall = {}
    for n in names:
        s = preds[n]
        windows[n] = [T.auc(np.concatenate(y[i:i + W]), np.concatenate(s[i:i + W]))
                      for i in range(0, len(s) - W + 1, W)]
        overall[n] = T.auc(np.concatenate(y), np.concatenate(s))
        if n != "trainer":
            _say(f"quality: {n:18s} AUC {overall[n]:.4f} (trainer {overall['trainer']:.4f}), "
                 f"{bytes_shipped[n] / steps / 1e3:.1f} kB/step shipped")
    res = {"steps": steps, "batch": int(p["batch"]), "window": W, "auc": overall, "auc_windows": windows,
           "bytes_per_step": {n: b / steps for n, b in bytes_shipped.items()},
           "table_rows_at_end": len(table), "seconds": time.perf_counter() - t0}
    if out_dir:
        res["plot"] = _plot_quality(res, os.path.join(out_dir, "quality.png"))
    return res


def _plot_quality(res: dict, path: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"no plot: {e}"
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5))
    W = res["window"]
    for n, a in res["auc_windows"].items():
        x = (np.arange(len(a)) + 1) * W
        kb = res["bytes_per_step"].get(n)
        lab = f"{n} (AUC {res['auc'][n]:.4f}" + (f", {kb / 1e3:.0f} kB/step)" if kb is not None else ")")
        if n == "trainer":  # drawn on top: the every-step replica lies under it
            ax[0].plot(x, a, "k:", label=lab, lw=2.0, zorder=5)
        else:
            ax[0].plot(x, a, label=lab, lw=1.4, ls="--" if n.startswith("full") else "-")
    ax[0].set(xlabel="training step (batch)", ylabel=f"AUC served (progressive, per {W} steps)")
    ax[0].legend(fontsize=8)
    ax[0].grid(alpha=0.3)
    names = [n for n in res["auc"] if n != "trainer"]
    loss = [res["auc"]["trainer"] - res["auc"][n] for n in names]
    kb = [res["bytes_per_step"][n] / 1e3 for n in names]
    ax[1].scatter(kb, loss)
    for n, xx, yy in zip(names, kb, loss):
        ax[1].annotate(n, (xx, yy), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax[1].set(xscale="log", xlabel="kB shipped per training step (log)", ylabel="AUC below the trainer's")
    ax[1].grid(alpha=0.3)
    fig.suptitle(f"Replica freshness on embedlookup-train's synthetic stream ({res['steps']} steps x "
                 f"{res['batch']} samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------- runner
def run(parts=PARTS, params: dict | None = None, out_dir: str | None = None) -> dict:
    p = dict(DEFAULTS)
    p.update(params or {})
    res = {"params": p, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "load_average": list(os.getloadavg())}
    if "bytes" in parts:
        res["bytes"] = part_bytes(p)
    if "lag" in parts:
        res["lag"] = part_lag(p)
    if "load" in parts:
        res["load"] = part_load(p)
    if "bandwidth" in parts:
        res["bandwidth"] = part_bandwidth(p, res.get("bytes"))
    if "quality" in parts:
        res["quality"] = part_quality(p, out_dir)
    res["load_average_end"] = list(os.getloadavg())
    return res


def markdown(res: dict) -> str:
    out = [f"# freshness suite ({res['started']}, load average {res['load_average'][0]:.1f})", ""]
    if "bytes" in res:
        out += ["## Cut bytes", "", "| optimizer state | changed rows | cut bytes | B / changed row | "
                "x (row + key + version) + header |", "|---|---|---|---|---|"]
        out += [f"| {r['optimizer']} | {r['changed_rows']} | {r['cut_bytes']} | {r['bytes_per_changed_row']:.1f} | "
                f"{r['ratio_to_model']:.4f} |" for r in res["bytes"]["rows"]]
        out.append("")
    if "lag" in res:
        out += ["## Freshness lag (push acknowledged -> served)", "", "| publish period | probes | p50 | p99 | max | "
                "publish p50 | replica poll p50 | cut MB p50 |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {k} | {v['served']}/{v['probes']} | {v['p50_s']:.3f} s | {v['p99_s']:.3f} s | "
                f"{v['max_s']:.3f} s | {v['publish_p50_s']:.3f} s | {v['replica_poll_p50_s']:.3f} s | "
                f"{v['cut_bytes_p50'] / 1e6:.1f} |" for k, v in res["lag"].items()]
        out.append("")
    if "load" in res:
        v = res["load"]
        out += ["## Under load (HTTP, loopback)", "", "| clients | seconds | req/s | p50 | p99 | failed | mixed | "
                "versions served | handler p50 / p99 (server) | handler alone |", "|---|---|---|---|---|---|---|---|---|---|",
                f"| {v['clients']} | {v['seconds']:.1f} | {v['req_per_s']:.0f} | {v['p50_ms']:.1f} ms | "
                f"{v['p99_ms']:.1f} ms | {v['failed']} | {v['mixed']} | {v['versions_seen']} | "
                f"{v['server_handler_ms_p50']:.2f} / {v['server_handler_ms_p99']:.2f} ms | "
                f"{v['handler_alone_ms_p50']:.2f} ms |", ""]
    if "bandwidth" in res:
        b = res["bandwidth"]
        out += ["## Bandwidth on paper (100 GB model)", "", f"Broadcast of the whole model to 2 replicas every "
                f"10 min: {b['full_broadcast_2_replicas_10min_gbps']:.2f} Gbps. "
                f"Measured bytes per changed row: {b['bytes_per_changed_row']:.1f}.", "",
                "| changed / hour | period | GB per refresh | Mbps per replica | broadcast / delta |",
                "|---|---|---|---|---|"]
        out += [f"| {c['change_per_hour'] * 100:g} % | {c['period_s']:g} s | {c['bytes_per_refresh'] / 1e9:.3f} | "
                f"{c['gbps_per_replica'] * 1e3:.1f} | {c['broadcast_over_delta']:.0f}x |" for c in b["cases"]]
        out.append("")
    if "quality" in res:
        q = res["quality"]
        out += ["## Quality (AUC served)", "", "| replica | AUC | kB shipped per step |", "|---|---|---|"]
        out += [f"| {n} | {a:.4f} | {q['bytes_per_step'].get(n, 0) / 1e3:.1f} |" for n, a in q["auc"].items()]
        out.append("")
    return "\n".join(out)


def bench_command(args, argv) -> int:
    """``embedlookup bench --suite freshness [--ops PART,...] [--workload key=value ...] [--out DIR]``."""
    err = sys.stderr
    parts = [o.strip() for t in args.ops for o in t.split(",") if o.strip()] or list(PARTS)
    bad = [x for x in parts if x not in PARTS]
    if bad:
        print(f"embedlookup bench: error: unknown freshness part(s) {bad}; known: {', '.join(PARTS)}", file=err)
        return 2
    params = {}
    for tokens in args.workload:
        for tok in tokens:
            key, sep, val = tok.partition("=")
            if not sep or key not in DEFAULTS:
                print(f"embedlookup bench: error: freshness takes key=value with key in {', '.join(DEFAULTS)}; "
                      f"got {tok!r}", file=err)
                return 2
            try:
                params[key] = type(DEFAULTS[key])(val) if not isinstance(DEFAULTS[key], str) else val
            except ValueError:
                print(f"embedlookup bench: error: {key}={val!r} is not a {type(DEFAULTS[key]).__name__}", file=err)
                return 2
    out_dir = None
    if not args.no_save:
        out_dir = args.out or os.path.join("bench_results", "freshness-" + time.strftime("%Y%m%d-%H%M%S",
                                                                                       time.gmtime()))
        os.makedirs(out_dir, exist_ok=True)
    res = run(parts, params, out_dir)
    res["command"] = "embedlookup " + " ".join(argv)
    md = markdown(res)
    print(md)
    if out_dir:
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(res, f, indent=1, default=float)
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write(md + f"\n\nCommand: `{res['command']}`\n")
        print(f"saved: {out_dir}/results.json, {out_dir}/results.md"
              + (", quality.png" if "quality" in res else ""))
    return 0
