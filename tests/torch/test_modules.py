"""HashEmbeddingBag / HashEmbedding against torch.nn.EmbeddingBag / Embedding
holding the same rows: forward values, gradients, and rows after the same
torch optimizer's step."""

import io

import numpy as np
import pytest
import torch
from torch import nn

import embedlookup as el
from embedlookup.torch import HashEmbedding, HashEmbeddingBag

N, D = 50, 16


def twins(mode, optimizer=None, seed=0, include_last_offset=False):
    torch.manual_seed(seed)
    ref = nn.EmbeddingBag(N, D, mode=mode, include_last_offset=include_last_offset)
    ours = HashEmbeddingBag(D, mode=mode, optimizer=optimizer, include_last_offset=include_last_offset)
    ours.table.assign(np.arange(N), ref.weight.detach().numpy())
    return ref, ours


def rows_of(m):
    return torch.from_numpy(m.table.lookup(np.arange(N), insert=False))


def batch(rng, n_bags=12, max_len=6, empty=True):
    lens = rng.integers(0 if empty else 1, max_len, n_bags)
    lens[0] = 0 if empty else lens[0]
    x = torch.from_numpy(rng.integers(0, N, lens.sum()))
    x[: min(3, len(x))] = 7  # duplicates within and across bags
    off = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)[:-1]]))
    return x, off


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("ilo", [False, True])
def test_forward_matches_embedding_bag(mode, ilo):
    ref, ours = twins(mode, include_last_offset=ilo)
    rng = np.random.default_rng(1)
    x, off = batch(rng)
    if ilo:
        off = torch.cat([off, torch.tensor([len(x)])])
    torch.testing.assert_close(ours(x, off), ref(x, off), rtol=1e-6, atol=1e-6)


