"""``embedlookup bench --suite ps``: the parameter server's training step
against the in-process table's fused step. The runner checks every
subject's output (pooled rows, then the updated rows) against embedlookup's
before timing, so "ok" here means the PS computed the same step."""

import sys

import pytest

from embedlookup import bench
from embedlookup.bench import SUBJECTS, SUITES, Config, Skip, parse_workload

FAST = dict(repeats=2, op_time=0, warmup=0, min_time=0.0, limits=False, progress=False)


def _small():
    return parse_workload(["small", "threads=2", "batches=2"])


def _by_subject(rep, op="ps_step"):
    return {r["subject"]: r for r in rep["results"] if r["op"] == op}


def test_suite_is_registered():
    assert SUITES["ps"] == {"workloads": ["uniform-1m"], "ops": ["ps_step", "ps_call"]}
    assert SUITES["ps-cache"] == {"workloads": ["zipf-1m"], "ops": ["ps_step_bounded", "ps_step_cache"]}
    assert bench.WORKLOADS["uniform-1m"].rows == 1_000_000 and bench.WORKLOADS["uniform-1m"].dim == 64


def test_local_step_matches_the_table_and_reports_overhead_and_bytes():
    w = _small()
    rep = bench.run([(w, ["ps_step", "ps_call"])], Config(subjects=["embedlookup", "ps-local"], **FAST))
    r = _by_subject(rep)
    assert r["embedlookup"]["status"] == "ok"
    loc = r["ps-local"]
    assert loc["status"] == "ok", loc["reason"]
    assert loc["max_abs_diff"] < 1e-5
    assert loc["overhead_ms_per_call"] == pytest.approx((loc["median_s"] - r["embedlookup"]["median_s"]) * 1e3)
    # Hand count for `small` (64 bags x 8 keys, dim 16, 2 shards, every bag with keys on both shards): the
    # client splits the batch, so each shard receives its own keys (512 x 8 B in all) and one offset per bag
    # (64 x 8 B each) for the pull, the same again with the whole gradient (64 x 16 x 4 B each) for the push;
    # received = each shard's partial sums (64 x 16 x 4 B).
    sent = 2 * (512 * 8 + 2 * 64 * 8) + 2 * 64 * 16 * 4
    received = 2 * 64 * 16 * 4
    assert loc["moved_bytes_per_call"] == sent + received
    assert sum(n.startswith(f"{w.name} ps_step ps-local: ") and "MiB moved" in n for n in rep["notes"]) == 1
    # ps_call: one bag of one key, sent to its shard only: 8 + 8 B for the pull, 8 + 8 + 16 x 4 B for the
    # push (the other shard takes an empty step: nothing counted); one partial back
    one = _by_subject(rep, "ps_call")["ps-local"]
    assert one["status"] == "ok", one["reason"]
    assert one["moved_bytes_per_call"] == (8 + 8) + (8 + 8 + 16 * 4) + 16 * 4


def test_ray_subject_skips_cleanly_without_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(Skip, match="ray is not importable"):
        SUBJECTS["ps-ray"].probe()
    rep = bench.run([(_small(), ["ps_step"])], Config(subjects=["embedlookup", "ps-ray"], **FAST))
    # one note for the subject, the rest of the run goes on
    assert any(n.startswith("ps-ray: skipped - ray is not importable") for n in rep["notes"])
    assert _by_subject(rep)["embedlookup"]["status"] == "ok"
    assert "ps-ray" not in _by_subject(rep) or _by_subject(rep)["ps-ray"]["status"] == "skipped"


def test_ray_step_matches_the_table(ray_cluster):
    rep = bench.run([(_small(), ["ps_step"])], Config(subjects=["embedlookup", "ps-ray", "ps-ray-graph"], **FAST))
    for name in ("ps-ray", "ps-ray-graph"):  # actor tasks, compiled graph: the same step, the same bytes
        r = _by_subject(rep)[name]
        assert r["status"] == "ok", r["reason"]
        assert r["moved_bytes_per_call"] > 0 and "overhead_ms_per_call" in r
    assert _by_subject(rep)["ps-ray"]["moved_bytes_per_call"] == _by_subject(rep)["ps-ray-graph"]["moved_bytes_per_call"]


def test_bounded_and_cached_steps_match_the_table():
    """ps_step_bounded / ps_step_cache on Zipf keys: the forward of the first
    step and the rows after it (read by a sync client after a flush) equal
    the in-process step's."""
    w = parse_workload(["small-zipf", "threads=2", "batches=2"])
    rep = bench.run([(w, ["ps_step_bounded", "ps_step_cache"])], Config(subjects=["embedlookup", "ps-local"], **FAST))
    b, c = _by_subject(rep, "ps_step_bounded")["ps-local"], _by_subject(rep, "ps_step_cache")["ps-local"]
    for r in (b, c):
        assert r["status"] == "ok", r["reason"]
        assert r["max_abs_diff"] < 1e-5
    # The cached pull (cold on the checked step) moves the batch's distinct keys out and their rows back,
    # not the batch and the partial bags: another count.
    assert 0 < c["moved_bytes_per_call"] != b["moved_bytes_per_call"]
