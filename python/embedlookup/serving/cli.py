"""``embedlookup serve``: the command-line side of the HTTP endpoint."""

from __future__ import annotations

import sys

__all__ = ["add_serve_parser", "serve_command"]


def add_serve_parser(sub) -> None:
    s = sub.add_parser(
        "serve",
        help="serve a replica of a delta log over HTTP (needs the serve extra: uvicorn, starlette)",
        description="Builds a read-only replica from the newest snapshot in a delta-log folder, follows "
        "the log, and answers pooled lookups over HTTP: POST /v1/pooled_lookup (JSON bags or a "
        ".npy body), GET /healthz. See docs/serving.md.",
    )
    s.add_argument("--log", required=True, metavar="DIR", help="the delta-log folder (written by DeltaLog)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--period", type=float, default=1.0, help="seconds between polls of the log (default 1)")
    s.add_argument("--pin", type=int, default=None, metavar="VERSION",
                   help="serve this kept version and do not follow the log (a rollback)")
    s.add_argument("--max-bags", type=int, default=4096, help="bags per request, at most (default 4096)")
    s.add_argument("--max-keys", type=int, default=1 << 18, help="keys per request, at most (default 262144)")
    s.add_argument("--max-body-bytes", type=int, default=8 << 20,
                   help="request body bytes, at most (default 8 MiB)")
    s.add_argument("--threads", type=int, default=None, help="native threads per lookup (default: all cores)")


def serve_command(args) -> int:
    err = sys.stderr
    for name in ("port", "max_bags", "max_keys", "max_body_bytes"):
        if getattr(args, name) < 1:
            print(f"embedlookup serve: error: --{name.replace('_', '-')} must be >= 1", file=err)
            return 2
    if not args.period > 0:
        print("embedlookup serve: error: --period must be > 0", file=err)
        return 2
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(f"embedlookup serve: error: {e}; install the serve extra: pip install 'embedlookup[serve]'",
              file=err)
        return 2
    from .http import Limits, serve
    from .replica import NoCutError

    try:
        serve(args.log, host=args.host, port=args.port, period=args.period, version=args.pin,
              limits=Limits(args.max_bags, args.max_keys, args.max_body_bytes), num_threads=args.threads)
    except (NoCutError, OSError, ValueError) as e:
        print(f"embedlookup serve: error: {e}", file=err)
        return 1
    return 0
