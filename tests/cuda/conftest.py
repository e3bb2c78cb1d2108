"""One skip condition for every CUDA test: the GPU tests run only where the
CUDA backend is built, torch has CUDA and a GPU is visible. Tests marked
``cpu_only`` (the build report) run everywhere."""

from pathlib import Path

import pytest

import embedlookup.cuda as elc

_REASON = elc.unavailable_reason()


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only: CUDA-suite test that needs no GPU")


def pytest_collection_modifyitems(config, items):
    if _REASON is None:
        return
    skip = pytest.mark.skip(reason=f"CUDA tests need a GPU: {_REASON}")
    here = Path(__file__).parent
    for item in items:
        if Path(item.path).parent == here and "cpu_only" not in item.keywords:
            item.add_marker(skip)
