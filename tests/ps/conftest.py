"""Fixtures of the parameter-server tests: the backend parameter (every test
body runs on "local" and on "ray") and one Ray cluster for the whole session,
started only when a Ray test runs."""

import os

import pytest

import embedlookup as el
from embedlookup import ps

BACKENDS = ["local", "ray"]


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # Worker processes import embedlookup from wherever this process did.
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(el.__file__)))
        paths = [pkg_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in paths)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return request.param


@pytest.fixture
def make_server(backend):
    """make_server(dim, num_shards, **kw) -> a ParameterServer on the test's backend, shut down afterwards."""
    made = []

    def make(dim=8, num_shards=2, **kw):
        kw.setdefault("optimizer", el.optim.Adagrad(lr=0.1))
        s = ps.ParameterServer(dim, num_shards, backend=backend, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.shutdown()
