"""sync mode is exact: the same pushes through a sharded server and through
one in-process EmbeddingTable leave every row, every optimizer state and the
step count equal bit for bit. Pulls: rows exact; pooled partials combined on
the client equal the table's pooling (max exactly, sum / mean up to float
reassociation)."""

import numpy as np
import pytest

import embedlookup as el

from ps_helpers import assert_matches_table


def _batch(rng, n_bags, max_len, key_space):
    lengths = rng.integers(0, max_len + 1, n_bags)
    off = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    values = rng.integers(-key_space, key_space, int(lengths.sum())).astype(np.int64)
    return values, off


OPTIMIZERS = [el.optim.Adam(lr=0.05, weight_decay=0.01), el.optim.Adagrad(lr=0.1, lr_decay=0.01),
              el.optim.SGD(lr=0.2), el.optim.Adagrad(lr=0.1, rowwise=True)]


# Every optimizer and shard count on the local backend; Ray runs one of them
# (each Ray server costs a few seconds of actor start-up).
CASES = [("local", o, n) for o in OPTIMIZERS for n in (1, 3)] + [("ray", OPTIMIZERS[0], 3)]


@pytest.mark.parametrize("backend,opt,num_shards", CASES, indirect=["backend"],
                         ids=[f"{b}-{type(o).__name__}{'-rw' if getattr(o, 'rowwise', 0) else ''}-{n}"
                              for b, o, n in CASES])
