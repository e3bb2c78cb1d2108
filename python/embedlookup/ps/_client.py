"""A trainer's connection to the parameter server (see docs/ps.md)."""

from __future__ import annotations

import collections
import threading
import time
import uuid

import numpy as np

from .. import _checks
from ..sharding import shard_of
from ._backends import Transient
from ._shard import APPLIED, DUPLICATE, FROZEN, GAP, REJECTED

#: async mode: pushes in flight before a push waits for the oldest (memory bound).
ASYNC_MAX_IN_FLIGHT = 64


def retry_delay(attempt: int) -> float:
    """Seconds before the retry after failed attempt ``attempt`` (0-based):
    0.1 * 2**attempt, at most 2 s (a Ray shard restart takes ~1-5 s)."""
    return min(0.1 * 2 ** attempt, 2.0)


class PSError(RuntimeError):
    """Base of the parameter server's errors."""


class ShardUnavailableError(PSError):
    """A shard did not answer within the retry budget (dead, unreachable, or restarting too long)."""


class PushRejectedError(PSError):
    """A shard refused a push (its rows are unchanged); the push's sequence number is used up."""


def parse_mode(mode) -> tuple[str, int | None]:
    """("sync", 0) / ("bounded", S) / ("async", None)."""
    if mode == "sync":
        return "sync", 0
    if mode == "async":
        return "async", None
    if isinstance(mode, str) and mode.startswith("bounded:"):
        try:
            s = int(mode[len("bounded:"):])
        except ValueError:
            s = -1
        if s >= 0:
            return "bounded", s
    raise ValueError(f"mode must be 'sync', 'async' or 'bounded:S' with an int S >= 0, got {mode!r}")


class _Pending:
    __slots__ = ("seq", "method", "args", "handles")

    def __init__(self, seq, method, args, handles):
        self.seq, self.method, self.args, self.handles = seq, method, args, handles


