"""Where shards run: in this process (``LocalBackend``: one worker thread per
shard, calls to a shard run in submission order) or as Ray actors
(``RayBackend``: one actor per shard, restarted by Ray after a crash).

Both offer the same operations to the client: ``put`` (make an array
available to every shard once), ``submit(i, method, *args)`` (start a call
on shard i, returns a handle), ``submit_many(method, {i: args})`` (the same
call on several shards at once), ``result(handle, timeout_s)`` (its value;
raises :class:`Transient` when the call may succeed if submitted again) and
``handles`` for pickling clients.

Ray's per-call cost (an actor task, its arguments and a 1 MiB result through
the object store: ~4-5 ms a call on this machine) is most of a training
step's overhead. So ``RayBackend`` sends the data calls (pulls and pushes)
of a stream of them (``transport="auto"``, the default; ``"graph"``: from
the first) through a Ray compiled graph when every shard runs on this
process's node: one graph over all shard actors, input and results through
shared-memory channels, one execution per ``submit_many``. See
``TRANSPORTS``.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import os
import threading
import time
import uuid
import weakref

from ._shard import ShardCore, call

NAMESPACE = "embedlookup-ps"

#: Ray transports (``ParameterServer(transport=...)``): "auto" (default) the data calls through a
#: compiled graph while this process makes them in a stream (``GRAPH_AFTER`` of them within
#: ``GRAPH_WINDOW_S``: a training loop), torn down after ``GRAPH_IDLE_S`` without one; "graph" through
#: a graph from the first call, kept while the client lives; "tasks" one actor task per shard and call.
#: A graph is used only when every shard runs on this node, and only by one process at a time (the
#: shards grant it to one owner); otherwise, and for every other call and every retry, actor tasks.
#: A graph's actors poll while they wait for input (Ray's channel read spins on sched_yield), so
#: "auto" drops an idle graph: polling is paid only between the calls of a stream (docs/ps.md,
#: "Ray transport"). The client sleeps through most of its own wait (GraphWait).
TRANSPORTS = ("tasks", "graph", "auto")
GRAPH_AFTER = 8
#: "auto": the GRAPH_AFTER data calls that build a graph must fall within this many seconds.
GRAPH_WINDOW_S = 1.0
#: "auto": a graph with no data call for this many seconds (and none in flight) is torn down.
GRAPH_IDLE_S = 1.0
#: After a graph failed (a shard died, a timeout): data calls through tasks before it is built again.
GRAPH_RETRY_AFTER = 32
#: GraphWait: the client sleeps through this share of the shortest of the last WAIT_HISTORY shard times.
WAIT_SHARE, WAIT_HISTORY = 0.8, 8

#: The calls that go through the graph: a trainer's steady stream.
GRAPH_CALLS = frozenset({"pull", "pull_fresh", "pooled_pull", "push", "push_pooled"})


class Transient(Exception):
    """The call did not complete (timeout, shard died or restarting)."""


class ShardDown(RuntimeError):
    """Local backend: the shard crashed (simulated) while the call was queued or running."""


class LocalBackend:
    kind = "local"
    share_puts = True  # put() hands the object itself

    def __init__(self, shard_args: list[dict]):
        self._args = shard_args
        self.cores = [ShardCore(**a) for a in shard_args]
        self._pools = [cf.ThreadPoolExecutor(1, thread_name_prefix=f"ps-shard{i}") for i in range(len(shard_args))]
        self._lose_reply = [0] * len(shard_args)
        self.lost_replies = []  # the outcome of each push whose reply crash() lost
        self._lock = threading.Lock()
        self.closed = False

    @property
    def num_shards(self):
        return len(self.cores)

    def put(self, a):
        return a

    def _run(self, i, method, args):
        out = call(self.cores[i], method, args)
        with self._lock:
            lose = self._lose_reply[i] > 0 and method.startswith("push")
            if lose:
                self._lose_reply[i] -= 1
        if lose:  # the push was applied (and logged); the reply is lost in a crash
            self.lost_replies.append(out[0])
            self._restart(i)
            raise ShardDown(f"shard {i} crashed before replying")
        return out

    def submit(self, i, method, *args):
        if self.closed:
            raise RuntimeError("the parameter server is shut down")
        return self._pools[i].submit(self._run, i, method, args)

    def submit_many(self, method, calls: dict) -> dict:
        return {i: self.submit(i, method, *a) for i, a in calls.items()}

    def result(self, handle, timeout_s):
        try:
            return handle.result(timeout=timeout_s)
        except cf.TimeoutError:
            raise Transient("timed out") from None
        except ShardDown as e:
            raise Transient(str(e)) from None

    def _restart(self, i):
        self.cores[i].close()
        self.cores[i] = ShardCore(**self._args[i], restarted=True)

    def crash(self, i: int, lose_next_reply: bool = False) -> None:
        """Simulates a killed shard process: its memory is dropped and it
        restarts from its durable directory (queued behind the calls already
        submitted). ``lose_next_reply``: instead, the next push is applied
        and then the shard crashes before replying."""
        if lose_next_reply:
            with self._lock:
                self._lose_reply[i] += 1
            return
        self._pools[i].submit(self._restart, i).result()

    def shutdown(self):
        self.closed = True
        for p in self._pools:
            p.shutdown(wait=True)
        for c in self.cores:
            c.close()


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is in the "ps" extra
        raise ImportError('backend="ray" needs Ray: pip install "embedlookup[ps]" (ray==2.60.0)') from None
    return ray


_ACTOR = None


def _actor_class():
    global _ACTOR
    if _ACTOR is None:
        ray = _ray()

        class ShardActor:
            def __init__(self, args):
                import warnings

                with warnings.catch_warnings():  # ray 2.60 warns about its own use of a deprecated property
                    warnings.simplefilter("ignore")
                    restarted = ray.get_runtime_context().was_current_actor_reconstructed
                self.core = ShardCore(**args, restarted=restarted)
                self.node = ray.get_runtime_context().get_node_id()
                # A compiled graph's calls run on their own thread beside the actor's task thread:
                # one lock keeps the shard's calls one at a time, as a plain actor runs them.
                self._mu = threading.Lock()
                self._graph_owner = None  # (token, pid) of the process whose graph includes this actor

            def call(self, method, *args):
                with self._mu:
                    out = call(self.core, method, args)
                return dict(out, node=self.node) if method == "stats" else out

            def graph_call(self, msg):
                """One execution of a client's compiled graph: ``(method,
                {shard: args})``; shards without args answer None."""
                method, calls = msg
                args = calls.get(self.core.index)
                if args is None:
                    return None
                # A part put before the graph was built comes as its object ref (tasks resolve them).
                t0 = time.perf_counter()
                out = self.call(method, *(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args))
                return out, time.perf_counter() - t0  # the time taken: the client's next wait (GraphWait)

            def claim_graph(self, token, pid):
                """Grants this actor to one process's graph at a time (a
                second graph over the same actor would never be served).
                A claim by a process that no longer runs is void (the
                graph is only built with every shard on its owner's node)."""
                with self._mu:
                    if self._graph_owner is not None and self._graph_owner[0] != token:
                        try:
                            os.kill(self._graph_owner[1], 0)
                            return False
                        except ProcessLookupError:
                            pass
                        except PermissionError:
                            return False
                    self._graph_owner = (token, pid)
                    return True

            def release_graph(self, token):
                with self._mu:
                    if self._graph_owner is not None and self._graph_owner[0] == token:
                        self._graph_owner = None

            def node_id(self):
                return self.node

        _ACTOR = ray.remote(ShardActor)
    return _ACTOR


def transient_ray_errors():
    ray = _ray()
    ex = ray.exceptions
    return tuple(e for e in (getattr(ex, n, None) for n in (
        "GetTimeoutError", "RayActorError", "ActorUnavailableError", "ActorDiedError", "ObjectLostError",
        "OwnerDiedError", "WorkerCrashedError")) if e is not None)


def _probe(address, timeout_s: float) -> None:
    """A TCP connection to a ``host:port`` address first: ray.init retries an
    unreachable address for minutes; this fails within the timeout instead."""
    import socket

    if not isinstance(address, str) or address in ("auto", "local"):
        return
    a = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = a.rpartition(":")
    try:
        port = int(port)
    except ValueError:
        return
    try:
        socket.create_connection((host or "127.0.0.1", port), timeout=min(timeout_s, 10.0)).close()
    except OSError as e:
        raise ConnectionError(f"address: no Ray cluster answers at {address!r} ({e})") from None


class RayBackend:
    kind = "ray"

    def __init__(self, shard_args: list[dict] | None, *, name: str, address=None, max_restarts: int = -1,
                 handles=None, timeout_s: float = 30.0, actor_options: list[dict] | None = None,
                 transport: str = "auto"):
        ray = _ray()
        self._ray = ray
        self.name = name
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self.transport = transport
        self._graph = None  # the compiled graph while this process holds one
        self._graph_at = {"auto": GRAPH_AFTER, "graph": 1, "tasks": 0}[transport]  # data call that builds it
        self._data_calls = 0
        self._call_times = collections.deque(maxlen=GRAPH_AFTER)  # "auto": the last data calls' times
        self._last_call = time.monotonic()
        self._inflight = 0  # shards' results of graph executions not read yet
        self.graph_idle_drops = 0
        self._glock = threading.RLock()  # a compiled graph is not thread-safe: execute and get under it
        self._token = uuid.uuid4().hex
        self.graph_builds = self.graph_failures = self.graph_calls = 0
        self._wait = GraphWait()
        if not ray.is_initialized():
            _probe(address, timeout_s)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True)
            except Exception as e:  # noqa: BLE001 - any failure to reach the cluster is reported as such
                raise ConnectionError(f"address: cannot start or reach a Ray cluster at {address!r}: "
                                      f"{type(e).__name__}: {e}") from None
        self._transient = transient_ray_errors()
        self._timeout_s = timeout_s
        self._share = None  # share_puts: known once the shards' nodes were asked
        if handles is not None:
            self.actors = handles
            return
        cls = _actor_class()
        extra = actor_options or [{}] * len(shard_args)
        self.actors = [cls.options(**{"num_cpus": 0, **extra[i], "name": f"{name}-shard-{i}", "namespace": NAMESPACE,
                                      "max_restarts": max_restarts, "max_task_retries": 0}).remote(a)
                       for i, a in enumerate(shard_args)]
        # Wait until every shard is up (its recovery done): a clear error now
        # rather than at the first pull. Their nodes decide share_puts.
        try:
            nodes = ray.get([a.node_id.remote() for a in self.actors], timeout=timeout_s)
        except self._transient as e:
            raise ConnectionError(f"ray: the shards did not start within timeout_s={timeout_s}: {e}") from None
        self._share = all(n == ray.get_runtime_context().get_node_id() for n in nodes)

    @classmethod
    def connect(cls, name: str, num_shards: int, transport: str = "auto"):
        """The shards of a running server, found by name (a client unpickled in another process)."""
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address="auto", include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        handles = [ray.get_actor(f"{name}-shard-{i}", namespace=NAMESPACE) for i in range(num_shards)]
        return cls(None, name=name, handles=handles, transport=transport)

    @property
    def num_shards(self):
        return len(self.actors)

    def put(self, a):
        # One copy into the object store; every shard maps it (zero-copy numpy). A graph's input
        # channel carries the value itself (a retry through tasks passes it by value).
        if self._graph is not None:
            return a
        return self._ray.put(a) if getattr(a, "nbytes", 0) >= 65536 else a

    @property
    def share_puts(self) -> bool:
        """Whether every shard ran on this process's node when it started
        (a client unpickled elsewhere asks once): then one put of every
        shard's part costs less than one per shard (each put and each object
        passed is a round trip to the object store; the shards map it in
        place), while across nodes each shard's node would fetch the others'
        parts too. Only a cost: both ways every shard gets its own part."""
        if self._share is None:
            here = self._ray.get_runtime_context().get_node_id()
            try:
                nodes = self._ray.get([a.node_id.remote() for a in self.actors], timeout=self._timeout_s)
                self._share = all(n == here for n in nodes)
            except self._transient:
                self._share = False  # a shard is down: one put per shard, never asked again
        return self._share

    def submit(self, i, method, *args):
        return self.actors[i].call.remote(method, *args)

    def submit_many(self, method, calls: dict) -> dict:
        """``method`` on every shard of ``calls`` (shard -> args): one
        execution of the compiled graph when this process holds one (see
        TRANSPORTS), else one actor task per shard."""
        if method in GRAPH_CALLS and self._graph_ready():
            with self._glock:
                g = self._graph
                if g is not None:
                    try:
                        refs = g.execute((method, calls))
                    except self._ray.exceptions.RayCgraphCapacityExceeded:
                        pass  # this call through tasks (the shards' sequence numbers order pushes)
                    except Exception as e:  # noqa: BLE001 - a failed graph: tasks from here on
                        self._drop_graph(e)
                    else:
                        self.graph_calls += 1
                        self._inflight += len(calls)  # one result to read per shard
                        self._last_call = time.monotonic()
                        wait = self._wait.start(method)
                        return {i: _GraphHandle(g, refs[i], wait) for i in calls}
        return {i: self.submit(i, method, *a) for i, a in calls.items()}

    def result(self, handle, timeout_s):
        if type(handle) is _GraphHandle:
            return self._graph_result(handle, timeout_s)
        try:
            return self._ray.get(handle, timeout=timeout_s)
        except self._transient as e:
            raise Transient(f"{type(e).__name__}: {e}") from None

    # ------------------------------------------------------- compiled graph
    def _graph_ready(self) -> bool:
        """Whether data calls go through a graph now (built here when due)."""
        if self._graph is not None:
            return True
        if not self._graph_at:
            return False
        with self._glock:
            self._data_calls += 1
            now = time.monotonic()
            self._call_times.append(now)
            due = self._data_calls >= self._graph_at
            if due and self.transport == "auto":  # only for a stream of calls, not a few scattered ones
                due = len(self._call_times) == GRAPH_AFTER and now - self._call_times[0] <= GRAPH_WINDOW_S
            if self._graph is None and due:
                self._build_graph()
            return self._graph is not None

    def _build_graph(self) -> None:
        ray = self._ray
        if not self.share_puts:  # a shard on another node: channels would cross nodes; tasks
            self._graph_at = 0
            return
        self._graph_at = self._data_calls + GRAPH_RETRY_AFTER  # unless this build succeeds
        try:
            granted = ray.get([a.claim_graph.remote(self._token, os.getpid()) for a in self.actors],
                              timeout=self._timeout_s)
        except Exception:  # noqa: BLE001 - a shard is down: try again later
            return
        if not all(granted):  # another process's graph holds these shards
            self._release()
            return
        try:
            import logging

            from ray.dag import InputNode, MultiOutputNode

            # Ray logs each teardown, and a dead actor's at ERROR with a traceback: routine events here
            # (a shard restart, shutdown, exit), handled and counted (client.stats()["transport"]).
            logging.getLogger("ray.dag.compiled_dag_node").setLevel(logging.CRITICAL)

            with InputNode() as inp:
                dag = MultiOutputNode([a.graph_call.bind(inp) for a in self.actors])
            self._graph = dag.experimental_compile(_submit_timeout=self._timeout_s)
        except Exception:  # noqa: BLE001 - no graph: tasks, tried again later
            self._graph = None
            self._release()
            return
        self.graph_builds += 1
        self._last_call = time.monotonic()
        if self.transport == "auto":
            threading.Thread(target=_idle_watch, args=(weakref.ref(self), self._graph), daemon=True,
                             name="embedlookup-ps-graph-idle").start()
        global _AT_EXIT
        if not _AT_EXIT:  # registered after Ray's own exit handler, so it runs before it
            atexit.register(_drop_live_graphs)
            _AT_EXIT = True
        _LIVE_GRAPHS.add(self)

    def _graph_result(self, h, timeout_s):
        h.wait.sleep()  # not in Ray's read: it polls, and would take a core from the shards meanwhile
        with self._glock:
            if h.graph is self._graph:
                self._inflight -= 1
                self._last_call = time.monotonic()
            try:
                out, took = self._ray.get(h.ref, timeout=timeout_s)
                h.wait.took(took)
                return out
            except self._ray.exceptions.RayTaskError:
                raise  # the shard raised (bad input): as a task's error
            except Exception as e:  # noqa: BLE001 - died, timed out, torn down: send it again by task
                if h.graph is self._graph:
                    self._drop_graph(e)
                raise Transient(f"compiled graph: {type(e).__name__}: {e}") from None

    def _drop_graph(self, err=None) -> None:
        """Tears the graph down (its pending executions fail: their calls are
        sent again by task, and pushes are idempotent); built again after
        GRAPH_RETRY_AFTER data calls."""
        g, self._graph = self._graph, None
        if g is None:
            return
        self._inflight = 0
        self._call_times.clear()
        self.graph_failures += err is not None
        self._graph_at = self._data_calls + GRAPH_RETRY_AFTER if self._graph_at else 0
        try:
            g.teardown()
        except Exception:  # noqa: BLE001 - a dead shard's side is gone already
            pass
        self._release()
        _LIVE_GRAPHS.discard(self)

    def _release(self) -> None:
        for a in self.actors:
            try:
                a.release_graph.remote(self._token)
            except Exception:  # noqa: BLE001 - a dead shard forgot the claim with its process
                pass

    def _suspend_graph(self) -> None:
        """Tears the graph down and builds none until :meth:`_resume_graph`.
        For measurement, not a user API: bench/bench_ps_graph_idle.py (what
        an idle graph's polling actors cost the work beside them) and
        bench/bench_ps_graph_rebuild.py."""
        with self._glock:
            self._graph_at = 0
            self._drop_graph()

    def _resume_graph(self) -> None:
        """Builds the graph again at the next data call (if the transport uses one)."""
        with self._glock:
            if self.transport != "tasks" and self._graph is None:
                self._graph_at = self._data_calls + 1

    def graph_stats(self) -> dict:
        return {"transport": self.transport, "graph": self._graph is not None, "graph_builds": self.graph_builds,
                "graph_failures": self.graph_failures, "graph_calls": self.graph_calls,
                "graph_idle_drops": self.graph_idle_drops}

    def _drop_if_idle(self, graph) -> bool:
        """("auto") Tears ``graph`` down if it is still this backend's graph and
        no data call came or was in flight for GRAPH_IDLE_S; the next stream
        of calls builds one again. True when the watch is over."""
        if not self._glock.acquire(blocking=False):
            return False  # a call is executing or reading: not idle
        try:
            if self._graph is not graph:
                return True
            if self._inflight > 0 or time.monotonic() - self._last_call < GRAPH_IDLE_S:
                return False
            self._drop_graph()
            self._graph_at = self._data_calls + 1  # once GRAPH_AFTER calls come within GRAPH_WINDOW_S
            self.graph_idle_drops += 1
            return True
        finally:
            self._glock.release()

    def crash(self, i: int, lose_next_reply: bool = False) -> None:
        """ray.kill with no_restart=False: the actor process dies and Ray restarts it."""
        if lose_next_reply:
            raise ValueError("lose_next_reply is a local-backend fault; on Ray, kill the process mid-call")
        self._ray.kill(self.actors[i], no_restart=False)

    def __del__(self):
        # A client dropped in a process that goes on (a Ray task's worker is reused): its graph and the
        # shards' claim on it go with it, so another client can build one.
        try:
            if self._graph is not None:
                self._graph_at = 0
                self._drop_graph()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def shutdown(self):
        with self._glock:
            self._graph_at = 0
            self._drop_graph()
        for a in self.actors:
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


