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
