"""Image batches: a torch Dataset over a split's images + a loader whose order and augmentation
are seeded from (run seed, epoch), so a resumed run sees the same batches.

Without workers (the CPU default) a fresh in-process DataLoader serves each epoch. With workers
(the CUDA default, :func:`loader_options`) one DataLoader lives for the whole run: persistent
workers, pinned memory and prefetching keep the accelerator fed, and each image's augmentation
is seeded from (run seed, epoch, row), so it does not depend on which worker decodes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mlrkit.data import Split
from mlrkit.data.sampler import GlobalBatchSampler
from mlrkit.utils import derive_seed

#: most DataLoader workers chosen automatically (decoding beyond this rarely helps one accelerator)
MAX_AUTO_WORKERS = 16


def auto_workers(cuda: bool, usable: int | None = None, local_world: int = 1) -> int:
    """Workers for a loader: 0 on the CPU (decoding would compete with the model for the same cores);
    on CUDA the usable CPUs (affinity, cgroup quota, OMP_NUM_THREADS) shared among the local ranks,
    minus one for the main process, at most :data:`MAX_AUTO_WORKERS`."""
    if not cuda:
        return 0
    if usable is None:
        from mlrkit.engine.threads import usable_cpus

        usable = usable_cpus()
    per_rank = max(1, usable // max(1, local_world))
    return max(0, min(MAX_AUTO_WORKERS, per_rank - 1))


def loader_options(num_workers: int | None, cuda: bool, usable: int | None = None, local_world: int = 1) -> dict:
    """DataLoader keyword arguments: ``num_workers`` (None = :func:`auto_workers`), pinned memory when
    feeding CUDA, persistent workers and a prefetch depth of 4 batches per worker when there are workers."""
    n = auto_workers(cuda, usable, local_world) if num_workers is None else int(num_workers)
    if n < 0:
        raise ValueError(f"train.num_workers must be >= 0 or null (auto), got {n}")
    opts: dict = {"num_workers": n, "pin_memory": bool(cuda)}
    if n > 0:
        opts.update(persistent_workers=True, prefetch_factor=4)
    return opts


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


class _SeededRows(Dataset):
    """Key (row, epoch) -> ``dataset[row]`` with torch's RNG seeded from (seed, epoch, row) for the call."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        row, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, epoch, row, 29))
            return self.dataset[row]


class _EpochBatchSampler:
    """The batch sampler of a persistent DataLoader: this epoch's batches of (row, epoch) keys."""

    def __init__(self, owner: ImageBatches) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner)

    def __iter__(self):
        epoch = self.owner.epoch
        for b in self.owner.my_batches():
            yield [(i, epoch) for i in b]


class ImageBatches:
    """Epoch-aware DataLoader wrapper: ``set_epoch(e)`` reseeds shuffling and augmentation.

    ``pin_memory`` says the batches feed a CUDA device: with ``num_workers=None`` the workers are then
    chosen by :func:`loader_options` (none on the CPU).
    """

    def __init__(self, split: Split, observed: np.ndarray | None, transform: Callable, batch_size: int, *,
                 shuffle: bool, seed: int, num_workers: int | None = 0, pin_memory: bool = False,
                 drop_last: bool = False, shard: tuple[int, int] = (0, 1)) -> None:
        self.dataset = ImageRows(split, observed, transform)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world = shard
        self.sampler = GlobalBatchSampler(len(self.dataset), batch_size, shuffle=shuffle, seed=seed,
                                          drop_last=drop_last, shard=shard)
        self.options = loader_options(num_workers, pin_memory, local_world=self.world)
        self.num_workers, self.pin_memory, self.drop_last = self.options["num_workers"], pin_memory, drop_last
        self.epoch = 0
        self._persistent: DataLoader | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def global_batches(self) -> list[torch.Tensor]:
        """This epoch's global batches (row indices), the same on every rank (:class:`GlobalBatchSampler`)."""
        return self.sampler.global_batches()

    def my_batches(self) -> list[list[int]]:
        """This rank's slice of every global batch of this epoch."""
        return list(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        sizes = [len(b) for b in self.global_batches()]
        if self.num_workers > 0:  # one DataLoader for the run: its workers persist between epochs
            if self._persistent is None:
                self._persistent = DataLoader(_SeededRows(self.dataset, self.seed),
                                              batch_sampler=_EpochBatchSampler(self), **self.options)
            loader = self._persistent
        else:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 23, self.rank))
            loader = DataLoader(self.dataset, batch_sampler=self.my_batches(), generator=g, num_workers=0,
                                pin_memory=self.pin_memory)
        for batch, n_global in zip(loader, sizes):
            batch["index"] = torch.as_tensor(batch["index"])
            batch["n_global"] = n_global
            yield batch
