"""`embedlookup bench`: argument errors, partial failures, report files."""

import json
import sys
from pathlib import Path

import pytest
from embedlookup import cli

FAST = ["--repeats", "1", "--op-time", "0", "--warmup", "0", "--min-time", "0", "--no-limits", "--quiet"]
SMALL = ["--workload", "small", "threads=1", "batches=1"]


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list(capsys):
    rc, out, _ = run(capsys, "bench", "--list")
    assert rc == 0
    for word in ("embeddingbag-bar", "zipf-1m", "default", "pooled_sum", "train_rowwise", "fbgemm", "numpy",
                 "storage", "tier_write", "checkpoint", "evict", "relayout", "cuda"):
        assert word in out
    assert "issue" not in out  # suites and workloads say what they are, not where they came from


def test_bad_numbers_are_argument_errors(capsys):
    rc, _, err = run(capsys, "bench", "--repeats", "0", *SMALL)
    assert rc == 2 and "--repeats must be >= 1, got 0" in err
    rc, _, err = run(capsys, "bench", "--passes", "0", *SMALL)
    assert rc == 2 and "--passes must be >= 1, got 0" in err
    rc, _, err = run(capsys, "bench", "--ratio-ci-factor", "0.5", *SMALL)
    assert rc == 2 and "--ratio-ci-factor must be >= 1, got 0.5" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--repeats", "many"])
    assert e.value.code == 2


def test_nothing_valid_to_run(capsys):
    rc, _, err = run(capsys, "bench", "--workload", "nosuch", *FAST)
    assert rc == 2 and "unknown workload 'nosuch'" in err and "nothing to run" in err
    rc, _, err = run(capsys, "bench", "--suite", "nosuch", *FAST)
    assert rc == 2 and "unknown suite 'nosuch'" in err


def test_bad_parts_are_reported_and_the_rest_runs(capsys, tmp_path):
    js, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    rc, out, err = run(
        capsys,
        "bench",
        *SMALL,
        "--workload",
        "small",
        "colour=red",
        "--workload",
        "nosuch",
        "--ops",
        "pooled_sum,frobnicate",
        "--peers",
        "numpy,nopeer",
        *FAST,
        "--json",
        str(js),
        "--markdown",
        str(md),
        "--plot",
        str(png),
    )
    assert rc == 1
    assert "unknown workload parameter 'colour'" in err and "unknown workload 'nosuch'" in err
    assert "unknown operation 'frobnicate'" in err and "unknown peer 'nopeer'" in err
    rep = json.loads(js.read_text())
    assert {(r["op"], r["subject"], r["status"]) for r in rep["results"]} == {
        ("pooled_sum", "embedlookup", "ok"),
        ("pooled_sum", "numpy", "ok"),
    }
    assert rep["command"].startswith("embedlookup bench --workload small")
    assert any("frobnicate" in n for n in rep["notes"])
    assert "| small:threads=1,batches=1 | pooled_sum | numpy |" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pooled_sum" in out and "machine:" in out and "command:" in out


def test_unwritable_path_is_reported_before_running_and_others_are_written(capsys, tmp_path):
    md = tmp_path / "r.md"
    rc, _, err = run(
        capsys,
        "bench",
        *SMALL,
        "--ops",
        "lookup",
        "--peers",
        "numpy",
        *FAST,
        "--json",
        str(tmp_path / "missing-dir" / "r.json"),
        "--markdown",
        str(md),
    )
    assert rc == 1 and "--json: cannot write" in err and "does not exist" in err
    assert md.exists() and "lookup" in md.read_text()


def test_plot_without_matplotlib_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "r.png"
    rc, _, err = run(
        capsys, "bench", *SMALL, "--ops", "lookup", "--peers", "numpy", *FAST, "--plot", str(png)
    )
    assert rc == 0  # a missing optional plotter is a skip, not a failure
    assert "matplotlib is not available" in err and not png.exists()


PNG = b"\x89PNG\r\n\x1a\n"


