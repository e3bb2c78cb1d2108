"""EmbeddingTable.apply_pooled_gradients (the fused backward of pooled_lookup)
against torch.nn.EmbeddingBag + torch.optim on the same rows."""

import numpy as np
import pytest

import embedlookup as el

torch = pytest.importorskip("torch")

DIM = 12
KEYS = np.array([5, -3, 10**13, 42, 7, 99, 1234], dtype=np.int64)


def setup(seed=0):
    t = el.EmbeddingTable(DIM, initializer=el.init.zeros())
    rows = np.random.default_rng(seed).standard_normal((len(KEYS), DIM)).astype(np.float32)
    t.assign(KEYS, rows)
    return t, rows


def jagged(rng, n_bags=9, max_len=6):
    """Random bags (duplicates within and across, an empty one) and a last bag
    holding every key, so every row has a gradient every step and torch's
    dense optimizers (Adam moves rows by momentum alone) equal sparse ones."""
    lengths = rng.integers(0, max_len + 1, n_bags)
    lengths[3] = 0
    lengths[-1] = len(KEYS)
    pos = rng.integers(0, len(KEYS), int(lengths.sum()))
    pos[-len(KEYS):] = rng.permutation(len(KEYS))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return pos, offsets


@pytest.mark.parametrize("mode,weighted", [("sum", False), ("sum", True), ("mean", False)])
@pytest.mark.parametrize("ours,theirs", [
    (el.optim.SGD(lr=0.1), lambda p: torch.optim.SGD([p], lr=0.1)),
    (el.optim.Adagrad(lr=0.1), lambda p: torch.optim.Adagrad([p], lr=0.1)),
    (el.optim.Adam(lr=0.01), lambda p: torch.optim.Adam([p], lr=0.01)),
], ids=["sgd", "adagrad", "adam"])
def test_matches_embeddingbag_and_torch_optimizer(mode, weighted, ours, theirs):
    rng = np.random.default_rng(3)
    t, rows = setup()
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(rows.copy()), freeze=False, mode=mode)
    opt = theirs(bag.weight)
    for _ in range(4):
        pos, offsets = jagged(rng)
        w = rng.random(len(pos)).astype(np.float32) if weighted else None
        g = rng.standard_normal((len(offsets), DIM)).astype(np.float32)
        out = t.pooled_lookup(KEYS[pos], offsets, mode, per_sample_weights=w)
        opt.zero_grad()
        ref = bag(torch.from_numpy(pos), torch.from_numpy(offsets),
                  per_sample_weights=None if w is None else torch.from_numpy(w))
        np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
        ref.backward(torch.from_numpy(g))
        opt.step()
        t.apply_pooled_gradients(KEYS[pos], offsets, g, ours, mode=mode, per_sample_weights=w)
    np.testing.assert_allclose(t.lookup(KEYS, insert=False), bag.weight.detach().numpy(), rtol=2e-5, atol=2e-6)


def test_include_last_offset_and_2d_values_match_expanded_gradients():
    t, rows = setup()
    u, _ = setup()
    values = np.array([[5, -3, 5], [42, 7, 99]], dtype=np.int64)
    g = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM) / 10
    t.apply_pooled_gradients(values, None, g, el.optim.SGD(lr=1.0))
    # hand-expanded: each key occurrence gets its bag's gradient
    u.apply_gradients(values.ravel(), np.repeat(g, 3, axis=0), el.optim.SGD(lr=1.0))
    np.testing.assert_array_equal(t.lookup(KEYS), u.lookup(KEYS))
    expect = rows.copy()
    expect[0] -= 2 * g[0]  # key 5 twice in bag 0
    np.testing.assert_allclose(t.lookup(KEYS[:1])[0], expect[0], rtol=1e-6)
    v = values.ravel()
    t.apply_pooled_gradients(v, np.array([0, 3, 6]), g, el.optim.SGD(lr=1.0), include_last_offset=True)
    u.apply_gradients(v, np.repeat(g, 3, axis=0), el.optim.SGD(lr=1.0))
    np.testing.assert_array_equal(t.lookup(KEYS), u.lookup(KEYS))


def test_bad_input_leaves_the_table_unchanged():
    t, rows = setup()
    v, off = KEYS[:4], np.array([0, 2], dtype=np.int64)
    g = np.ones((2, DIM), np.float32)
    sgd = el.optim.SGD(lr=1.0)
    cases = [
        (dict(grad_output=np.ones((3, DIM), np.float32)), ValueError, "grad_output"),
        (dict(grad_output=np.ones((2, DIM + 1), np.float32)), ValueError, "grad_output"),
        (dict(mode="max"), ValueError, "max"),
        (dict(mode="mean", per_sample_weights=np.ones(4, np.float32)), ValueError, "per_sample_weights"),
        (dict(per_sample_weights=np.ones(3, np.float32)), ValueError, "per_sample_weights"),
        (dict(offsets=np.array([0, 5])), ValueError, "offsets"),
        (dict(grad_output=np.full((2, DIM), np.nan, np.float32)), ValueError, "grad"),
        (dict(values=np.array([5, -3, 77777, 42])), el.KeyMissingError, "77777"),
    ]
    for kw, exc, word in cases:
        args = dict(values=v, offsets=off, grad_output=g, optimizer=sgd)
        args.update(kw)
        with pytest.raises(exc, match=word):
            t.apply_pooled_gradients(**args)
        np.testing.assert_array_equal(t.lookup(KEYS, insert=False), rows)
