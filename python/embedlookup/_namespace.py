"""The one rule by which features share a table's key space.

A key of feature ``f`` with value ``v`` is ``f << (64 - bits) | (v & mask)``
(``mask`` = the low ``64 - bits`` bits): the top ``bits`` bits hold the
feature id, and ``v`` must fit in ``64 - bits`` bits as a two's-complement
integer, i.e. lie in ``[-2**(63 - bits), 2**(63 - bits))``, so no two
(feature, value) pairs share a key. ``FrequencyTable(features=...)`` uses
``bits = 16`` (features can register at any time, so the split is fixed:
values in [-2**47, 2**47)); ``HashEmbeddingBagCollection(shared_table=True)``
uses the fewest bits that number its features (``bits = 0`` for one feature:
keys pass unchanged, any int64).
"""

from __future__ import annotations

import numpy as np


def feature_keys(values: np.ndarray, feature_ids, bits: int, name: str = "values") -> np.ndarray:
    """Table keys of int64 ``values`` whose feature ids are ``feature_ids`` (one
    int for all, or an int64 array per value). Raises ValueError naming ``name``
    when a value does not fit in ``64 - bits`` bits."""
    if bits == 0:
        return values
    low = 64 - bits
    hi = values >> np.int64(low - 1)  # 0 or -1 exactly when the value fits in `low` bits
    if hi.size and (hi.min() < -1 or hi.max() > 0):
        bad = int(values[(hi < -1) | (hi > 0)][0])
        raise ValueError(f"{name}: key {bad} does not fit in {low} bits: features sharing a table keep their id "
                         f"in the top {bits} bits, so keys must lie in [-2**{low - 1}, 2**{low - 1})")
    mask = np.int64((1 << low) - 1)
    return (values & mask) | (np.asarray(feature_ids, dtype=np.int64) << np.int64(low))