class Client:
    """One trainer's view of the parameter server.

    Give each trainer (thread or process) its own client. Pickling a client
    (to send it to a Ray task or another process; backend "ray" only) first
    waits for its pushes, then carries its id and sequence number: the copy
    reconnects to the shards by name and continues, and this client refuses
    further calls (one sequence, one user).
    """

    def __init__(self, backend, *, dim: int, mode: str = "sync", client_id: str | None = None, timeout_s: float,
                 max_retries: int, server_name: str, resume: bool = False, next_seq: int = 0):
        self._b = backend
        self._dim = int(dim)
        self.mode = mode
        self._kind, self._bound = parse_mode(mode)
        if client_id is not None and not isinstance(client_id, str):
            raise TypeError(f"client_id must be a str or None, got {type(client_id).__name__}")
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self._server_name = server_name
        self._pending: collections.deque[_Pending] = collections.deque()
        self._lock = threading.RLock()
        self._closed = False
        self._moved = False
        self.pushes = 0
        self.duplicates = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._seq = next_seq
        if client_id is not None and resume:
            self._resume()

    # ---------------------------------------------------------------- basics
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def num_shards(self) -> int:
        return self._b.num_shards

    @property
    def in_flight(self) -> int:
        """Pushes sent and not yet acknowledged by every shard."""
        return len(self._pending)

    def __repr__(self):
        return f"Client(id={self.client_id!r}, mode={self.mode!r}, shards={self.num_shards}, seq={self._seq})"

    def _open(self):
        if self._closed:
            raise PSError("this client is closed")
        if self._moved:
            raise PSError("this client was pickled: its copy continues its pushes; make a new client here "
                          "(server.client())")

    # ------------------------------------------------------- calls + retries
    def _retry_wait(self, attempt):
        time.sleep(retry_delay(attempt))

    def _unavailable(self, i, what, attempts, err):
        return ShardUnavailableError(
            f"shard {i} did not answer {what} after {attempts} attempts of timeout_s={self.timeout_s} "
            f"(max_retries={self.max_retries}): {err}")

    def _resolve(self, i, h, method, args):
        """The value of call ``h`` on shard ``i``, submitting it again after a
        transient failure (max_retries times, then ShardUnavailableError)."""
        attempt = 0
        while True:
            try:
                return self._b.result(h, self.timeout_s)
            except Transient as e:
                attempt += 1
                if attempt > self.max_retries:
                    raise self._unavailable(i, method, attempt, e) from None
                self._retry_wait(attempt - 1)
                h = self._b.submit(i, method, *args)

    def _call_all(self, method, per_shard_args):
        hs = [self._b.submit(i, method, *a) for i, a in enumerate(per_shard_args)]
        return [self._resolve(i, h, method, per_shard_args[i]) for i, h in enumerate(hs)]

    def _resolve_push(self, i, h, method, args):
        """A push's acknowledgement from shard ``i``; resubmits on transient
        failures, on GAP (an earlier push of this client is still being
        retried) and on FROZEN (a cut is being taken). Returns None or the
        rejection message."""
        attempt, waited = 0, 0
        deadline = time.monotonic() + self.timeout_s * (self.max_retries + 1)
        while True:
            try:
                status, info = self._b.result(h, self.timeout_s)
            except Transient as e:
                attempt += 1
                if attempt > self.max_retries:
                    raise self._unavailable(i, method, attempt, e) from None
                self._retry_wait(attempt - 1)
            else:
                if status == DUPLICATE:
                    self.duplicates += 1  # a retry of a push the shard had already applied
                if status in (APPLIED, DUPLICATE):
                    return None
                if status == REJECTED:
                    return info
                if status not in (GAP, FROZEN):  # pragma: no cover - protocol error
                    raise PSError(f"shard {i}: unexpected reply {status!r}")
                if time.monotonic() > deadline:
                    raise self._unavailable(i, method, attempt + waited, f"push still {status} (last seq {info})")
                waited += 1
                time.sleep(0.001 if waited < 20 else 0.01)
            h = self._b.submit(i, method, *args)

    def _drain(self, limit: int) -> None:
        """Waits (oldest first) until at most ``limit`` pushes are in flight."""
        while len(self._pending) > limit:
            p = self._pending[0]
            errors = []
            for i, h in enumerate(p.handles):
                if h is None:
                    continue
                msg = self._resolve_push(i, h, p.method, p.args[i])
                p.handles[i] = None  # acknowledged: never resubmitted
                if msg is not None:
                    errors.append(f"shard {i}: {msg}")
            self._pending.popleft()
            if errors:
                raise PushRejectedError(f"push {p.seq} of client {self.client_id} was refused by "
                                        f"{'; '.join(errors)} (those shards' rows are unchanged)")

    def _send_push(self, method, per_shard_args):
        seq = self._seq
        self._seq += 1
        args = [(self.client_id, seq) + a for a in per_shard_args]
        handles = [self._b.submit(i, method, *a) for i, a in enumerate(args)]
        self._pending.append(_Pending(seq, method, args, handles))
        self.pushes += 1
        if self._kind == "async":
            self._drain(ASYNC_MAX_IN_FLIGHT)
        else:
            self._drain(self._bound)

    def _before_pull(self):
        if self._kind != "async":
            self._drain(self._bound)

    def _resume(self):
        """A client_id that pushed before (a restarted trainer): continue
        after its last sequence number on every shard."""
        lasts = self._call_all("last_seq", [(self.client_id,)] * self.num_shards)
        top = max(lasts)
        if min(lasts) != top:  # the previous process died between shards
            self._call_all("advance", [(self.client_id, top)] * self.num_shards)
        self._seq = top + 1

    # ------------------------------------------------------------------ pulls
    def _split(self, keys):
        if self.num_shards == 1:
            return None, [keys]
        sid = shard_of(keys, self.num_shards)
        masks = [sid == i for i in range(self.num_shards)]
        return masks, [np.ascontiguousarray(keys[m]) for m in masks]

    def pull(self, keys) -> np.ndarray:
        """Rows of ``keys`` as (n, dim) float32 (missing keys are inserted on
        their shard with the initializer, as EmbeddingTable.lookup does)."""
        with self._lock:
            self._open()
            k = _checks.keys_1d(keys, "keys")
            self._before_pull()
            masks, parts = self._split(k)
            self.bytes_sent += k.nbytes
            # Only the shards that hold some of the keys are asked.
            hs = {i: self._b.submit(i, "pull", p) for i, p in enumerate(parts) if p.shape[0] or len(parts) == 1}
            rows = {i: self._resolve(i, h, "pull", (parts[i],)) for i, h in hs.items()}
            self.bytes_received += sum(r.nbytes for r in rows.values())
            if masks is None:
                return np.array(rows[0], copy=True) if not rows[0].flags.writeable else rows[0]
            out = np.empty((k.shape[0], self._dim), np.float32)
            for i, r in rows.items():
                out[masks[i]] = r
            return out

    def pooled_pull(self, values, offsets=None, mode: str = "sum", per_sample_weights=None,
                    include_last_offset: bool = False) -> np.ndarray:
        """Pooled rows per bag, as EmbeddingTable.pooled_lookup (torch
        EmbeddingBag semantics). Each shard pools its own keys of every bag
        and returns (bags, dim) partials: sums ("sum", "mean": the client
        divides by the bag's length) or maxima ("max": with per-bag counts,
        so a bag with no key on a shard does not take that shard's zeros)."""
        with self._lock:
            self._open()
            _checks.mode_id(mode)
            v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
            w = _checks.bag_weights(per_sample_weights, mode, v.shape[0], getattr(values, "shape", None))
            self._before_pull()
            put = self._b.put
            args = (put(v), put(off), mode, None if w is None else put(w))
            self.bytes_sent += v.nbytes + off.nbytes + (0 if w is None else w.nbytes)
            parts = self._call_all("pooled_pull", [args] * self.num_shards)
            self.bytes_received += sum(p.nbytes + (0 if c is None else c.nbytes) for p, c in parts)
            return _combine(parts, mode, n_bags, self._dim)

    # ------------------------------------------------------------------ pushes
    def push(self, keys, grads) -> None:
        """One optimizer step on the shards with per-key gradients (duplicates
        summed, as EmbeddingTable.apply_gradients). Every shard takes a step
        (an empty one when it holds none of the keys), so each shard's step
        count equals the number of pushes."""
        with self._lock:
            self._open()
            k = _checks.keys_1d(keys, "keys")
            g = _checks.finite(_checks.floats(grads, "grads", (k.shape[0], self._dim)), "grads")
            masks, parts = self._split(k)
            gparts = [g] if masks is None else [np.ascontiguousarray(g[m]) for m in masks]
            self.bytes_sent += k.nbytes + g.nbytes
            self._send_push("push", [(pk, self._b.put(pg)) for pk, pg in zip(parts, gparts)])

    def push_pooled(self, values, offsets, grad_output, mode: str = "sum", per_sample_weights=None,
                    include_last_offset: bool = False) -> None:
        """The fused backward of :meth:`pooled_pull` ("sum" or "mean"),
        applied on the shards: each shard takes its keys of every bag and the
        whole ``grad_output`` (one copy for all shards)."""
        with self._lock:
            self._open()
            _checks.mode_id(mode)
            if mode == "max":
                raise ValueError("mode='max' is not supported by push_pooled: its gradient needs the forward's "
                                 "winning rows; push the per-key gradients with push(keys, grads)")
            v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
            w = _checks.bag_weights(per_sample_weights, mode, v.shape[0], getattr(values, "shape", None))
            g = _checks.finite(_checks.floats(grad_output, "grad_output", (n_bags, self._dim)), "grad_output")
            put = self._b.put
            args = (put(v), put(off), put(g), mode, None if w is None else put(w))
            self.bytes_sent += v.nbytes + off.nbytes + g.nbytes + (0 if w is None else w.nbytes)
            self._send_push("push_pooled", [args] * self.num_shards)

    def flush(self) -> None:
        """Waits until every push of this client is acknowledged by every shard."""
        with self._lock:
            self._drain(0)

    def close(self) -> None:
        """Flushes, then refuses further calls. Idempotent."""
        with self._lock:
            if not self._closed:
                try:
                    self._drain(0)
                finally:
                    self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------- pickling
    def __getstate__(self):
        if self._b.kind != "ray":
            raise TypeError("a local-backend client cannot be pickled: its shards live in this process "
                            "(use backend='ray' for trainer processes, or threads)")
        self.flush()
        # The copy continues this client's sequence: two users of one sequence
        # would have each other's pushes dropped as duplicates, so this one stops.
        self._moved = True
        return {"dim": self._dim, "mode": self.mode, "client_id": self.client_id, "timeout_s": self.timeout_s,
                "max_retries": self.max_retries, "server_name": self._server_name, "num_shards": self.num_shards,
                "next_seq": self._seq}

    def __setstate__(self, st):
        from ._backends import RayBackend

        backend = RayBackend.connect(st["server_name"], st["num_shards"])
        Client.__init__(self, backend, dim=st["dim"], mode=st["mode"], client_id=st["client_id"],
                        timeout_s=st["timeout_s"], max_retries=st["max_retries"], server_name=st["server_name"],
                        next_seq=st["next_seq"])


def _combine(parts, mode: str, n_bags: int, dim: int) -> np.ndarray:
    """The pooled result from the shards' per-bag partials."""
    out = np.array(parts[0][0], dtype=np.float32, copy=True)
    if mode == "sum":
        for p, _ in parts[1:]:
            out += p
        return out
    if mode == "mean":
        n = parts[0][1].astype(np.int64)
        for p, c in parts[1:]:
            out += p
            n += c
        nz = n > 0
        out[nz] /= n[nz, None].astype(np.float32)
        return out
    # max: a shard's partial counts only for bags where it holds a key.
    n = parts[0][1].astype(np.int64)
    out[n == 0] = -np.inf
    for p, c in parts[1:]:
        has = c > 0
        out[has] = np.maximum(out[has], p[has])
        n += c
    out[n == 0] = 0.0
    return out