def test_default_run_saves_a_results_folder_and_says_where(capsys, tmp_path):
    # (the bench tests run in tmp_path: conftest.py)
    rc, out, _ = run(capsys, "bench", *SMALL, "--ops", "lookup", "--peers", "numpy", *FAST)
    assert rc == 0
    runs = list((tmp_path / "bench_results").iterdir())
    assert len(runs) == 1 and len(runs[0].name) == len("20261207-010418")
    folder = runs[0]
    names = ("results.json", "results.md", "results.png")
    paths = [str(Path("bench_results") / folder.name / n) for n in names]
    assert out.rstrip().splitlines()[-1] == "saved: " + ", ".join(paths)
    rep = json.loads((folder / "results.json").read_text())
    assert {(r["op"], r["subject"], r["status"]) for r in rep["results"]} == {
        ("lookup", "embedlookup", "ok"),
        ("lookup", "numpy", "ok"),
    }
    # 64 bags x 8 keys of 16 floats per call
    assert all(r["bytes_per_call"] == 64 * 8 * 16 * 4 for r in rep["results"])
    assert "| small:threads=1,batches=1 | lookup | numpy |" in (folder / "results.md").read_text()
    assert (folder / "results.png").read_bytes()[:8] == PNG
    # a second run in the same second gets its own folder
    rc, out, _ = run(capsys, "bench", *SMALL, "--ops", "lookup", "--peers", "numpy", *FAST)
    assert rc == 0 and len(list((tmp_path / "bench_results").iterdir())) == 2


def test_out_folder_single_files_and_no_save(capsys, tmp_path):
    argv = ["bench", *SMALL, "--ops", "lookup", "--peers", "numpy", *FAST]
    rc, out, _ = run(capsys, *argv, "--out", "mine/run1", "--json", "one.json")
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "mine" / "run1").iterdir())
    assert names == ["results.json", "results.md", "results.png"]
    assert json.loads((tmp_path / "one.json").read_text()) == json.loads(
        (tmp_path / "mine" / "run1" / "results.json").read_text()
    )
    assert out.rstrip().splitlines()[-1].endswith(", one.json")
    # single files only: no folder
    rc, out, _ = run(capsys, *argv, "--markdown", "r.md")
    assert rc == 0 and out.rstrip().splitlines()[-1] == "saved: r.md"
    # nothing saved: the last line says how to keep a report
    rc, out, _ = run(capsys, *argv, "--no-save")
    assert rc == 0 and "not saved; keep a run's report with --out DIR" in out.rstrip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "one.json", "r.md"]


def test_help_says_where_results_go(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "saved to bench_results/<UTC time>/ (results.json, results.md and results.png" in out
    assert "--no-save" in out and "--out DIR" in out


def test_percent_columns_are_shares_of_the_measured_limits_and_the_footer_explains_them(capsys):
    from embedlookup.bench import format_table, to_markdown

    rc, out, _ = run(
        capsys, "bench", *SMALL, "--ops", "pooled_sum", "--peers", "numpy",
        *[a for a in FAST if a != "--no-limits"], "--limit-mib", "8", "--json", "r.json",
    )
    assert rc == 0
    rep = json.loads(Path("r.json").read_text())
    lim = rep["workloads"][0]["limits"]
    for r in rep["results"]:
        assert r["pct_gather"] == pytest.approx(100 * r["bytes_per_s"] / lim["gather_bytes_per_s"])
        assert r["pct_copy"] == pytest.approx(100 * r["bytes_per_s"] / lim["copy_bytes_per_s"])
    assert "% gather, % copy: that GB/s as a share of the machine limits above" in out
    above = any(r[k] > 100 for r in rep["results"] for k in ("pct_gather", "pct_copy"))
    assert ("Above 100%: the op got its rows faster than uniformly random reads" in out) == above
    # the same report with a value above 100 and without: the line comes with it
    for v, expect in ((250.0, True), (40.0, False)):
        for r in rep["results"]:
            r["pct_gather"], r["pct_copy"] = v, v / 2
        text = format_table(rep)
        assert f"{v:.0f}%" in text
        assert ("Above 100%" in text) == expect
        assert ("Above 100%" in to_markdown(rep)) == expect
    # no limits measured: no percentages, and no line about them
    for r in rep["results"]:
        r.pop("pct_gather"), r.pop("pct_copy")
    assert "% gather, % copy:" not in format_table(rep)


def _rep(ratios):
    return {
        "results": [
            {"workload": "w", "op": op, "subject": s, "speedup_vs_embedlookup": v}
            for (op, s), v in ratios.items()
        ]
        + [{"workload": "w", "op": "pooled_sum", "subject": "embedlookup", "speedup_vs_embedlookup": None}]
    }


def test_compare(capsys, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_rep({("pooled_sum", "torch"): 0.50, ("update", "torch"): 4.0})))
    b.write_text(
        json.dumps(_rep({("pooled_sum", "torch"): 0.55, ("update", "torch"): 4.1, ("lookup", "numpy"): 1.0}))
    )
    rc, out, _ = run(capsys, "compare", str(a), str(b))
    # 0.55 / 0.50 - 1 = 10.0%, 4.1 / 4.0 - 1 = 2.5%
    assert rc == 0 and "2 ratios against peers compared, 0 differ" in out and "10.0%" in out and "2.5%" in out
    rc, out, _ = run(capsys, "compare", str(a), str(b), "--tolerance", "0.05")
    assert rc == 1 and "1 differ by more than 5%" in out
    rc, _, err = run(capsys, "compare", str(a), str(tmp_path / "none.json"))
    assert rc == 2 and "cannot read" in err


