"""The bench's torchrec subject and the raw-ID measurement run and agree with
embedlookup's output (the runner checks every subject against it before timing)."""

import pytest

pytest.importorskip("torchrec")
from embedlookup import bench  # noqa: E402
from embedlookup.bench import Config, parse_workload  # noqa: E402
from embedlookup.bench.ops_torchrec import raw_id_forward  # noqa: E402

FAST = dict(repeats=2, op_time=0, warmup=0, min_time=0.0, limits=False, progress=False)


SUBJECTS = ["embedlookup", "torchrec", "torchrec-zch", "remap+eb"]
OPS = ["lookup", "pooled_sum", "pooled_mean", "train_adagrad"]


def test_torchrec_subjects_match_embedlookup():
    # "ok" means the subject's output (forward; for training also the updated
    # rows of the batch's keys) equalled embedlookup's before it was timed.
    w = parse_workload(["small", "threads=1", "batches=2"])
    rep = bench.run([(w, OPS)], Config(subjects=SUBJECTS, **FAST))
    got = sorted((r["op"], r["subject"], r["status"]) for r in rep["results"])
    assert got == sorted((op, s, "ok") for op in OPS for s in SUBJECTS), rep["results"]


def test_a_wrong_peer_is_caught():
    # The check is real: corrupt one row in remap+eb's copy and it is reported as a mismatch, not timed.
    from embedlookup.bench import ops_torchrec

    w = parse_workload(["small", "threads=1", "batches=2"])
    real = ops_torchrec._remap

    def corrupted(data):
        voc, rows = real(data)
        rows = rows.copy()
        rows[voc.rows(data.batches[0].keys[:1])] += 1.0
        return voc, rows

    ops_torchrec._remap = corrupted
    try:
        rep = bench.run([(w, ["pooled_sum"])], Config(subjects=["embedlookup", "remap+eb"], **FAST))
    finally:
        ops_torchrec._remap = real
    assert [r["status"] for r in rep["results"] if r["subject"] == "remap+eb"] == ["mismatch"]


def test_raw_id_forward_runs():
    # It asserts internally that our output equals TorchRec's EBC on the remapped rows.
    w = parse_workload(["dist=zipf", "rows=2000", "batch=64", "pooling=4", "threads=1", "batches=2"])
    res = raw_id_forward(w, repeats=3, warmup=1)
    assert set(res["results"]) == {"embedlookup", "torchrec_mc", "torchrec_remapped"}
    assert all(r["ms"] > 0 for r in res["results"].values())