def test_sync_equals_one_table(make_server, opt, num_shards):
    dim = 12
    init = el.init.normal(std=0.1, seed=5)
    server = make_server(dim, num_shards, optimizer=opt, table_options={"initializer": init})
    ref = el.EmbeddingTable(dim, initializer=init, optimizer=opt)
    client = server.client(mode="sync")
    rng = np.random.default_rng(num_shards)
    for step in range(12):
        values, off = _batch(rng, 20, 6, 40)  # few keys: many duplicates within and across bags
        kind = step % 4
        if kind in (0, 1):  # sum, mean
            mode = ("sum", "mean")[kind]
            got = client.pooled_pull(values, off, mode=mode)
            np.testing.assert_allclose(got, ref.pooled_lookup(values, off, mode=mode), rtol=1e-5, atol=1e-6)
            g = rng.standard_normal((off.shape[0], dim)).astype(np.float32)
            client.push_pooled(values, off, g, mode=mode)
            ref.apply_pooled_gradients(values, off, g, mode=mode)
        elif kind == 2:  # weighted sum, max pooling forward
            w = rng.uniform(0.1, 2, values.shape[0]).astype(np.float32)
            np.testing.assert_array_equal(client.pooled_pull(values, off, mode="max"),
                                          ref.pooled_lookup(values, off, mode="max"))
            got = client.pooled_pull(values, off, mode="sum", per_sample_weights=w)
            np.testing.assert_allclose(got, ref.pooled_lookup(values, off, mode="sum", per_sample_weights=w),
                                       rtol=1e-5, atol=1e-6)
            g = rng.standard_normal((off.shape[0], dim)).astype(np.float32)
            client.push_pooled(values, off, g, per_sample_weights=w)
            ref.apply_pooled_gradients(values, off, g, per_sample_weights=w)
        else:  # per-key pull / push, duplicated keys
            keys = values
            np.testing.assert_array_equal(client.pull(keys), ref.lookup(keys))
            g = rng.standard_normal((keys.shape[0], dim)).astype(np.float32)
            client.push(keys, g)
            ref.apply_gradients(keys, g)
        # a pull after a push sees it, on every shard
        probe = np.unique(values)
        np.testing.assert_array_equal(client.pull(probe), ref.lookup(probe))
    assert_matches_table(server, ref)
    st = server.stats()
    assert st["pushes_applied"] == 12 * num_shards and st["duplicates_dropped"] == 0


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_two_sync_clients_interleaved(make_server):
    """Pushes of two sync clients, interleaved: the server equals the table
    that applied them in the same order."""
    opt = el.optim.Adam(lr=0.01)
    server = make_server(8, 2, optimizer=opt)
    ref = el.EmbeddingTable(8, optimizer=opt, initializer=el.init.uniform())
    a, b = server.client("sync"), server.client("sync")
    rng = np.random.default_rng(0)
    for step in range(8):
        c = (a, b)[step % 2]
        values, off = _batch(rng, 10, 4, 30)
        c.pooled_pull(values, off)
        ref.pooled_lookup(values, off)
        g = rng.standard_normal((off.shape[0], 8)).astype(np.float32)
        c.push_pooled(values, off, g)
        ref.apply_pooled_gradients(values, off, g)
    assert_matches_table(server, ref)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_empty_bags_and_no_keys_on_a_shard(make_server):
    server = make_server(4, 4)
    client = server.client()
    values = np.array([3], np.int64)  # one key: three shards hold none of it
    off = np.array([0, 0, 1, 1], np.int64)
    ref = el.EmbeddingTable(4, optimizer=server.optimizer, initializer=el.init.uniform())
    for mode in ("sum", "mean", "max"):
        np.testing.assert_array_equal(client.pooled_pull(values, off, mode=mode),
                                      ref.pooled_lookup(values, off, mode=mode))
    g = np.ones((4, 4), np.float32)
    client.push_pooled(values, off, g, mode="mean")
    ref.apply_pooled_gradients(values, off, g, mode="mean")
    assert_matches_table(server, ref)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_push_reuses_its_pulls_row_ids_only_for_the_same_batch(make_server):
    """A shard keeps the row ids of a client's pooled pull and its push_pooled
    of the same batch reuses them (counted); another batch, or a row freed in
    between (layout epoch), resolves the keys again. Every case equals one
    table bit for bit."""
    opt, init = el.optim.Adagrad(lr=0.1), el.init.normal(std=0.1, seed=3)
    server = make_server(8, 2, optimizer=opt, table_options={"initializer": init})
    ref = el.EmbeddingTable(8, initializer=init, optimizer=opt)
    c = server.client("sync")
    rng = np.random.default_rng(7)
    a = rng.integers(0, 50, 60).astype(np.int64)
    off = np.arange(0, 60, 6, dtype=np.int64)
    g = rng.standard_normal((10, 8)).astype(np.float32)

    def reused():
        return sum(s["ids_reused"] for s in server.stats()["shards"])

    def step(pull, push):
        c.pooled_pull(pull, off)
        ref.pooled_lookup(pull, off)
        c.push_pooled(push, off, g)
        ref.lookup(push)  # the shard inserts a key its pull did not, as a pull would
        ref.apply_pooled_gradients(push, off, g)

    step(a, a)
    assert reused() == 2  # both shards hold keys of the batch
    b = a.copy()
    b[0] = 1000  # another batch: resolved again
    step(a, b)
    assert reused() == 2
    # The client reuses its pull's split for the push of the same batch, never for a changed one: a batch
    # changed in place, then other weights.
    c.pooled_pull(a, off)
    ref.pooled_lookup(a, off)
    a[5] = 2000
    c.push_pooled(a, off, g)
    ref.lookup(a)
    ref.apply_pooled_gradients(a, off, g)
    w1, w2 = np.full(60, 0.5, np.float32), np.full(60, 2.0, np.float32)
    c.pooled_pull(a, off, per_sample_weights=w1)
    c.push_pooled(a, off, g, per_sample_weights=w2)
    ref.apply_pooled_gradients(a, off, g, per_sample_weights=w2)
    c.pooled_pull(a, off, mode="mean")
    c.push_pooled(a, off, g, mode="mean")  # needs 1 / bag length weights: split again
    ref.apply_pooled_gradients(a, off, g, mode="mean")
    assert_matches_table(server, ref)
    # A row of the batch freed between pull and push: the ids' epoch is stale, the keys are resolved again.
    c.pooled_pull(a, off)
    ref.pooled_lookup(a, off)
    core = server._b.cores[int(el.sharding.shard_of(a[:1], 2)[0])]
    assert core.table.erase(a[:1]) == 1 and ref.erase(a[:1]) == 1
    c.push_pooled(a, off, g)
    ref.lookup(a)
    ref.apply_pooled_gradients(a, off, g)
    assert_matches_table(server, ref)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_batch_changed_in_place_between_pull_and_push_on_one_shard(make_server):
    """One local shard receives the caller's own arrays: a batch changed in
    place after the pull must not reuse the pull's row ids."""
    opt, init = el.optim.SGD(lr=1.0), el.init.normal(std=0.1, seed=4)
    server = make_server(4, 1, optimizer=opt, table_options={"initializer": init})
    ref = el.EmbeddingTable(4, initializer=init, optimizer=opt)
    c = server.client("sync")
    a = np.arange(12, dtype=np.int64)
    off = np.array([0, 6], np.int64)
    g = np.ones((2, 4), np.float32)
    c.pooled_pull(a, off)
    ref.pooled_lookup(a, off)
    a[:] = np.arange(12, 24)  # other keys, same array
    c.push_pooled(a, off, g)
    ref.lookup(a)
    ref.apply_pooled_gradients(a, off, g)
    assert_matches_table(server, ref)
    assert server.stats()["shards"][0]["ids_reused"] == 0


