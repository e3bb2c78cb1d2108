"""embedlookup.torchrec.EmbeddingCollection against TorchRec's own
EmbeddingCollection: the same rows in both (TorchRec's on dense row numbers,
ours keyed by the raw int64 IDs they stand for), the same batches, the same
optimizer (torch.optim on TorchRec's dense weights vs our fused sparse step):
the JaggedTensors and the rows agree."""

import numpy as np
import pytest
import torch

torchrec = pytest.importorskip("torchrec")
from torchrec import EmbeddingConfig, JaggedTensor, KeyedJaggedTensor  # noqa: E402
from torchrec import EmbeddingCollection as TorchRecEC  # noqa: E402

import embedlookup as el  # noqa: E402
from embedlookup.torchrec import EmbeddingCollection  # noqa: E402

ROWS, B, D = 30, 5, 6
CONFIG_ORDER = ["f_a", "f_b", "shared", "f_c"]
SHUFFLED = ["f_c", "extra", "shared", "f_a", "f_b"]  # another order, and a key no table reads


def _configs():
    # Two tables of one dim (TorchRec's EC rule); "shared" is read by both.
    return [EmbeddingConfig(name="user", embedding_dim=D, num_embeddings=ROWS, feature_names=["f_a", "shared", "f_b"]),
            EmbeddingConfig(name="item", embedding_dim=D, num_embeddings=ROWS, feature_names=["f_c", "shared"])]


