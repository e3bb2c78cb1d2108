"""Our collection inside torchrec.models.dlrm.DLRM in place of TorchRec's."""

import numpy as np
import pytest
import torch

torchrec = pytest.importorskip("torchrec")
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor  # noqa: E402
from torchrec.models.dlrm import DLRM  # noqa: E402

import embedlookup as el  # noqa: E402
from embedlookup.torchrec import EmbeddingBagCollection  # noqa: E402

D = 8
FEATURES = ["user", "item", "cat"]


def _batch(rng, n):
    """A learnable click task: the label is a fixed random function of the raw
    IDs (large, sparse int64) of three features and of one dense feature."""
    ids = {f: rng.integers(0, 30, size=n) for f in FEATURES}
    dense = rng.normal(size=(n, 4)).astype(np.float32)
    score = np.sin(ids["user"] * 1.7) + np.cos(ids["item"] * 0.9) * (ids["cat"] % 3 - 1) + dense[:, 0]
    labels = (score > 0).astype(np.float32)
    raw = np.concatenate([ids[f] * 1_000_003 + 10**12 for f in FEATURES]).astype(np.int64)  # IDs far past any range
    kjt = KeyedJaggedTensor(keys=FEATURES, values=torch.from_numpy(raw),
                            lengths=torch.ones(len(FEATURES) * n, dtype=torch.int64))
    return torch.from_numpy(dense), kjt, torch.from_numpy(labels)


def test_dlrm_trains_with_our_collection():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tables = [EmbeddingBagConfig(name="t_user", embedding_dim=D, num_embeddings=100, feature_names=["user"]),
              EmbeddingBagConfig(name="t_shared", embedding_dim=D, num_embeddings=100, feature_names=["item", "cat"])]
    ebc = EmbeddingBagCollection(tables, optimizer=el.optim.Adagrad(lr=0.1))
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=4, dense_arch_layer_sizes=[16, D],
                 over_arch_layer_sizes=[16, 1])
    assert model.sparse_arch.embedding_bag_collection is ebc
    dense_opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    dense_params = {n: p for n, p in model.named_parameters() if p.numel() and "embedding_bag_collection" not in n}
    assert dense_params  # the MLPs
    loss_fn = torch.nn.BCEWithLogitsLoss()
    eval_batch = _batch(np.random.default_rng(123), 512)

    def eval_loss():
        with torch.no_grad():
            model.eval()
            d, k, y = eval_batch
            out = loss_fn(model(d, k).squeeze(1), y).item()
            model.train()
        return out

    # The first forward inserts rows for the eval IDs (train mode inserts; eval reads unseen IDs as zeros).
    first = None
    for step in range(150):
        d, k, y = _batch(rng, 128)
        logits = model(d, k)
        assert logits.shape == (128, 1)
        loss = loss_fn(logits.squeeze(1), y)
        dense_opt.zero_grad()
        rows_before = ebc.embedding_bags["t_user"].table.export()[1].copy() if step == 1 else None
        loss.backward()
        if step == 1:
            # The dense part got gradients, and the fused backward moved the embedding rows.
            for n, p in dense_params.items():
                assert p.grad is not None and float(p.grad.abs().sum()) > 0, n
            assert not np.array_equal(rows_before, ebc.embedding_bags["t_user"].table.export()[1])
        dense_opt.step()
        if step == 0:
            first = eval_loss()
    last = eval_loss()
    # Chance level for this task is ~0.69; the model must learn well below where it started.
    assert last < first - 0.15, (first, last)
    # item and cat share table t_shared and, as in TorchRec, the same ID reads the same row: 30 rows, not 60.
    assert len(ebc.embedding_bags["t_user"].table) == 30 and len(ebc.embedding_bags["t_shared"].table) == 30
