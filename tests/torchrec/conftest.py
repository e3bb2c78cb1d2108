import pytest

# The whole folder needs TorchRec (and torch); without it every test here skips.
pytest.importorskip("torch")
pytest.importorskip("torchrec")
