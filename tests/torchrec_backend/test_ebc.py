"""embedlookup.torchrec.EmbeddingBagCollection against TorchRec's own
EmbeddingBagCollection: the same rows copied into both (TorchRec's on dense
row numbers, ours keyed by the raw int64 IDs they stand for), the same
batches, the same optimizer (torch.optim on TorchRec's dense weights vs our
fused sparse step): the KeyedTensors and the rows agree."""

import copy

import numpy as np
import pytest
import torch

torchrec = pytest.importorskip("torchrec")
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor, PoolingType  # noqa: E402
from torchrec import EmbeddingBagCollection as TorchRecEBC  # noqa: E402

import embedlookup as el  # noqa: E402
from embedlookup.torchrec import EmbeddingBagCollection  # noqa: E402

ROWS = 40  # distinct raw IDs per table
B = 6


def _configs(pooling):
    # Two tables of different dims, two features each; a feature also read by
    # both tables ("shared": TorchRec names its outputs shared@user, shared@item).
    return [
        EmbeddingBagConfig(name="user", embedding_dim=8, num_embeddings=ROWS, feature_names=["f_a", "f_b", "shared"],
                           pooling=pooling),
        EmbeddingBagConfig(name="item", embedding_dim=4, num_embeddings=ROWS, feature_names=["f_c", "shared", "f_d"],
                           pooling=pooling),
    ]


