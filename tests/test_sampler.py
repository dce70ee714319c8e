"""The one global-batch sampler (mlrkit.data.sampler) behind the feature, image and dense-view loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mlrkit.data.sampler import GlobalBatchSampler, rank_slice
from mlrkit.utils import derive_seed


def test_shards_put_together_are_the_global_batches():
    one = GlobalBatchSampler(23, 5, shuffle=True, seed=3)
    for world in (2, 3, 4):
        ranks = [GlobalBatchSampler(23, 5, shuffle=True, seed=3, shard=(r, world)) for r in range(world)]
        for epoch in (0, 1, 7):
            one.set_epoch(epoch)
            for s in ranks:
                s.set_epoch(epoch)
            per_rank = [list(s) for s in ranks]
            assert all(len(p) == len(one) == 5 for p in per_rank)
            for b, batch in enumerate(one.global_batches()):
                assert sum((p[b] for p in per_rank), []) == batch.tolist()  # contiguous slices, rank order
                assert max(len(p[b]) for p in per_rank) - min(len(p[b]) for p in per_rank) <= 1


def test_order_is_seeded_per_epoch_as_before():
    s = GlobalBatchSampler(10, 4, shuffle=True, seed=5)
    s.set_epoch(2)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(derive_seed(5, 2, 17)))
    assert torch.equal(s.order(), expected)  # the permutation runs were resumed on: unchanged
    first = s.order()
    s.set_epoch(3)
    assert not torch.equal(s.order(), first)
    assert torch.equal(GlobalBatchSampler(10, 4, shuffle=False).order(), torch.arange(10))
    assert len(GlobalBatchSampler(10, 4, shuffle=False, drop_last=True)) == 2
    assert rank_slice(5, 1, 2) == slice(3, 5)
    with pytest.raises(ValueError, match="shard"):
        GlobalBatchSampler(10, 4, shuffle=False, shard=(2, 2))


def test_feeds_a_torch_dataloader():
    data = TensorDataset(torch.arange(12))
    sampler = GlobalBatchSampler(12, 5, shuffle=True, seed=1, shard=(1, 2))
    sampler.set_epoch(4)
    got = [b[0].tolist() for b in DataLoader(data, batch_sampler=sampler)]
    assert got == list(sampler)


def test_every_loader_draws_the_samplers_batches():
    from mlrkit.data import Split, load_dataset
    from mlrkit.engine.image_data import ImageBatches
    from mlrkit.engine.loaders import FeatureBatches
    from mlrkit.methods.prompting import DenseBatches

    n = 14
    split = Split(targets=np.zeros((n, 3), np.uint8), ids=[str(i) for i in range(n)],
                  features=np.arange(n * 2, dtype=np.float32).reshape(n, 2))
    images = load_dataset("fashion-mosaic", limit_train=n, limit_test=2).trainval
    ref = GlobalBatchSampler(n, 4, shuffle=True, seed=9, shard=(1, 2))
    ref.set_epoch(1)
    loaders = [FeatureBatches(split, None, 4, shuffle=True, seed=9, shard=(1, 2)),
               ImageBatches(images, None, lambda im: torch.zeros(1), 4, shuffle=True, seed=9, shard=(1, 2)),
               DenseBatches([np.zeros((n, 1, 1), np.float32)], split, None, 4, shuffle=True, seed=9, shard=(1, 2))]
    for loader in loaders:
        loader.set_epoch(1)
        batches = list(loader)
        assert [b["index"].tolist() for b in batches] == list(ref), type(loader).__name__
        assert [b["n_global"] for b in batches] == [len(g) for g in ref.global_batches()]
