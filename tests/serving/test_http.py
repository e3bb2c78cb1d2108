"""The HTTP endpoint with a real client (httpx) on 127.0.0.1: answers against
the NumPy oracle, the version served, bad and oversized requests (4xx, the
replica untouched), and the `embedlookup serve` command."""

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from embedlookup.serving import DeltaLog, Replica  # noqa: E402
from embedlookup.serving.http import Limits, create_app, wait_ready  # noqa: E402
from http_helpers import running_server  # noqa: E402
from reference import pooled  # noqa: E402
from serving_helpers import ShardedSource  # noqa: E402


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    src = ShardedSource(2, 8)
    keys = np.arange(500, dtype=np.int64)
    src.assign(keys, rng.normal(size=(500, 8)).astype(np.float32))
    log = DeltaLog(tmp_path, src)
    log.publish()
    return src, log, tmp_path


def test_pooled_lookup_json_and_npy(model):
    src, log, path = model
    rep = Replica(path)
    bags = [[1, 2, 3], [], [499, 600, 7], [42]]  # 600: not in the model (zero row)
    values = np.array([k for b in bags for k in b], np.int64)
    offsets = np.array([0, 3, 3, 6], np.int64)
    rows, _ = src.rows(values)
    with running_server(create_app(rep)) as url, httpx.Client(base_url=url, timeout=10) as c:
        h = c.get("/healthz").json()
        assert h["status"] == "ok" and h["version"] == 1 and h["dim"] == 8 and h["num_shards"] == 2
        for mode in ("sum", "mean", "max"):
            r = c.post("/v1/pooled_lookup", json={"bags": bags, "mode": mode})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["version"] == 1 and r.headers["x-model-version"] == "1"
            np.testing.assert_allclose(np.array(body["embeddings"], np.float32), pooled(rows, offsets, mode),
                                       rtol=1e-6, atol=1e-6)
        w = [[0.5, 1.0, 2.0], [], [1.0, 1.0, -1.0], [3.0]]
        r = c.post("/v1/pooled_lookup", json={"bags": bags, "weights": w})
        np.testing.assert_allclose(np.array(r.json()["embeddings"], np.float32),
                                   pooled(rows, offsets, "sum", np.concatenate(w)), rtol=1e-6, atol=1e-6)
        # binary: equal-length bags as a 2-D int64 .npy
        a = np.arange(40, dtype=np.int64).reshape(10, 4)
        buf = io.BytesIO()
        np.save(buf, a)
        r = c.post("/v1/pooled_lookup?mode=mean", content=buf.getvalue(),
                   headers={"content-type": "application/x-npy"})
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        out = np.load(io.BytesIO(r.content))
        assert out.dtype == np.float32 and out.shape == (10, 8)
        np.testing.assert_allclose(out, pooled(src.rows(a.reshape(-1))[0], np.arange(0, 40, 4), "mean"),
                                   rtol=1e-6, atol=1e-6)
        # a new cut is served once polled, with its version
        src.assign([1], np.full((1, 8), 100, np.float32))
        log.publish()
        rep.poll()
        r = c.post("/v1/pooled_lookup", json={"bags": [[1]]}).json()
        assert r["version"] == 2 and r["embeddings"] == [[100.0] * 8]


BAD = [
    (b"not json", "application/json", 400, "not valid JSON"),
    (b"[1, 2]", "application/json", 400, "JSON object"),
    (b'{"bags": [1, 2]}', "application/json", 400, "list of lists"),
    (b'{"bags": [[1, "a"]]}', "application/json", 400, "int64"),
    (b'{"bags": [[1.5]]}', "application/json", 400, "int64"),
    (b'{"bags": [[1, true]]}', "application/json", 400, "booleans"),
    (b'{"bags": [[99999999999999999999999]]}', "application/json", 400, "int64"),
    (b'{"bags": [[1]], "mode": "median"}', "application/json", 400, "mode"),
    (b'{"bags": [[1]], "mode": "max", "weights": [[1.0]]}', "application/json", 400, "weights"),
    (b'{"bags": [[1, 2]], "weights": [[1.0]]}', "application/json", 400, "shaped like"),
    (b'{"bags": [[1]], "weights": [[NaN]]}', "application/json", 400, "finite"),
    (b'{"bags": [[1]], "extra": 1}', "application/json", 400, "unknown field"),
    (b'{"bags": [[1]]}', "text/plain", 415, "Content-Type"),
    (b"\x93NUMPY garbage", "application/x-npy", 400, ".npy"),
    (b'{"bags": [[1], [2], [3], [4], [5]]}', "application/json", 413, "max_bags"),
    (b'{"bags": [[1, 2, 3, 4, 5, 6, 7, 8, 9]]}', "application/json", 413, "max_keys"),
    (b'{"bags": [[1]], "pad": "' + b"x" * 5000 + b'"}', "application/json", 413, "max_body_bytes"),
]


