"""torch.compile of models holding our collections: TorchRec's DLRM over our
EmbeddingBagCollection, and a model reading our EmbeddingCollection. The
compiled model trains in step with an eager copy (outputs, dense weights
and embedding rows). By default dynamo breaks the graph where the KJT is cut
per table (its sizes depend on the lengths' data); with
``capture_dynamic_output_shape_ops`` the whole forward is one graph."""

import numpy as np
import pytest
import torch
from torch import nn

torchrec = pytest.importorskip("torchrec")
from torchrec import EmbeddingBagConfig, EmbeddingConfig, KeyedJaggedTensor  # noqa: E402
from torchrec.models.dlrm import DLRM  # noqa: E402

import embedlookup as el  # noqa: E402
from embedlookup.torchrec import EmbeddingBagCollection, EmbeddingCollection  # noqa: E402

D = 4
KEYS = ["a", "b", "c"]


class Model(nn.Module):
    """DLRM over our EBC (features a, b in one table, c in another), plus a
    mean over our EC's rows of feature c (unpooled path)."""

    def __init__(self):
        super().__init__()
        opt = el.optim.Adagrad(lr=0.1)
        ebc = EmbeddingBagCollection(
            [EmbeddingBagConfig(name="t1", embedding_dim=D, num_embeddings=50, feature_names=["a", "b"]),
             EmbeddingBagConfig(name="t2", embedding_dim=D, num_embeddings=50, feature_names=["c"])], optimizer=opt)
        self.dlrm = DLRM(embedding_bag_collection=ebc, dense_in_features=3, dense_arch_layer_sizes=[8, D],
                         over_arch_layer_sizes=[8, 1])
        self.ec = EmbeddingCollection([EmbeddingConfig(name="u", embedding_dim=D, num_embeddings=50,
                                                       feature_names=["c"])], optimizer=el.optim.SGD(lr=0.2))

    def forward(self, dense, kjt):
        rows = self.ec(kjt)["c"].values()
        return self.dlrm(dense, kjt).squeeze(1) + rows.sum() / max(rows.shape[0], 1)


def batch(rng, B=4):
    lengths = torch.from_numpy(rng.integers(0, 3, len(KEYS) * B))
    values = torch.from_numpy(rng.integers(0, 40, int(lengths.sum())) * 1_000_003 + 10**13)
    return torch.from_numpy(rng.normal(size=(B, 3)).astype(np.float32)), \
        KeyedJaggedTensor(keys=KEYS, values=values, lengths=lengths)


def _tables(m):
    return [m.dlrm.sparse_arch.embedding_bag_collection.embedding_bags["t1"],
            m.dlrm.sparse_arch.embedding_bag_collection.embedding_bags["t2"], m.ec.embeddings["u"]]


@pytest.mark.parametrize("one_graph", [False, True], ids=["default", "capture_dynamic_output_shape_ops"])
def test_compiled_training_matches_eager(one_graph):
    torch._dynamo.reset()
    eager, comp = Model(), Model()
    comp.load_state_dict(eager.state_dict())  # same dense weights; empty tables, seeded alike
    opts = [torch.optim.SGD([p for p in m.parameters() if p.numel()], lr=0.05) for m in (eager, comp)]
    compiled = torch.compile(comp, backend="aot_eager")
    rng = np.random.default_rng(0)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=one_graph):
        for _ in range(3):
            dense, kjt = batch(rng)
            ye, yc = eager(dense, kjt), compiled(dense, kjt)
            torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-6)
            for y, opt in zip((ye, yc), opts):
                opt.zero_grad()
                y.pow(2).sum().backward()
                opt.step()
        if one_graph:  # (on a third model: explain runs a forward, which inserts rows)
            torch._dynamo.reset()
            ex = torch._dynamo.explain(Model())(*batch(rng))
            assert ex.graph_break_count == 0 and ex.graph_count == 1, ex.break_reasons
    for a, b in zip(_tables(eager), _tables(comp)):
        ka, ra = a.table.export()
        kb, rb = b.table.export()
        np.testing.assert_array_equal(ka, kb)
        np.testing.assert_allclose(ra, rb, rtol=1e-5, atol=1e-6)
        assert a.table.step == b.table.step == 3
    for (n, pa), pb in zip(eager.named_parameters(), comp.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=n)
