"""The client's one-pass split of a batch by shard (native
``partition_by_shard`` / ``shard_ids``) against the NumPy definition of the
rule (``embedlookup.sharding.shard_of``) and a NumPy reference of the split;
and a shard refusing keys that are not its own."""

import numpy as np
import pytest

import embedlookup as el
from embedlookup import _core, ps
from embedlookup.sharding import shard_of

EXTREMES = np.array([0, 1, -1, 2**63 - 1, -(2**63), 2**32, -(2**32), 0x5EEDC0DED15CA11E, ~0x5EEDC0DED15CA11E], np.int64)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 1000, 65536])
def test_native_shard_ids_equal_shard_of(n):
    rng = np.random.default_rng(n)
    keys = np.concatenate([EXTREMES, rng.integers(-(2**63), 2**63 - 1, 20000, dtype=np.int64),
                           np.arange(-500, 500, dtype=np.int64)])
    np.testing.assert_array_equal(_core.shard_ids(keys, n), shard_of(keys, n))


def _reference(v, off, n_bags, w, mean, n):
    """Per shard (values, offsets, weights, positions), by masks in NumPy."""
    sid = shard_of(v, n)
    ends = np.append(off[1:n_bags], v.shape[0]) if n_bags else np.zeros(0, np.int64)
    lengths = ends - off[:n_bags]
    if mean:
        w = np.repeat(np.float32(1) / np.maximum(lengths, 1).astype(np.float32), lengths)
    out = []
    for s in range(n):
        m = sid == s
        cs = np.concatenate([[0], np.cumsum(m)])
        out.append((v[m], cs[off[:n_bags]], None if w is None else w[m], np.flatnonzero(m)))
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 7])
@pytest.mark.parametrize("case", ["plain", "weights", "mean", "last_offset", "empty"])
def test_partition_equals_the_numpy_split(n, case):
    rng = np.random.default_rng(n)
    n_bags = 0 if case == "empty" else 300
    lengths = rng.integers(0, 9, n_bags)  # empty bags included
    lengths[:3] = 0
    v = rng.integers(-(2**40), 2**40, int(lengths.sum())).astype(np.int64)
    off = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if n_bags else np.zeros(0, np.int64)
    w = rng.uniform(0.5, 2, v.shape[0]).astype(np.float32) if case == "weights" else None
    off_arg = np.append(off, v.shape[0]) if case == "last_offset" else off  # n_bags + 1 offsets
    got = _core.partition_by_shard(v, off_arg, n_bags, w, case == "mean", n, True)
    ref = _reference(v, off, n_bags, w, case == "mean", n)
    assert len(got) == n
    for (gv, go, gw, gp), (rv, ro, rw, rp) in zip(got, ref):
        np.testing.assert_array_equal(gv, rv)
        np.testing.assert_array_equal(go, ro)
        assert go.shape == (n_bags,)
        np.testing.assert_array_equal(gp, rp)
        if rw is None:
            assert gw is None
        else:
            np.testing.assert_array_equal(gw, rw)  # bit for bit: 1.0f / len, as the kernel scales
    assert sum(g[0].shape[0] for g in got) == v.shape[0]


@pytest.mark.parametrize("case", ["plain", "weights", "mean", "last_offset"])
def test_two_shards_on_a_w1_sized_batch(case):
    """Two shards (the native split's own path) on 4096 bags of 32 keys and
    on skewed bags, against the NumPy split."""
    rng = np.random.default_rng(17)
    for lengths in (np.full(4096, 32), rng.integers(0, 70, 2000)):
        n_bags = lengths.shape[0]
        v = rng.integers(-(2**63), 2**63 - 1, int(lengths.sum()), dtype=np.int64)
        off = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        w = rng.uniform(0.5, 2, v.shape[0]).astype(np.float32) if case == "weights" else None
        off_arg = np.append(off, v.shape[0]) if case == "last_offset" else off
        for positions in (False, True):
            got = _core.partition_by_shard(v, off_arg, n_bags, w, case == "mean", 2, positions)
            ref = _reference(v, off, n_bags, w, case == "mean", 2)
            for (gv, go, gw, gp), (rv, ro, rw, rp) in zip(got, ref):
                np.testing.assert_array_equal(gv, rv)
                np.testing.assert_array_equal(go, ro)
                if positions:
                    np.testing.assert_array_equal(gp, rp)
                else:
                    assert gp is None
                if rw is None:
                    assert gw is None
                else:
                    np.testing.assert_array_equal(gw, rw)