def test_compare_counts_peers_not_backends(capsys, tmp_path):
    # The bar is about ratios against peers: an OpenCL (backend) ratio that
    # moved 50% is shown and flagged, but does not fail the comparison.
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_rep({("pooled_sum", "torch"): 0.50, ("pooled_sum", "opencl"): 2.0})))
    b.write_text(json.dumps(_rep({("pooled_sum", "torch"): 0.52, ("pooled_sum", "opencl"): 3.0})))
    rc, out, _ = run(capsys, "compare", str(a), str(b))
    assert rc == 0
    assert "1 ratios against peers compared, 0 differ by more than 15% (largest 4.0%)" in out
    assert "1 ratios against embedlookup's other backends (not counted) compared, 1 differ" in out
    assert "50.0%  > tolerance (backend, not counted)" in out
    # a backend's kind recorded in the report wins over the name
    rep_b = _rep({("pooled_sum", "torch"): 0.52, ("pooled_sum", "opencl"): 3.0})
    for r in rep_b["results"]:
        if r["subject"] == "torch":
            r["kind"] = "backend"
    b.write_text(json.dumps(rep_b))
    _, out, _ = run(capsys, "compare", str(a), str(b))
    assert "2 ratios against embedlookup's other backends (not counted) compared" in out


class _Planned(Exception):
    pass


def _plan(monkeypatch, *argv):
    """The (workload, ops) plan `embedlookup bench` would run, without running it."""
    import embedlookup.bench as B

    def fake_run(plan, cfg, command="", notes=None):
        raise _Planned(plan)

    monkeypatch.setattr(B, "run", fake_run)
    with pytest.raises(_Planned) as e:
        cli.main(["bench", *argv])
    return e.value.args[0]


def test_default_suite_runs_one_thread_unless_told(monkeypatch):
    plan = _plan(monkeypatch)
    assert [w.name for w, _ in plan] == ["uniform-1m", "zipf-1m", "uniform-64k"]
    assert all(w.threads == 1 for w, _ in plan)
    assert all(w.threads == 0 for w, _ in _plan(monkeypatch, "--threads", "0"))
    # a workload named on the command line keeps its own threads
    (w, _), = _plan(monkeypatch, "--workload", "uniform-1m")
    assert w.threads == 0


def test_cuda_subject_glue_with_a_cpu_stand_in(monkeypatch):
    # No GPU here: a stand-in CudaTable (the CPU engine behind torch CPU
    # tensors) checks the subject's own code - device inputs made once, out=,
    # the wait per call, results copied back - against the CPU engine.
    torch = pytest.importorskip("torch")
    import embedlookup.cuda as elc
    from embedlookup import bench
    from embedlookup.bench import Config, parse_workload

    syncs = []

    class StandIn:
        device = torch.device("cpu")

        def __init__(self, table):
            self.table = table

        @classmethod
        def from_table(cls, table):
            return cls(table)

        def lookup(self, keys, out=None):
            assert isinstance(keys, torch.Tensor) and isinstance(out, torch.Tensor)
            out.copy_(torch.from_numpy(self.table.lookup(keys.numpy())))
            return out

        def pooled_lookup(self, keys, offsets, mode, out=None, check=True):
            assert isinstance(offsets, torch.Tensor) and check is False
            out.copy_(torch.from_numpy(self.table.pooled_lookup(keys.numpy(), offsets.numpy(), mode=mode)))
            return out

    monkeypatch.setattr(elc, "unavailable_reason", lambda: None)
    monkeypatch.setattr(elc, "_torch", lambda: torch)
    monkeypatch.setattr(elc, "CudaTable", StandIn)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    ops = ["lookup", "pooled_sum", "pooled_mean", "pooled_max"]
    cfg = Config(subjects=["embedlookup", "cuda"], repeats=2, op_time=0, warmup=0, min_time=0.0,
                 limits=False, progress=False)
    rep = bench.run([(parse_workload(["small", "threads=1", "batches=2"]), ops)], cfg)
    got = {(r["op"], r["subject"]): r for r in rep["results"]}
    for op in ops:
        assert got[(op, "cuda")]["status"] == "ok" and got[(op, "cuda")]["max_abs_diff"] == 0.0
    assert len(syncs) >= 4 * 3  # one wait per call (check + timed calls)
