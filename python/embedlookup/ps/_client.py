"""A trainer's connection to the parameter server (see docs/ps.md)."""

from __future__ import annotations

import collections
import threading
import time
import uuid

import numpy as np

from .. import _checks, _core
from ._backends import Transient
from ._cache import RowCache, merge_duplicates
from ._shard import APPLIED, DUPLICATE, FROZEN, GAP, REJECTED, Parts

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


class CutTimeoutError(PSError):
    """A global cut did not get every part of a push that some shard had applied within the retry budget."""


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
                 max_retries: int, server_name: str, resume: bool = False, next_seq: int = 0, optimizer=None,
                 cache_rows: int | None = None, cache_options: dict | None = None):
        self._b = backend
        self._optimizer = optimizer
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
        self._last_batch = None  # the last pooled pull's batch and its per-shard parts (see _same_batch)
        # Local shards read the arrays they are given when they run the call; a push that returns
        # before it is applied (bounded, async) must not read the caller's arrays changed meanwhile.
        self._copy_pushes = getattr(backend, "kind", None) == "local" and self._kind != "sync"
        self._cache = None
        if cache_rows is not None:
            if self._kind != "bounded" or self._bound < 1:
                raise ValueError(f"cache_rows: a cache serves rows up to S pushes old, so it needs mode='bounded:S' "
                                 f"with S >= 1, got mode={mode!r} (sync must see every push: use no cache)")
            self._cache = RowCache(self._dim, cache_rows, cache_options)
        elif cache_options is not None:
            raise ValueError("cache_options: give cache_rows too (the cache's size)")
        if client_id is not None and resume:
            self._resume()

    # ---------------------------------------------------------------- basics
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def optimizer(self):
        """The server's optimizer (the one every push applies; read-only)."""
        return self._optimizer

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
        args = [(self.client_id, seq) + tuple(a) for a in per_shard_args]
        hs = self._b.submit_many(method, dict(enumerate(args)))
        self._pending.append(_Pending(seq, method, args, [hs[i] for i in range(len(args))]))
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
        """(positions, keys) per shard: each shard's keys in batch order and
        their indices in ``keys`` (None for one shard). One native pass."""
        if self.num_shards == 1:
            return None, [keys]
        parts = _core.partition_by_shard(keys, None, 0, None, False, self.num_shards, True)
        return [p[3] for p in parts], [p[0] for p in parts]

    def _split_bags(self, v, off, n_bags, w, mean: bool):
        """Per shard (values, offsets, weights) of a pooled batch, split on
        the client in one native pass (GIL released): the shard's keys of
        every bag in batch order, one offset per bag of the batch (so its
        partials land in the right bags), and per-key weights (``mean``: 1.0f
        / bag length, the fused backward's own scale). Each shard receives
        only its own keys."""
        if self.num_shards == 1 and not mean:
            return [(v, off[:n_bags], w)]
        return [p[:3] for p in _core.partition_by_shard(v, off, n_bags, w, mean, self.num_shards, False)]

    def pull(self, keys) -> np.ndarray:
        """Rows of ``keys`` as (n, dim) float32 (missing keys are inserted on
        their shard with the initializer, as EmbeddingTable.lookup does).
        With a cache, keys whose cached copy is fresh enough are served here."""
        with self._lock:
            self._open()
            k = _checks.keys_1d(keys, "keys")
            self._before_pull()
            if self._cache is None:
                return self._pull_shards(k)
            rows, inv = self._pull_cached(k)
            return rows[inv]

    def _pull_cached(self, k):
        """(rows, inv): one row per distinct key of ``k`` (a (u, dim) view,
        rows contiguous) and each key's index into them; cached copies fresh
        enough are used, the others pulled from the shards (and cached if
        the cache holds their keys)."""
        uk, inv, raw, hit, held = self._cache.lookup(k, self._seq, self._bound)
        if not hit.all():
            miss = ~hit
            mk = uk[miss]
            rows, fresh = self._pull_shards(mk, fresh=True)
            self._cache.fill(mk, rows, fresh, held[miss])
            raw[miss, :self._dim] = rows
        return raw[:, :self._dim], inv

    def _pull_shards(self, k, fresh: bool = False):
        """Rows of ``k`` from their shards; ``fresh=True``: also, per key, how
        many of this client's pushes its row holds (its shard's last seq + 1)."""
        pos, parts = self._split(k)
        self.bytes_sent += k.nbytes
        # Only the shards that hold some of the keys are asked.
        ask = [i for i, p in enumerate(parts) if p.shape[0] or len(parts) == 1]
        if fresh:
            hs = self._b.submit_many("pull_fresh", {i: (self.client_id, parts[i]) for i in ask})
            got = {i: self._resolve(i, h, "pull_fresh", (self.client_id, parts[i])) for i, h in hs.items()}
            rows = {i: r for i, (r, _) in got.items()}
            stamp = np.empty(k.shape[0], np.int64)
            for i, (_, last) in got.items():
                stamp[slice(None) if pos is None else pos[i]] = last + 1
        else:
            hs = self._b.submit_many("pull", {i: (parts[i],) for i in ask})
            rows = {i: self._resolve(i, h, "pull", (parts[i],)) for i, h in hs.items()}
        self.bytes_received += sum(r.nbytes for r in rows.values())
        if pos is None:
            out = np.array(rows[0], copy=True) if not rows[0].flags.writeable else rows[0]
        else:
            out = np.empty((k.shape[0], self._dim), np.float32)
            for i, r in rows.items():
                out[pos[i]] = r
        return (out, stamp) if fresh else out

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
            if self._cache is not None:  # pooled here from the rows (cached or pulled), natively
                rows, inv = self._pull_cached(v)
                return _core.pool_rows(rows, inv, off, n_bags, _checks.MODES[mode], w, self._cache.threads)
            # Copies of the batch, split from: a push_pooled of the same batch compares with them and
            # reuses the split and its put (one local shard would otherwise hold the caller's arrays).
            lv, loff, lw = v.copy(), off[:n_bags].copy(), None if w is None else w.copy()
            split = self._split_bags(lv, loff, n_bags, lw, False)
            for p in split:  # never written again: a local shard keeps them without a copy
                for a in p:
                    if a is not None:
                        a.flags.writeable = False
            # Only the shards that hold some of the keys are asked; their parts go in one put.
            ask = [i for i, p in enumerate(split) if p[0].shape[0]]
            refs = self._put_parts(split, ask)
            self.bytes_sent += _nbytes(split[i] for i in ask)
            args = {i: (refs[i], mode, self.client_id) for i in ask}
            hs = self._b.submit_many("pooled_pull", args)
            self._last_batch = (lv, loff, lw, {i: (refs[i], _nbytes([split[i]])) for i in ask})
            parts = [self._resolve(i, h, "pooled_pull", args[i]) for i, h in hs.items()]
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
            if self._cache is not None:  # write-back: one merged gradient per key
                k, g = merge_duplicates(k, g)
            if self._copy_pushes:
                k, g = k.copy(), g.copy()
            pos, parts = self._split(k)
            gparts = [g] if pos is None else [np.take(g, p, axis=0) for p in pos]
            self.bytes_sent += k.nbytes + g.nbytes
            self._send_push("push", [(pk, self._b.put(pg)) for pk, pg in zip(parts, gparts)])

    def push_pooled(self, values, offsets, grad_output, mode: str = "sum", per_sample_weights=None,
                    include_last_offset: bool = False) -> None:
        """The fused backward of :meth:`pooled_pull` ("sum" or "mean"),
        applied on the shards: each shard receives its own keys of every bag
        (split here) and the whole ``grad_output`` (put once for all shards)."""
        with self._lock:
            self._open()
            _checks.mode_id(mode)
            if mode == "max":
                raise ValueError("mode='max' is not supported by push_pooled: its gradient needs the forward's "
                                 "winning rows; push the per-key gradients with push(keys, grads)")
            v, off, n_bags = _checks.bags(values, offsets, include_last_offset)
            w = _checks.bag_weights(per_sample_weights, mode, v.shape[0], getattr(values, "shape", None))
            g = _checks.finite(_checks.floats(grad_output, "grad_output", (n_bags, self._dim)), "grad_output")
            if self._copy_pushes:
                v, off, g, w = v.copy(), off.copy(), g.copy(), None if w is None else w.copy()
            # Every shard takes a step (shard steps = pushes, as one table):
            # a shard that holds some of the keys receives its part and the
            # whole grad_output (put once for all), the others an empty batch.
            empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), None, np.zeros((0, self._dim), np.float32))
            gref = self._b.put(g)
            same = self._same_batch(v, off, n_bags, w, mode)
            if same is not None:  # the pull's split and put, reused
                self.bytes_sent += sum(nb + g.nbytes for _, nb in same.values())
                refs = {i: r for i, (r, _) in same.items()}
            else:
                split = self._split_bags(v, off, n_bags, w, mode == "mean")
                has = [i for i, p in enumerate(split) if p[0].shape[0]]
                self.bytes_sent += sum(_nbytes([split[i]]) + g.nbytes for i in has)
                refs = self._put_parts(split, has)
            self._send_push("push_pooled", ((refs[i], gref) if i in refs else empty for i in range(self.num_shards)))

    def _put_parts(self, split, shards) -> dict:
        """shard -> what stands for its part of ``split`` in a call (a
        :class:`Parts`): one put for all of ``shards`` where the backend's
        shards share this process's object store (``share_puts``), else one
        per shard (each node fetches only its own part)."""
        if self._b.share_puts:
            ref = self._b.put(Parts({i: split[i] for i in shards}))
            return dict.fromkeys(shards, ref)
        return {i: self._b.put(Parts({i: split[i]})) for i in shards}

    def _same_batch(self, v, off, n_bags, w, mode):
        """The parts of the last pooled pull (shard -> (its put, bytes)) if
        it was this batch, with the same weights, and the push needs no other
        weights ("mean" does: 1 / bag length); else None. Compared against copies taken at the pull, so a batch changed
        in place in between is split again."""
        last = self._last_batch
        if last is None or mode == "mean" or last[0].shape != v.shape or last[1].shape[0] != n_bags:
            return None
        lv, loff, lw, parts = last
        if (lw is None) != (w is None) or not (np.array_equal(lv, v) and np.array_equal(loff, off[:n_bags])):
            return None
        if w is not None and not np.array_equal(lw, w):
            return None
        return parts

    def stats(self) -> dict:
        """This client's counters: pushes sent, in flight, duplicates answered
        (retries of pushes already applied), bytes sent / received, and with a
        cache its rows, hits, misses and hit_ratio (over pulled keys)."""
        return {"client_id": self.client_id, "mode": self.mode, "pushes": self.pushes, "in_flight": self.in_flight,
                "duplicates": self.duplicates, "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "cache": None if self._cache is None else self._cache.stats(),
                "transport": self._b.graph_stats() if hasattr(self._b, "graph_stats") else None}

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
                "next_seq": self._seq, "optimizer": self._optimizer, "transport": self._b.transport,
                "cache": None if self._cache is None else (self._cache.rows, self._cache.options)}

    def __setstate__(self, st):
        from ._backends import RayBackend

        backend = RayBackend.connect(st["server_name"], st["num_shards"], st.get("transport", "auto"))
        Client.__init__(self, backend, dim=st["dim"], mode=st["mode"], client_id=st["client_id"],
                        timeout_s=st["timeout_s"], max_retries=st["max_retries"], server_name=st["server_name"],
                        next_seq=st["next_seq"], optimizer=st["optimizer"],
                        **({} if st["cache"] is None else {"cache_rows": st["cache"][0],
                                                          "cache_options": st["cache"][1]}))


