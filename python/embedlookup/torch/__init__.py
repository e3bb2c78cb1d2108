"""PyTorch modules over embedlookup's hashed tables (needs ``torch``).

``HashEmbeddingBag`` / ``HashEmbedding`` replace ``torch.nn.EmbeddingBag`` /
``torch.nn.Embedding`` for int64 IDs without a fixed vocabulary, and
``HashEmbeddingBagCollection`` pools many jagged features in one call. The
backward applies each module's fused sparse optimizer in native code (see
``modules`` for how this interacts with ``optimizer.step()``, gradient
accumulation and ``zero_grad``). The forward and backward are ``torch.library``
custom ops, so ``torch.compile`` keeps them in its graph.
``QREmbeddingBag`` (quotient-remainder) and ``MixedDimEmbeddingBag`` (a
narrow table projected to the model's dim) spend less memory per ID with the
same forward and training contract (``compositional``).
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError("embedlookup.torch needs PyTorch: pip install 'embedlookup[torch]'") from e

from .compositional import MixedDimEmbeddingBag, QREmbeddingBag, mixed_dims
from .modules import HashEmbedding, HashEmbeddingBag, HashEmbeddingBagCollection, ResolvedInput

__all__ = ["HashEmbedding", "HashEmbeddingBag", "HashEmbeddingBagCollection", "MixedDimEmbeddingBag",
           "QREmbeddingBag", "ResolvedInput", "mixed_dims"]