def test_bad_and_oversized_requests_get_4xx_and_change_nothing(model):
    src, log, path = model
    rep = Replica(path)
    keys = np.arange(600, dtype=np.int64)
    before = rep.find(keys)
    n_before = len(rep)
    limits = Limits(max_bags=4, max_keys=8, max_body_bytes=4096)
    with running_server(create_app(rep, limits)) as url, httpx.Client(base_url=url, timeout=10) as c:
        for body, ctype, status, msg in BAD:
            r = c.post("/v1/pooled_lookup", content=body, headers={"content-type": ctype})
            assert r.status_code == status, (body[:60], r.status_code, r.text)
            assert msg in r.json()["error"], (body[:60], r.text)
        bad_npy = io.BytesIO()
        np.save(bad_npy, np.zeros((2, 2), np.float32))
        r = c.post("/v1/pooled_lookup", content=bad_npy.getvalue(), headers={"content-type": "application/x-npy"})
        assert r.status_code == 400 and "int64" in r.json()["error"]
        assert c.get("/v1/pooled_lookup").status_code == 405
        ok = c.post("/v1/pooled_lookup", json={"bags": [[1, 2]]})
        assert ok.status_code == 200
    after = rep.find(keys)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert len(rep) == n_before and rep.version == 1


def test_serve_command(model):
    src, log, path = model
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(
        __import__("embedlookup").__file__)), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.Popen([sys.executable, "-m", "embedlookup.cli", "serve", "--log", str(path), "--port",
                             str(port), "--period", "0.05", "--threads", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        src.assign([3], np.full((1, 8), 7, np.float32))
        log.publish()
        deadline = time.monotonic() + 20
        while httpx.get(url + "/healthz", timeout=2).json()["version"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = httpx.post(url + "/v1/pooled_lookup", json={"bags": [[3, 3]]}, timeout=5).json()
        assert r == {"version": 2, "dim": 8, "embeddings": [[14.0] * 8]}
    finally:
        proc.terminate()
        proc.wait(20)
    bad = subprocess.run([sys.executable, "-m", "embedlookup.cli", "serve", "--log", str(path) + "/nothing"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "no cut" in bad.stderr


def test_http_answers_one_version_while_cuts_apply(tmp_path):
    """Concurrent clients while cuts are published and applied: every answer
    is 200 and its probe bag sums to 8 x the version it names (a mixed answer
    would not), over several versions."""
    import threading

    from embedlookup.serving import ShardedTables

    n, dim = 2000, 4
    src = ShardedTables(3, dim)
    keys = np.arange(n, dtype=np.int64)
    src.assign(keys, np.full((n, dim), 1, np.float32))
    log = DeltaLog(tmp_path, src, checkpoint_every=4)
    log.publish()
    rep = Replica(tmp_path).follow(0.01)
    bad, versions, stop = [], set(), threading.Event()
    bags = [list(range(i * 8, i * 8 + 8)) for i in range(0, 250, 10)]  # 25 bags of 8 keys over every shard

    def client(url):
        with httpx.Client(base_url=url, timeout=20) as c:
            while not stop.is_set():
                r = c.post("/v1/pooled_lookup", json={"bags": bags})
                if r.status_code != 200:
                    bad.append(r.status_code)
                    continue
                b = r.json()
                versions.add(b["version"])
                if {x for row in b["embeddings"] for x in row} != {8.0 * b["version"]}:
                    bad.append(("mixed", b["version"]))

    try:
        with running_server(create_app(rep)) as url:
            threads = [threading.Thread(target=client, args=(url,)) for _ in range(3)]
            for t in threads:
                t.start()
            end = time.monotonic() + 2.5
            while time.monotonic() < end:
                src.assign(keys, np.full((n, dim), log.seq + 1, np.float32))
                log.publish()
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join()
    finally:
        stop.set()
        rep.close()
    assert not bad, bad[:5]
    assert len(versions) > 3, versions
