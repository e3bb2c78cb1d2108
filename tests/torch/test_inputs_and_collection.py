"""Bad input raises clear errors and changes nothing; the feature collection
matches per-feature modules; the fused update matches the NumPy oracle."""

import numpy as np
import pytest
import torch

import embedlookup as el
from embedlookup.torch import HashEmbeddingBag, HashEmbeddingBagCollection
from reference import RefOptimizer


def fresh(mode="sum"):
    m = HashEmbeddingBag(4, mode=mode, optimizer=el.optim.SGD(lr=0.1))
    m(torch.tensor([1, 2]), torch.tensor([0]))
    return m


@pytest.mark.parametrize("args, exc, match", [
    ((torch.tensor([1.0, 2.0]), torch.tensor([0])), TypeError, "input must hold integers"),
    ((torch.tensor([True]), torch.tensor([0])), TypeError, "input must hold integers"),
    (([1, 2], torch.tensor([0])), TypeError, "torch.Tensor"),
    ((torch.ones(2, 2, 2, dtype=torch.int64),), ValueError, "1-D .* or 2-D"),
    ((torch.tensor([1, 2]),), ValueError, "offsets are required"),
    ((torch.tensor([1, 2]), torch.tensor([[0]])), ValueError, "offsets must be 1-D"),
    ((torch.tensor([1, 2]), torch.tensor([0.0])), TypeError, "offsets must hold integers"),
    ((torch.tensor([1, 2]), torch.tensor([1])), ValueError, r"offsets\[0\] must be 0"),
    ((torch.tensor([1, 2]), torch.tensor([0, 3])), ValueError, "exceeds len"),
    ((torch.tensor([1, 2]), torch.tensor([0, 2, 1])), ValueError, "non-decreasing"),
    ((torch.tensor([[1, 2]]), torch.tensor([0])), ValueError, "offsets must be None"),
    ((torch.tensor([1, 2]), torch.tensor([0]), torch.ones(3)), ValueError, "shape"),
    ((torch.tensor([1, 2]), torch.tensor([0]), torch.ones(2, dtype=torch.int64)), TypeError, "floating"),
    ((torch.tensor([1, 2]), torch.tensor([0], device="meta")), RuntimeError, "CPU tensors"),
    ((torch.tensor([1, 2], device="meta"), torch.tensor([0])), RuntimeError, "CPU tensors"),
])
def test_bad_input(args, exc, match):
    m = fresh()
    before = m.table.export()
    with pytest.raises(exc, match=match):
        m(*args)
    after = m.table.export()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_weights_need_sum_mode_and_bad_mode():
    m = fresh("mean")
    with pytest.raises(ValueError, match="only supported with mode='sum'"):
        m(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(2))
    with pytest.raises(ValueError, match="mode must be one of"):
        HashEmbeddingBag(4, mode="median")
    with pytest.raises(TypeError, match="embedlookup.optim"):
        HashEmbeddingBag(4, optimizer=torch.optim.SGD)


def test_cuda_tensor_message(monkeypatch):
    # No CUDA here: check the message on a stand-in whose device reads as cuda.
    from embedlookup.torch import modules

    class FakeCuda:
        device = torch.device("cuda", 0)

    with pytest.raises(RuntimeError, match="built without its CUDA backend"):
        modules._check_device(FakeCuda(), "input")


