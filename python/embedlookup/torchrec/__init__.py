"""TorchRec backend: ``EmbeddingBagCollection`` and ``EmbeddingCollection``,
drop-ins for TorchRec's over embedlookup's hashed tables (needs ``torch`` and
``torchrec``).

They take TorchRec's ``EmbeddingBagConfig``s / ``EmbeddingConfig``s and
``KeyedJaggedTensor``s and return TorchRec ``KeyedTensor``s (pooled) or
dicts of ``JaggedTensor``s (unpooled) with TorchRec's keys and layout, but
indexes rows by raw int64 IDs (no ``num_embeddings`` range, rows created on
first lookup) and trains them with a fused sparse optimizer in the backward.
See docs/torchrec.md.
"""

try:
    import torch as _torch  # noqa: F401
    import torchrec as _torchrec  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without torchrec
    raise ImportError(
        "embedlookup.torchrec needs PyTorch and TorchRec: pip install \"torch==2.13.0\" \"fbgemm-gpu-cpu==1.8.0\" "
        "&& pip install --no-deps \"torchrec==1.8.0\" && pip install pyre-extensions tensordict torchmetrics tqdm "
        "iopath (torchrec's metadata asks for the CUDA fbgemm-gpu, hence --no-deps)") from e

from .modules import EmbeddingBagCollection, EmbeddingCollection

__all__ = ["EmbeddingBagCollection", "EmbeddingCollection"]