class World:
    """Raw int64 IDs (huge, negative, INT64_MAX), their dense row numbers for
    TorchRec, and batches as a pair of KJTs (raw for ours, dense for TorchRec)."""

    def __init__(self, configs, seed):
        self.rng = np.random.default_rng(seed)
        self.configs = configs
        # One universe of raw IDs (TorchRec's row j is raw[j] in every table, so
        # a feature read by several tables finds its row in each).
        ids = self.rng.choice(np.iinfo(np.int64).max, size=ROWS, replace=False).astype(np.int64)
        ids[: ROWS // 4] *= -1
        ids[-1] = np.iinfo(np.int64).max
        self.raw = ids

    def batch(self, keys, weighted):
        lengths = self.rng.integers(0, 5, size=len(keys) * B)
        lengths[1] = 0  # an empty bag
        dense = self.rng.integers(0, ROWS, size=int(lengths.sum()))
        raw = self.raw[dense]
        w = torch.from_numpy(self.rng.uniform(0.1, 2.0, size=dense.shape[0]).astype(np.float32)) if weighted else None
        lt = torch.from_numpy(lengths)
        return (KeyedJaggedTensor(keys=keys, values=torch.from_numpy(raw), lengths=lt, weights=w),
                KeyedJaggedTensor(keys=keys, values=torch.from_numpy(dense), lengths=lt, weights=w))

    def copy_rows(self, ref, ours):
        """TorchRec's row j of table t -> our table t at key raw[j]."""
        for c in self.configs:
            ours.embedding_bags[c.name].table.assign(self.raw, ref.embedding_bags[c.name].weight.detach().numpy())


def _pair(pooling, weighted, optimizer=None, seed=0):
    configs = _configs(pooling)
    torch.manual_seed(seed)
    ref = TorchRecEBC(tables=copy.deepcopy(configs), is_weighted=weighted)
    ours = EmbeddingBagCollection(copy.deepcopy(configs), is_weighted=weighted, optimizer=optimizer)
    world = World(configs, seed)
    world.copy_rows(ref, ours)
    return world, ref, ours


def _check_same(kt_ours, kt_ref, atol=1e-6):
    assert isinstance(kt_ours, KeyedTensor)
    assert kt_ours.keys() == kt_ref.keys()
    assert kt_ours.length_per_key() == kt_ref.length_per_key()
    assert kt_ours.key_dim() == kt_ref.key_dim() == 1
    assert kt_ours.values().shape == kt_ref.values().shape
    torch.testing.assert_close(kt_ours.values(), kt_ref.values().float(), rtol=1e-5, atol=atol)
    for k in kt_ref.keys():  # and per key, through KeyedTensor's own accessors
        torch.testing.assert_close(kt_ours[k], kt_ref[k], rtol=1e-5, atol=atol)


CONFIG_ORDER = ["f_a", "f_b", "shared", "f_c", "f_d"]
SHUFFLED = ["f_d", "shared", "f_b", "extra", "f_c", "f_a"]  # another order, and a key no table reads

CASES = [(PoolingType.SUM, False), (PoolingType.MEAN, False), (PoolingType.SUM, True)]


@pytest.mark.parametrize("pooling,weighted", CASES)
@pytest.mark.parametrize("keys", [CONFIG_ORDER, SHUFFLED], ids=["config-order", "shuffled"])
def test_forward_matches_torchrec(pooling, weighted, keys):
    world, ref, ours = _pair(pooling, weighted)
    for _ in range(3):
        raw, dense = world.batch(keys, weighted)
        _check_same(ours(raw), ref(dense))


def _sgd():
    return el.optim.SGD(lr=0.5), lambda p: torch.optim.SGD(p, lr=0.5)


def _adagrad():
    return el.optim.Adagrad(lr=0.3), lambda p: torch.optim.Adagrad(p, lr=0.3)


@pytest.mark.parametrize("pooling,weighted", CASES)
@pytest.mark.parametrize("make_opt", [_sgd, _adagrad], ids=["sgd", "adagrad"])
def test_training_matches_torchrec(pooling, weighted, make_opt):
    ours_opt, ref_opt_of = make_opt()
    world, ref, ours = _pair(pooling, weighted, optimizer=ours_opt, seed=1)
    ref_opt = ref_opt_of(ref.parameters())
    keys = SHUFFLED
    for step in range(6):
        raw, dense = world.batch(keys, weighted)
        kt_ref, kt_ours = ref(dense), ours(raw)
        _check_same(kt_ours, kt_ref, atol=2e-6)
        target = torch.from_numpy(np.random.default_rng(step).normal(size=tuple(kt_ref.values().shape))).float()
        ref_opt.zero_grad()
        (kt_ref.values() * target).sum().backward()
        ref_opt.step()
        (kt_ours.values() * target).sum().backward()  # fused: updates our rows in place
    raw, dense = world.batch(keys, weighted)
    _check_same(ours(raw), ref(dense), atol=2e-5)
    # Every row, read back by key (training touched a subset; untouched rows stay equal too).
    for c in world.configs:
        rows, found = ours.embedding_bags[c.name].table.find(world.raw)
        assert found.all()
        np.testing.assert_allclose(rows, ref.embedding_bags[c.name].weight.detach().numpy(), rtol=1e-5, atol=2e-5)


def test_state_dict_round_trip():
    world, ref, ours = _pair(PoolingType.SUM, True, optimizer=el.optim.Adagrad(lr=0.2), seed=2)
    ref_opt = torch.optim.Adagrad(ref.parameters(), lr=0.2)
    for step in range(3):
        raw, dense = world.batch(SHUFFLED, True)
        ref_opt.zero_grad()
        ref(dense).values().sum().backward()
        ref_opt.step()
        ours(raw).values().sum().backward()
    state = ours.state_dict()
    assert {k.split(".")[1] for k in state if k.startswith("embedding_bags.")} == {"user", "item"}
    fresh = EmbeddingBagCollection(_configs(PoolingType.SUM), is_weighted=True, optimizer=el.optim.Adagrad(lr=0.2),
                                   seed=99)
    fresh.load_state_dict(state)
    # Rows and Adagrad state came back: more steps on the restored module still follow TorchRec.
    for step in range(2):
        raw, dense = world.batch(SHUFFLED, True)
        kt_ref, kt_fresh = ref(dense), fresh(raw)
        _check_same(kt_fresh, kt_ref, atol=1e-5)
        ref_opt.zero_grad()
        kt_ref.values().sum().backward()
        ref_opt.step()
        kt_fresh.values().sum().backward()
    raw, dense = world.batch(SHUFFLED, True)
    _check_same(fresh(raw), ref(dense), atol=2e-5)


def test_new_ids_are_initialised_in_torchrecs_range_and_unbounded():
    cfg = [EmbeddingBagConfig(name="t", embedding_dim=16, num_embeddings=100, feature_names=["f"])]
    ours = EmbeddingBagCollection(cfg)
    ids = torch.tensor([0, 99, 100, 10**15, -(2**63), 2**63 - 1])  # past num_embeddings: still rows of their own
    kt = ours(KeyedJaggedTensor(keys=["f"], values=ids, lengths=torch.ones(6, dtype=torch.int64)))
    bound = (1 / 100) ** 0.5  # TorchRec's default init range: +-sqrt(1/num_embeddings)
    v = kt.values()
    assert v.shape == (6, 16) and float(v.abs().max()) <= bound and float(v.abs().min()) > 0
    assert len(ours.embedding_bags["t"].table) == 6
    assert torch.unique(v, dim=0).shape[0] == 6  # distinct rows: no collisions


def test_capacity_num_embeddings_bounds_the_table():
    cfg = [EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=3, feature_names=["f"])]
    ours = EmbeddingBagCollection(cfg, capacity="num_embeddings")
    ours(KeyedJaggedTensor(keys=["f"], values=torch.tensor([5, 6, 7]), lengths=torch.tensor([3])))
    with pytest.raises(el.TableFullError):
        ours(KeyedJaggedTensor(keys=["f"], values=torch.tensor([8]), lengths=torch.tensor([1])))


