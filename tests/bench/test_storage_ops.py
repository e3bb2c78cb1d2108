"""The suite's storage and eviction ops: tier_read, tier_write, checkpoint, evict.

Outputs are checked by the runner against embedlookup's before anything is
timed; the NumPy floor (a memmap, numpy.save) is the independent reference,
and the tests below also check values by hand."""

import os

import numpy as np
import pytest
from embedlookup import bench, cli
from embedlookup.bench import Config, parse_workload
from embedlookup.bench.workloads import WorkloadData

FAST = dict(repeats=2, op_time=0, warmup=0, min_time=0.0, limits=False, progress=False)
STORAGE_OPS = ["tier_read", "tier_write", "checkpoint", "evict", "relayout"]


def _small():
    return parse_workload(["small", "threads=1", "batches=2"])


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith("embedlookup-bench-")]


def test_storage_ops_run_checked_against_the_floor_and_clean_up(tmp_path):
    cfg = Config(subjects=["embedlookup", "numpy", "torch"], tier_dir=str(tmp_path), **FAST)
    rep = bench.run([(_small(), STORAGE_OPS)], cfg)
    st = {(r["op"], r["subject"]): r for r in rep["results"]}
    for op in STORAGE_OPS:
        assert st[(op, "embedlookup")]["status"] == "ok", st[(op, "embedlookup")]
    for op in ("tier_read", "tier_write", "checkpoint"):
        r = st[(op, "numpy")]
        # "ok" means the runner compared its output with embedlookup's and they matched
        assert r["status"] == "ok" and r["max_abs_diff"] == 0.0, r
        assert r["speedup_vs_embedlookup"] > 0
    assert st[("checkpoint", "torch")]["status"] == "ok"
    w = _small()
    b = WorkloadData.generate(w).batches[0]
    distinct = np.unique(b.idx).size
    assert st[("tier_read", "embedlookup")]["rows_per_call"] == pytest.approx(distinct, rel=0.2)
    assert st[("checkpoint", "embedlookup")]["rows_per_call"] == w.rows
    assert st[("evict", "embedlookup")]["rows_per_call"] == w.batch
    assert _leftovers(tmp_path) == []  # scratch folders removed with their cases


def test_checkpoint_rounds_are_capped_over_all_passes(tmp_path):
    opts = dict(FAST, repeats=50)
    cfg = Config(subjects=["embedlookup", "numpy"], tier_dir=str(tmp_path), passes=2, **opts)
    rep = bench.run([(_small(), ["checkpoint", "tier_read"])], cfg)
    by = {(r["op"], r["subject"]): r for r in rep["results"]}
    # checkpoint: at most 5 rounds in all (ceil(5 / 2) = 3 per pass), the others as asked
    assert len(by[("checkpoint", "embedlookup")]["times_s"]) <= 6
    assert len(by[("tier_read", "embedlookup")]["times_s"]) >= 50


def test_bad_tier_dir_skips_storage_ops_and_the_rest_runs(capsys, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    rc = cli.main(
        ["bench", "--workload", "small", "threads=1", "batches=1"]
        + ["--ops", "tier_read,checkpoint,evict,lookup"]
        + ["--peers", "numpy", "--tier-dir", str(not_a_dir), "--repeats", "1", "--op-time", "0"]
        + ["--warmup", "0", "--min-time", "0", "--no-limits", "--quiet"]
    )
    out, _ = capsys.readouterr()
    assert f"--tier-dir '{not_a_dir}' is not a directory" in out
    lines = {tuple(x.split()[1:3]): x for x in out.splitlines() if x.startswith("small")}
    assert "skipped" in lines[("tier_read", "embedlookup")]
    assert "skipped" in lines[("checkpoint", "embedlookup")]
    # ops that need no folder still run
    assert lines[("lookup", "embedlookup")].endswith(" ok")
    assert lines[("evict", "embedlookup")].endswith(" ok")
    assert rc in (0, 1)


def test_unwritable_tier_dir_is_named(tmp_path, monkeypatch):
    # root can write anywhere, so the check itself is made to fail here
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if os.fspath(p) == str(tmp_path) else real(p, m))
    cfg = Config(subjects=["embedlookup"], tier_dir=str(tmp_path), **FAST)
    rep = bench.run([(_small(), ["checkpoint"])], cfg)
    r = rep["results"][0]
    assert r["status"] == "skipped" and r["reason"] == f"--tier-dir '{tmp_path}' is not writable"


def test_missing_tier_dir_is_named(tmp_path):
    cfg = Config(subjects=["embedlookup"], tier_dir=str(tmp_path / "nope"), **FAST)
    rep = bench.run([(_small(), ["tier_write"])], cfg)
    r = rep["results"][0]
    assert r["status"] == "skipped" and "--tier-dir" in r["reason"] and "not a directory" in r["reason"]


def test_tier_write_stores_the_new_rows(tmp_path):
    # Hand check beside the runner's: after one timed write, the tier holds 0.5 x the original rows.
    from embedlookup.bench import ops_storage
    from embedlookup.bench.ops import OPS

    w = _small()
    data = WorkloadData.generate(w)
    data.tier_dir = str(tmp_path)
    case = OPS["tier_write"].impls["embedlookup"](data)
    b = data.batches[0]
    got = case.output(b)
    idx = np.unique(b.idx)
    np.testing.assert_array_equal(got, 0.5 * data.dense[idx])
    assert ops_storage  # the module registered the op


def test_evict_keeps_the_table_at_its_budget(tmp_path):
    from embedlookup.bench.ops import OPS

    w = _small()
    data = WorkloadData.generate(w)
    case = OPS["evict"].impls["embedlookup"](data)
    out = case.output(data.batches[0])  # raises if the call evicted nothing or passed the budget
    for _ in range(5):
        case.run(data.batches[0])
    st = case.run.table.stats()
    # six calls admitted ~6 x batch new keys into a table at its budget: as many rows left
    assert st["rows"] <= w.rows and st["evicted"] >= 6 * w.batch * 0.9
    assert st["admitted"] >= st["evicted"]
    assert out.shape == (w.batch, w.dim) and np.isfinite(out).all()


def test_relayout_moves_rows_and_keeps_them_bit_identical():
    from embedlookup.bench.ops import OPS

    w = parse_workload(["small", "threads=1", "batches=3"])
    data = WorkloadData.generate(w)
    case = OPS["relayout"].impls["embedlookup"](data)
    case.output(data.batches[0])  # raises if nothing moved or a row changed
    ft = case.run.table
    moves = ft.stats()["relayout_moves"]
    for b in data.batches:
        case.after()
        case.run(b)
    assert ft.stats()["relayout_moves"] > moves
    rows, found = ft.find(data.keys)
    assert found.all()
    np.testing.assert_array_equal(rows, data.dense)  # every row, as generated
    # packed in score order: row id 0 holds one of the hottest keys (scores are
    # stored as of each key's last step, so near-ties may decay apart)
    scores, _, ids = ft.inspect(data.keys)
    assert scores[ids == 0][0] >= 0.95 * scores.max() > 0