def test_forward_weights_and_2d_input():
    ref, ours = twins("sum")
    rng = np.random.default_rng(2)
    x, off = batch(rng)
    w = torch.rand(len(x))
    torch.testing.assert_close(ours(x, off, w), ref(x, off, w), rtol=1e-6, atol=1e-6)
    x2 = torch.from_numpy(rng.integers(0, N, (5, 4)))
    torch.testing.assert_close(ours(x2), ref(x2), rtol=1e-6, atol=1e-6)
    x32 = x2.to(torch.int32)
    torch.testing.assert_close(ours(x32), ref(x2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_gradient_matches_embedding_bag(mode):
    # SGD with lr=1: the row change is exactly minus the gradient.
    ref, ours = twins(mode, el.optim.SGD(lr=1.0))
    rng = np.random.default_rng(3)
    x, off = batch(rng)
    w = torch.rand(len(x)) if mode == "sum" else None
    g = torch.randn(len(off), D)
    before = rows_of(ours)
    (ref(x, off, w) * g).sum().backward()
    (ours(x, off, w) * g).sum().backward()
    torch.testing.assert_close(before - rows_of(ours), ref.weight.grad, rtol=1e-5, atol=1e-6)


def test_per_sample_weights_gradient():
    ref, ours = twins("sum", el.optim.SGD(lr=0.0))
    rng = np.random.default_rng(4)
    x, off = batch(rng)
    w1 = torch.rand(len(x), requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    g = torch.randn(len(off), D)
    (ref(x, off, w1) * g).sum().backward()
    (ours(x, off, w2) * g).sum().backward()
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-5, atol=1e-6)


OPTIMS = {
    "sgd": (lambda: el.optim.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "adagrad": (lambda: el.optim.Adagrad(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
                lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    "adam": (lambda: el.optim.Adam(lr=0.05), lambda p: torch.optim.Adam(p, lr=0.05)),
    "adam_wd": (lambda: el.optim.Adam(lr=0.05, weight_decay=0.1),
                lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1)),
}


@pytest.mark.parametrize("opt", sorted(OPTIMS))
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_updates_match_torch_optimizer(opt, mode):
    ours_opt, torch_opt = OPTIMS[opt]
    ref, ours = twins(mode, ours_opt())
    topt = torch_opt(ref.parameters())
    rng = np.random.default_rng(5)
    for _ in range(4):
        # Every row in every batch: dense torch optimizers then update exactly
        # the rows a sparse step touches (Adam's moments, weight decay).
        x = torch.from_numpy(np.concatenate([rng.permutation(N), rng.integers(0, N, 30)]))
        off = torch.from_numpy(np.sort(rng.choice(np.arange(1, len(x)), 9, replace=False)))
        off = torch.cat([torch.tensor([0]), off])
        w = torch.rand(len(x)) if mode == "sum" else None
        g = torch.randn(len(off), D)
        topt.zero_grad()
        (ref(x, off, w) * g).sum().backward()
        topt.step()
        (ours(x, off, w) * g).sum().backward()
    torch.testing.assert_close(rows_of(ours), ref.weight.detach(), rtol=1e-5, atol=1e-5)


def test_sparse_batches_match_sparse_torch_adagrad():
    # Batches that touch a few rows: torch's sparse Adagrad leaves the others alone, as we do.
    ref, ours = twins("mean", el.optim.Adagrad(lr=0.2))
    ref.sparse = True
    topt = torch.optim.Adagrad(ref.parameters(), lr=0.2)
    rng = np.random.default_rng(6)
    for _ in range(5):
        x, off = batch(rng)
        topt.zero_grad()
        ref(x, off).pow(2).sum().backward()
        topt.step()
        ours(x, off).pow(2).sum().backward()
    torch.testing.assert_close(rows_of(ours), ref.weight.detach(), rtol=1e-5, atol=1e-6)


def test_embedding_matches_nn_embedding():
    torch.manual_seed(0)
    ref = nn.Embedding(N, D)
    ours = HashEmbedding(D, optimizer=el.optim.SGD(lr=1.0))
    ours.table.assign(np.arange(N), ref.weight.detach().numpy())
    x = torch.tensor([[3, 4, 3], [0, 49, 3]])
    torch.testing.assert_close(ours(x), ref(x))
    g = torch.randn(2, 3, D)
    before = rows_of(ours)
    (ref(x) * g).sum().backward()
    (ours(x) * g).sum().backward()
    torch.testing.assert_close(before - rows_of(ours), ref.weight.grad, rtol=1e-5, atol=1e-6)


def test_new_keys_are_inserted_in_training_not_in_eval():
    m = HashEmbeddingBag(4, mode="sum", initializer=el.init.constant(1.0))
    x, off = torch.tensor([1 << 40, -5]), torch.tensor([0, 1])
    m.eval()
    torch.testing.assert_close(m(x, off), torch.zeros(2, 4))
    assert len(m.table) == 0
    m.train()
    torch.testing.assert_close(m(x, off), torch.ones(2, 4))
    assert len(m.table) == 2


def test_frozen_without_optimizer():
    m = HashEmbeddingBag(4, mode="sum")
    y = m(torch.tensor([1, 2]), torch.tensor([0]))
    assert not y.requires_grad


@pytest.mark.parametrize("opt", ["adagrad", "adam", "sgd"])
def test_state_dict_round_trip(opt):
    make = OPTIMS[opt][0]
    a = HashEmbeddingBag(D, mode="sum", optimizer=make(), initializer=el.init.normal(std=0.1, seed=3))
    rng = np.random.default_rng(7)
    for _ in range(3):
        x, off = batch(rng)
        a(x, off).pow(2).sum().backward()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = HashEmbeddingBag(D, mode="sum", optimizer=make(), initializer=el.init.normal(std=0.1, seed=3))
    b(torch.tensor([999]), torch.tensor([0]))  # a row the checkpoint does not hold: must disappear
    b.load_state_dict(torch.load(buf, weights_only=False))
    ka, ra = a.table.export()
    kb, rb = b.table.export()
    np.testing.assert_array_equal(ka, kb)
    np.testing.assert_array_equal(ra, rb)
    assert b.table.step == a.table.step
    # Optimizer state and step survived: the next step is identical.
    x, off = batch(rng)
    a(x, off).pow(2).sum().backward()
    b(x, off).pow(2).sum().backward()
    np.testing.assert_array_equal(a.table.export()[1], b.table.export()[1])


def test_state_dict_rejects_other_dim_and_optimizer():
    a = HashEmbeddingBag(D, mode="sum", optimizer=el.optim.Adagrad())
    a(torch.tensor([1]), torch.tensor([0])).sum().backward()
    sd = a.state_dict()
    with pytest.raises(ValueError, match="dim"):
        HashEmbeddingBag(D + 1, optimizer=el.optim.Adagrad()).load_state_dict(sd)
    c = HashEmbeddingBag(D, optimizer=el.optim.Adam())
    c(torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="optimizer"):
        c.load_state_dict(sd)
    assert c.table.export()[0].tolist() == [5]  # unchanged


def test_backward_does_not_trust_row_ids_after_an_erase():
    # The forward's row ids are reused by backward only while no row was freed:
    # here key 2's row is freed and taken by key 9 between forward and backward.
    m = HashEmbeddingBag(4, mode="sum", optimizer=el.optim.SGD(lr=1.0), initializer=el.init.constant(1.0))
    y = m(torch.tensor([1, 2]), torch.tensor([0, 1]))
    m.table.erase(np.array([2]))
    m.table.lookup(np.array([9]))
    before = m.table.export()
    with pytest.raises(KeyError, match="key 2"):
        y.sum().backward()
    after = m.table.export()
    np.testing.assert_array_equal(before[1], after[1])
    # Without an erase the cached ids are used and the right rows move.
    y = m(torch.tensor([1, 9]), torch.tensor([0, 1]))
    m.table.lookup(np.array([100]))  # inserts do not invalidate
    y.sum().backward()
    np.testing.assert_array_equal(m.table.lookup(np.array([1, 9, 100]), insert=False),
                                  [[0.0] * 4, [0.0] * 4, [1.0] * 4])
