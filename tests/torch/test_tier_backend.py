"""The torch modules over an EmbeddingTable with a file tier and a memory budget.

Every lookup entry point goes through the table's one read path: the torch
forward (pooled_lookup_ids / pooled_max_argmax) must read trained rows back
from the tier, keep the memory budget, and leave a table whose checkpoint
loads. The reference is torch.nn.EmbeddingBag with dense rows and torch's SGD.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import embedlookup as el  # noqa: E402
from embedlookup.torch import HashEmbeddingBag  # noqa: E402

DIM, KEYS, MEMORY_ROWS, LR = 8, 40, 12, 0.5


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_tier_backed_module_trains_like_embedding_bag(tmp_path, mode):
    rng = np.random.default_rng(7)
    ids = rng.choice(np.arange(10**12, 10**12 + 10**6), KEYS, replace=False).astype(np.int64)
    init = rng.normal(size=(KEYS, DIM)).astype(np.float32)

    tier = el.storage.FileTier(tmp_path / "rows.tier", capacity=4 * KEYS)
    table = el.EmbeddingTable(DIM, optimizer=el.optim.SGD(lr=LR), tier=tier, memory_rows=MEMORY_ROWS)
    table.assign(ids, init)
    bag = HashEmbeddingBag(DIM, mode=mode, table=table)

    ref = torch.nn.EmbeddingBag(KEYS, DIM, mode=mode)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(init))
    opt = torch.optim.SGD(ref.parameters(), lr=LR)

    for step in range(30):
        pos = rng.integers(0, KEYS, size=24)
        offsets = np.array([0, 5, 9, 17], np.int64)
        w = torch.from_numpy(rng.normal(size=(4, DIM)).astype(np.float32))
        out = bag(torch.from_numpy(ids[pos]), torch.from_numpy(offsets))
        want = ref(torch.from_numpy(pos), torch.from_numpy(offsets))
        np.testing.assert_allclose(out.detach().numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=f"forward of step {step}")
        (out * w).sum().backward()
        opt.zero_grad()
        (want * w).sum().backward()
        opt.step()
        assert table.tier_stats()["memory_rows"] <= MEMORY_ROWS, f"budget passed at step {step}"

    stats = table.tier_stats()
    assert stats["promotions"] > 0 and stats["demotions"] > 0  # rows really went down and came back

    keys, rows = table.export()
    order = np.argsort(ids)
    np.testing.assert_array_equal(keys, ids[order])
    np.testing.assert_allclose(rows, ref.weight.detach().numpy()[order], rtol=1e-5, atol=1e-5)

    # Rows that only the tier holds now come back trained through the forward.
    in_tier_only = [k for k in ids if k in set(tier.keys().tolist())]
    assert in_tier_only
    bag.eval()
    got = bag(torch.tensor(np.array(in_tier_only, np.int64)), torch.arange(len(in_tier_only)))
    want = ref.weight.detach().numpy()[[int(np.flatnonzero(ids == k)[0]) for k in in_tier_only]]
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-5)

    path = tmp_path / "ckpt.el"
    table.save(path)
    loaded = el.EmbeddingTable.load(path)
    lk, lr = loaded.export()
    np.testing.assert_array_equal(lk, keys)
    np.testing.assert_array_equal(lr, table.export()[1])
