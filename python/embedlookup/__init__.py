"""embedlookup: hashed, collision-free embedding tables with a C++ core.

Quick start::

    import numpy as np, embedlookup as el
    table = el.EmbeddingTable(64, initializer=el.init.normal(std=0.01, seed=1))
    out = table.pooled_lookup(np.array([7, 42, 7], np.int64), np.array([0, 2], np.int64), mode="sum")
    table.apply_gradients(np.array([7, 42], np.int64), np.ones((2, 64), np.float32), el.optim.Adagrad(lr=0.1))

torch is optional: ``embedlookup.torch`` is imported only when asked for.
"""

from . import init, optim
from . import storage
from ._core import KeyMissingError, TableFullError
from .table import EmbeddingTable
from .frequency import FrequencyTable

__all__ = ["EmbeddingTable", "FrequencyTable", "KeyMissingError", "TableFullError", "init", "optim", "__version__"]
__all__ += ["storage"]
__version__ = "0.1.0"
