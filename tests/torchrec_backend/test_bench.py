"""The bench's torchrec subject and the raw-ID measurement run and agree with
embedlookup's output (the runner checks every subject against it before timing)."""

import pytest

pytest.importorskip("torchrec")
from embedlookup import bench  # noqa: E402
from embedlookup.bench import Config, parse_workload  # noqa: E402
from embedlookup.bench.ops_torchrec import raw_id_forward  # noqa: E402

FAST = dict(repeats=2, op_time=0, warmup=0, min_time=0.0, limits=False, progress=False)


def test_torchrec_subject_matches_embedlookup():
    w = parse_workload(["small", "threads=1", "batches=2"])
    rep = bench.run([(w, ["pooled_sum", "pooled_mean"])], Config(subjects=["embedlookup", "torchrec"], **FAST))
    got = sorted((r["op"], r["subject"], r["status"]) for r in rep["results"])
    assert got == [("pooled_mean", "embedlookup", "ok"), ("pooled_mean", "torchrec", "ok"),
                   ("pooled_sum", "embedlookup", "ok"), ("pooled_sum", "torchrec", "ok")], rep["results"]


def test_raw_id_forward_runs():
    # It asserts internally that our output equals TorchRec's EBC on the remapped rows.
    w = parse_workload(["dist=zipf", "rows=2000", "batch=64", "pooling=4", "threads=1", "batches=2"])
    res = raw_id_forward(w, repeats=3, warmup=1)
    assert set(res["results"]) == {"embedlookup", "torchrec_mc", "torchrec_remapped"}
    assert all(r["ms"] > 0 for r in res["results"].values())
