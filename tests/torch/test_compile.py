"""torch.compile on a model holding the modules: same outputs and the same
table updates as eager, with no graph break around the custom ops."""

import numpy as np
import pytest
import torch
from torch import nn

import embedlookup as el
from embedlookup.torch import HashEmbeddingBag, HashEmbeddingBagCollection


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        kw = dict(optimizer=el.optim.Adagrad(lr=0.1), initializer=el.init.uniform(-0.5, 0.5, seed=1))
        self.bag = HashEmbeddingBag(8, mode="sum", **kw)
        self.coll = HashEmbeddingBagCollection(["a", "b"], 8, mode="mean", **kw)
        self.mlp = nn.Linear(24, 1)

    def forward(self, x, off, w, values, lengths):
        pooled = self.coll(values=values, lengths=lengths)
        h = torch.cat([self.bag(x, off, w), pooled["a"], pooled["b"]], dim=1)
        return self.mlp(h).squeeze(1)


def inputs(rng, B=4):
    x = torch.from_numpy(rng.integers(0, 30, 3 * B))
    off = torch.arange(0, 3 * B, 3)
    w = torch.rand(3 * B)
    lengths = torch.from_numpy(rng.integers(1, 4, 2 * B))
    values = torch.from_numpy(rng.integers(0, 30, int(lengths.sum())))
    return x, off, w, values, lengths


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_training_matches_eager(backend):
    torch.manual_seed(0)
    eager, comp = Model(), Model()
    comp.load_state_dict(eager.state_dict())
    compiled = torch.compile(comp, backend=backend)
    rng = np.random.default_rng(0)
    for _ in range(3):
        args = inputs(rng)
        ye, yc = eager(*args), compiled(*args)
        torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-6)
        ye.pow(2).sum().backward()
        yc.pow(2).sum().backward()
    for a, b in [(eager.bag, comp.bag), (eager.coll.bag, comp.coll.bag)]:
        ka, ra = a.table.export()
        kb, rb = b.table.export()
        np.testing.assert_array_equal(ka, kb)
        np.testing.assert_allclose(ra, rb, rtol=1e-5, atol=1e-6)
        assert a.table.step == b.table.step == 3


def test_no_graph_break():
    torch._dynamo.reset()
    m = Model()
    args = inputs(np.random.default_rng(1))
    explanation = torch._dynamo.explain(m)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
