"""Where shards run: in this process (``LocalBackend``: one worker thread per
shard, calls to a shard run in submission order) or as Ray actors
(``RayBackend``: one actor per shard, restarted by Ray after a crash).

Both offer the same four operations to the client: ``put`` (make an array
available to every shard once), ``submit(i, method, *args)`` (start a call
on shard i, returns a handle), ``result(handle, timeout_s)`` (its value;
raises :class:`Transient` when the call may succeed if submitted again) and
``handles`` for pickling clients.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading

from ._shard import ShardCore, call

NAMESPACE = "embedlookup-ps"


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

            def call(self, method, *args):
                out = call(self.core, method, args)
                return dict(out, node=self.node) if method == "stats" else out

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
                 handles=None, timeout_s: float = 30.0, actor_options: list[dict] | None = None):
        ray = _ray()
        self._ray = ray
        self.name = name
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
    def connect(cls, name: str, num_shards: int):
        """The shards of a running server, found by name (a client unpickled in another process)."""
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address="auto", include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        handles = [ray.get_actor(f"{name}-shard-{i}", namespace=NAMESPACE) for i in range(num_shards)]
        return cls(None, name=name, handles=handles)

    @property
    def num_shards(self):
        return len(self.actors)

    def put(self, a):
        # One copy into the object store; every shard maps it (zero-copy numpy).
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

    def result(self, handle, timeout_s):
        try:
            return self._ray.get(handle, timeout=timeout_s)
        except self._transient as e:
            raise Transient(f"{type(e).__name__}: {e}") from None

    def crash(self, i: int, lose_next_reply: bool = False) -> None:
        """ray.kill with no_restart=False: the actor process dies and Ray restarts it."""
        if lose_next_reply:
            raise ValueError("lose_next_reply is a local-backend fault; on Ray, kill the process mid-call")
        self._ray.kill(self.actors[i], no_restart=False)

    def shutdown(self):
        for a in self.actors:
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
