"""``embedlookup-train --ps``: the continual-training comparison through the
parameter server (trainer threads on the local backend, trainer actors on
Ray)."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from embedlookup import train as T  # noqa: E402
from embedlookup import train_ps  # noqa: E402

SMALL = ["--batch-size", "256", "--window", "4", "--threads", "1"]


def _run(tmp_path, *argv):
    lines = []
    res = T.train([*SMALL, *argv, "--out", str(tmp_path)], log=lines.append)
    return res, lines


@pytest.mark.parametrize("shards", [1, 2])
def test_one_sync_trainer_is_the_in_process_model_step_for_step(tmp_path, shards):
    """One trainer in sync mode through the PS trains exactly what the
    single-process hash_table_unbounded model trains: the same scores, so the
    same per-window logloss and AUC (one shard: identical floats; two: the
    shards' partial sums add in another order)."""
    ps_res, _ = _run(tmp_path / "ps", "--batches", "8", "--ps", "local", "--trainers", "1", "--shards", str(shards),
                     "--mode", "sync")
    ref, _ = _run(tmp_path / "ref", "--batches", "8", "--models", "hash_table_unbounded")
    a, b = ps_res["models"]["ps:sync"], ref["models"]["hash_table_unbounded"]
    assert len(a["auc"]) == len(b["auc"]) == 2
    if shards == 1:
        assert a["logloss"] == b["logloss"] and a["auc"] == b["auc"]
    else:
        np.testing.assert_allclose(a["logloss"], b["logloss"], rtol=1e-4)
        np.testing.assert_allclose(a["auc"], b["auc"], atol=2e-3)


def test_quick_ps_run_writes_metrics_and_the_plot(tmp_path):
    res, lines = _run(tmp_path, "--quick", "--batches", "12", "--ps", "local")
    assert set(res["models"]) == {"ps:sync", "ps:bounded:2", "ps:async"}
    assert res["ps"] == {"backend": "local", "trainers": 2, "shards": 2, "modes": ["sync", "bounded:2", "async"]}
    assert res["samples"] == 12 * 256
    for name, h in res["models"].items():
        assert len(h["auc"]) == 3 and all(0.0 < x < 1.0 for x in h["auc"])
        assert np.isfinite(h["mean_logloss"])
        st = h["server_stats"]
        # every batch was pushed once by its trainer, to each of the 2 shards, nothing twice
        assert st["pushes_applied"] == 2 * 12 and st["duplicates_dropped"] == 0 and st["rejected"] == 0
        if name != "ps:sync":
            assert h["auc_gap_vs_sync"] == pytest.approx(res["models"]["ps:sync"]["mean_auc"] - h["mean_auc"])
    assert os.path.exists(tmp_path / "ps_training.png") and os.path.getsize(tmp_path / "ps_training.png") > 1000
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["ps"]["trainers"] == 2
    text = T.summary(res)
    assert "through the parameter server (local, 2 trainers, 2 shards)" in text and "AUC gap vs sync" in text
    assert sum("ps:sync" in line for line in lines) == 3  # one line per window


@pytest.mark.parametrize("argv,msg", [
    (["--trainers", "0"], "--trainers must be >= 1"),
    (["--shards", "0"], "--shards must be >= 1"),
    (["--mode", "bounded:0"], "bounded:S with an integer S >= 1"),
    (["--mode", "eventual"], "'eventual' is not sync, async or bounded:S"),
    (["--mode", "sync,sync"], "given twice"),
    (["--mode", ","], "at least one"),
    (["--models", "hashing"], "--models: with --ps the models are the --mode runs"),
])
def test_bad_ps_arguments_exit_2_before_training(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        T.train(["--ps", "local", *argv, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and msg in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_parse_modes():
    assert train_ps.parse_modes(" sync , bounded:3,async") == ["sync", "bounded:3", "async"]


def test_ray_trainers(tmp_path, ray_cluster):
    """Two trainer actors (processes) against two shard actors."""
    res, _ = _run(tmp_path, "--batches", "4", "--ps", "ray", "--trainers", "2", "--shards", "2",
                  "--mode", "bounded:1")
    for h in res["models"].values():
        assert len(h["auc"]) == 1 and 0.0 < h["auc"][0] < 1.0
        assert h["server_stats"]["pushes_applied"] == 2 * 4 and h["server_stats"]["backend"] == "ray"
