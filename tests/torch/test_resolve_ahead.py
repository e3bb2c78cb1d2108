"""Keys resolved ahead of the forward (HashEmbeddingBag.resolve,
HashEmbeddingBagCollection.resolve): the forward given ``resolved=`` reads
the same rows and the step updates the same rows as without it, checked
against the NumPy sum of the table's rows and against a twin module that
resolves in its forward; stale ids are resolved again; bad handles raise."""

import numpy as np
import pytest
import torch

import embedlookup as el
from embedlookup.torch import HashEmbeddingBag, HashEmbeddingBagCollection, ResolvedInput


def _twins(mode="sum", dim=8):
    """Two modules over identical tables (same initializer seed and optimizer)."""
    mk = lambda: HashEmbeddingBag(dim, mode=mode, optimizer=el.optim.Adagrad(lr=0.1, rowwise=True),  # noqa: E731
                                  initializer=el.init.uniform(seed=5))
    return mk(), mk()


def _batch(rng, bags=32, keys=200):
    lengths = rng.integers(0, 7, bags)
    off = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
    return torch.from_numpy(rng.integers(0, keys, int(lengths.sum())).astype(np.int64)), off


def _numpy_pool(table, values, offsets, mode, weights=None):
    """The reference: each bag's rows read back from the table, summed (or averaged) in NumPy."""
    v, o = values.numpy(), offsets.numpy()
    rows = table.lookup(v, insert=False).astype(np.float64)
    if weights is not None:
        rows *= weights.numpy()[:, None]
    ends = np.append(o[1:], v.shape[0])
    out = np.stack([rows[s:e].sum(0) / (max(e - s, 1) if mode == "mean" else 1) for s, e in zip(o, ends)])
    return out.astype(np.float32)


@pytest.mark.parametrize("mode, weighted", [("sum", False), ("sum", True), ("mean", False)])
def test_resolved_steps_equal_the_plain_forward(mode, weighted):
    plain, ahead = _twins(mode)
    rng = np.random.default_rng(0)
    for step in range(4):  # new keys arrive in every batch (inserted by resolve), duplicates within bags
        x, off = _batch(rng, keys=100 + 60 * step)
        w = torch.from_numpy(rng.random(x.shape[0]).astype(np.float32)) if weighted else None
        r = ahead.resolve(x)
        out_a = ahead(x, off, w, resolved=r)
        np.testing.assert_allclose(out_a.detach().numpy(), _numpy_pool(ahead.table, x, off, mode, w),
                                   rtol=1e-5, atol=1e-6)
        out_p = plain(x, off, w)
        np.testing.assert_array_equal(out_a.detach().numpy(), out_p.detach().numpy())
        g = torch.from_numpy(rng.standard_normal(tuple(out_a.shape)).astype(np.float32))
        (out_a * g).sum().backward()
        (out_p * g).sum().backward()
    ka, ra = ahead.table.export()
    kp, rp = plain.table.export()
    np.testing.assert_array_equal(np.sort(ka), np.sort(kp))
    np.testing.assert_array_equal(ra[np.argsort(ka)], rp[np.argsort(kp)])  # rows and the Adagrad step: bit for bit


def test_the_forward_reads_the_resolved_ids():
    """White-box: the rows read are the ids' (no second probe), so ids of
    other keys (forged, still current) read those keys' rows."""
    m, _ = _twins()
    x = torch.arange(40, dtype=torch.int64)
    off = torch.arange(0, 40, 4, dtype=torch.int64)
    r = m.resolve(x)
    forged = ResolvedInput(m.table, r.values, torch.roll(r.tensor, 1), r.epoch)
    out = m(x, off, resolved=forged)
    np.testing.assert_allclose(out.detach().numpy(), _numpy_pool(m.table, torch.roll(x, 1), off, "sum"),
                               rtol=1e-5, atol=1e-6)


