"""QREmbeddingBag and MixedDimEmbeddingBag against pure-torch references.

Each reference holds the same starting rows as dense ``nn.Parameter``s, pools
bags with an explicit per-bag loop, and applies plain SGD by hand; forward
outputs, the rows after a fused backward step and the projection's gradient
must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import embedlookup as el
from embedlookup.torch import MixedDimEmbeddingBag, QREmbeddingBag, mixed_dims
from embedlookup.torch.compositional import qr_hash

LR = 0.1


def ref_pool(vecs: torch.Tensor, offsets, n: int, mode: str, weights=None, include_last_offset=False):
    offsets = [int(o) for o in offsets]
    starts = offsets[:-1] if include_last_offset else offsets
    ends = offsets[1:] if include_last_offset else offsets[1:] + [n]
    out = []
    for s, e in zip(starts, ends):
        if e == s:
            out.append(torch.zeros(vecs.shape[1], dtype=vecs.dtype))
            continue
        v = vecs[s:e]
        if weights is not None:
            v = v * weights[s:e, None]
        out.append(v.sum(0) if mode == "sum" else v.mean(0) if mode == "mean" else v.max(0).values)
    return torch.stack(out)


def bags(seed=0, n_bags=12, vocab=40):
    g = np.random.default_rng(seed)
    lengths = g.integers(0, 5, n_bags)
    lengths[3] = 0
    ids = torch.from_numpy(g.integers(0, vocab, int(lengths.sum())) * 1_000_003 - 7)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
    return ids, offsets


def forward_backward(mod, ref_forward, ids, offsets, dim, seed):
    """Runs the module and the reference on the same bags, checks the outputs
    agree, and back-propagates the same random linear loss through both."""
    target = torch.randn(len(offsets), dim, generator=torch.Generator().manual_seed(seed))
    out, want = mod(ids, offsets), ref_forward()
    assert out.shape == (len(offsets), dim)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    (out * target).sum().backward()
    (want * target).sum().backward()


def table_rows(emb_module, keys: np.ndarray) -> torch.Tensor:
    rows, found = emb_module.table.find(keys)
    assert found.all()
    return torch.from_numpy(rows.copy())


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_qr_forward_and_step_match_torch_reference(operation, mode):
    dim, N, m = 6, 1000, 16
    mod = QREmbeddingBag(dim, N, m, mode, operation=operation, optimizer=el.optim.SGD(lr=LR),
                         initializer=el.init.uniform(-1, 1, seed=3))
    ids, offsets = bags(1)
    h = qr_hash(ids.numpy(), N)
    q, r = h // m, h % m
    assert h.min() >= 0 and h.max() < N
    uq, qi = np.unique(q, return_inverse=True)
    ur, ri = np.unique(r, return_inverse=True)
    mod.quotient.table.lookup(uq)  # create the rows the forward will read, then copy them
    mod.remainder.table.lookup(ur)
    Q = torch.nn.Parameter(table_rows(mod.quotient, uq))
    R = torch.nn.Parameter(table_rows(mod.remainder, ur))

    def ref_forward():
        a, b = Q[torch.from_numpy(qi)], R[torch.from_numpy(ri)]
        v = a * b if operation == "mult" else a + b if operation == "add" else torch.cat([a, b], 1)
        return ref_pool(v, offsets, len(ids), mode)

    forward_backward(mod, ref_forward, ids, offsets, dim, seed=0)
    with torch.no_grad():
        Q -= LR * Q.grad
        R -= LR * R.grad
    torch.testing.assert_close(table_rows(mod.quotient, uq), Q.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(table_rows(mod.remainder, ur), R.detach(), rtol=1e-5, atol=1e-6)
    assert (Q.grad.abs().sum() > 0) and (R.grad.abs().sum() > 0)  # the step moved something
    torch.testing.assert_close(mod(ids, offsets), ref_forward(), rtol=1e-5, atol=1e-6)


def test_qr_gives_distinct_vectors_where_hashing_collides():
    """All 64 hashed IDs of [0, 64) with m = 8: 8 quotient x 8 remainder rows give
    64 different (q, r) pairs, while a hashing trick of the same 16 rows would
    put 4 IDs in each row."""
    mod = QREmbeddingBag(4, 64, 8, "sum", hash_ids=False, initializer=el.init.uniform(-1, 1, seed=1),
                         remainder_initializer=el.init.uniform(-1, 1, seed=2))
    ids = torch.arange(64)
    out = mod(ids.reshape(64, 1))
    assert len(mod.quotient.table) == 8 and len(mod.remainder.table) == 8
    assert len(torch.unique(out, dim=0)) == 64


def test_qr_weights_2d_input_last_offset_and_eval():
    mod = QREmbeddingBag(4, 500, 10, "sum", optimizer=el.optim.SGD(lr=LR), initializer=el.init.uniform(-1, 1))
    ids, offsets = bags(2)
    w = torch.rand(len(ids))
    per_id = mod.embed(ids).detach()
    torch.testing.assert_close(mod(ids, offsets, w), ref_pool(per_id, offsets, len(ids), "sum", w))
    off2 = torch.cat([offsets, torch.tensor([len(ids)])])
    mod2 = QREmbeddingBag(4, 500, 10, "sum", include_last_offset=True, initializer=el.init.uniform(-1, 1))
    torch.testing.assert_close(mod2(ids, off2), ref_pool(mod2.embed(ids).detach(), off2, len(ids), "sum",
                                                        include_last_offset=True))
    x2 = ids[:12].reshape(4, 3)
    torch.testing.assert_close(mod(x2), ref_pool(per_id[:12], torch.arange(0, 12, 3), 12, "sum"))
    mod.eval()
    sizes = (len(mod.quotient.table), len(mod.remainder.table))
    unseen = torch.arange(5000) * 7919 + 10**12
    assert len(np.unique(qr_hash(unseen.numpy(), 500) // 10)) == 50  # touches every quotient row
    mod(unseen, torch.tensor([0]))
    assert (len(mod.quotient.table), len(mod.remainder.table)) == sizes  # eval never inserts


def test_qr_capacities_bound_the_rows():
    mod = QREmbeddingBag(4, 100, 7, "sum")
    mod(torch.arange(100_000).reshape(-1, 10))
    assert len(mod.quotient.table) <= 15 and len(mod.remainder.table) <= 7
    assert mod.quotient.table.capacity == 15 and mod.remainder.table.capacity == 7
    assert mod.memory_usage()["rows"] == len(mod.quotient.table) + len(mod.remainder.table)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_mixed_dim_forward_and_step_match_torch_reference(mode):
    dim, tdim = 8, 3
    mod = MixedDimEmbeddingBag(dim, tdim, mode, optimizer=el.optim.SGD(lr=LR),
                               initializer=el.init.uniform(-1, 1, seed=4))
    ids, offsets = bags(3)
    keys, inv = np.unique(ids.numpy(), return_inverse=True)
    mod.table.lookup(keys)
    T = torch.nn.Parameter(table_rows(mod.bag, keys))
    P = torch.nn.Parameter(mod.projection.weight.detach().clone())

    def ref_forward():
        rows = T[torch.from_numpy(inv)]
        if mode == "max":
            return ref_pool(rows @ P.T, offsets, len(ids), mode)
        return ref_pool(rows, offsets, len(ids), mode) @ P.T

    forward_backward(mod, ref_forward, ids, offsets, dim, seed=1)
    torch.testing.assert_close(mod.projection.weight.grad, P.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        T -= LR * T.grad
    torch.testing.assert_close(table_rows(mod.bag, keys), T.detach(), rtol=1e-5, atol=1e-6)
    assert T.grad.abs().sum() > 0


def test_mixed_dim_without_projection_is_a_hash_embedding_bag():
    mod = MixedDimEmbeddingBag(5, 5, "max", initializer=el.init.uniform(-1, 1, seed=2))
    ids, offsets = bags(4)
    assert mod.projection is None
    out = mod(ids, offsets)
    rows = torch.from_numpy(mod.table.find(ids.numpy())[0])
    torch.testing.assert_close(out, ref_pool(rows, offsets, len(ids), "max"))


def test_mixed_dims_power_law():
    assert mixed_dims([100, 10_000, 1_000_000], 16, alpha=0.0) == [16, 16, 16]
    # 16 * (100 / 10^4) ** 0.25 = 16 * 0.316 = 5.06 -> 5; 16 * 0.1 = 1.6 -> 2
    assert mixed_dims([100, 10_000, 1_000_000], 16, alpha=0.25) == [16, 5, 2]
    assert mixed_dims([100, 10**9], 16, alpha=1.0, min_dim=2) == [16, 2]
    with pytest.raises(ValueError, match="alpha"):
        mixed_dims([10], 4, alpha=-1)
    with pytest.raises(ValueError, match="num_rows"):
        mixed_dims([], 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(operation="xor"), "operation must be one of"),
        (dict(embedding_dim=5, operation="concat"), "must be even"),
        (dict(num_collisions=0), "num_collisions must be a positive int"),
        (dict(num_collisions=2000), "must not exceed"),
        (dict(mode="median"), "mode"),
    ],
)
def test_qr_bad_construction(kwargs, match):
    args = dict(embedding_dim=4, num_embeddings=1000, num_collisions=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        QREmbeddingBag(**args)


def test_bad_forward_input_leaves_tables_unchanged():
    mod = QREmbeddingBag(4, 100, 10, "mean", hash_ids=False, optimizer=el.optim.SGD(lr=LR))
    mod(torch.tensor([1, 2, 3]), torch.tensor([0]))
    before = (len(mod.quotient.table), len(mod.remainder.table))
    with pytest.raises(ValueError, match=r"hash_ids=False.*\[0, 100\)"):
        mod(torch.tensor([5, 100]), torch.tensor([0]))
    with pytest.raises(ValueError, match="per_sample_weights"):
        mod(torch.tensor([5]), torch.tensor([0]), torch.ones(1))
    with pytest.raises(ValueError, match="offsets"):
        mod(torch.tensor([5, 6]), torch.tensor([1, 0]))
    with pytest.raises(TypeError):
        mod(torch.tensor([0.5]), torch.tensor([0]))
    assert (len(mod.quotient.table), len(mod.remainder.table)) == before
    md = MixedDimEmbeddingBag(4, 2, "max")
    with pytest.raises(ValueError, match="per_sample_weights"):
        md(torch.tensor([5]), torch.tensor([0]), torch.ones(1))
    assert len(md.table) == 0


def test_state_dict_round_trip():
    """Both modules checkpoint through state_dict (their tables' extra state and
    the projection): a fresh module loaded from it gives the same outputs."""
    ids, offsets = bags(5)
    for make in (lambda: QREmbeddingBag(6, 1000, 16, "sum", optimizer=el.optim.Adagrad(lr=0.1)),
                 lambda: MixedDimEmbeddingBag(6, 3, "mean", optimizer=el.optim.Adagrad(lr=0.1))):
        a = make()
        a(ids, offsets).sum().backward()  # rows exist and moved once
        b = make()
        b.load_state_dict(a.state_dict())
        a.eval(), b.eval()
        torch.testing.assert_close(b(ids, offsets), a(ids, offsets), rtol=0, atol=0)