def test_partition_of_flat_keys():
    keys = np.random.default_rng(1).integers(-(2**62), 2**62, 5000).astype(np.int64)
    for n in (2, 3):
        got = _core.partition_by_shard(keys, None, 0, None, False, n, True)
        sid = shard_of(keys, n)
        for s, (gv, go, gw, gp) in enumerate(got):
            assert go is None and gw is None
            np.testing.assert_array_equal(gp, np.flatnonzero(sid == s))
            np.testing.assert_array_equal(gv, keys[sid == s])
    for n in (1, 2, 3):  # an empty batch
        for gv, go, gw, gp in _core.partition_by_shard(keys[:0], None, 0, None, False, n, True):
            assert gv.shape == gp.shape == (0,)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_shard_refuses_keys_of_another_shard(make_server):
    """A call that reaches a shard with keys the rule gives to another shard
    (a client bypassing the split) is refused: pulls raise, a push is
    rejected with the rows unchanged and the client goes on."""
    server = make_server(4, 2)
    client = server.client()
    keys = np.arange(16, dtype=np.int64)
    client.pull(keys)
    before = [server.shard_state(i)[:2] for i in range(2)]
    k1 = keys[shard_of(keys, 2) == 1]
    off = np.array([0], np.int64)
    with pytest.raises(ValueError, match="belong to other shards.*this is shard 0 of 2"):
        server._b.cores[0].pooled_pull(k1, off, None, "sum")
    with pytest.raises(ValueError, match="belong to other shards"):
        server._b.cores[0].pull(k1)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), None, np.zeros((0, 4), np.float32))
    wrong = [(k1, off, None, np.ones((1, 4), np.float32)), empty]  # shard 0 gets shard 1's keys
    with pytest.raises(ps.PushRejectedError, match="shard 0: ValueError: values: .* belong to other shards"):
        client._send_push("push_pooled", wrong)
    after = [server.shard_state(i)[:2] for i in range(2)]
    for b, a in zip(before, after):  # keys and rows of both shards unchanged (shard 1 took an empty step)
        np.testing.assert_array_equal(b[0], a[0])
        np.testing.assert_array_equal(b[1], a[1])
    assert server.stats()["rejected"] == 1
    g = np.ones((16, 4), np.float32)
    client.push(keys, g)
    ref = el.EmbeddingTable(4, optimizer=server.optimizer, initializer=el.init.uniform())
    ref.lookup(keys)
    ref.apply_gradients(keys, g)
    np.testing.assert_array_equal(client.pull(keys), ref.lookup(keys))


def test_partition_refuses_bags_it_cannot_read():
    v = np.arange(6, dtype=np.int64)
    cases = [
        (np.array([0, 2], np.int64), 3, "n_bags or n_bags \\+ 1"),  # too few offsets
        (np.array([1, 2], np.int64), 2, "start at 0"),
        (np.array([0, 4, 2], np.int64), 3, "not decrease"),
        (np.array([0, 9], np.int64), 2, "number of values"),
        (np.array([0, 2, 5], np.int64), 2, "last one"),  # include_last_offset style, short of n
    ]
    for off, n_bags, msg in cases:
        with pytest.raises(ValueError, match=msg):
            _core.partition_by_shard(v, off, n_bags, None, False, 2, False)
    with pytest.raises(ValueError, match="one per value"):
        _core.partition_by_shard(v, np.array([0], np.int64), 1, np.ones(5, np.float32), False, 2, False)
    for fn in (lambda: _core.partition_by_shard(v, None, 0, None, False, 0, False), lambda: _core.shard_ids(v, 0)):
        with pytest.raises(ValueError, match="num_shards"):
            fn()


def test_same_values_is_array_equal():
    """The shards' comparison of a push's keys with its pull's: equal to
    np.array_equal (same dtype), reading nothing when both arrays view the
    same memory with the same layout."""
    from embedlookup.ps._shard import same_values

    a = np.arange(100, dtype=np.int64)
    m = a.reshape(10, 10)
    b = a.copy()
    b[-1] = -1
    cases = [(a, a), (a, a[:]), (a, a.copy()), (a, b), (a, a[::-1]), (a[:50], a[50:]), (a[:50], a[::2]),
             (a[::2], a[::2].copy()), (a, a.astype(np.int32)), (m, m.T), (m, m.T.copy().T), (a[:0], a[5:5]),
             (a, np.arange(1, 101)), (a[:50], a[:60])]
    for x, y in cases:
        assert same_values(x, y) == (x.dtype == y.dtype and np.array_equal(x, y)), (x, y)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_push_reusing_its_pulls_ids_still_refuses_other_keys(make_server):
    """A shard skips hashing a push's keys only when they are the keys its
    pull of the same client checked: a push of other keys (here another
    shard's) after that pull is refused, rows unchanged; the same keys in
    another array are applied with the pull's ids, equal to one table."""
    opt, init = el.optim.Adagrad(lr=0.1), el.init.normal(std=0.1, seed=5)
    server = make_server(4, 2, optimizer=opt, table_options={"initializer": init})
    core = server._b.cores[0]
    keys = np.arange(64, dtype=np.int64)
    own, foreign = keys[shard_of(keys, 2) == 0], keys[shard_of(keys, 2) == 1]
    off, g = np.array([0], np.int64), np.ones((1, 4), np.float32)
    ref = el.EmbeddingTable(4, optimizer=opt, initializer=init)
    core.pooled_pull(own, off, None, "sum", "c")
    ref.lookup(own)
    rows = core.table.lookup(own)
    status, msg = core.push_pooled("c", 0, foreign, off, None, g)
    assert status == "rejected" and "belong to other shards" in msg
    np.testing.assert_array_equal(core.table.lookup(own), rows)
    assert len(core.table) == own.shape[0]
    core.pooled_pull(own, off, None, "sum", "c")
    assert core.push_pooled("c", 1, own.copy(), off.copy(), None, g)[0] == "applied"
    assert core.ids_reused == 1
    ref.apply_pooled_gradients(own, off, g)
    np.testing.assert_array_equal(core.table.lookup(own), ref.lookup(own))
