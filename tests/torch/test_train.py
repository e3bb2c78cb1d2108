"""The continual-training loop: Criteo reader, synthetic stream, metrics,
the capacity policy, and a short run that learns."""

import numpy as np
import pytest
import torch

from embedlookup import train as T


def write_criteo(path, rows):
    with open(path, "w") as fh:
        for r in rows:
            fh.write("\t".join(r) + "\n")


def criteo_row(label, ints, cats):
    return [str(label)] + ints + cats


def test_criteo_reader(tmp_path):
    ints = ["1", "", "-3", "100"] + [""] * 9
    cats = ["68fd1e64", "", "ffffffff"] + ["0a"] * 23
    p = tmp_path / "day.tsv"
    write_criteo(p, [criteo_row(1, ints, cats), criteo_row(0, [""] * 13, [""] * 26), criteo_row(0, ints, cats)])
    batches = list(T.criteo_batches(str(p), batch_size=2))
    assert [b.label.shape[0] for b in batches] == [2, 1]
    b = batches[0]
    assert b.label.tolist() == [1.0, 0.0]
    np.testing.assert_allclose(b.dense[0, :4].numpy(), [np.log(2), 0, 0, np.log(101)], rtol=1e-6)
    assert b.dense[1].abs().sum() == 0
    assert b.sparse[0, :3].tolist() == [0x68FD1E64, -1, 0xFFFFFFFF]
    assert b.sparse[0, 3] == 10
    assert (b.sparse[1] == -1).all()
    assert b.sparse.shape == (2, 26) and b.dense.shape == (2, 13)


def test_criteo_reader_rejects_bad_lines(tmp_path):
    p = tmp_path / "bad.tsv"
    write_criteo(p, [criteo_row(1, ["1"] * 13, ["a"] * 26), ["1", "2"]])
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected 40"):
        list(T.criteo_batches(str(p), batch_size=8))
    write_criteo(p, [criteo_row(1, ["x"] * 13, ["a"] * 26)])
    with pytest.raises(ValueError, match=r"bad.tsv:1"):
        list(T.criteo_batches(str(p), batch_size=8))


def test_auc_and_logloss_by_hand():
    y = np.array([0, 0, 1, 1])
    assert T.auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert T.auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert T.logloss(np.array([1.0, 0.0]), np.array([0.0, 0.0])) == pytest.approx(np.log(2))


def test_synthetic_stream_is_seeded_and_drifts():
    s = T.SyntheticClickStream(batch_size=512, seed=3, drift=1000.0)
    a, b = list(s.batches(3)), list(T.SyntheticClickStream(batch_size=512, seed=3, drift=1000.0).batches(3))
    for x, y in zip(a, b):
        assert torch.equal(x.sparse, y.sparse) and torch.equal(x.label, y.label)
    # Drifting feature 0: its head IDs move by `drift` per batch; feature 7 does not drift.
    assert a[2].sparse[:, 0].min() >= 2000 and a[0].sparse[:, 0].min() < 1000
    assert a[2].sparse[:, 7].max() < 100
    ctr = torch.cat([x.label for x in a]).mean()
    assert 0.02 < ctr < 0.5


def test_admit_until_full_respects_capacity():
    emb = T.HashTableEmbeddings(3, 4, capacity=50, lr=0.1, policy=T.AdmitUntilFull(50))
    rng = np.random.default_rng(0)
    for _ in range(5):
        sparse = torch.from_numpy(rng.integers(0, 1000, (40, 3)))
        out = emb(sparse)
        assert out.shape == (3, 40, 4)
        assert len(emb.coll.bag.table) <= 50
    assert len(emb.coll.bag.table) == 50
    # A full table maps unseen IDs to the OOV row of their feature.
    new = torch.full((2, 3), 10**9, dtype=torch.int64)
    prepared = emb.policy.prepare(new)
    assert (prepared == T.AdmitUntilFull.OOV).all()


