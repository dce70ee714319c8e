"""Image batches: a torch Dataset over a split's images + a loader whose order and augmentation
are seeded from (run seed, epoch), so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mlrkit.data import Split
from mlrkit.utils import derive_seed


class ImageRows(Dataset):
    """Row i -> {"inputs": transform(image i), "observed", "targets", "index": i}."""

    def __init__(self, split: Split, observed: np.ndarray | None, transform: Callable) -> None:
        if split.images is None:
            raise ValueError("split has no images")
        self.images = split.images
        self.targets = torch.from_numpy(split.targets.astype(np.int8))
        obs = observed if observed is not None else np.zeros_like(split.targets, dtype=np.int8)
        self.observed = torch.from_numpy(np.ascontiguousarray(obs.astype(np.int8)))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        return {"inputs": self.transform(self.images.load(i)), "observed": self.observed[i],
                "targets": self.targets[i], "index": i}


class ImageBatches:
    """Epoch-aware DataLoader wrapper: ``set_epoch(e)`` reseeds shuffling and worker RNGs."""

    def __init__(self, split: Split, observed: np.ndarray | None, transform: Callable, batch_size: int, *,
                 shuffle: bool, seed: int, num_workers: int = 0, pin_memory: bool = False,
                 drop_last: bool = False, shard: tuple[int, int] = (0, 1)) -> None:
        self.dataset = ImageRows(split, observed, transform)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_workers, self.pin_memory, self.drop_last = num_workers, pin_memory, drop_last
        self.rank, self.world = shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def global_batches(self) -> list[np.ndarray]:
        """This epoch's global batches (row indices), the same on every rank."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 17))
            order = torch.randperm(n, generator=g).numpy()
        else:
            order = np.arange(n)
        return [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(len(self))]

    def __iter__(self) -> Iterator[dict]:
        from mlrkit.engine.distributed import rank_slice

        batches = self.global_batches()
        sizes = [len(b) for b in batches]
        mine = [b[rank_slice(len(b), self.rank, self.world)].tolist() for b in batches]
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 23, self.rank))
        loader = DataLoader(
            self.dataset, batch_sampler=mine, generator=g, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=False,
        )
        for batch, n_global in zip(loader, sizes):
            batch["index"] = torch.as_tensor(batch["index"])
            batch["n_global"] = n_global
            yield batch