class _GraphHandle:
    """One shard's result of one graph execution."""

    __slots__ = ("graph", "ref", "wait")

    def __init__(self, graph, ref, wait):
        self.graph, self.ref, self.wait = graph, ref, wait


class GraphWait:
    """Sleeps, rather than polls, through the part of a graph execution the
    shards are known to need. Ray's channel read spins (sched_yield) until
    the result is there; on a machine with as many cores as shards, that
    spinning client takes CPU from the shards it waits for. So before
    reading, the client sleeps until ``WAIT_SHARE`` of the shortest of the
    last ``WAIT_HISTORY`` times a shard took for this method (each result
    carries its shard's time), counted from the submission; the read polls
    only for the rest. A call whose shards take less than before is read
    late by at most the difference."""

    __slots__ = ("_history",)

    def __init__(self):
        self._history: dict[str, list] = {}

    def start(self, method: str) -> "_Execution":
        h = self._history.setdefault(method, [])
        expect = WAIT_SHARE * min(h) if len(h) >= WAIT_HISTORY else 0.0
        return _Execution(h, time.perf_counter() + expect)


class _Execution:
    __slots__ = ("_history", "_until")

    def __init__(self, history: list, until: float):
        self._history, self._until = history, until

    def sleep(self) -> None:
        left = self._until - time.perf_counter()
        if left > 0:
            time.sleep(left)

    def took(self, seconds: float) -> None:
        h = self._history
        h.append(seconds)
        if len(h) > WAIT_HISTORY:
            del h[0]


# Graphs still held at exit are torn down first (their shards' claims released; Ray's own exit
# would otherwise find their channels open).
_LIVE_GRAPHS: weakref.WeakSet = weakref.WeakSet()
_AT_EXIT = False


def _idle_watch(backend_ref, graph):
    """("auto") Drops ``graph`` once its client stopped making data calls, so
    its actors stop polling; ends when the graph is gone either way."""
    while True:
        time.sleep(max(0.01, GRAPH_IDLE_S / 4))
        b = backend_ref()
        if b is None or b._graph is not graph:
            return
        try:
            done = b._drop_if_idle(graph)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            return
        del b
        if done:
            return


def _drop_live_graphs():
    for b in list(_LIVE_GRAPHS):
        try:
            with b._glock:
                b._graph_at = 0
                b._drop_graph()
        except Exception:  # noqa: BLE001 - exiting
            pass
