"""TorchRec backend: ``EmbeddingBagCollection``, a drop-in for TorchRec's
over embedlookup's hashed tables (needs ``torch`` and ``torchrec``).

It takes TorchRec's ``EmbeddingBagConfig``s and ``KeyedJaggedTensor``s and
returns TorchRec ``KeyedTensor``s with TorchRec's key order and layout, but
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

from .modules import EmbeddingBagCollection

__all__ = ["EmbeddingBagCollection"]
