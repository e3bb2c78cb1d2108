"""The torch modules over a FrequencyTable (``table=``): forward values against
the table's own pooled_lookup and the NumPy reference, the fused backward
against the NumPy optimizer oracle (rows that exist, the cold row, dropped
gradients), evictions and relayouts between forward and backward, checkpoints,
and bad arguments."""

import io

import numpy as np
import pytest
import torch

import embedlookup as el
from embedlookup.torch import HashEmbedding, HashEmbeddingBag, HashEmbeddingBagCollection
from reference import RefOptimizer, pooled

D = 8
LR = 0.3


def freq_table(**kw):
    args = dict(initializer=el.init.uniform(-1, 1, seed=3), budget_rows=30, admit_count=2, evict_fraction=0.0,
                half_life=4.0, sketch_width=1 << 12)
    args.update(kw)
    return el.FrequencyTable(D, **args)


def batches(seed, n=16, n_bags=10, max_len=4, vocab=100):
    """Zipf-ish jagged batches over a small vocabulary: duplicates, hot and
    cold keys, empty bags."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        lens = rng.integers(0, max_len, n_bags)
        x = (rng.zipf(1.1, lens.sum()) % vocab).astype(np.int64)
        off = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        yield torch.from_numpy(x), torch.from_numpy(off)


def read_rows(table, keys):
    """Rows the forward read for ``keys``: the row, or the default row."""
    rows, found = table.find(keys)
    rows[~found] = table.default_row_values()
    return rows, found


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_forward_equals_table_pooled_lookup_and_reference(mode):
    # Twin tables of one configuration, one driven through the module, one
    # directly: same outputs and the same admission / eviction decisions.
    mine, twin = freq_table(default_row="cold"), freq_table(default_row="cold")
    m = HashEmbeddingBag(D, mode=mode, optimizer=None, table=mine)
    for x, off in batches(1):
        w = torch.rand(len(x)) if mode == "sum" else None
        out = m(x, off, w)
        want = twin.pooled_lookup(x.numpy(), off.numpy(), mode=mode,
                                  per_sample_weights=None if w is None else w.numpy())
        np.testing.assert_array_equal(out.detach().numpy(), want)
        # The NumPy reference over the rows each value read (no update in between).
        rows, _ = read_rows(mine, x.numpy())
        ref = pooled(rows, off.numpy(), mode, None if w is None else w.numpy())
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-6, atol=1e-6)
    a, b = mine.stats(), twin.stats()
    for k in ("clock", "admitted", "rejected", "evicted", "rows"):
        assert a[k] == b[k], k
    assert a["rejected"] > 0 and a["evicted"] > 0  # the stream exercised admission and eviction
    np.testing.assert_array_equal(mine.export()[0], twin.export()[0])


def expected_after_backward(table, x, off, grad, mode, state_before, cold_before, ref_kind="adagrad"):
    """Oracle: per-occurrence gradients of the pooled output; found keys get one
    Adagrad step (merged per key), the rest one step on the cold row with their
    summed gradient (default_row='cold') or nothing ('zeros')."""
    x, off = x.numpy(), off.numpy()
    n = len(x)
    ends = np.append(off[1:], n)
    g = np.zeros((n, D), np.float64)
    for b, (s, e) in enumerate(zip(off, ends)):
        if e > s:
            g[s:e] = grad[b] / ((e - s) if mode == "mean" else 1)
    rows, found = table.find(x)
    hp = dict(lr=LR, eps=1e-10)
    ref = RefOptimizer(ref_kind, **hp)
    keys = x[found]
    ref_rows = {int(k): r for k, r in zip(keys, rows[found])}
    ref.state = {int(k): s.astype(np.float64) for k, s in state_before.items() if k != "cold"}
    if keys.size:
        ref.apply(ref_rows, keys.tolist(), g[found])
    cold = cold_before.copy()
    if (~found).any() and table.default_row == "cold":
        cref = RefOptimizer(ref_kind, **hp)
        cref.state = {-1: state_before.get("cold", np.zeros(D))}
        d = {-1: cold}
        cref.apply(d, [-1] * int((~found).sum()), g[~found])
        cold = d[-1]
    return ref_rows, cold, int((~found).sum())


@pytest.mark.parametrize("default_row", ["cold", "zeros"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_backward_matches_oracle(default_row, mode):
    t = freq_table(default_row=default_row)
    m = HashEmbeddingBag(D, mode=mode, optimizer=el.optim.Adagrad(lr=LR, eps=1e-10), table=t)
    rng = np.random.default_rng(5)
    for x, off in batches(2):
        out = m(x, off)
        live_keys = t.export()[0]
        # Optimizer state and the cold row as they are before this backward.
        st = t._t.export_state(live_keys) if t._t.state_stride else np.zeros((len(live_keys), D), np.float32)
        state_before = dict(zip(live_keys.tolist(), st))
        saved = t._t.save_state()
        if saved["cold_state"].size:
            state_before["cold"] = saved["cold_state"].astype(np.float64)
        cold_before = t.default_row_values()
        _, rows_before = t.export()
        dropped0 = t.stats()["grads_dropped"]
        grad = rng.standard_normal(out.shape).astype(np.float32)
        want_rows, want_cold, n_missing = expected_after_backward(t, x, off, grad, mode, state_before, cold_before)
        out.backward(torch.from_numpy(grad))
        keys_after, rows_after = t.export()
        np.testing.assert_array_equal(keys_after, live_keys)  # the backward admits and evicts nothing
        for i, k in enumerate(keys_after.tolist()):
            want = want_rows.get(k, rows_before[i])  # keys outside the batch: unchanged
            np.testing.assert_allclose(rows_after[i], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t.default_row_values(), want_cold, rtol=1e-5, atol=1e-6)
        if default_row == "zeros":
            assert not t.default_row_values().any()
            assert t.stats()["grads_dropped"] - dropped0 == n_missing
    assert t.stats()["rejected"] > 0


def test_max_mode_backward_routes_winners():
    # Bag [a, b] with a admitted, b not: per column the winner gets the
    # gradient; columns won by b go to the cold row.
    t = freq_table(default_row="cold", initializer=el.init.uniform(-1, 1, seed=9))
    m = HashEmbeddingBag(D, mode="max", optimizer=el.optim.SGD(lr=1.0), table=t)
    m(torch.tensor([7, 7]), torch.tensor([0]))  # 7 is seen twice: admitted
    row7 = t.find(np.array([7]))[0][0].copy()
    out = m(torch.tensor([7, 8]), torch.tensor([0]))  # 8: first sighting, reads the cold row (zeros)
    np.testing.assert_array_equal(out.detach().numpy()[0], np.maximum(row7, 0))
    g = np.arange(1, D + 1, dtype=np.float32)
    out.backward(torch.from_numpy(g[None]))
    win7 = row7 >= 0  # ties go to the first position (7), as torch
    np.testing.assert_allclose(t.find(np.array([7]))[0][0], row7 - np.where(win7, g, 0), rtol=1e-6)
    np.testing.assert_allclose(t.default_row_values(), -np.where(win7, 0, g), rtol=1e-6)
    assert not t.find(np.array([8]))[1][0]  # the backward did not admit 8


@pytest.mark.parametrize("between", ["evict", "relayout"])
def test_rows_change_between_forward_and_backward(between):
    # Forward on keys 1..6, then other training lookups evict them (freed row
    # ids are reused by newer keys) or a relayout moves them; the backward must
    # follow keys, not stale row ids.
    t = freq_table(default_row="cold", budget_rows=8, admit_count=1, evict_fraction=0.0)
    m = HashEmbeddingBag(D, mode="sum", optimizer=el.optim.SGD(lr=1.0), table=t)
    a = np.arange(1, 7, dtype=np.int64)
    out = m(torch.from_numpy(a), torch.arange(6))
    epoch0 = t._t.layout_epoch
    if between == "evict":
        for base in (100, 200):  # each key twice: scores beat the forward's keys
            k = np.repeat(np.arange(base, base + 6, dtype=np.int64), 2)
            t.pooled_lookup(k, np.arange(len(k)))
        assert t.stats()["evicted"] > 0
    else:
        t.pooled_lookup(np.repeat(a[3:], 3), np.arange(9))  # 4, 5, 6 now hotter than 1, 2, 3
        t.relayout()
        assert t.stats()["relayout_moves"] > 0
    assert t._t.layout_epoch != epoch0
    keys_before, rows_before = t.export()
    cold_before = t.default_row_values()
    present = t.find(a)[1]
    g = np.random.default_rng(0).standard_normal((6, D)).astype(np.float32)
    out.backward(torch.from_numpy(g))
    keys_after, rows_after = t.export()
    np.testing.assert_array_equal(keys_after, keys_before)
    for i, k in enumerate(keys_after.tolist()):
        want = rows_before[i] - (g[k - 1] if 1 <= k <= 6 else 0)  # only the forward's keys move
        np.testing.assert_allclose(rows_after[i], want, rtol=1e-6, atol=1e-6)
    want_cold = cold_before - g[~present].sum(0)  # evicted since the forward: the cold row
    np.testing.assert_allclose(t.default_row_values(), want_cold, rtol=1e-5, atol=1e-6)
    if between == "evict":
        assert not present.all()
    else:
        assert present.all()


def test_embedding_and_eval_mode():
    t = freq_table(default_row="zeros", admit_count=1)
    emb = HashEmbedding(D, optimizer=el.optim.SGD(lr=0.1), table=t)
    x = torch.tensor([[3, 4], [3, 5]])
    y = emb(x)
    np.testing.assert_array_equal(y.detach().numpy(), t.find(x.reshape(-1).numpy())[0].reshape(2, 2, D))
    clock = t.stats()["clock"]
    emb.eval()
    z = emb(torch.tensor([3, 99]))  # serving: no clock step, no admission; 99 reads zeros
    assert t.stats()["clock"] == clock and not t.find(np.array([99]))[1][0]
    np.testing.assert_array_equal(z.detach().numpy()[1], np.zeros(D, np.float32))


def test_collection_over_one_frequency_table():
    t = freq_table(default_row="cold")
    twin = freq_table(default_row="cold")
    coll = HashEmbeddingBagCollection(["a", "b", "c"], D, optimizer=el.optim.Adagrad(lr=LR), table=t)
    assert coll.bag.table is t and coll.bag.optimizer.lr == LR
    rng = np.random.default_rng(3)
    for _ in range(4):
        lengths = torch.from_numpy(rng.integers(0, 4, 3 * 5))
        values = torch.from_numpy((rng.zipf(1.5, int(lengths.sum())) % 40).astype(np.int64))
        out = coll(values=values, lengths=lengths)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
        keys = torch.ops.embedlookup.namespace_keys(values, offsets[::5], coll._bits).numpy()
        want = twin.pooled_lookup(keys, offsets.numpy(), include_last_offset=True).reshape(3, 5, D)
        for i, f in enumerate(["a", "b", "c"]):
            np.testing.assert_array_equal(out[f].detach().numpy(), want[i])
        # Same backward on both: the module's fused one, and the table's apply_gradients.
        sum(o.sum() for o in out.values()).backward()
        twin.apply_gradients(keys, np.ones((len(keys), D), np.float32), el.optim.Adagrad(lr=LR))
    np.testing.assert_allclose(t.export()[1], twin.export()[1], rtol=1e-6)
    np.testing.assert_allclose(t.default_row_values(), twin.default_row_values(), rtol=1e-6)


def test_optimizer_defaults_to_the_tables():
    t = freq_table(optimizer=el.optim.SGD(lr=2.0), admit_count=1)
    m = HashEmbeddingBag(D, mode="sum", table=t)
    assert m.optimizer is t.optimizer and m._grad_anchor.requires_grad
    out = m(torch.tensor([5]), torch.tensor([0]))
    before = t.find(np.array([5]))[0][0].copy()
    out.sum().backward()
    np.testing.assert_allclose(t.find(np.array([5]))[0][0], before - 2.0, rtol=1e-6)


def train(m, seed, n=6):
    outs = []
    for x, off in batches(seed, n=n):
        out = m(x, off)
        out.sum().backward()
        outs.append(out.detach().numpy())
    return outs


def test_state_dict_round_trip():
    opt = el.optim.Adagrad(lr=LR)
    a = HashEmbeddingBag(D, mode="sum", optimizer=opt, table=freq_table(default_row="cold"))
    train(a, 7)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = HashEmbeddingBag(D, mode="sum", optimizer=el.optim.Adagrad(lr=LR), table=freq_table(default_row="cold"))
    b.load_state_dict(torch.load(buf, weights_only=False))
    ta, tb = a.table, b.table
    for x, y in zip(ta.export(), tb.export()):
        np.testing.assert_array_equal(x, y)
    keys = ta.export()[0]
    np.testing.assert_array_equal(ta._t.export_state(keys), tb._t.export_state(keys))
    for x, y in zip(ta.inspect(keys)[:2], tb.inspect(keys)[:2]):  # scores and last steps
        np.testing.assert_array_equal(x, y)
    sa, sb = ta._t.save_state(), tb._t.save_state()
    assert sa["clock"] == sb["clock"] and ta.step == tb.step
    for k in ("sketch", "cold_row", "cold_state"):
        np.testing.assert_array_equal(sa[k], sb[k])
    # Training on from both gives the same outputs, admissions and evictions
    # (counters restart at load, so compare what each run adds).
    counters = ("admitted", "rejected", "evicted")
    before = [{k: t.stats()[k] for k in counters} for t in (ta, tb)]
    for x, y in zip(train(a, 8), train(b, 8)):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    added = [{k: t.stats()[k] - b0[k] for k in counters} for t, b0 in zip((ta, tb), before)]
    assert added[0] == added[1] and added[0]["admitted"] > 0
    np.testing.assert_array_equal(ta.export()[0], tb.export()[0])
    np.testing.assert_allclose(ta.export()[1], tb.export()[1], rtol=1e-6)


def test_state_dict_mismatches_leave_the_module_unchanged():
    a = HashEmbeddingBag(D, mode="sum", optimizer=el.optim.SGD(lr=0.1), table=freq_table(admit_count=1))
    train(a, 9, n=2)
    sd = a.state_dict()
    plain = HashEmbeddingBag(D, mode="sum", optimizer=el.optim.SGD(lr=0.1))
    with pytest.raises(ValueError, match="FrequencyTable"):
        plain.load_state_dict(sd)
    small_table = freq_table(admit_count=1, budget_rows=2)
    small = HashEmbeddingBag(D, mode="sum", optimizer=el.optim.SGD(lr=0.1), table=small_table)
    with pytest.raises(ValueError, match="budget"):
        small.load_state_dict(sd)
    assert small.table is small_table and len(small_table) == 0
    with pytest.raises(ValueError, match="not a FrequencyTable"):
        a.load_state_dict(plain.state_dict())
    other_sketch = HashEmbeddingBag(D, mode="sum", optimizer=el.optim.SGD(lr=0.1),
                                    table=freq_table(admit_count=2, sketch_width=1 << 10))
    with pytest.raises(ValueError, match="sketch"):
        other_sketch.load_state_dict(HashEmbeddingBag(D, optimizer=el.optim.SGD(lr=0.1),
                                                      table=freq_table(admit_count=2)).state_dict())


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim 8 .*embedding_dim=4"):
        HashEmbeddingBag(4, table=freq_table())
    with pytest.raises(TypeError, match="EmbeddingTable or FrequencyTable"):
        HashEmbeddingBag(D, table={"not": "a table"})
    with pytest.raises(ValueError, match="num_threads"):  # an EmbeddingTable (accepted) owns its own settings
        HashEmbeddingBag(D, table=el.EmbeddingTable(D), num_threads=1)
    with pytest.raises(ValueError, match="capacity"):
        HashEmbeddingBag(D, table=freq_table(), capacity=10)
    with pytest.raises(ValueError, match="initializer"):
        HashEmbedding(D, table=freq_table(), initializer=el.init.zeros())
    with pytest.raises(ValueError, match="features"):
        HashEmbeddingBag(D, table=freq_table(features=["a"]))
    with pytest.raises(ValueError, match="shared_table"):
        HashEmbeddingBagCollection(["a", "b"], D, table=freq_table(), shared_table=False)
    # A batch with more distinct keys than the budget: the table's error, table unchanged.
    t = freq_table(budget_rows=4, admit_count=1)
    m = HashEmbeddingBag(D, mode="sum", optimizer=el.optim.SGD(lr=0.1), table=t)
    with pytest.raises(ValueError, match="budget_rows"):
        m(torch.arange(10), torch.tensor([0]))
    assert len(t) == 0


def test_per_sample_weights_gradient_uses_the_rows_read():
    # d out[b] / d w[p] = the row value p read: its row, or the default row.
    t = freq_table(default_row="cold")
    m = HashEmbeddingBag(D, mode="sum", optimizer=el.optim.SGD(lr=0.5), table=t)
    rng = np.random.default_rng(11)
    for x, off in batches(4, n=4):
        w = torch.rand(len(x), requires_grad=True)
        out = m(x, off, w)
        rows, found = read_rows(t, x.numpy())
        grad = rng.standard_normal(out.shape).astype(np.float32)
        out.backward(torch.from_numpy(grad))
        bag_of = np.repeat(np.arange(len(off)), np.diff(np.append(off.numpy(), len(x))))
        want = (rows * grad[bag_of]).sum(1)
        np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-5, atol=1e-6)
    assert t.default_row_values().any()  # the cold row took part (and learned)


def test_compiled_module_over_frequency_table_matches_eager():
    # The ops are the same custom ops: aot_eager keeps them in the graph and
    # both tables make the same admissions, evictions and updates.
    def make():
        return HashEmbeddingBag(D, mode="sum", optimizer=el.optim.Adagrad(lr=LR), table=freq_table())
    eager, comp = make(), make()
    compiled = torch.compile(comp, backend="aot_eager")
    for x, off in batches(6):
        ye, yc = eager(x, off), compiled(x, off)
        torch.testing.assert_close(yc, ye, rtol=1e-6, atol=1e-6)
        ye.pow(2).sum().backward()
        yc.pow(2).sum().backward()
    for a, b in zip(eager.table.export(), comp.table.export()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert eager.table.stats()["evicted"] == comp.table.stats()["evicted"] > 0
