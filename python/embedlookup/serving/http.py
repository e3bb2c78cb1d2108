"""The HTTP endpoint of a replica: starlette routes run by uvicorn.

Routes (docs/serving.md has the full description):

* ``GET /healthz`` -- ``{"status": "ok", "version", "num_shards", "dim", "last_error", ...}``.
* ``POST /v1/pooled_lookup`` with JSON ``{"bags": [[key, ...], ...], "mode":
  "sum"|"mean"|"max", "weights": [[w, ...], ...]}`` (``weights`` optional,
  "sum" only) -> ``{"version", "dim", "embeddings": [[...], ...]}``; or
  with ``Content-Type: application/x-npy`` a 2-D int64 ``.npy`` body (equal-
  length bags; ``?mode=``) -> a float32 ``.npy`` (n_bags, dim), the version
  in the ``X-Model-Version`` header.

Every response comes from one model version (``Replica.snapshot``).
Malformed requests get 400 (415 for another content type, 413 past a
limit) with ``{"error": message}``; the replica is only ever read.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import time
from dataclasses import dataclass

import numpy as np

from .replica import Replica

__all__ = ["Limits", "create_app", "serve", "wait_ready"]

NPY = "application/x-npy"


@dataclass(frozen=True)
class Limits:
    """Bounds on one request; a request past one gets 413 before any lookup."""

    max_bags: int = 4096
    max_keys: int = 1 << 18
    max_body_bytes: int = 8 << 20


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _int_keys(flat: list, what: str) -> np.ndarray:
    if not flat:
        return np.empty(0, np.int64)
    try:
        a = np.array(flat)
    except (OverflowError, ValueError):
        a = None
    if a is None or a.dtype != np.int64 or a.ndim != 1:
        raise BadRequest(400, f"{what} must be integers in the int64 range")
    return a


def parse_json(body: bytes, limits: Limits):
    """(values, offsets, mode, weights) from a JSON request, or BadRequest."""
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"body is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise BadRequest(400, "body must be a JSON object with 'bags'")
    unknown = set(req) - {"bags", "mode", "weights"}
    if unknown:
        raise BadRequest(400, f"unknown field(s) {sorted(unknown)}; expected bags, mode, weights")
    bags = req.get("bags")
    if not isinstance(bags, list) or not all(isinstance(b, list) for b in bags):
        raise BadRequest(400, "'bags' must be a list of lists of integer keys")
    if len(bags) > limits.max_bags:
        raise BadRequest(413, f"{len(bags)} bags > max_bags={limits.max_bags}")
    lengths = np.fromiter((len(b) for b in bags), np.int64, len(bags))
    n = int(lengths.sum())
    if n > limits.max_keys:
        raise BadRequest(413, f"{n} keys > max_keys={limits.max_keys}")
    mode = req.get("mode", "sum")
    if mode not in ("sum", "mean", "max"):
        raise BadRequest(400, f"'mode' must be 'sum', 'mean' or 'max', got {mode!r}")
    flat = list(itertools.chain.from_iterable(bags))
    if (b"true" in body or b"false" in body) and any(isinstance(x, bool) for x in flat):
        raise BadRequest(400, "'bags' must hold integer keys, not booleans")
    values = _int_keys(flat, "'bags' keys")
    offsets = np.zeros(len(bags), np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    weights = req.get("weights")
    if weights is not None:
        if mode != "sum":
            raise BadRequest(400, "'weights' needs mode 'sum'")
        if (not isinstance(weights, list) or len(weights) != len(bags)
                or not all(isinstance(w, list) and len(w) == len(b) for w, b in zip(weights, bags))):
            raise BadRequest(400, "'weights' must be a list of lists shaped like 'bags'")
        wflat = list(itertools.chain.from_iterable(weights))
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in wflat):
            raise BadRequest(400, "'weights' must hold numbers")
        weights = np.array(wflat, np.float32).reshape(-1)
        if not np.all(np.isfinite(weights)):
            raise BadRequest(400, "'weights' must be finite")
    return values, offsets, mode, weights


def parse_npy(body: bytes, mode: str, limits: Limits):
    if mode not in ("sum", "mean", "max"):
        raise BadRequest(400, f"'mode' must be 'sum', 'mean' or 'max', got {mode!r}")
    try:
        a = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable body is the client's error
        raise BadRequest(400, f"body is not a readable .npy array: {type(e).__name__}: {e}") from None
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype != np.int64:
        raise BadRequest(400, f"the .npy body must be a 2-D int64 array (bags x keys), got "
                         f"{getattr(a, 'dtype', type(a).__name__)} with shape {getattr(a, 'shape', '?')}")
    if a.shape[0] > limits.max_bags:
        raise BadRequest(413, f"{a.shape[0]} bags > max_bags={limits.max_bags}")
    if a.size > limits.max_keys:
        raise BadRequest(413, f"{a.size} keys > max_keys={limits.max_keys}")
    a = np.ascontiguousarray(a)
    return a.reshape(-1), np.arange(a.shape[0], dtype=np.int64) * a.shape[1], mode, None


def create_app(replica: Replica, limits: Limits = Limits()):
    """The starlette application serving ``replica``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    started = time.time()
    counters = {"requests": 0, "errors": 0}
    handler_s = collections.deque(maxlen=10_000)  # the last answered requests' time in this process

    def error(status: int, message: str):
        counters["errors"] += 1
        return JSONResponse({"error": message}, status_code=status)

    async def healthz(request):
        with replica.snapshot() as v:
            version, published = v.version, v.published_at
        h = np.array(handler_s) * 1e3
        return JSONResponse({"status": "ok", "version": version, "published_at": published,
                             "num_shards": replica.num_shards, "dim": replica.dim, "pinned": replica.pinned,
                             "last_error": replica.last_error, "uptime_s": time.time() - started,
                             "handler_ms_p50": float(np.percentile(h, 50)) if h.size else None,
                             "handler_ms_p99": float(np.percentile(h, 99)) if h.size else None, **counters})

    async def read_body(request) -> bytes:
        cl = request.headers.get("content-length")
        if cl is not None:
            if not cl.isdigit():
                raise BadRequest(400, "bad Content-Length")
            if int(cl) > limits.max_body_bytes:
                raise BadRequest(413, f"body of {cl} bytes > max_body_bytes={limits.max_body_bytes}")
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limits.max_body_bytes:
                raise BadRequest(413, f"body > max_body_bytes={limits.max_body_bytes}")
            chunks.append(chunk)
        return b"".join(chunks)

    def lookup(values, offsets, mode, weights):
        with replica.snapshot() as v:
            return v.pooled_lookup(values, offsets, mode, weights), v.version

    async def pooled_lookup(request):
        counters["requests"] += 1
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        try:
            if ctype not in ("application/json", NPY):
                raise BadRequest(415, f"Content-Type must be application/json or {NPY}, got {ctype!r}")
            body = await read_body(request)
            if ctype == NPY:
                parsed = parse_npy(body, request.query_params.get("mode", "sum"), limits)
            else:
                parsed = parse_json(body, limits)
            try:
                out, version = await run_in_threadpool(lookup, *parsed)
            except (ValueError, TypeError) as e:  # the table's own checks
                raise BadRequest(400, str(e)) from None
        except BadRequest as e:
            return error(e.status, str(e))
        except ClientDisconnect:
            return error(400, "client disconnected")
        if ctype == NPY:
            buf = io.BytesIO()
            np.save(buf, out, allow_pickle=False)
            resp = Response(buf.getvalue(), media_type=NPY, headers={"X-Model-Version": str(version)})
        else:
            resp = JSONResponse({"version": version, "dim": int(out.shape[1]), "embeddings": out.tolist()},
                                headers={"X-Model-Version": str(version)})
        handler_s.append(time.perf_counter() - t0)
        return resp

    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"]),
                             Route("/v1/pooled_lookup", pooled_lookup, methods=["POST"])])


def serve(log, *, host: str = "127.0.0.1", port: int = 8000, period: float = 1.0, version=None,
          limits: Limits = Limits(), num_threads=None, log_level: str = "warning") -> None:
    """Builds a replica of ``log``, follows it every ``period`` seconds (not
    when pinned at ``version``) and serves it over HTTP until interrupted."""
    import uvicorn

    replica = Replica(log, version=version, num_threads=num_threads)
    if version is None:
        replica.follow(period)
    try:
        uvicorn.run(create_app(replica, limits), host=host, port=port, log_level=log_level)
    finally:
        replica.close()


def wait_ready(url: str, process=None, timeout: float = 60.0) -> None:
    """Waits until ``GET url/healthz`` answers 200 (a server starting up);
    raises ``RuntimeError`` if ``process`` (a ``subprocess.Popen``) exits or
    ``timeout`` seconds pass first."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process is not None and process.poll() is not None:
            out = process.communicate()[0] or b""
            raise RuntimeError(f"the server exited with status {process.returncode}: {out.decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer from {url}/healthz within {timeout} s")
        time.sleep(0.1)
