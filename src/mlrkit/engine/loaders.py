"""Batch iterators. Fixed features are sliced from in-memory tensors (no DataLoader overhead);
the order is :class:`~mlrkit.data.sampler.GlobalBatchSampler`'s (seeded from (run seed, epoch), so a
resumed run sees the same batches; sharded per rank without changing the global batches).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from mlrkit.data import Split
from mlrkit.data.sampler import GlobalBatchSampler, rank_slice

Batch = dict[str, Tensor]

#: a feature split up to this size is gathered in the epoch's order once per epoch (one copy of it per epoch)
GATHER_EPOCH_MAX_BYTES = 64 << 20


class FeatureBatches:
    """Batches of (inputs, observed, targets, index) from a split's features."""

    def __init__(
        self,
        split: Split,
        observed: np.ndarray | None,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        device: torch.device | str | None = None,
    ) -> None:
        if split.features is None:
            raise ValueError("split has no features")
        # whole-split tensors, on the run's device once: a batch is one index_select, no per-step copy
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.x = torch.from_numpy(np.ascontiguousarray(split.features)).to(dev)
        self.targets = torch.from_numpy(split.targets.astype(np.int8)).to(dev)
        obs = observed if observed is not None else np.zeros_like(split.targets, dtype=np.int8)
        self.observed = torch.from_numpy(np.ascontiguousarray(obs.astype(np.int8))).to(dev)
        self.device = dev
        self.sampler = GlobalBatchSampler(len(self.x), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                          shard=shard)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        order = self.sampler.order().to(self.device)
        if self.x.nbytes > GATHER_EPOCH_MAX_BYTES:  # large splits: one index_select per batch, no epoch copy
            for start, stop, n_global in self.sampler.shard_bounds():
                idx = order[start:stop]
                yield {"n_global": n_global, "inputs": self.x[idx], "observed": self.observed[idx],
                       "targets": self.targets[idx], "index": idx}
            return
        # small splits: the epoch's rows gathered once (three index_selects per epoch, not per step); every
        # batch is then a contiguous slice: the same rows in the same order as indexing batch by batch
        x, observed, targets = self.x[order], self.observed[order], self.targets[order]
        for start, stop, n_global in self.sampler.shard_bounds():
            yield {"n_global": n_global, "inputs": x[start:stop], "observed": observed[start:stop],
                   "targets": targets[start:stop], "index": order[start:stop]}


def make_loader(method, split: Split, observed: np.ndarray | None, batch_size: int, *, train: bool, seed: int,
                cfg=None, shard: tuple[int, int] = (0, 1), device: torch.device | str | None = None):
    """The loader a method declares for a split (:meth:`mlrkit.methods.Method.make_loader`);
    ``shard=(rank, world)`` splits every global batch. ``cfg`` is unused (the method has its own).

    A method's ``make_loader`` returning None gets the default: feature batches sliced from
    whole-split tensors kept on ``device``. A method whose loader does not shard
    (``loader_shards = False``) is wrapped so that each rank keeps its slice of each global batch
    (correct, though every rank then loads the whole batch).
    """
    own_shard = shard if method.loader_shards else (0, 1)
    loader = method.make_loader(split, observed, batch_size, train=train, seed=seed, shard=own_shard)
    if loader is None:
        if method.input_kind != "features":
            raise ValueError(f"method {type(method).__name__} consumes {method.input_kind!r} but has no loader")
        return FeatureBatches(split, observed, batch_size, shuffle=train, seed=seed, shard=shard, device=device)
    return loader if method.loader_shards or shard[1] == 1 else ShardedBatches(loader, *shard)


class ShardedBatches:
    """Keeps rank's contiguous slice of every global batch of a loader that cannot shard itself."""

    def __init__(self, loader, rank: int, world: int) -> None:
        self.loader, self.rank, self.world = loader, rank, world

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            n = len(batch["index"])
            sl = rank_slice(n, self.rank, self.world)
            out = {k: (v[sl] if torch.is_tensor(v) and v.ndim and len(v) == n else v) for k, v in batch.items()}
            out["n_global"] = n
            yield out
