"""Fused sparse optimizers against torch.optim and the NumPy oracle."""

import numpy as np
import pytest

import embedlookup as el
from reference import RefOptimizer

torch = pytest.importorskip("torch")

DIM = 16


def fresh(keys, seed=0, dim=DIM):
    t = el.EmbeddingTable(dim, initializer=el.init.zeros())
    rows = np.random.default_rng(seed).standard_normal((len(keys), dim)).astype(np.float32)
    t.assign(keys, rows)
    return t, rows


def batches(keys, steps, seed=1, dup=True):
    """Each step touches every key (so dense == sparse), with duplicates when `dup`."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        k = np.concatenate([keys, rng.choice(keys, size=len(keys) // 2)]) if dup else keys.copy()
        rng.shuffle(k)
        yield k, rng.standard_normal((len(k), DIM)).astype(np.float32)


def dense_grad(keys, k, g):
    pos = {x: i for i, x in enumerate(keys.tolist())}
    d = torch.zeros(len(keys), DIM, dtype=torch.float32)
    d.index_add_(0, torch.tensor([pos[x] for x in k.tolist()]), torch.from_numpy(g))
    return d


CASES = [
    (el.optim.SGD(lr=0.1), lambda p: torch.optim.SGD([p], lr=0.1)),
    (el.optim.SGD(lr=0.05, weight_decay=0.1), lambda p: torch.optim.SGD([p], lr=0.05, weight_decay=0.1)),
    (el.optim.Adagrad(lr=0.1), lambda p: torch.optim.Adagrad([p], lr=0.1)),
    (el.optim.Adagrad(lr=0.1, lr_decay=0.01, weight_decay=0.02, initial_accumulator_value=0.1, eps=1e-6),
     lambda p: torch.optim.Adagrad([p], lr=0.1, lr_decay=0.01, weight_decay=0.02,
                                   initial_accumulator_value=0.1, eps=1e-6)),
    (el.optim.Adam(lr=0.01), lambda p: torch.optim.Adam([p], lr=0.01)),
    (el.optim.Adam(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
     lambda p: torch.optim.Adam([p], lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)),
]


@pytest.mark.parametrize("ours,theirs", CASES, ids=lambda c: repr(c)[:60] if not callable(c) else "")
def test_matches_torch_dense_optimizer(ours, theirs):
    keys = np.array([4, 9, -2, 10**12, 33, 7], dtype=np.int64)
    t, rows = fresh(keys)
    p = torch.nn.Parameter(torch.from_numpy(rows.copy()))
    opt = theirs(p)
    for k, g in batches(keys, steps=5):
        t.apply_gradients(k, g, ours)
        p.grad = dense_grad(keys, k, g)
        opt.step()
    np.testing.assert_allclose(t.lookup(keys), p.detach().numpy(), rtol=2e-5, atol=2e-6)
    assert t.step == 5


@pytest.mark.parametrize("kind,ours,hp", [
    ("sgd", el.optim.SGD(lr=0.3), dict(lr=0.3)),
    ("adagrad", el.optim.Adagrad(lr=0.2, lr_decay=0.05), dict(lr=0.2, lr_decay=0.05, eps=1e-10)),
    ("rowwise_adagrad", el.optim.Adagrad(lr=0.2, rowwise=True, initial_accumulator_value=0.5, weight_decay=0.1),
     dict(lr=0.2, eps=1e-10, initial_accumulator_value=0.5, weight_decay=0.1)),
    ("adam", el.optim.Adam(lr=0.05, weight_decay=0.01), dict(lr=0.05, betas=(0.9, 0.999), eps=1e-8,
                                                             weight_decay=0.01)),
])
def test_sparse_steps_match_the_oracle(kind, ours, hp):
    # Batches touch random subsets: untouched rows and their state must not move.
    keys = np.arange(50, dtype=np.int64) * 7 - 100
    t, rows = fresh(keys, seed=3)
    ref = RefOptimizer(kind, **hp)
    table = dict(zip(keys.tolist(), rows))
    rng = np.random.default_rng(4)
    for _ in range(6):
        k = rng.choice(keys, size=40)
        g = rng.standard_normal((len(k), DIM)).astype(np.float32)
        t.apply_gradients(k, g, ours)
        ref.apply(table, k, g)
    np.testing.assert_allclose(t.lookup(keys), np.stack([table[x] for x in keys.tolist()]), rtol=2e-5, atol=2e-6)


def test_rowwise_adagrad_hand_computed():
    t = el.EmbeddingTable(2, initializer=el.init.zeros())
    t.assign(np.array([1]), np.array([[1.0, 1.0]], np.float32))
    # Duplicated key: merged gradient (3, 4); state = mean(g^2) = 12.5; step = lr * g / sqrt(12.5).
    # eps: the smallest allowed (eps=0 is refused); sqrt(12.5) + eps == sqrt(12.5) in float32.
    t.apply_gradients(np.array([1, 1]), np.array([[1.0, 4.0], [2.0, 0.0]], np.float32),
                      el.optim.Adagrad(lr=0.5, rowwise=True, eps=float(np.finfo(np.float32).tiny)))
    np.testing.assert_allclose(t.lookup(np.array([1]))[0], [1 - 0.5 * 3 / np.sqrt(12.5), 1 - 0.5 * 4 / np.sqrt(12.5)],
                               rtol=1e-6)


def test_default_optimizer_and_hyperparameters_may_change():
    t = el.EmbeddingTable(2, initializer=el.init.zeros(), optimizer=el.optim.SGD(lr=1.0))
    t.lookup(np.array([5]))
    t.apply_gradients(np.array([5]), np.ones((1, 2), np.float32))
    t.apply_gradients(np.array([5]), np.ones((1, 2), np.float32), el.optim.SGD(lr=0.5))  # a schedule
    np.testing.assert_allclose(t.lookup(np.array([5])), [[-1.5, -1.5]])


def test_switching_optimizer_kind_is_refused_without_change():
    t, rows = fresh(np.array([1, 2]))
    t.apply_gradients(np.array([1]), np.ones((1, DIM), np.float32), el.optim.Adagrad(lr=0.1))
    before = t.export()[1]
    with pytest.raises(ValueError, match="belongs to Adagrad"):
        t.apply_gradients(np.array([1]), np.ones((1, DIM), np.float32), el.optim.Adam())
    np.testing.assert_array_equal(t.export()[1], before)
    assert t.step == 1


def test_parallel_update_of_many_rows_matches_oracle():
    keys = np.arange(20000, dtype=np.int64)
    t, rows = fresh(keys, seed=5)
    rng = np.random.default_rng(6)
    k = rng.choice(keys, size=60000)
    g = rng.standard_normal((len(k), DIM)).astype(np.float32)
    t.apply_gradients(k, g, el.optim.SGD(lr=0.1))
    expect = rows.astype(np.float64).copy()
    np.add.at(expect, k, -0.1 * g.astype(np.float64))
    np.testing.assert_allclose(t.lookup(keys), expect, rtol=1e-5, atol=1e-5)
