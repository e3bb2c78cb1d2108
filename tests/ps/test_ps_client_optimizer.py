"""Client.optimizer: the server's optimizer, read-only, carried when a client is pickled."""

import pickle

import numpy as np
import pytest

import embedlookup as el
from embedlookup import ps


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_client_reports_the_servers_optimizer(make_server, tmp_path):
    opt = el.optim.Adam(lr=0.01, weight_decay=0.1)
    server = make_server(4, 2, optimizer=opt)
    for c in (server.client("sync"), server.client("bounded:2"), server.client("async", client_id="t1")):
        assert c.optimizer == opt and c.optimizer is server.optimizer
        assert c.optimizer != el.optim.Adam(lr=0.02, weight_decay=0.1)
        with pytest.raises(AttributeError):
            c.optimizer = el.optim.SGD(lr=1.0)
        assert c.optimizer == opt  # unchanged
    server.save(tmp_path / "m")
    loaded = ps.ParameterServer.load(tmp_path / "m")
    try:
        assert loaded.client().optimizer == opt
    finally:
        loaded.shutdown()


@pytest.mark.parametrize("backend", ["ray"], indirect=True)
def test_pickled_client_carries_the_optimizer(make_server):
    opt = el.optim.Adagrad(lr=0.05)
    server = make_server(4, 2, optimizer=opt)
    client = server.client("bounded:1")
    client.push(np.arange(4), np.ones((4, 4), np.float32))
    copy = pickle.loads(pickle.dumps(client))
    assert copy.optimizer == opt and isinstance(copy.optimizer, el.optim.Adagrad)
    copy.flush()
    assert server.stats()["pushes_applied"] == 2