def test_interface_matches_torchrec():
    configs = _configs(PoolingType.MEAN)
    ours = EmbeddingBagCollection(copy.deepcopy(configs))
    ref = TorchRecEBC(tables=copy.deepcopy(configs))
    assert isinstance(ours, torchrec.modules.embedding_modules.EmbeddingBagCollectionInterface)
    assert [c.name for c in ours.embedding_bag_configs()] == [c.name for c in ref.embedding_bag_configs()]
    assert ours.is_weighted() is ref.is_weighted() is False
    assert ours.device == ref.device
    assert ours._embedding_names == ref._embedding_names == ["f_a", "f_b", "shared@user", "f_c", "shared@item", "f_d"]


# --------------------------------------------------------------- bad input
def _one_table(**kw):
    return [EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10, feature_names=["f"], **kw)]


def test_bad_construction_names_the_argument():
    with pytest.raises(ValueError, match="is_weighted=True needs PoolingType.SUM"):
        EmbeddingBagCollection(_one_table(pooling=PoolingType.MEAN), is_weighted=True)
    with pytest.raises(ValueError, match="duplicate table name"):
        EmbeddingBagCollection(_one_table() + _one_table())
    with pytest.raises(ValueError, match="pooling"):
        EmbeddingBagCollection(_one_table(pooling=PoolingType.NONE))
    with pytest.raises(ValueError, match="data_type"):
        EmbeddingBagCollection(_one_table(data_type=torchrec.DataType.FP16))
    with pytest.raises(ValueError, match="device"):
        EmbeddingBagCollection(_one_table(), device=torch.device("meta"))
    with pytest.raises(ValueError, match="capacity"):
        EmbeddingBagCollection(_one_table(), capacity=5)
    with pytest.raises(TypeError, match=r"tables\[0\]"):
        EmbeddingBagCollection([{"name": "t"}])
    with pytest.raises(TypeError, match="optimizer"):
        EmbeddingBagCollection(_one_table(), optimizer=torch.optim.SGD)


def test_bad_forward_input_names_the_argument():
    ours = EmbeddingBagCollection(_one_table(), is_weighted=True)
    kjt = KeyedJaggedTensor(keys=["f"], values=torch.tensor([1, 2]), lengths=torch.tensor([2]))
    with pytest.raises(ValueError, match="features: .*no weights"):
        ours(kjt)
    with pytest.raises(TypeError, match="features must be a torchrec KeyedJaggedTensor"):
        ours({"f": torch.tensor([1])})
    other = KeyedJaggedTensor(keys=["g"], values=torch.tensor([1]), lengths=torch.tensor([1]),
                              weights=torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"lacks feature\(s\) \['f'\]"):
        ours(other)
    nan = KeyedJaggedTensor(keys=["f"], values=torch.tensor([1]), lengths=torch.tensor([1]),
                            weights=torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="per_sample_weights must be finite"):
        ours(nan)
    floats = KeyedJaggedTensor(keys=["f"], values=torch.tensor([1.0]), lengths=torch.tensor([1]),
                               weights=torch.tensor([1.0]))
    with pytest.raises(TypeError, match="input must hold integers"):
        ours(floats)
    assert len(ours.embedding_bags["t"].table) == 0  # nothing was inserted by the failed calls


def test_the_collection_is_one_autograd_node_in_step_with_the_per_table_ops():
    """Eager forward: one autograd node for every table (no per-table lookup
    or cat node); it computes what the per-table ops (the torch.compile
    path) compute, forward and after 3 Adagrad steps."""
    world, _, one = _pair(PoolingType.SUM, True, optimizer=el.optim.Adagrad(lr=0.3), seed=2)
    _, _, per_table = _pair(PoolingType.SUM, True, optimizer=el.optim.Adagrad(lr=0.3), seed=2)  # the same rows
    per_table._one_node_ok = lambda weights: False
    for step in range(3):
        raw, _ = world.batch(SHUFFLED, True)
        kt_one, kt_per = one(raw), per_table(raw)
        node = kt_one.values().grad_fn
        assert type(node).__name__ == "_PooledCollectionBackward"
        assert [type(f).__name__ for f, _ in node.next_functions if f is not None] == ["AccumulateGrad"]
        assert type(kt_per.values().grad_fn).__name__ == "CatBackward0"
        torch.testing.assert_close(kt_one.values(), kt_per.values(), rtol=0, atol=0)
        target = torch.from_numpy(np.random.default_rng(step).normal(size=tuple(kt_one.values().shape))).float()
        (kt_one.values() * target).sum().backward()
        (kt_per.values() * target).sum().backward()
    for c in world.configs:
        a, _ = one.embedding_bags[c.name].table.find(world.raw)
        b, _ = per_table.embedding_bags[c.name].table.find(world.raw)
        np.testing.assert_array_equal(a, b)