def test_a_pooled_pull_returns_an_array_of_its_own(make_server):
    """The combined partials are the caller's to change (a local shard's
    partial is summed in place): changing one result does not change the
    next pull; sum, mean and max against one table."""
    server = make_server(4, 2)
    c = server.client("sync")
    ref = el.EmbeddingTable(4, optimizer=server.optimizer, initializer=el.init.uniform())
    keys = np.arange(40, dtype=np.int64)
    off = np.arange(0, 40, 4, dtype=np.int64)
    for mode in ("sum", "mean", "max"):
        want = ref.pooled_lookup(keys, off, mode=mode)
        out = c.pooled_pull(keys, off, mode=mode)
        np.testing.assert_allclose(out, want, rtol=1e-5)
        assert out.flags.writeable
        out[:] = 7.0
        np.testing.assert_allclose(c.pooled_pull(keys, off, mode=mode), want, rtol=1e-5)


@pytest.mark.parametrize("share", [True, False], ids=["one-put", "put-per-shard"])
def test_one_put_for_every_shard_or_one_each_trains_the_same(make_server, backend, share):
    """The shards' parts of a batch go in one put when the shards share this
    process's object store, else one put per shard: either way each shard
    gets its own part (sum, weighted, mean; the push of the pulled batch and
    of another one), and the model equals one table bit for bit."""
    dim, opt, init = 6, el.optim.Adam(lr=0.05), el.init.normal(std=0.1, seed=8)
    server = make_server(dim, 3, optimizer=opt, table_options={"initializer": init})
    if backend == "ray":
        assert server._b.share_puts  # one machine: every shard on this node
        server._b._share = share
    else:
        server._b.share_puts = share
    ref = el.EmbeddingTable(dim, initializer=init, optimizer=opt)
    c = server.client("sync")
    rng = np.random.default_rng(11)
    for step in range(6):
        values, off = _batch(rng, 15, 6, 30)
        w = rng.uniform(0.5, 2, values.shape[0]).astype(np.float32) if step % 3 == 1 else None
        mode = "mean" if step % 3 == 2 else "sum"
        np.testing.assert_allclose(c.pooled_pull(values, off, mode=mode, per_sample_weights=w),
                                   ref.pooled_lookup(values, off, mode=mode, per_sample_weights=w),
                                   rtol=1e-5, atol=1e-6)
        g = rng.standard_normal((off.shape[0], dim)).astype(np.float32)
        pushed = values if step != 3 else rng.integers(-30, 30, values.shape[0]).astype(np.int64)
        c.push_pooled(pushed, off, g, mode=mode, per_sample_weights=w)
        ref.lookup(pushed)
        ref.apply_pooled_gradients(pushed, off, g, mode=mode, per_sample_weights=w)
    assert_matches_table(server, ref)
    assert sum(s["ids_reused"] for s in server.stats()["shards"]) > 0


def test_parts_stand_for_the_receiving_shards_part():
    """A Parts argument of a shard call is replaced by that shard's part."""
    from embedlookup.ps._shard import Parts, call

    class Core:
        index, busy = 1, {}

        def echo(self, *args):
            return args

    a, b = np.arange(3), np.arange(5)
    assert call(Core(), "echo", ("x", Parts({0: (a, None), 1: (b, None)}), 7)) == ("x", b, None, 7)
    assert call(Core(), "echo", (a,)) == (a,)
