import pytest
from embedlookup.bench import OPS, SUBJECTS


@pytest.fixture
def registry():
    """Lets a test register extra subjects/implementations; removes them afterwards."""
    subjects, impls = dict(SUBJECTS), {k: dict(v.impls) for k, v in OPS.items()}
    yield
    SUBJECTS.clear()
    SUBJECTS.update(subjects)
    for k, v in OPS.items():
        v.impls.clear()
        v.impls.update(impls.get(k, {}))


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """`embedlookup bench` saves its report under ./bench_results by default:
    every test here runs in its own temporary folder, so none writes into the checkout.
    A relative PYTHONPATH (``PYTHONPATH=python``) is made absolute first, for the
    tests that start a fresh interpreter."""
    import os

    path = os.environ.get("PYTHONPATH")
    if path:
        absolute = [os.path.abspath(p) for p in path.split(os.pathsep) if p]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(absolute))
    monkeypatch.chdir(tmp_path)
