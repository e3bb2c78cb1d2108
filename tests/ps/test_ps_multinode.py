"""Shards on two Ray nodes (``ray.cluster_utils.Cluster``: a head and a
second node, both on 127.0.0.1, one CPU each): each shard is placed on its
own node, and sync pulls and pushes equal one in-process EmbeddingTable.

Why a child process: a Ray driver connects to one cluster per process, and
this test session already holds the shared ``ray.init`` cluster of
conftest.py (the other Ray tests use it). Shutting that down and starting it
again would cost every later Ray test its start-up, and a second cluster
cannot be joined from the same driver. So the Cluster lives in a child
Python process of its own, bounded by a timeout; it checks the values
itself (bit for bit) and reports what it saw as JSON, and this test asserts
on that report. The child stops its cluster on the way out.
"""

import json
import os
import subprocess
import sys

import pytest

import embedlookup

CHILD = r"""
import json, sys
import numpy as np
import ray
from ray.cluster_utils import Cluster
import embedlookup as el
from embedlookup import ps

cluster = Cluster(initialize_head=True, connect=False,
                  head_node_args={"num_cpus": 1, "resources": {"node-a": 1}, "include_dashboard": False})
try:
    cluster.add_node(num_cpus=1, resources={"node-b": 1})
    cluster.wait_for_nodes(timeout=60)
    dim, opt, init = 8, el.optim.Adam(lr=0.05), el.init.normal(std=0.1, seed=2)
    # One shard per node, pinned by each node's own resource.
    place = [{"resources": {"node-a": 0.01}}, {"resources": {"node-b": 0.01}}]
    server = ps.ParameterServer(dim, 2, optimizer=opt, backend="ray", address=cluster.address,
                                table_options={"initializer": init, "num_threads": 1}, actor_options=place,
                                timeout_s=30, max_retries=2)
    ref = el.EmbeddingTable(dim, initializer=init, optimizer=opt)
    c = server.client("sync")
    rng = np.random.default_rng(0)
    pulls_equal = True
    for step in range(6):
        lengths = rng.integers(0, 7, 40)
        off = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        v = rng.integers(-60, 60, int(lengths.sum())).astype(np.int64)
        mode = ("sum", "mean")[step % 2]
        got = c.pooled_pull(v, off, mode=mode)
        pulls_equal &= bool(np.allclose(got, ref.pooled_lookup(v, off, mode=mode), rtol=1e-5, atol=1e-6))
        g = rng.standard_normal((40, dim)).astype(np.float32)
        c.push_pooled(v, off, g, mode=mode)
        ref.apply_pooled_gradients(v, off, g, mode=mode)
        keys = np.unique(v)
        pulls_equal &= bool(np.array_equal(c.pull(keys), ref.lookup(keys)))  # a pull after a push sees it
        gk = rng.standard_normal((keys.shape[0], dim)).astype(np.float32)
        c.push(keys, gk)
        ref.apply_gradients(keys, gk)
    parts = [server.shard_state(i) for i in range(2)]
    k = np.concatenate([p[0] for p in parts]); order = np.argsort(k)
    rk, rr = ref.export()
    rs = ref._t.export_state(rk)
    exact = (np.array_equal(k[order], rk) and np.array_equal(np.concatenate([p[1] for p in parts])[order], rr)
             and np.array_equal(np.concatenate([p[2] for p in parts])[order], rs)
             and [int(p[3]) for p in parts] == [int(ref.step)] * 2)
    st = server.stats()
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    placed = [sorted(r for r in nodes[s["node"]] if r.startswith("node-")) for s in st["shards"]]
    print(json.dumps({"nodes": len(nodes), "shard_nodes": [s["node"] for s in st["shards"]], "placed": placed,
                      "pulls_equal": pulls_equal, "exact": bool(exact), "pushes_applied": st["pushes_applied"],
                      "rows": [int(p[0].shape[0]) for p in parts]}))
    server.shutdown()
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_shards_on_two_nodes_equal_one_table():
    pytest.importorskip("ray")
    pytest.importorskip("ray.cluster_utils")
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(embedlookup.__file__)))
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)  # the child's own cluster, not the session's
    try:
        p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the two-node cluster test did not finish in 240 s: {e.stderr!r:.2000}")
    assert p.returncode == 0, p.stderr[-4000:]
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep["nodes"] == 2
    assert rep["shard_nodes"][0] != rep["shard_nodes"][1]  # one shard per node
    assert rep["placed"] == [["node-a"], ["node-b"]]
    assert rep["pulls_equal"] and rep["exact"], rep
    assert rep["pushes_applied"] == 12 * 2 and min(rep["rows"]) > 0