def test_stale_ids_are_resolved_again():
    m, _ = _twins()
    x = torch.arange(50, dtype=torch.int64)
    off = torch.arange(0, 50, 5, dtype=torch.int64)
    r = m.resolve(x)
    m.table.erase(np.arange(0, 50, 2))  # frees rows: the resolution's epoch is stale
    out = m(x, off, resolved=r)  # the erased keys are inserted again by this training forward
    np.testing.assert_allclose(out.detach().numpy(), _numpy_pool(m.table, x, off, "sum"), rtol=1e-5, atol=1e-6)
    before = m.table.lookup(x.numpy(), insert=False)
    out.sum().backward()  # the backward gets the fresh ids, not the stale ones
    after = m.table.lookup(x.numpy(), insert=False)
    assert np.all(after != before)  # every key's row took its step (a stale id would have updated another row)


def test_bad_resolved_arguments_raise_and_change_nothing():
    m, other = _twins()
    x = torch.arange(20, dtype=torch.int64)
    off = torch.arange(0, 20, 4, dtype=torch.int64)
    m(x, off)
    before = m.table.export()
    with pytest.raises(ValueError, match="another table"):
        m(x, off, resolved=other.resolve(x))
    with pytest.raises(ValueError, match="values differ from the keys"):
        m(x, off, resolved=m.resolve(torch.roll(x, 1)))  # same keys, another order
    with pytest.raises(TypeError, match="resolve\\(\\) returned"):
        m(x, off, resolved=m.table.resolve(x.numpy()))
    k, rows = m.table.export()
    np.testing.assert_array_equal(k, before[0])
    np.testing.assert_array_equal(rows, before[1])
    mx = HashEmbeddingBag(4, mode="max", optimizer=el.optim.SGD(lr=0.1))
    with pytest.raises(ValueError, match="mode 'max'"):
        mx(x, off, resolved=mx.resolve(x))
    freq = HashEmbeddingBag(4, table=el.FrequencyTable(4, budget_rows=100))
    with pytest.raises(NotImplementedError, match="FrequencyTable"):
        freq.resolve(x)
    assert isinstance(m.resolve(x.reshape(4, 5)), ResolvedInput)  # any shape, as forward takes it


@pytest.mark.parametrize("shared", [True, False])
def test_collection_resolves_ahead(shared):
    mk = lambda: HashEmbeddingBagCollection(["a", "b", "c"], 8, optimizer=el.optim.SGD(lr=0.5),  # noqa: E731
                                            initializer=el.init.uniform(seed=1), shared_table=shared)
    plain, ahead = mk(), mk()
    rng = np.random.default_rng(3)
    for _ in range(3):
        lengths = torch.from_numpy(rng.integers(0, 4, 3 * 16).astype(np.int64))
        values = torch.from_numpy(rng.integers(0, 300, int(lengths.sum())).astype(np.int64))
        r = ahead.resolve(values=values, lengths=lengths)
        out_a = ahead(values=values, lengths=lengths, resolved=r)
        out_p = plain(values=values, lengths=lengths)
        for f in ("a", "b", "c"):
            np.testing.assert_array_equal(out_a[f].detach().numpy(), out_p[f].detach().numpy())
        sum(o.sum() * (i + 1) for i, o in enumerate(out_a.values())).backward()
        sum(o.sum() * (i + 1) for i, o in enumerate(out_p.values())).backward()
    mods_a = [ahead.bag] if shared else [ahead.bags[f] for f in "abc"]
    mods_p = [plain.bag] if shared else [plain.bags[f] for f in "abc"]
    for a, p in zip(mods_a, mods_p):
        ka, ra = a.table.export()
        kp, rp = p.table.export()
        np.testing.assert_array_equal(ra[np.argsort(ka)], rp[np.argsort(kp)])
    before = [m.table.export() for m in mods_a]
    for bad in (torch.tensor([0, 5, 3, int(values.shape[0])]), torch.tensor([0, 2, 4, int(values.shape[0]) + 1])):
        with pytest.raises(ValueError, match="offsets"):  # checked before any table sees a slice
            ahead.resolve(values=values, offsets=torch.cat([bad[:1], bad[1:].repeat_interleave(16)])[:49])
    for m, (k, rows) in zip(mods_a, before):
        np.testing.assert_array_equal(m.table.export()[0], k)
        np.testing.assert_array_equal(m.table.export()[1], rows)
    if not shared:
        with pytest.raises(TypeError, match="dict of ResolvedInput"):
            ahead(values=values, lengths=lengths, resolved=ahead.bags["a"].resolve(values))