class World:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        ids = self.rng.choice(np.iinfo(np.int64).max, size=ROWS, replace=False).astype(np.int64)
        ids[: ROWS // 3] *= -1
        ids[-1] = np.iinfo(np.int64).max
        self.raw = ids

    def batch(self, keys):
        lengths = self.rng.integers(0, 4, size=len(keys) * B)
        lengths[2] = 0
        dense = self.rng.integers(0, ROWS, size=int(lengths.sum()))
        lt = torch.from_numpy(lengths)
        return (KeyedJaggedTensor(keys=keys, values=torch.from_numpy(self.raw[dense]), lengths=lt),
                KeyedJaggedTensor(keys=keys, values=torch.from_numpy(dense), lengths=lt))


def _pair(optimizer=None, seed=0, need_indices=False):
    torch.manual_seed(seed)
    ref = TorchRecEC(tables=_configs(), need_indices=need_indices)
    ours = EmbeddingCollection(_configs(), need_indices=need_indices, optimizer=optimizer)
    world = World(seed)
    for name, emb in ref.embeddings.items():
        ours.embeddings[name].table.assign(world.raw, emb.weight.detach().numpy())
    return world, ref, ours


def _check_same(out, ref, raw_kjt=None, atol=1e-6):
    assert list(out) == list(ref)
    for k in ref:
        assert isinstance(out[k], JaggedTensor)
        torch.testing.assert_close(out[k].lengths(), ref[k].lengths())
        torch.testing.assert_close(out[k].values(), ref[k].values(), rtol=1e-5, atol=atol)
        if raw_kjt is not None:  # need_indices: the feature's raw IDs as weights
            torch.testing.assert_close(out[k].weights(), raw_kjt[k.split("@")[0]].values())


@pytest.mark.parametrize("keys", [CONFIG_ORDER, SHUFFLED], ids=["config-order", "shuffled"])
def test_forward_matches_torchrec(keys):
    world, ref, ours = _pair(need_indices=True)
    assert list(ref(world.batch(keys)[1])) == ["f_a", "shared@user", "f_b", "f_c", "shared@item"]
    for _ in range(3):
        raw, dense = world.batch(keys)
        _check_same(ours(raw), ref(dense), raw_kjt=raw)


@pytest.mark.parametrize("make_opt", [
    lambda: (el.optim.SGD(lr=0.4), lambda p: torch.optim.SGD(p, lr=0.4)),
    lambda: (el.optim.Adagrad(lr=0.3), lambda p: torch.optim.Adagrad(p, lr=0.3)),
], ids=["sgd", "adagrad"])
def test_training_matches_torchrec(make_opt):
    ours_opt, ref_opt_of = make_opt()
    world, ref, ours = _pair(optimizer=ours_opt, seed=1)
    ref_opt = ref_opt_of(ref.parameters())
    for step in range(6):
        raw, dense = world.batch(SHUFFLED)
        o_ref, o_ours = ref(dense), ours(raw)
        _check_same(o_ours, o_ref, atol=2e-6)
        g = np.random.default_rng(step)
        targets = {k: torch.from_numpy(g.normal(size=tuple(v.values().shape))).float() for k, v in o_ref.items()}
        ref_opt.zero_grad()
        sum((o_ref[k].values() * t).sum() for k, t in targets.items()).backward()
        ref_opt.step()
        sum((o_ours[k].values() * t).sum() for k, t in targets.items()).backward()  # fused update
    raw, dense = world.batch(SHUFFLED)
    _check_same(ours(raw), ref(dense), atol=2e-5)
    for name, emb in ref.embeddings.items():
        rows, found = ours.embeddings[name].table.find(world.raw)
        assert found.all()
        np.testing.assert_allclose(rows, emb.weight.detach().numpy(), rtol=1e-5, atol=2e-5)


def test_state_dict_round_trip_continues_in_step():
    world, ref, ours = _pair(optimizer=el.optim.Adagrad(lr=0.2), seed=2)
    ref_opt = torch.optim.Adagrad(ref.parameters(), lr=0.2)

    def step(model, kjt, opt=None):
        out = model(kjt)
        if opt is not None:
            opt.zero_grad()
        sum(v.values().sum() for v in out.values()).backward()
        if opt is not None:
            opt.step()
        return out

    for _ in range(3):
        raw, dense = world.batch(CONFIG_ORDER)
        step(ref, dense, ref_opt)
        step(ours, raw)
    state = ours.state_dict()
    assert {k for k in state} == {"embeddings.user._extra_state", "embeddings.item._extra_state",
                                  "embeddings.user._grad_anchor", "embeddings.item._grad_anchor"}
    fresh = EmbeddingCollection(_configs(), optimizer=el.optim.Adagrad(lr=0.2), seed=7)
    fresh.load_state_dict(state)
    for _ in range(2):
        raw, dense = world.batch(CONFIG_ORDER)
        _check_same(step(fresh, raw), step(ref, dense, ref_opt), atol=1e-5)
    raw, dense = world.batch(CONFIG_ORDER)
    _check_same(fresh(raw), ref(dense), atol=2e-5)


def test_interface_matches_torchrec():
    ours, ref = EmbeddingCollection(_configs()), TorchRecEC(tables=_configs())
    assert isinstance(ours, torchrec.modules.embedding_modules.EmbeddingCollectionInterface)
    assert ours.embedding_dim() == ref.embedding_dim() == D
    assert ours.embedding_names_by_table() == ref.embedding_names_by_table()
    assert ours.need_indices() is ref.need_indices() is False
    assert ours.device == ref.device


def test_unbounded_raw_ids_in_torchrecs_init_range():
    ours = EmbeddingCollection([EmbeddingConfig(name="t", embedding_dim=8, num_embeddings=64, feature_names=["f"])])
    ids = torch.tensor([0, 64, 10**18, -(2**63), 2**63 - 1])
    out = ours(KeyedJaggedTensor(keys=["f"], values=ids, lengths=torch.tensor([2, 0, 3])))["f"]
    v = out.values()
    assert v.shape == (5, 8) and out.lengths().tolist() == [2, 0, 3]
    assert float(v.abs().max()) <= (1 / 64) ** 0.5 and torch.unique(v, dim=0).shape[0] == 5


def test_frequency_budget_holds_and_matches_a_reference_for_resident_rows():
    cfg = [EmbeddingConfig(name="t", embedding_dim=4, num_embeddings=64, feature_names=["f"])]
    ours = EmbeddingCollection(cfg, optimizer=el.optim.SGD(lr=0.1), frequency=dict(admit_count=2))
    table = ours.embeddings["t"].table
    assert isinstance(table, el.FrequencyTable) and table.budget_rows == 64
    rng = np.random.default_rng(0)
    seen_partial = False
    for _ in range(20):
        ids = torch.from_numpy(rng.integers(0, 300, 40) * 7919 + 10**15)
        out = ours(KeyedJaggedTensor(keys=["f"], values=ids, lengths=torch.tensor([40])))["f"]
        assert len(table) <= 64  # the budget holds under 300 distinct IDs
        # Rows that exist read as themselves; IDs without a row read the default (zero) row.
        rows, found = table.find(ids.numpy())
        expect = np.where(found[:, None], rows, 0.0)
        # (find() after the forward: the IDs it did not admit have no row and read zeros in it)
        np.testing.assert_allclose(out.values().detach().numpy()[found], expect[found], rtol=1e-6)
        np.testing.assert_array_equal(out.values().detach().numpy()[~found], 0.0)
        seen_partial |= bool((~found).any() and found.any())
        out.values().sum().backward()
    assert seen_partial  # admission (2 sightings) and eviction both happened


# --------------------------------------------------------------- bad input
def test_bad_input_names_the_argument_and_changes_nothing():
    cfg = [EmbeddingConfig(name="t", embedding_dim=4, num_embeddings=10, feature_names=["f"])]
    with pytest.raises(ValueError, match="one embedding_dim"):
        EmbeddingCollection(cfg + [EmbeddingConfig(name="u", embedding_dim=8, num_embeddings=10)])
    with pytest.raises(TypeError, match=r"tables\[0\] must be a torchrec EmbeddingConfig"):
        EmbeddingCollection([torchrec.EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10)])
    with pytest.raises(ValueError, match="frequency: .*budget_rows"):
        EmbeddingCollection(cfg, frequency=dict(budget_rows=3))
    with pytest.raises(ValueError, match="capacity"):
        EmbeddingCollection(cfg, capacity="num_embeddings", frequency={})
    ours = EmbeddingCollection(cfg, optimizer=el.optim.SGD(lr=0.1))
    with pytest.raises(TypeError, match="features must be a torchrec KeyedJaggedTensor"):
        ours({"f": torch.tensor([1])})
    with pytest.raises(ValueError, match=r"lacks feature\(s\) \['f'\]"):
        ours(KeyedJaggedTensor(keys=["g"], values=torch.tensor([1]), lengths=torch.tensor([1])))
    with pytest.raises(TypeError, match="input must hold integers"):
        ours(KeyedJaggedTensor(keys=["f"], values=torch.tensor([1.5]), lengths=torch.tensor([1])))
    assert len(ours.embeddings["t"].table) == 0  # nothing was inserted by the failed calls
