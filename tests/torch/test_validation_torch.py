"""Fault-campaign regressions for the torch modules: (B, 0) bags, non-finite
weights, hyperparameters changed after construction, the collection's lengths.
Bad input raises before the native call and leaves the table as it was."""

import math

import numpy as np
import pytest
import torch

import embedlookup as el
from embedlookup.torch import HashEmbeddingBag, HashEmbeddingBagCollection
from reference import RefOptimizer
from table_state import assert_same_state, table_state

DIM = 4


def trained_bag(mode="sum", opt=None, **kw):
    m = HashEmbeddingBag(DIM, mode=mode, optimizer=opt or el.optim.Adagrad(lr=0.1),
                         initializer=el.init.uniform(-0.5, 0.5, seed=2), **kw)
    m(torch.tensor([[1, 2], [3, 4]])).sum().backward()
    return m


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("B", [1, 5, 1 << 15])
def test_zero_length_2d_input_gives_b_zero_rows(mode, B):
    m = trained_bag(mode)
    snap = table_state(m.table)
    x = torch.zeros((B, 0), dtype=torch.long)
    out = m(x)
    # torch.nn.EmbeddingBag raises for a (B, 0) input; its 1-D spelling of the
    # same B empty bags is the reference.
    ref = torch.nn.EmbeddingBag(10, DIM, mode=mode)(torch.zeros(0, dtype=torch.long), torch.zeros(B, dtype=torch.long))
    assert out.shape == (B, DIM)
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=0)
    out.sum().backward()  # no key: the backward touches no row
    k, r, *_ = snap
    k2, r2 = m.table.export()
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(r2, r)


def test_zero_length_2d_input_frequency_backend():
    ft = el.FrequencyTable(DIM, initializer=el.init.uniform(-0.5, 0.5, seed=2))
    m = HashEmbeddingBag(DIM, mode="max", optimizer=el.optim.SGD(lr=0.1), table=ft)
    out = m(torch.zeros((3, 0), dtype=torch.long))
    torch.testing.assert_close(out, torch.zeros(3, DIM), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e39])
def test_nonfinite_per_sample_weights_rejected(bad):
    m = trained_bag()
    snap = table_state(m.table)
    w = torch.tensor([[1.0, bad], [1.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="per_sample_weights must be finite"):
        m(torch.tensor([[1, 99], [3, 4]]), per_sample_weights=w)
    assert_same_state(m.table, snap)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_collection_nonfinite_weights_rejected(shared, bad):
    c = HashEmbeddingBagCollection(["a", "b"], DIM, optimizer=el.optim.SGD(lr=0.1), shared_table=shared)
    tables = [c.bag.table] if shared else [b.table for b in c.bags.values()]
    snaps = [table_state(t) for t in tables]
    with pytest.raises(ValueError, match="^weights must be finite"):
        c(values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1]),
          weights=torch.tensor([1.0, bad, 1.0, 1.0]))
    for t, s in zip(tables, snaps):
        assert_same_state(t, s)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("lengths", [[1, 1, 1, 0], [2, 2, 2, 2], [3, -1, 1, 1]])
def test_collection_lengths_not_summing_to_values_names_lengths(shared, lengths):
    c = HashEmbeddingBagCollection(["a", "b"], DIM, optimizer=el.optim.SGD(lr=0.1), shared_table=shared)
    tables = [c.bag.table] if shared else [b.table for b in c.bags.values()]
    snaps = [table_state(t) for t in tables]
    with pytest.raises(ValueError, match="^lengths must"):
        c(values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor(lengths))
    for t, s in zip(tables, snaps):
        assert_same_state(t, s)


def test_collection_bad_offsets_name_offsets():
    c = HashEmbeddingBagCollection(["a", "b"], DIM, optimizer=el.optim.SGD(lr=0.1))
    snap = table_state(c.bag.table)
    with pytest.raises(ValueError, match="offsets"):
        c(values=torch.tensor([1, 2, 3, 4]), offsets=torch.tensor([0, 1, 2, 3, 9]))
    with pytest.raises(ValueError, match="offsets"):
        c(values=torch.tensor([1, 2, 3, 4]), offsets=torch.tensor([0, 3, 2, 3, 4]))
    assert_same_state(c.bag.table, snap)


def test_collection_good_lengths_match_reference():
    c = HashEmbeddingBagCollection(["a", "b"], DIM, initializer=el.init.uniform(-0.5, 0.5, seed=4))
    out = c(values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([2, 0, 1, 1]))
    rows = {}
    for f, keys in (("a", [1, 2]), ("b", [3, 4])):
        rows[f] = c.bag.table.lookup(torch.ops.embedlookup.namespace_keys(
            torch.tensor(keys), torch.tensor([0, len(keys), len(keys)]) if f == "a"
            else torch.tensor([0, 0, len(keys)]), c._bits).numpy(), insert=False)
    np.testing.assert_allclose(out["a"].numpy(), np.stack([rows["a"][0] + rows["a"][1], np.zeros(DIM)]), rtol=1e-6)
    np.testing.assert_allclose(out["b"].numpy(), rows["b"], rtol=1e-6)


@pytest.mark.parametrize("attr,bad", [("lr", math.nan), ("lr", -1.0), ("eps", 0.0), ("weight_decay", -5.0)])
def test_module_optimizer_changed_after_construction_is_checked_in_backward(attr, bad):
    m = trained_bag()
    snap = table_state(m.table)
    out = m(torch.tensor([[1, 2], [3, 4]]))  # keys exist: the forward changes nothing
    assert_same_state(m.table, snap)
    setattr(m.optimizer, attr, bad)
    with pytest.raises(ValueError, match=attr):
        out.sum().backward()
    assert_same_state(m.table, snap)


def test_module_lr_schedule_still_applies():
    m = HashEmbeddingBag(DIM, mode="sum", optimizer=el.optim.SGD(lr=0.1),
                         initializer=el.init.uniform(-0.5, 0.5, seed=2))
    x = torch.tensor([[1, 2, 1]])
    m(x)
    k0, r0 = m.table.export()
    ref = {int(k): r for k, r in zip(k0, r0)}
    for lr in (0.25, 0.0, 1.5):
        m.optimizer.lr = lr
        m(x).sum().backward()
        RefOptimizer("sgd", lr=lr).apply(ref, np.array([1, 2, 1]), np.ones((3, DIM), np.float32))
    k, r = m.table.export()
    np.testing.assert_allclose(r, np.stack([ref[int(i)] for i in k]), rtol=1e-6, atol=1e-7)
