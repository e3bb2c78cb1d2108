"""The modules' eager path (an autograd Function over the ops' bodies) against
the registered custom ops it stands in for: same outputs, same gradients,
same table updates; and tracers still see the op."""

import numpy as np
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import embedlookup as el
from embedlookup.torch import HashEmbeddingBag, _ops


def twins(mode):
    kw = dict(mode=mode, optimizer=el.optim.Adagrad(lr=0.1), initializer=el.init.uniform(-0.5, 0.5, seed=3))
    return HashEmbeddingBag(16, **kw), HashEmbeddingBag(16, **kw)


def through_op(m, x, off, w=None):
    """The module's forward with the custom op called directly (what
    compiled code runs)."""
    return torch.ops.embedlookup.pooled_lookup(m._grad_anchor, x, off, w, m._handle, m._mode_id,
                                               m.include_last_offset, m._insert())[0]


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_eager_path_matches_the_custom_op(mode):
    eager, op = twins(mode)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = torch.from_numpy(rng.integers(0, 50, 40))
        off = torch.tensor([0, 7, 7, 20, 33])
        g = torch.from_numpy(rng.standard_normal((5, 16)).astype(np.float32))
        ye, yo = eager(x, off), through_op(op, x, off)
        assert type(ye.grad_fn).__name__ == "_EagerPooledBackward"
        assert type(yo.grad_fn).__name__ != "_EagerPooledBackward"
        torch.testing.assert_close(ye, yo, rtol=0, atol=0)
        ye.backward(g)
        yo.backward(g)
    ke, re = eager.table.export()
    ko, ro = op.table.export()
    np.testing.assert_array_equal(ke, ko)
    np.testing.assert_array_equal(re, ro)
    assert eager.table.step == op.table.step == 3


def test_eager_path_gives_the_weights_gradient():
    eager, op = twins("sum")
    x = torch.tensor([1, 2, 3, 2, 9])
    off = torch.tensor([0, 2])
    g = torch.arange(32, dtype=torch.float32).reshape(2, 16) / 10
    before = eager.table.lookup(x.numpy())  # rows as the forward reads them
    we = torch.tensor([0.5, -1.0, 2.0, 0.25, 1.5], requires_grad=True)
    wo = we.detach().clone().requires_grad_(True)
    eager(x, off, we).backward(g)
    through_op(op, x, off, wo).backward(g)
    # d out[b] / d w[p] = row(p), so the gradient is row(p) . g[bag(p)].
    bag = np.array([0, 0, 1, 1, 1])
    expected = (before * g.numpy()[bag]).sum(1)
    np.testing.assert_allclose(we.grad.numpy(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(we.grad, wo.grad, rtol=0, atol=0)


def test_frozen_and_no_grad_calls_update_nothing():
    m = HashEmbeddingBag(8, mode="sum", optimizer=None, initializer=el.init.uniform(-1, 1, seed=1))
    x, off = torch.tensor([4, 5, 6]), torch.tensor([0])
    y = m(x, off)
    assert y.grad_fn is None  # nothing to train: no graph
    trained = HashEmbeddingBag(8, mode="sum", optimizer=el.optim.SGD(lr=1.0), initializer=el.init.uniform(-1, 1, seed=1))
    with torch.no_grad():
        z = trained(x, off)
    assert z.grad_fn is None
    np.testing.assert_array_equal(z.numpy(), trained.table.lookup(x.numpy()).sum(0, keepdims=True))


def test_tracers_record_the_op():
    m = HashEmbeddingBag(8, mode="sum", optimizer=el.optim.SGD(lr=0.1))
    x, off = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])
    gm = make_fx(lambda a, b: m(a, b))(x, off)
    assert "embedlookup.pooled_lookup" in gm.code
    # The traced graph runs the op on real inputs: rows as the module reads them.
    np.testing.assert_array_equal(gm(x, off).detach().numpy(), m(x, off).detach().numpy())
    np.testing.assert_allclose(gm(x, off).detach().numpy()[0], m.table.lookup(x[:2].numpy()).sum(0), rtol=1e-6)


def test_the_eager_test_follows_the_modes():
    x = torch.ones(2)
    assert not _ops._traced(x, None)
    assert torch.func.vmap(lambda t: torch.tensor(_ops._traced(t)))(torch.ones(2, 2)).all()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        assert _ops._traced(mode.from_tensor(x))


def test_a_shared_collection_gives_views_with_one_backward_node():
    """Each feature's output is a view of one (F, B, dim) result. Indexed
    views (out[i]) would each get a full (F, B, dim) zero gradient in the
    backward (F^2 B dim floats: 50 ms of a 55 ms backward at F = 26, B =
    2048); unbind's backward stacks the F gradients once."""
    from embedlookup.torch import HashEmbeddingBagCollection

    m = HashEmbeddingBagCollection(["a", "b", "c"], 4, mode="sum", optimizer=el.optim.SGD(lr=1.0),
                                   initializer=el.init.uniform(-1, 1, seed=2))
    # a: [5], [6]; b: [7, 5], []; c: [8], [9]
    values, lengths = torch.tensor([5, 6, 7, 5, 8, 9]), torch.tensor([1, 1, 2, 0, 1, 1])
    out = m(values=values, lengths=lengths)
    assert {type(t.grad_fn).__name__ for t in out.values()} == {"UnbindBackward0"}
    before = {f: t.detach().clone() for f, t in out.items()}
    out["b"].sum(1)[0].backward()  # gradient 1 on every column of b's first bag, nothing else
    after = m(values=values, lengths=lengths)
    # SGD with lr 1: b's two rows in bag 0 drop by 1 per column, so the bag by 2; nothing else moves.
    torch.testing.assert_close(after["b"][0], before["b"][0] - 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(after["b"][1], before["b"][1], rtol=0, atol=0)
    for f in ("a", "c"):
        torch.testing.assert_close(after[f], before[f], rtol=0, atol=0)
