"""FrequencyTable.apply_pooled_gradients (NumPy API) against apply_gradients
on the hand-expanded per-occurrence gradients, on twin tables."""

import numpy as np

import embedlookup as el


def twins(**kw):
    return [el.FrequencyTable(4, admit_count=2, default_row="cold", **kw) for _ in range(2)]


def test_matches_expanded_gradients_with_cold_row_and_features():
    a, b = twins(features=["user", "item"])
    rng = np.random.default_rng(0)
    sgd = el.optim.Adagrad(lr=0.5)
    for step in range(4):
        v = rng.integers(0, 6, 10)
        off = np.array([0, 3, 3, 7])  # an empty bag
        g = rng.standard_normal((4, 4)).astype(np.float32)
        lengths = np.diff(np.append(off, len(v)))
        for t in (a, b):
            t.pooled_lookup(v, off, mode="mean", feature="item")
        a.apply_pooled_gradients(v, off, g, sgd, mode="mean", feature="item")
        per_occ = np.repeat(g / np.maximum(lengths, 1)[:, None], lengths, axis=0)
        b.apply_gradients(v, per_occ, sgd, feature="item")
        ka, ra = a.export()
        kb, rb = b.export()
        np.testing.assert_array_equal(ka, kb)
        np.testing.assert_allclose(ra, rb, rtol=1e-6, atol=1e-7)
        # keys not admitted yet read the cold row, which both trained alike
        np.testing.assert_allclose(a.lookup(np.array([999]), train=False, feature="item"),
                                   b.lookup(np.array([999]), train=False, feature="item"), rtol=1e-6)
    assert len(a) > 0
    assert np.abs(a.lookup(np.array([999]), train=False, feature="item")).max() > 0  # the cold row was trained
