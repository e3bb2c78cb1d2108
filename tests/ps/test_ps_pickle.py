"""A Ray client pickles into a trainer task and continues there."""

import pickle

import numpy as np
import pytest

import embedlookup as el
from embedlookup import ps


@pytest.mark.parametrize("backend", ["ray"], indirect=True)
def test_client_moves_into_a_ray_task(make_server):
    import ray

    server = make_server(4, 2, optimizer=el.optim.SGD(lr=1.0), table_options={"initializer": el.init.zeros()})
    client = server.client("bounded:2")
    keys = np.arange(10, dtype=np.int64)
    client.pull(keys)
    client.push(keys, -np.ones((10, 4), np.float32))

    @ray.remote(num_cpus=0)
    def trainer(c):
        c.push(np.arange(10), -np.ones((10, 4), np.float32))
        c.flush()
        return c.pull(np.arange(10))

    rows = ray.get(trainer.remote(client), timeout=120)
    np.testing.assert_array_equal(rows, np.full((10, 4), 2, np.float32))  # both pushes, each once
    assert server.stats()["pushes_applied"] == 2 * 2
    with pytest.raises(ps.PSError, match="pickled"):
        client.push(keys, -np.ones((10, 4), np.float32))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_local_client_does_not_pickle(make_server):
    with pytest.raises(TypeError, match="local"):
        pickle.dumps(make_server(4, 1).client())
