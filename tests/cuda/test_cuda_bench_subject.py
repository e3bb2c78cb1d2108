"""The suite's `cuda` subject: on a GPU it runs, and its outputs pass the
runner's check against the CPU engine (a wrong kernel would be reported as a
mismatch and never timed); without one it is skipped with the reason."""

import pytest

import embedlookup.cuda as elc
from embedlookup import bench
from embedlookup.bench import Config, parse_workload

FAST = dict(repeats=2, op_time=0, warmup=0, min_time=0.0, limits=False, progress=False)
OPS = ["lookup", "pooled_sum", "pooled_mean", "pooled_max"]


def test_cuda_subject_matches_the_cpu_engine():
    w = parse_workload(["small", "threads=1", "batches=2"])
    rep = bench.run([(w, OPS)], Config(subjects=["embedlookup", "cuda"], **FAST))
    by = {(r["op"], r["subject"]): r for r in rep["results"]}
    for op in OPS:
        r = by[(op, "cuda")]
        assert r["status"] == "ok", r
        assert r["max_abs_diff"] <= 1e-4 and r["speedup_vs_embedlookup"] > 0


@pytest.mark.cpu_only
def test_cuda_subject_is_skipped_with_the_reason_without_a_gpu():
    why = elc.unavailable_reason()
    if why is None:
        pytest.skip("a GPU is available: the subject runs (test above)")
    w = parse_workload(["small", "threads=1", "batches=1"])
    rep = bench.run([(w, ["pooled_sum"])], Config(subjects=["embedlookup", "cuda"], **FAST))
    assert f"cuda: skipped - {why}" in rep["notes"]
    assert [r["subject"] for r in rep["results"] if r["status"] == "ok"] == ["embedlookup"]
