"""The compressed suite's ops: every subject holds the same values, so the
runner's check (outputs equal within fp32 noise, before timing) compares the
engine's compressed kernels with dense float32 EmbeddingBag and with FBGEMM's
IntNBit table; the NumPy reference checks the engine's output by hand."""

import numpy as np
import pytest
from embedlookup import bench
from embedlookup import quantize as q
from embedlookup.bench import Config, parse_workload
from embedlookup.bench.ops_compressed import exact_rows
from embedlookup.bench.workloads import SUITES, WorkloadData

import reference as ref

FAST = dict(repeats=2, op_time=0, warmup=0, min_time=0.0, limits=False, progress=False)
OPS = ["pooled_sum_fp16", "pooled_sum_bf16", "pooled_sum_int8", "pooled_sum_int4"]
OPS += [op + "_resolved" for op in OPS]


def test_compressed_ops_agree_with_the_dense_peer_and_fbgemm():
    pytest.importorskip("torch")
    w = parse_workload(["small", "threads=1", "batches=2"])
    rep = bench.run([(w, OPS)], Config(subjects=["embedlookup", "torch", "fbgemm"], **FAST))
    st = {(r["op"], r["subject"]): r for r in rep["results"]}
    for op in OPS:
        assert st[(op, "embedlookup")]["status"] == "ok", st[(op, "embedlookup")]
        assert st[(op, "torch")]["status"] == "ok", st[(op, "torch")]  # compared, then timed
        fb = st[(op, "fbgemm")]
        if op.startswith("pooled_sum_bf16"):
            assert fb["status"] == "skipped"
        else:
            assert fb["status"] in ("ok", "skipped"), fb  # skipped only without fbgemm_gpu
    assert "compressed" in SUITES and set(OPS) <= set(SUITES["compressed"]["ops"])


@pytest.mark.parametrize("kind", ["fp16", "bf16", "int8", "int4"])
def test_exact_rows_survive_every_layout(kind):
    data = WorkloadData.generate(parse_workload(["small", "threads=1", "batches=1"]))
    values, scale, bias = exact_rows(data.dense, kind)
    raw = ref.quantize_rows(values[:200], kind)
    np.testing.assert_array_equal(ref.dequantize_rows(raw, kind, values.shape[1]), values[:200])
    if scale is not None:  # the scale and bias are float16 values, as FBGEMM stores them
        np.testing.assert_array_equal(scale.astype(np.float16).astype(np.float32), scale)
        tail = q.row_bytes(kind, values.shape[1]) - 8
        np.testing.assert_array_equal(raw[:, tail:tail + 4].copy().view(np.float32)[:, 0], scale[:200])


def test_resolved_ops_and_the_resolution_agree_with_their_peers():
    # pooled_sum_resolved against dense EmbeddingBag and FBGEMM; resolve
    # (row ids) against the NumPy user's sorted-vocabulary remap.
    pytest.importorskip("torch")
    w = parse_workload(["small", "threads=1", "batches=2"])
    ops = ["pooled_sum_resolved", "resolve", "train_rowwise_resolved"]
    rep = bench.run([(w, ops)], Config(subjects=["embedlookup", "torch", "fbgemm", "remap+eb"], **FAST))
    st = {(r["op"], r["subject"]): r["status"] for r in rep["results"]}
    assert st[("pooled_sum_resolved", "embedlookup")] == "ok"
    assert st[("pooled_sum_resolved", "torch")] == "ok"
    assert st[("pooled_sum_resolved", "fbgemm")] in ("ok", "skipped")
    assert st[("resolve", "embedlookup")] == "ok"
    assert st[("resolve", "remap+eb")] == "ok"  # same row numbers, compared before timing
    # the step on resolved ids: its output and updated rows against FBGEMM's row-wise Adagrad
    assert st[("train_rowwise_resolved", "embedlookup")] == "ok"
    assert st[("train_rowwise_resolved", "fbgemm")] in ("ok", "skipped")
