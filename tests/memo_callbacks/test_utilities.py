import random

import numpy as np
import pytest
import torch
from torch import nn

from datamodules import NoisyBatch
from memo_callbacks.utilities import ParsedBatch, preserved_state, rank_shard, unpack_batch


def test_unpack_batch_forms():
    x, y, i, n = torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([5, 6]), torch.tensor([True, False])
    assert unpack_batch((x, y)) == ParsedBatch(x, y, None, None)
    assert unpack_batch([x, y, i]).index is i
    assert unpack_batch(NoisyBatch(x, y, i, n)).noisy is n
    assert unpack_batch({"image": x, "label": y, "idx": i}).index is i
    adapted = unpack_batch({"weird": (x, y)}, adapter=lambda b: ParsedBatch(*b["weird"]))
    assert adapted.x is x


def test_unpack_batch_errors():
    with pytest.raises(TypeError, match=r"dict with 'x' and 'y'.*batch_adapter"):
        unpack_batch({"pixels": torch.zeros(1)})
    with pytest.raises(TypeError, match="5 items"):
        unpack_batch(tuple(torch.zeros(1) for _ in range(5)))
    with pytest.raises(TypeError, match="`batch_adapter` must return a ParsedBatch, got tuple"):
        unpack_batch((1, 2), adapter=lambda b: b)


def test_preserved_state_restores_modes_grad_and_rngs():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    model.train()
    model[1].eval()  # mixed modes must come back exactly
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with torch.no_grad():
        with preserved_state(model):
            model.eval()
            torch.set_grad_enabled(True)
            torch.rand(100), np.random.rand(5), random.random()
        assert not torch.is_grad_enabled()
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert torch.equal(torch.rand(2), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


def test_rank_shard_is_disjoint_and_complete():
    idx = torch.arange(11)
    parts = [rank_shard(idx, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(11))