def _nbytes(parts) -> int:
    """Bytes of the arrays of every shard's part (None entries skipped)."""
    return sum(a.nbytes for p in parts for a in p if a is not None)


def _combine(parts, mode: str, n_bags: int, dim: int) -> np.ndarray:
    """The pooled result from the per-bag partials of the shards asked
    (those holding some key of the batch; none: every bag is empty)."""
    if not parts:
        return np.zeros((n_bags, dim), np.float32)
    # A local shard's partial is a fresh array of this process: the result goes into it (no copy);
    # Ray's are read-only views of the object store.
    first = parts[0][0]
    own = first if first.flags.writeable else None
    if mode == "max":  # a shard's partial counts only for bags where it holds a key
        out = first.copy() if own is None else own
        n = parts[0][1].astype(np.int64)
        out[n == 0] = -np.inf
        for p, c in parts[1:]:
            has = c > 0
            out[has] = np.maximum(out[has], p[has])
            n += c
        out[n == 0] = 0.0
        return out
    if len(parts) == 1:
        out = first.copy() if own is None else own
    else:
        out = np.add(first, parts[1][0], out=own)  # one pass: the partials in shard order, as before
        for p, _ in parts[2:]:
            out += p
    if mode == "sum":
        return out
    n = parts[0][1].astype(np.int64)  # mean: the summed partials over the bag's length
    for _, c in parts[1:]:
        n += c
    nz = n > 0
    out[nz] /= n[nz, None].astype(np.float32)
    return out
