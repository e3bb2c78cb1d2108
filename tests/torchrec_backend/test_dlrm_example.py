"""examples/dlrm_criteo.py in a tiny configuration: it runs, and what its
metrics.json claims (AUC overall and per window, examples/s) is recomputed
here from the predictions it saved, with a rank AUC written independently of
the package's. The Criteo-layout generator and reader round-trip."""

import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("torchrec")
from embedlookup.datasets import criteo  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "dlrm_criteo.py")


def rank_auc(y, s):
    """Mann-Whitney U / (pos * neg), ties at average rank (via np.unique)."""
    y = np.asarray(y).astype(bool)
    uniq, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    avg_rank = first + (counts + 1) / 2.0  # 1-based average rank of each distinct score
    r = avg_rank[inv]
    pos, neg = y.sum(), (~y).sum()
    return (r[y].sum() - pos * (pos + 1) / 2) / (pos * neg)


def test_rank_auc_by_hand():
    assert rank_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert rank_auc([0, 1], [0.5, 0.5]) == 0.5


def test_generator_and_reader_agree(tmp_path):
    p = str(tmp_path / "c.tsv")
    facts = criteo.write_synthetic(p, 300, seed=3, missing=0.2)
    lines = open(p).read().splitlines()
    assert len(lines) == 300 and all(len(line.split("\t")) == 40 for line in lines)
    batches = list(criteo.read_batches(p, batch_size=128))
    assert [b.label.shape[0] for b in batches] == [128, 128, 44]
    fields = [line.split("\t") for line in lines]
    label = np.array([float(f[0]) for f in fields])
    assert np.array_equal(np.concatenate([b.label.numpy() for b in batches]), label)
    assert abs(label.mean() - facts["click_rate"]) < 1e-12
    sparse = np.concatenate([b.sparse.numpy() for b in batches])
    expect = np.array([[int(x, 16) if x else -1 for x in f[14:]] for f in fields])
    assert np.array_equal(sparse, expect) and (sparse == -1).any()
    dense = np.concatenate([b.dense.numpy() for b in batches])
    np.testing.assert_allclose(dense, np.array([[np.log1p(int(x)) if x else 0.0 for x in f[1:14]] for f in fields]),
                               rtol=1e-6)
    assert 0.5 < facts["oracle_auc"] <= 1.0
    with pytest.raises(ValueError, match="n_rows"):
        criteo.write_synthetic(p, 0)


def test_example_runs_and_its_claims_hold(tmp_path):
    spec = importlib.util.spec_from_file_location("dlrm_criteo", EXAMPLE)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    out = str(tmp_path / "run")
    rc = ex.main(["--generate", "5000", "--batch-size", "256", "--rows", "512", "--dim", "8", "--window", "5",
                  "--out", out])
    assert rc == 0
    m = json.load(open(os.path.join(out, "metrics.json")))
    pred = np.load(os.path.join(out, "predictions.npz"))
    y = pred["labels"]
    assert y.shape == (5000,) and m["examples"] == 5000 and m["batches"] == 20
    half = y.shape[0] // 2
    for name in ("embedlookup", "torchrec_zch"):
        r = m["models"][name]
        s = pred[name]
        assert s.shape == y.shape and np.isfinite(s).all()
        assert r["auc"] == pytest.approx(rank_auc(y, s), abs=1e-9)
        assert r["auc_second_half"] == pytest.approx(rank_auc(y[half:], s[half:]), abs=1e-9)
        assert r["logloss"] == pytest.approx(np.mean(np.logaddexp(0, s) - y * s), rel=1e-9)
        assert r["examples_per_s"] == pytest.approx(5000 / r["train_s"], rel=1e-9)
        for w in r["windows"]:
            lo, hi = w["batches"]
            assert w["auc"] == pytest.approx(rank_auc(y[lo * 256:hi * 256], s[lo * 256:hi * 256]), abs=1e-9)
        assert [w["batches"][1] for w in r["windows"]] == [5, 10, 15, 20]
        assert r["auc_second_half"] > 0.58  # it learns (the file's oracle AUC is ~0.92)
        assert r["embedding_bytes"] > 0
    assert os.path.getsize(os.path.join(out, "dlrm_criteo.png")) > 10_000
    assert ex.main(["--rows", "100", "--batch-size", "256", "--out", out]) == 2
    assert ex.main(["--data", str(tmp_path / "missing.tsv"), "--out", out]) == 1