def test_non_finite_gradient_rejected_and_rows_unchanged():
    m = fresh()
    before = m.table.export()[1]
    y = m(torch.tensor([1, 2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        (y * float("nan")).sum().backward()
    np.testing.assert_array_equal(m.table.export()[1], before)


def jagged(rng, F, B, keys_hi=1000):
    lengths = torch.from_numpy(rng.integers(0, 4, F * B))
    values = torch.from_numpy(rng.integers(-keys_hi, keys_hi, int(lengths.sum())))
    return values, lengths


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_collection_shared_equals_separate_tables(mode):
    F, B = 3, 5
    feats = ["a", "b", "c"]
    # A constant initializer makes the two layouts start equal (random initial
    # rows depend on the stored, namespaced key); training then makes rows
    # differ key by key, identically in both layouts.
    kw = dict(mode=mode, optimizer=el.optim.Adagrad(lr=0.1), initializer=el.init.constant(0.5))
    shared = HashEmbeddingBagCollection(feats, 8, shared_table=True, **kw)
    separate = HashEmbeddingBagCollection(feats, 8, shared_table=False, **kw)
    rng = np.random.default_rng(0)
    for _ in range(3):
        values, lengths = jagged(rng, F, B)
        a, b = shared(values=values, lengths=lengths), separate(values=values, lengths=lengths)
        assert list(a) == feats
        for f in feats:
            assert a[f].shape == (B, 8)
            torch.testing.assert_close(a[f], b[f])
        w = torch.randn(F, B, 8)
        sum((v * w[i]).pow(2).sum() for i, v in enumerate(a.values())).backward()
        sum((v * w[i]).pow(2).sum() for i, v in enumerate(b.values())).backward()
    # Same key in two features: two different rows in the shared table.
    assert len(shared.bag.table) == sum(len(m.table) for m in separate.bags.values())


def test_collection_matches_embedding_bag_per_feature():
    feats = ["u", "i"]
    F, B, D = 2, 4, 6
    m = HashEmbeddingBagCollection(feats, D, mode="sum", initializer=el.init.normal(std=1.0, seed=2))
    rng = np.random.default_rng(1)
    values, lengths = jagged(rng, F, B, keys_hi=20)
    values[:3] = 7
    out = m(values=values, lengths=lengths)
    # Reference: look each feature's namespaced keys up and pool with torch.
    offsets = np.concatenate([[0], np.cumsum(lengths.numpy())])
    bits = 1
    for fi, f in enumerate(feats):
        lo, hi = offsets[fi * B], offsets[(fi + 1) * B]
        keys = (np.int64(fi) << np.int64(64 - bits)) | (values.numpy()[lo:hi] & np.int64((1 << 63) - 1))
        rows = torch.from_numpy(m.bag.table.lookup(keys, insert=False))
        ref = torch.nn.functional.embedding_bag(torch.arange(hi - lo), rows,
                                                torch.from_numpy(offsets[fi * B:(fi + 1) * B] - lo), mode="sum")
        torch.testing.assert_close(out[f], ref)


def test_collection_accepts_keyed_jagged_tensor_like():
    class KJT:  # the methods of torchrec.KeyedJaggedTensor the module uses
        def __init__(self, keys, values, lengths):
            self._k, self._v, self._l = keys, values, lengths

        def keys(self):
            return self._k

        def values(self):
            return self._v

        def offsets(self):
            return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(self._l, 0)])

        def weights_or_none(self):
            return None

    m = HashEmbeddingBagCollection(["x", "y"], 4, mode="mean")
    values, lengths = jagged(np.random.default_rng(3), 2, 3)
    a = m(KJT(["x", "y"], values, lengths))
    b = m(values=values, lengths=lengths)
    for f in ("x", "y"):
        torch.testing.assert_close(a[f], b[f])
    with pytest.raises(ValueError, match="keys"):
        m(KJT(["y", "x"], values, lengths))


def test_collection_bad_input():
    m = HashEmbeddingBagCollection(["x", "y", "z"], 4)
    with pytest.raises(ValueError, match="multiple of 3"):
        m(values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="does not fit in 62 bits"):
        m(values=torch.tensor([1 << 62, 2, 3]), lengths=torch.tensor([1, 1, 1]))
    assert len(m.bag.table) == 0
    with pytest.raises(ValueError, match="distinct"):
        HashEmbeddingBagCollection(["x", "x"], 4)


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rowwise_adagrad", "adam"])
def test_fused_update_matches_oracle_with_many_duplicates(kind):
    # Large enough for many partitions and both threads; heavy duplication.
    rng = np.random.default_rng(11)
    dim, n = 8, 20000
    keys = (rng.zipf(1.3, n) % 3000).astype(np.int64) * 7919
    grads = rng.standard_normal((n, dim)).astype(np.float32)
    opt, hp = {
        "sgd": (el.optim.SGD(lr=0.1), dict(lr=0.1)),
        "adagrad": (el.optim.Adagrad(lr=0.1, eps=1e-10), dict(lr=0.1, eps=1e-10)),
        "rowwise_adagrad": (el.optim.Adagrad(lr=0.1, rowwise=True, eps=1e-10), dict(lr=0.1, eps=1e-10)),
        "adam": (el.optim.Adam(lr=0.01, weight_decay=0.1), dict(lr=0.01, eps=1e-8, betas=(0.9, 0.999),
                                                               weight_decay=0.1)),
    }[kind]
    t = el.EmbeddingTable(dim, initializer=el.init.uniform(-1, 1, seed=4))
    uniq = np.unique(keys)
    ref_rows = dict(zip(uniq.tolist(), t.lookup(uniq)))
    ref = RefOptimizer(kind, **hp)
    for step in range(2):
        t.apply_gradients(keys, grads, opt)
        ref.apply(ref_rows, keys.tolist(), grads)
    got = t.lookup(uniq, insert=False)
    want = np.stack([ref_rows[k] for k in uniq.tolist()])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