def test_short_run_learns_and_reports():
    s = T.SyntheticClickStream(batch_size=512, seed=1, vocab=(5000, 2000, 1000, 500, 200, 100, 50, 10))
    cfg = T.RunConfig(dim=8, rows=3000, window=5, lr_embedding=0.1, lr_dense=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread avoids barrier waits on a loaded machine
    try:
        res = T.run(s.batches(30), cfg, s.n_features, s.n_dense, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    assert res["samples"] == 30 * 512
    for name, h in res["models"].items():
        assert len(h["logloss"]) == len(h["auc"]) == 6
        assert h["logloss"][-1] < h["logloss"][0], name  # it learns
        assert h["auc"][-1] > 0.6, name
    assert res["models"]["hash_table"]["rows"] <= res["models"]["hash_table"]["capacity"]
    assert res["models"]["freq_table"]["rows"] <= res["models"]["freq_table"]["budget_rows"]


def test_freq_table_keeps_its_budget_and_evicts():
    emb = T.FreqTableEmbeddings(3, 4, budget_rows=50, lr=0.1, admit_count=2, sketch_width=1 << 10)
    table = emb.coll.bag.table
    rng = np.random.default_rng(0)
    for _ in range(6):
        sparse = torch.from_numpy(rng.integers(0, 60, (16, 3)))
        out = emb(sparse)
        assert out.shape == (3, 16, 4)
        out.sum().backward()
        assert len(table) <= 50
    st = table.stats()
    assert st["rejected"] > 0 and st["evicted"] > 0 and st["cold_updates"] > 0
    # Memory as reported: rows x (row + Adagrad state + key + score) + index + sketch.
    m = table.memory_usage()
    assert emb.memory_bytes() == len(table) * (m["row_bytes_per_row"] + 16 + 16) + m["index_bytes"] + 4 * 4 * 1024


# ------------------------------------------------------ the console script
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# The embedlookup under test (installed, or built in place): children import the same one.
PKG_PARENT = str(Path(T.__file__).resolve().parents[1])


def _entry_point(name):
    """``module:function`` of console script ``name`` as pyproject.toml declares it."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    m = re.search(rf'^{re.escape(name)}\s*=\s*"([\w.]+):(\w+)"', section, re.M)
    assert m, f"{name} is not in pyproject.toml's [project.scripts]"
    return m.group(1), m.group(2)


def _console(name, *args, cwd):
    """Runs console script ``name`` as an installed one runs: the script pip
    generated when the package is installed beside this Python, else the same
    wrapper (``sys.exit(function())``) around pyproject.toml's entry point."""
    script = Path(sys.executable).parent / name
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [PKG_PARENT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    if script.exists():
        cmd = [str(script), *args]
    else:
        mod, fn = _entry_point(name)
        cmd = [sys.executable, "-c", f"import sys; from {mod} import {fn}; sys.exit({fn}())", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_console_script_quick_run_exits_0_prints_summary_and_writes_files(tmp_path):
    assert _entry_point("embedlookup-train") == ("embedlookup.train", "main")
    p = _console("embedlookup-train", "--quick", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "'models'" not in p.stderr  # no result dict as an exit message
    out = p.stdout.splitlines()
    # --quick: 40 batches of 512, windows of 10 -> 4 window lines, then the summary
    assert sum(line.startswith("batch ") for line in out) == 4
    assert f"trained 4 models on {40 * 512} samples" in p.stdout
    for name in T.MODELS:
        line = rf"^  {name}\s+mean logloss 0\.\d{{4}}  mean AUC 0\.\d{{4}}  memory [\d.]+ MiB"
        assert re.search(line, p.stdout, re.M), name
    # the default folder, relative to the working directory, and the paths printed
    metrics, png = tmp_path / "train_results" / "metrics.json", tmp_path / "train_results" / "training.png"
    assert out[-2:] == [f"wrote {os.path.join('train_results', 'metrics.json')}",
                        f"wrote {os.path.join('train_results', 'training.png')}"]
    res = json.loads(metrics.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["samples"] == 40 * 512 and res["config"]["extra"]["quick"] is True
    assert res["config"]["rows"] == 20_000 and res["config"]["window"] == 10
    assert res["wall_s"] > 0  # timed, reported (the under-a-minute figure is measured, not asserted)
    for name in T.MODELS:
        h = res["models"][name]
        assert len(h["logloss"]) == len(h["auc"]) == 4
        assert 0 < h["mean_logloss"] < 0.7 and 0.5 < h["mean_auc"] <= 1.0, name
    # the bounded models share one budget: the unbounded one uses more memory
    memory = {name: h["memory_bytes"][-1] for name, h in res["models"].items()}
    assert memory["hash_table_unbounded"] > memory["hash_table"]


def test_train_returns_the_dict_and_explicit_options_win_over_quick(tmp_path):
    # In a fresh interpreter, as a user runs it (this run once exposed a heap
    # overflow in the fused update's scratch: tests/cpu/test_scratch_reuse.py).
    code = (
        "import json, sys; from embedlookup import train as T; lines = []; "
        "res = T.train(sys.argv[1:], log=lines.append); "
        "print(json.dumps({'lines': len(lines), 'models': list(res['models']), 'samples': res['samples'], "
        "'paths': res['paths'], 'summary': T.summary(res)}))"
    )
    out = str(tmp_path / "o")
    p = subprocess.run(
        [sys.executable, "-c", code, "--quick", "--batches", "4", "--window", "2",
         "--models", "hashing,freq_table", "--out", out],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", "")),
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.splitlines()[-1])
    assert res["models"] == ["hashing", "freq_table"]
    assert res["samples"] == 4 * 512 and res["lines"] == 2
    assert res["paths"][0] == os.path.join(out, "metrics.json")
    assert all(Path(x).exists() for x in res["paths"])
    assert json.loads(Path(res["paths"][0]).read_text())["samples"] == 4 * 512
    text = res["summary"].splitlines()
    assert text[0].startswith(f"trained 2 models on {4 * 512} samples")
    assert text[-len(res["paths"]):] == [f"wrote {x}" for x in res["paths"]]


def test_plot_missing_matplotlib_is_a_note_not_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = T.main(["--batches", "2", "--batch-size", "64", "--rows", "500", "--window", "1",
                 "--models", "hashing", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "note: matplotlib is not available" in out
    assert (tmp_path / "metrics.json").exists() and not (tmp_path / "training.png").exists()


def test_errors_give_exit_status_and_one_line(tmp_path, capsys):
    rc = T.main(["--criteo", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "o")])
    assert rc == 1 and "embedlookup-train: error: --criteo: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        T.main(["--models", "hashing,nosuch"])
    assert e.value.code == 2 and "unknown model(s) nosuch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        T.main(["--batches", "0"])
    assert e.value.code == 2 and "--batches must be >= 1, got 0" in capsys.readouterr().err


def test_usage_names_the_console_script_and_every_option_has_help(capsys):
    parser = T.build_parser()
    assert parser.prog == "embedlookup-train"
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 18
    for a in options:
        assert a.help and a.help.strip() and a.help != "==SUPPRESS==", a.option_strings
    assert {"--quick", "--out", "--batches", "--models"} <= {s for a in options for s in a.option_strings}
    with pytest.raises(SystemExit) as e:
        T.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.startswith("usage: embedlookup-train ") and "python -m" not in out
    assert "--quick" in out and "train_results" in out


def _build_and_run(cfg, stream, n_batches):
    """build_models (to inspect their configuration) and one run, on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = T.build_models(cfg, stream.n_features, stream.n_dense)
        res = T.run(stream.batches(n_batches), cfg, stream.n_features, stream.n_dense, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return models, res


def test_qr_and_mixed_dim_models_learn_within_their_budget():
    """The compositional models of the train loop: QR's two tables stay within
    q_rows + m rows (the bounded table's rows at the same bytes), mixed-dim's
    per-feature dims follow the power law of the stream's cardinalities, and
    both learn and stay near the hashing trick's bytes."""
    from dataclasses import asdict

    s = T.SyntheticClickStream(batch_size=256, seed=2, vocab=(5000, 2000, 1000, 500, 200, 100, 50, 10))
    cfg = T.RunConfig(dim=8, rows=2000, window=5, lr_embedding=0.1, lr_dense=3e-3,
                      models=("hashing", "qr", "mixed_dim"), mixed_alpha=0.3)
    cfg.extra["stream"] = asdict(s)
    models, res = _build_and_run(cfg, s, 20)
    qr = models["qr"][0].embeddings
    assert qr.m + qr.q_rows == T.hash_table_rows_for_bytes(2 * 2000 * 8 * 4, 8)
    md = models["mixed_dim"][0].embeddings
    # drifting features 0, 1 count as 10x the largest vocab; the 10-value feature keeps dim 8
    assert md.dims == T.mixed_dims([50000, 50000, 1000, 500, 200, 100, 50, 10], 8, 0.3)
    assert md.dims[-1] == 8 and md.dims[0] < 8
    assert md.rows[-1] == 10 and md.rows[0] == max(md.rows)  # small features get all their values
    hashing_bytes = res["models"]["hashing"]["memory_bytes"][-1]
    for name in ("qr", "mixed_dim"):
        h = res["models"][name]
        assert h["logloss"][-1] < h["logloss"][0], name
        assert h["memory_bytes"][-1] <= 1.15 * hashing_bytes, name
    t = qr.qr
    assert len(t.quotient.table) <= qr.q_rows and len(t.remainder.table) <= qr.m


def test_precision_models_hold_every_row_and_half_of_its_bytes():
    """freq_table_all holds every (feature, ID) of the stream (counted here
    with NumPy); freq_table_int8 and freq_table_fp32_half stay within half of
    those rows' fp32 bytes, the first by demoting to int8 (it keeps more rows
    than the second, which evicts), and all three learn."""
    from embedlookup import optim
    from embedlookup.frequency import FrequencyTable

    s = T.SyntheticClickStream(batch_size=256, seed=3, vocab=(5000, 2000, 1000, 500, 200, 100, 50, 10))
    seen = set()
    for b in s.batches(20):
        x = b.sparse.numpy()
        seen.update((f, int(v)) for f in range(x.shape[1]) for v in np.unique(x[:, f]))
    cfg = T.RunConfig(dim=8, rows=2000, window=5, lr_embedding=0.1, lr_dense=3e-3,
                      models=T.PRECISION_MODELS, cold_budget_fraction=0.5, hot_share=0.5)
    cfg.extra["all_rows"] = T.count_admitted_keys(s.batches(20), 1)
    assert cfg.extra["all_rows"] == len(seen)
    models, res = _build_and_run(cfg, s, 20)
    h_row = FrequencyTable.bytes_per_row(8, optim.Adagrad())
    assert models["freq_table_int8"][0].embeddings.table.cold_row_type == "int8"
    m = {n: res["models"][n] for n in T.PRECISION_MODELS}
    assert m["freq_table_all"]["rows"] == len(seen)
    budget = int(0.5 * len(seen) * h_row)
    mixed = m["freq_table_int8"]["memory_usage"]
    assert mixed["accounted_bytes"] <= budget and mixed["cold_rows"] > 0
    assert mixed["rows"] * h_row + mixed["cold_rows"] * FrequencyTable.cold_bytes_per_row(8, optim.Adagrad()) \
        == mixed["accounted_bytes"]
    assert m["freq_table_int8"]["rows"] == mixed["rows"] + mixed["cold_rows"]
    assert m["freq_table_fp32_half"]["rows"] * h_row <= budget
    assert m["freq_table_int8"]["rows"] > m["freq_table_fp32_half"]["rows"]
    for name in T.PRECISION_MODELS:
        h = m[name]
        assert h["logloss"][-1] < h["logloss"][0], name
    assert m["freq_table_int8"]["memory_bytes"][-1] <= budget
