"""The torch modules over a parameter-server client (``table=client``):
training through a sync local server equals the same model over one
in-process EmbeddingTable, and bad arguments are refused before anything
reaches the server."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import embedlookup as el  # noqa: E402
from embedlookup import ps  # noqa: E402
from embedlookup.torch import HashEmbedding, HashEmbeddingBag, HashEmbeddingBagCollection  # noqa: E402

DIM = 8
INIT = el.init.uniform(-0.1, 0.1, seed=5)


@pytest.fixture
def server_of():
    """server_of(num_shards, optimizer, backend="local") -> a ParameterServer, shut down afterwards."""
    made = []

    def make(num_shards, optimizer, backend="local"):
        made.append(ps.ParameterServer(DIM, num_shards, table="embedding", table_options={"initializer": INIT},
                                       optimizer=optimizer, backend=backend))
        return made[-1]

    yield make
    for s in made:
        s.shutdown()


def _snapshot(server):
    """Every row the server holds and its optimizer state, sorted by key."""
    parts = [server.shard_state(i) for i in range(server.num_shards)]
    k = np.concatenate([p[0] for p in parts])
    r = np.concatenate([p[1] for p in parts])
    s = np.concatenate([np.asarray(p[2], np.float32).reshape(len(p[0]), -1) for p in parts if len(p[0])]
                       or [np.zeros((0, 0), np.float32)])
    order = np.argsort(k)
    return k[order], r[order], s[order]


def _batches(n, rng, vocab=60, bags=12, max_len=5):
    out = []
    for _ in range(n):
        lens = rng.integers(0, max_len + 1, bags)
        off = np.concatenate([[0], np.cumsum(lens)[:-1]])
        out.append((torch.from_numpy(rng.integers(0, vocab, int(lens.sum()))), torch.from_numpy(off),
                    torch.from_numpy(rng.random(int(lens.sum())).astype(np.float32))))
    return out


CASES = [("sum", False, el.optim.Adagrad(lr=0.2)), ("sum", False, el.optim.SGD(lr=0.1)),
         ("sum", False, el.optim.Adam(lr=0.05)), ("sum", True, el.optim.Adagrad(lr=0.2)),
         ("mean", False, el.optim.Adagrad(lr=0.2))]


def _train_and_compare(server, mode, weighted, opt, mode_name="sync"):
    """8 steps of a HashEmbeddingBag over a client of ``server`` and of the
    same module over one EmbeddingTable: equal outputs, weight gradients,
    rows and optimizer state (bit for bit with one shard and sum pooling)."""
    client = server.client(mode=mode_name)
    ours = HashEmbeddingBag(DIM, mode=mode, table=client)
    assert ours.optimizer == getattr(client, "optimizer", None)  # the server's, where the client tells it
    table = el.EmbeddingTable(DIM, initializer=INIT, optimizer=opt)
    ref = HashEmbeddingBag(DIM, mode=mode, table=table)
    exact = server.num_shards == 1 and mode == "sum"
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-6)
    for x, off, w in _batches(8, np.random.default_rng(server.num_shards)):
        kw_a = kw_b = {}
        if weighted:
            wa, wb = w.clone().requires_grad_(), w.clone().requires_grad_()
            kw_a, kw_b = {"per_sample_weights": wa}, {"per_sample_weights": wb}
        ya, yb = ours(x, off, **kw_a), ref(x, off, **kw_b)
        # one shard sums as the table does; several add partial bags, and "mean" divides the
        # sum on the client (fp32 rounding order): close, not equal
        torch.testing.assert_close(ya, yb, **tol)
        # a loss whose gradient depends on the forward values
        ((ya ** 2).sum() + ya[:, 0].sum()).backward()
        ((yb ** 2).sum() + yb[:, 0].sum()).backward()
        if weighted:
            torch.testing.assert_close(wa.grad, wb.grad, rtol=1e-5, atol=1e-6)
    client.flush()
    keys, rows = table.export()
    state = table._t.export_state(keys).reshape(len(keys), -1)
    sk, sr, ss = _snapshot(server)
    assert np.array_equal(sk, keys)  # no row the in-process table lacks
    if exact:
        np.testing.assert_array_equal(client.pull(keys), rows)
        np.testing.assert_array_equal(sr, rows)
        np.testing.assert_array_equal(ss, state)
    else:
        np.testing.assert_allclose(client.pull(keys), rows, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sr, rows, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ss, state, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("mode,weighted,opt", CASES,
                         ids=["sum-adagrad", "sum-sgd", "sum-adam", "weighted-adagrad", "mean-adagrad"])
def test_bag_over_sync_client_equals_in_process_table(server_of, shards, mode, weighted, opt):
    _train_and_compare(server_of(shards, opt), mode, weighted, opt)


def test_bag_over_ray_client_equals_in_process_table(server_of, ray_cluster):
    opt = el.optim.Adagrad(lr=0.2)
    _train_and_compare(server_of(1, opt, backend="ray"), "sum", True, opt)


def test_embedding_and_collection_over_client_equal_in_process(server_of):
    opt = el.optim.Adagrad(lr=0.1)
    client = server_of(2, opt).client(mode="sync")
    emb_ps = HashEmbedding(DIM, table=client)
    emb_ref = HashEmbedding(DIM, table=el.EmbeddingTable(DIM, initializer=INIT, optimizer=opt))
    x = torch.tensor([[1, 2, 3], [3, 3, 9]])
    for _ in range(3):
        a, b = emb_ps(x), emb_ref(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # one key per bag: no partial sums
        (a ** 3).sum().backward()
        (b ** 3).sum().backward()
    keys, rows = emb_ref.table.export()
    np.testing.assert_array_equal(client.pull(keys), rows)

    c2 = server_of(2, opt).client(mode="sync")
    feats = ["user", "item", "ad"]
    coll_ps = HashEmbeddingBagCollection(feats, DIM, table=c2)
    coll_ref = HashEmbeddingBagCollection(feats, DIM, table=el.EmbeddingTable(DIM, initializer=INIT, optimizer=opt))
    values = torch.tensor([1, 2, 3, 1, 5, 5, 7, 2, 2])
    lengths = torch.tensor([2, 1, 1, 2, 2, 1])
    for _ in range(3):
        a, b = coll_ps(values=values, lengths=lengths), coll_ref(values=values, lengths=lengths)
        for f in feats:
            torch.testing.assert_close(a[f], b[f], rtol=1e-6, atol=1e-7)
        sum((a[f] * (i + 1)).sum() for i, f in enumerate(feats)).backward()
        sum((b[f] * (i + 1)).sum() for i, f in enumerate(feats)).backward()
    keys, rows = coll_ref.bag.table.export()
    np.testing.assert_allclose(c2.pull(keys), rows, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="rows live on a parameter server"):
        coll_ps.memory_usage()


def test_constructor_refuses_what_belongs_to_the_server(server_of):
    opt = el.optim.Adagrad(lr=0.1)
    server = server_of(2, opt)
    client = server.client(mode="sync")
    with pytest.raises(ValueError, match="dim 8 .*embedding_dim=4"):
        HashEmbeddingBag(4, table=client)
    for kw in ({"initializer": INIT}, {"capacity": 10}, {"num_threads": 1}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))}.*table_options"):
            HashEmbeddingBag(DIM, table=client, **kw)
    with pytest.raises(ValueError, match=r"optimizer: a parameter server applies the optimizer of its shards"):
        HashEmbeddingBag(DIM, table=client, optimizer=el.optim.Adagrad(lr=0.2))
    with pytest.raises(ValueError, match="mode='max' is not supported with a parameter-server client"):
        HashEmbeddingBag(DIM, mode="max", table=client)
    if getattr(client, "optimizer", None) is not None:  # the server's own optimizer is accepted
        assert HashEmbeddingBag(DIM, table=client, optimizer=el.optim.Adagrad(lr=0.1)).optimizer == opt
    else:  # it cannot be checked against the server's: refused, None is the way
        with pytest.raises(ValueError, match=r"pass optimizer=None"):
            HashEmbeddingBag(DIM, table=client, optimizer=el.optim.Adagrad(lr=0.1))
    assert _snapshot(server)[0].size == 0  # nothing reached the server


def test_bad_input_and_rejected_push_leave_the_server_unchanged(server_of):
    server = server_of(2, el.optim.SGD(lr=0.5))
    client = server.client(mode="sync")
    bag = HashEmbeddingBag(DIM, mode="sum", table=client)
    bag(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2])).sum().backward()
    client.flush()
    before = _snapshot(server)
    with pytest.raises(ValueError, match="offsets"):
        bag(torch.tensor([1, 2, 30]), torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="per_sample_weights must be finite"):
        bag(torch.tensor([1, 2, 31]), torch.tensor([0, 1]), per_sample_weights=torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(TypeError, match="input must hold integers"):
        bag(torch.tensor([1.0, 2.0]), torch.tensor([0]))
    # a non-finite gradient: the push is refused, no row changes
    y = bag(torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="grad"):
        y.backward(torch.full_like(y, float("nan")))
    client.flush()
    for a, b in zip(_snapshot(server), before):
        np.testing.assert_array_equal(a, b)


def test_state_dict_keeps_no_rows_and_refuses_mixing(server_of):
    opt = el.optim.SGD(lr=0.1)
    client = server_of(1, opt).client(mode="sync")
    bag = HashEmbeddingBag(DIM, table=client)
    bag(torch.tensor([1, 2]), torch.tensor([0])).sum().backward()
    sd = bag.state_dict()
    assert sd["_extra_state"]["parameter_server"] is True and "rows" not in sd["_extra_state"]
    HashEmbeddingBag(DIM, table=client).load_state_dict(sd)  # a no-op: the rows stay on the server
    with pytest.raises(ValueError, match="parameter-server client keeps no rows"):
        HashEmbeddingBag(DIM, optimizer=opt).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter-server client keeps no rows"):
        HashEmbeddingBag(DIM, table=client).load_state_dict(HashEmbeddingBag(DIM, optimizer=opt).state_dict())
