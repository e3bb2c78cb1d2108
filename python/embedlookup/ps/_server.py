"""The parameter server: shards, their clients, cuts, save / load (docs/ps.md)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import threading
import time
import uuid

import numpy as np

from .. import _checks
from ..optim import Optimizer
from ..sharding import Cut, shard_of
from ._backends import TRANSPORTS, LocalBackend, RayBackend
from ._client import Client, CutTimeoutError, PSError, parse_mode

TABLES = ("embedding", "frequency")
_CONFIG = "ps.json"


def _pos_int(x, name, allow_none=False):
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name} must be an int >= 1{' or None' if allow_none else ''}, got {x!r}")
    return int(x)


_RESERVED_ACTOR_OPTIONS = ("name", "namespace", "max_restarts", "max_task_retries", "lifetime")


def _actor_options(x, num_shards: int, backend: str) -> list[dict] | None:
    """``actor_options`` as one dict per shard (None: none)."""
    if x is None:
        return None
    if backend != "ray":
        raise ValueError(f"actor_options: Ray actor options need backend='ray', got backend={backend!r}")
    per = [x] * num_shards if isinstance(x, dict) else x
    if not isinstance(per, (list, tuple)) or len(per) != num_shards or not all(isinstance(d, dict) for d in per):
        raise TypeError(f"actor_options must be a dict or a list of {num_shards} dicts (one per shard), got {x!r}")
    for d in per:
        bad = [k for k in d if k in _RESERVED_ACTOR_OPTIONS]
        if bad:
            raise ValueError(f"actor_options: {bad} are set by the parameter server (shard names, restarts)")
    return [dict(d) for d in per]


class ParameterServer:
    """Embedding rows sharded over ``num_shards`` tables, updated by the
    server-side fused optimizer from the pushes of any number of clients.

    Parameters
    ----------
    dim: floats per row.
    num_shards: how many shards; key k lives on ``embedlookup.sharding.shard_of(k, num_shards)``.
    table: ``"embedding"`` (EmbeddingTable shards) or ``"frequency"`` (FrequencyTable shards:
        admission and eviction per shard).
    table_options: keyword arguments for each shard's table (initializer, capacity,
        num_threads, budget_rows, policy, ...). Default num_threads: the machine's cores / num_shards.
    optimizer: an ``embedlookup.optim`` optimizer: the one every push applies.
    backend: ``"local"`` (shards in this process, one worker thread each) or ``"ray"``
        (one Ray actor per shard, restarted by Ray after a crash).
    address: the Ray cluster (``ray.init(address=...)``); None: the running one, else a new local one.
    durable_dir: where each shard keeps its snapshot and push log (``shard-<i>/``); None: no
        durability (a restarted shard then refuses every call rather than serve lost rows).
        A directory that already holds a server's state is resumed. FrequencyTable shards
        come back with their scores, sketch and admissions too (their training pulls are
        logged beside the pushes); with ``cold_row_type`` they cannot be durable.
    snapshot_every: pushes between snapshots of a shard (None: only the log grows).
    timeout_s, max_retries: each call to a shard waits at most ``timeout_s`` and is sent again
        at most ``max_retries`` times after a timeout or a dead shard, then raises
        ``ShardUnavailableError``.
    max_restarts: (ray) Ray restarts of a shard actor (-1: unlimited).
    actor_options: (ray) extra ``.options()`` of the shard actors: one dict for every shard, or a
        list of one dict per shard; e.g. ``{"scheduling_strategy": "SPREAD"}`` to spread the
        shards over the cluster's nodes, or per-shard ``{"resources": {...}}`` to place each one.
    fsync: False skips the log's fdatasync (benchmarks only: acknowledged pushes may then be
        lost by a machine crash, though not by a killed process).
    transport: (ray) how pulls and pushes reach the shards. ``"auto"`` (the default for Ray)
        through a Ray compiled graph (shared-memory channels, one execution for all shards) while a
        process makes them in a stream (8 within a second: a training loop), by actor task
        otherwise; an idle graph is torn down after a second, since its actors poll while they
        wait. ``"graph"`` through a graph from the first call, kept while the client lives;
        ``"tasks"`` one actor task per shard and call. A graph is used only when every shard runs
        on the caller's node and by one process at a time; other processes, other calls and every
        retry go by task (docs/ps.md, "Ray transport").
    """

    def __init__(self, dim: int, num_shards: int, *, table: str = "embedding", table_options: dict | None = None,
                 optimizer: Optimizer | None = None, backend: str = "local", address=None,
                 durable_dir=None, snapshot_every: int | None = 1000, timeout_s: float = 30.0,
                 max_retries: int = 10, max_restarts: int = -1, fsync: bool = True, name: str | None = None,
                 actor_options: dict | list | None = None, transport: str | None = None, _init=None):
        dim = _pos_int(dim, "dim")
        num_shards = _pos_int(num_shards, "num_shards")
        if table not in TABLES:
            raise ValueError(f"table must be one of {TABLES}, got {table!r}")
        if table_options is None:
            table_options = {}
        if not isinstance(table_options, dict):
            raise TypeError(f"table_options must be a dict of table keyword arguments, got {type(table_options).__name__}")
        for bad in ("dim", "optimizer", "tier"):
            if bad in table_options:
                raise ValueError(f"table_options: {bad!r} is set by the parameter server, not per shard")
        if optimizer is None:
            raise ValueError("optimizer: the parameter server applies pushes with a server-side optimizer; "
                             "give one (e.g. embedlookup.optim.Adagrad(lr=0.05))")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an embedlookup.optim optimizer, got {type(optimizer).__name__}")
        optimizer._spec()  # hyperparameters checked now
        if backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
        snapshot_every = _pos_int(snapshot_every, "snapshot_every", allow_none=True)
        actor_options = _actor_options(actor_options, num_shards, backend)
        if transport is None:
            transport = "auto" if backend == "ray" else "tasks"
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if transport != "tasks" and backend != "ray":
            raise ValueError(f"transport={transport!r}: a transport is chosen for backend='ray' only "
                             f"(local shards are called in this process), got backend={backend!r}")
        try:
            timeout_s = float(timeout_s)
        except (TypeError, ValueError):
            raise TypeError(f"timeout_s must be a number of seconds, got {timeout_s!r}") from None
        if not timeout_s > 0 or timeout_s == float("inf"):
            raise ValueError(f"timeout_s must be > 0 and finite, got {timeout_s!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, (int, np.integer)) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if durable_dir is not None:
            durable_dir = os.path.abspath(_checks.path(durable_dir, "durable_dir"))
            if table == "frequency" and table_options.get("cold_row_type") is not None:
                raise ValueError("durable_dir: FrequencyTable shards with cold_row_type cannot be made durable "
                                 "(a checkpoint carries rows as fp32, not which ones were int8); drop one of the two")
        opts = dict(table_options)
        opts.setdefault("num_threads", max(1, (os.cpu_count() or 1) // num_shards))
        # Build one table here: bad table_options fail now, in this process, naming the argument.
        from ._shard import make_table

        make_table(table, dim, optimizer, opts)
        self.dim, self.num_shards, self.table, self.table_options = dim, num_shards, table, opts
        self.optimizer, self.backend_name, self.durable_dir = optimizer, backend, durable_dir
        self.timeout_s, self.max_retries = timeout_s, int(max_retries)
        self.name = name or f"ps-{uuid.uuid4().hex[:12]}"
        if durable_dir is not None:
            self._check_durable(durable_dir)
        init_paths, init_last = _init or ([None] * num_shards, [None] * num_shards)
        args = [dict(index=i, num_shards=num_shards, dim=dim, table=table, table_options=opts, optimizer=optimizer,
                     durable_dir=durable_dir, snapshot_every=snapshot_every, init_path=init_paths[i],
                     init_last=init_last[i], fsync=bool(fsync)) for i in range(num_shards)]
        if backend == "local":
            self._b = LocalBackend(args)
        else:
            self._b = RayBackend(args, name=self.name, address=address, max_restarts=int(max_restarts),
                                 timeout_s=timeout_s * (max_retries + 1), actor_options=actor_options,
                                 transport=transport)
        self._clients = 0
        self._cut_lock = threading.Lock()  # one cut at a time through this server object
        self._closed = False

    def _check_durable(self, d):
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, _CONFIG)
        mine = {"dim": self.dim, "num_shards": self.num_shards, "table": self.table}
        if os.path.exists(p):
            with open(p) as f:
                have = json.load(f)
            if {k: have.get(k) for k in mine} != mine:
                raise ValueError(f"durable_dir: '{d}' holds a server with {have}, not {mine}")
        else:
            with open(p, "w") as f:
                json.dump(mine, f)

    def __repr__(self):
        return (f"ParameterServer(dim={self.dim}, num_shards={self.num_shards}, table={self.table!r}, "
                f"backend={self.backend_name!r})")

    # ---------------------------------------------------------------- clients
    def client(self, mode: str = "sync", client_id: str | None = None, *, cache_rows: int | None = None,
               cache_options: dict | None = None) -> Client:
        """A client for one trainer. ``mode``: "sync", "bounded:S" or "async"
        (docs/ps.md). ``client_id``: None for a fresh id; an id used before
        resumes after its last acknowledged push (a restarted trainer).
        ``cache_rows`` (bounded modes): a trainer-side cache of that many hot
        rows (a FrequencyTable; ``cache_options``: its admission / eviction
        options) serving pulls of rows at most S of this client's pushes old."""
        self._open()
        parse_mode(mode)
        self._clients += 1
        return Client(self._b, dim=self.dim, mode=mode, client_id=client_id, timeout_s=self.timeout_s,
                      max_retries=self.max_retries, server_name=self.name, resume=client_id is not None,
                      optimizer=self.optimizer, cache_rows=cache_rows, cache_options=cache_options)

    def _open(self):
        if self._closed:
            raise PSError("this parameter server is shut down")

    def _all(self, method, *args):
        c = self._admin()
        return c._call_all(method, [args] * self.num_shards)

    # -------------------------------------------------------------- global cut
    def _global_cut(self, method, per_shard_args):
        """``method(*per_shard_args[i])`` on every shard i at one global cut:
        every push is in it on every shard or on none (docs/ps.md, "Global
        cuts"). 1) freeze every shard (pushes are held, answered FROZEN);
        each reports its clients' last applied seqs. 2) per client, the
        highest seq applied on any shard is the cut's; a shard behind it
        applies its held parts of those pushes (asked again until they have
        arrived: the clients keep sending them). 3) the calls, on shards
        still frozen by this cut. 4) thaw. A shard that lost the freeze
        (restarted, expired) restarts the cut; a push part that does not
        arrive within the retry budget (its client died between shards)
        raises CutTimeoutError."""
        budget = self.timeout_s * (self.max_retries + 1)
        c = self._admin()
        with self._cut_lock:
            for _attempt in range(3):
                token = uuid.uuid4().hex
                deadline = time.monotonic() + budget
                try:
                    lasts = c._call_all("freeze", [(token, 2 * budget)] * self.num_shards)
                    target: dict[str, int] = {}
                    for last in lasts:
                        for k, v in last.items():
                            target[k] = max(target.get(k, -1), v)
                    behind = {i: {k: v for k, v in target.items() if last.get(k, -1) < v}
                              for i, last in enumerate(lasts)}
                    behind = {i: t for i, t in behind.items() if t}
                    lost = False
                    waits = 0
                    while behind and not lost:
                        hs = {i: self._b.submit(i, "apply_up_to", token, t) for i, t in behind.items()}
                        still = {}
                        for i, h in hs.items():
                            status, info = c._resolve(i, h, "apply_up_to", (token, behind[i]))
                            if status == "lost":
                                lost = True
                            elif status == "missing":
                                still[i] = (behind[i], info)
                        if still and not lost:
                            if time.monotonic() > deadline:
                                what = "; ".join(f"shard {i}: " + ", ".join(f"client {k} seq {s}" for k, s in m.items())
                                                 for i, (_, m) in still.items())
                                raise CutTimeoutError(
                                    f"a cut waited {budget:.0f} s for parts of pushes that other shards had applied "
                                    f"({what}); their clients died between shards? Resuming such a client "
                                    f"(server.client(client_id=...)) completes its sequence")
                            waits += 1
                            time.sleep(0.0005 if waits < 20 else 0.005)
                        behind = {i: t for i, (t, _) in still.items()}
                    if not lost:
                        out = c._call_all("frozen_call", [(token, method) + tuple(a) for a in per_shard_args])
                        if all(status == "ok" for status, _ in out):
                            return [v for _, v in out]
                finally:
                    try:
                        c._call_all("thaw", [(token,)] * self.num_shards)
                    except PSError:
                        pass  # the freeze expires by itself
            raise PSError("no global cut could be taken: shards kept losing the cut's freeze (restarting?)")

    def _admin(self) -> Client:
        return Client(self._b, dim=self.dim, timeout_s=self.timeout_s, max_retries=self.max_retries,
                      server_name=self.name)

    def export_cut(self, since=None) -> Cut:
        """One model version across every shard (contract A): ``deltas[i]`` is
        shard i's ``export_delta(since[i])``, all taken while no shard applies a
        push. ``since=None``: from version 0 everywhere (a full snapshot)."""
        self._open()
        if since is None:
            since = (0,) * self.num_shards
        else:
            since = tuple(since) if not isinstance(since, (str, bytes)) else since
            if not isinstance(since, tuple) or len(since) != self.num_shards:
                raise ValueError(f"since must be None or one version per shard ({self.num_shards}), got {since!r}")
            since = tuple(_checks.version(s, f"since[{i}]") for i, s in enumerate(since))
        out = self._global_cut("export_delta", [(s,) for s in since])
        return Cut(since=since, versions=tuple(int(v) for _, v in out),
                   deltas=tuple(np.asarray(d) for d, _ in out))

    # -------------------------------------------------------------- save / load
    def save(self, path) -> None:
        """Writes the whole sharded model to directory ``path`` (created):
        ``shard-<i>.ckpt`` (EmbeddingTable.save of each shard, taken as one
        global cut; FrequencyTable shards add ``shard-<i>.ckpt.freq.npz``, their
        scores, clock and sketch), ``ps.json`` and ``config.pkl`` (table
        options, optimizer)."""
        self._open()
        if self.table == "frequency" and self.table_options.get("cold_row_type") is not None:
            raise ValueError("save: FrequencyTable shards with cold_row_type have no checkpoint of which rows "
                             "are int8; save a server without it")
        path = os.path.abspath(_checks.path(path, "path"))
        os.makedirs(path, exist_ok=True)
        out = self._global_cut("save_to", [(os.path.join(path, f"shard-{i}.ckpt"),) for i in range(self.num_shards)])
        with open(os.path.join(path, "config.pkl"), "wb") as f:
            pickle.dump({"table_options": self.table_options, "optimizer": self.optimizer}, f)
        with open(os.path.join(path, _CONFIG), "w") as f:
            json.dump({"dim": self.dim, "num_shards": self.num_shards, "table": self.table,
                       "versions": [v for v, _ in out], "last_seq": [last for _, last in out]}, f)

    @classmethod
    def load(cls, path, *, num_shards: int | None = None, backend: str = "local", optimizer=None, **kwargs):
        """A server from ``save(path)``. ``num_shards`` other than the saved
        count reshards: every row moves (with its optimizer state) to
        ``shard_of(key, num_shards)``; the step count is kept (FrequencyTable
        shards: their scores and sketch are per shard and do not move; the
        rows start with equal scores, as ``FrequencyTable.load``). ``optimizer``:
        default, the saved one. Other keyword arguments as the constructor."""
        path = os.path.abspath(_checks.path(path, "path"))
        try:
            with open(os.path.join(path, _CONFIG)) as f:
                meta = json.load(f)
            with open(os.path.join(path, "config.pkl"), "rb") as f:
                cfg = pickle.load(f)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"path: '{path}' holds no saved parameter server ({e.filename} is missing)") \
                from None
        old = int(meta["num_shards"])
        n = _pos_int(num_shards, "num_shards", allow_none=True) or old
        optimizer = optimizer if optimizer is not None else cfg["optimizer"]
        files = [os.path.join(path, f"shard-{i}.ckpt") for i in range(old)]
        lasts = [{k: int(v) for k, v in d.items()} for d in meta["last_seq"]]
        if n == old:
            init = (files, lasts)
        else:
            merged: dict[str, int] = {}
            for d in lasts:
                for k, v in d.items():
                    merged[k] = max(merged.get(k, -1), v)
            init = (_reshard(files, n, path, optimizer, cfg["table_options"]), [merged] * n)
        kwargs.setdefault("table_options", cfg["table_options"])
        return cls(int(meta["dim"]), n, table=meta["table"], optimizer=optimizer, backend=backend, _init=init,
                   **kwargs)

    # ------------------------------------------------------------------ admin
    def stats(self) -> dict:
        """Per shard (``shards``: rows, version, step, pushes applied,
        duplicates dropped, rejected, replayed log records, restarts...) and totals."""
        self._open()
        per = self._all("stats")
        tot = {k: sum(s[k] for s in per) for k in ("rows", "pushes_applied", "duplicates_dropped", "rejected",
                                                   "restarts")}
        return {"backend": self.backend_name, "num_shards": self.num_shards, **tot, "shards": per}

    def shard_state(self, i: int):
        """(keys, rows, optimizer state, step) of shard ``i``: a test and debugging view."""
        return self._admin()._call_all("state", [()] * self.num_shards)[i]

    def shard_frequency_state(self, i: int) -> dict:
        """``FrequencyTable.frequency_state`` of shard ``i`` (scores, last
        steps, clock, sketch, cold row; ``table="frequency"``): a test and debugging view."""
        return self._admin()._call_all("frequency_state", [()] * self.num_shards)[i]

    def kill_shard(self, i: int, how: str = "restart", lose_next_reply: bool = False) -> None:
        """Fault injection. ``how="restart"``: local: drop shard i's memory and
        restart it from its durable directory; ray: ``ray.kill(no_restart=False)``.
        ``how="sigkill"`` (ray): ``kill -9`` of the actor's process."""
        if how not in ("restart", "sigkill"):
            raise ValueError(f"how must be 'restart' or 'sigkill', got {how!r}")
        if self.backend_name != "ray":
            if how == "sigkill":
                raise ValueError("how='sigkill' needs backend='ray' (local shards live in this process)")
            self._b.crash(i, lose_next_reply=lose_next_reply)
            return
        # Wait until the shard is up (a previous kill's restart done), so every kill is a restart.
        c = self._admin()
        pid = c._resolve(i, self._b.submit(i, "pid"), "pid", ())
        if how == "sigkill":
            os.kill(pid, signal.SIGKILL)
        else:
            self._b.crash(i, lose_next_reply=lose_next_reply)

    def shutdown(self) -> None:
        """Stops the shards (Ray: kills the actors). Durable state stays on disk. Idempotent."""
        if not self._closed:
            self._closed = True
            self._b.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def __del__(self):
        try:
            if not self._closed and self.backend_name == "local":
                self.shutdown()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _reshard(files, n, path, optimizer, table_options):
    """Checkpoints of ``n`` shards made from the saved ones (written under
    ``path/resharded-<n>/``): each row and its optimizer state go to
    ``shard_of(key, n)``; every new shard gets the highest saved step."""
    from ..table import EmbeddingTable

    out_dir = os.path.join(path, f"resharded-{n}")
    os.makedirs(out_dir, exist_ok=True)
    olds = [EmbeddingTable.load(f, optimizer=optimizer) for f in files]
    step = max(t.step for t in olds)
    init = olds[0].initializer
    news = [EmbeddingTable(olds[0].dim, initializer=init, optimizer=optimizer,
                           num_threads=table_options.get("num_threads")) for _ in range(n)]
    spec = optimizer._spec()
    for t in olds:
        k, r = t.export()
        st = t._t.export_state(k)
        sid = shard_of(k, n)
        for j in range(n):
            m = sid == j
            if not m.any():
                continue
            news[j].assign(k[m], r[m])
            if st.shape[1]:
                news[j]._t.import_state(np.ascontiguousarray(k[m]), np.ascontiguousarray(st[m]), spec)
    paths = []
    for j, t in enumerate(news):
        t._t.set_step(step)
        p = os.path.join(out_dir, f"shard-{j}.ckpt")
        t.save(p)
        paths.append(p)
    return paths

