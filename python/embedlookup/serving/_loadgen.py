"""Load generator for the freshness suite's load part, run as its own process:
``python -m embedlookup.serving._loadgen URL CLIENTS SECONDS KEYS PROBES`` prints
one JSON line: requests, failures, mixed-version answers, latencies.

Each request holds 32 bags of 8 keys; bag 0 is 8 probe keys whose rows the
trainer stamps with the cut number in every cut, so its sum must be
8 x the version the response names, or the answer mixed two versions."""

import asyncio
import json
import sys
import time

import numpy as np


async def _client(c, url, deadline, n_keys, probes, rng, out):
    while time.monotonic() < deadline:
        bags = rng.integers(0, n_keys, (32, 8)).tolist()
        bags[0] = probes
        t0 = time.perf_counter()
        try:
            r = await c.post(url, json={"bags": bags, "mode": "sum"})
            ok = r.status_code == 200
            body = r.json() if ok else None
        except Exception:  # noqa: BLE001 - a failed request is counted
            ok, body = False, None
        out["lat"].append(time.perf_counter() - t0)
        if not ok:
            out["failed"] += 1
            continue
        out["ok"] += 1
        v = body["version"]
        out["versions"].add(v)
        if set(body["embeddings"][0]) != {8.0 * v}:
            out["mixed"] += 1


async def main(url, clients, seconds, n_keys, n_probes):
    import httpx

    out = {"ok": 0, "failed": 0, "mixed": 0, "lat": [], "versions": set()}
    probes = list(range(n_keys, n_keys + n_probes))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as c:
        t0 = time.monotonic()
        deadline = t0 + seconds
        await asyncio.gather(*[_client(c, url, deadline, n_keys, probes, np.random.default_rng(i), out)
                               for i in range(clients)])
        wall = time.monotonic() - t0
    lat = np.array(out["lat"]) * 1e3
    print(json.dumps({"requests": out["ok"] + out["failed"], "ok": out["ok"], "failed": out["failed"],
                      "mixed": out["mixed"], "seconds": wall, "req_per_s": out["ok"] / wall,
                      "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
                      "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
                      "versions_seen": len(out["versions"]),
                      "min_version": min(out["versions"], default=None),
                      "max_version": max(out["versions"], default=None)}))


if __name__ == "__main__":
    u, n, s, k, p = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    asyncio.run(main(u, n, s, k, p))
