"""One seeded, epoch-aware global-batch sampler for every loader of the package.

Epoch ``e``'s order is a permutation of the split's rows drawn from a generator seeded with
``derive_seed(seed, e, 17)`` (or the identity without shuffling), cut into *global* batches of
``batch_size`` rows. With ``shard=(rank, world)`` each global batch is cut again into ``world``
contiguous slices whose sizes differ by at most one (:func:`rank_slice`), and rank ``r`` yields slice
``r``: ``world`` processes see together exactly the global batches one process sees, which is what
makes a run under ``torchrun`` equal to a single-process run (``docs/distributed.md``).

Used by the feature batches and the image/two-view batches (:mod:`mlrkit.engine.loaders`,
:mod:`mlrkit.engine.image_data`, as a ``torch.utils.data.DataLoader`` batch sampler) and the cached
dense views of the prompt methods.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from mlrkit.utils import derive_seed

#: the stream of derive_seed used for the epoch's permutation (kept: checkpoints resume on it)
ORDER_STREAM = 17


def rank_slice(n: int, rank: int, world: int) -> slice:
    """Contiguous slice of a global batch of ``n`` rows that ``rank`` takes (sizes differ by ≤ 1)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class GlobalBatchSampler(Sampler[list[int]]):
    """Seeded global batches of ``range(n)``, the rank's slice of each (see the module docstring).

    ``set_epoch(e)`` selects the epoch; iterating yields this rank's row lists (a batch sampler for a
    ``DataLoader``); :meth:`global_batches` and :meth:`shards` give the global view.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 shard: tuple[int, int] = (0, 1)) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.n, self.batch_size, self.shuffle, self.seed = int(n), int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.rank, self.world = bool(drop_last), int(rank), int(world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def order(self) -> torch.Tensor:
        """This epoch's order of the rows (int64 [n]), the same on every rank."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, ORDER_STREAM))
        return torch.randperm(self.n, generator=g)

    def global_batches(self) -> list[torch.Tensor]:
        """This epoch's global batches (row indices), the same on every rank."""
        order, bs = self.order(), self.batch_size
        return [order[b * bs: (b + 1) * bs] for b in range(len(self))]

    def shard_bounds(self) -> Iterator[tuple[int, int, int]]:
        """``(start, stop, size of the global batch)`` of this rank's rows of every global batch, as
        positions in :meth:`order`: ``order()[start:stop]`` are the rows :meth:`shards` yields."""
        bs = self.batch_size
        for b in range(len(self)):
            lo = b * bs
            size = min(bs, self.n - lo)
            sl = rank_slice(size, self.rank, self.world)
            yield lo + sl.start, lo + sl.stop, size

    def shards(self) -> Iterator[tuple[torch.Tensor, int]]:
        """``(this rank's rows, size of the global batch)`` for every global batch of the epoch."""
        for batch in self.global_batches():
            yield batch[rank_slice(len(batch), self.rank, self.world)], len(batch)

    def __iter__(self) -> Iterator[list[int]]:
        for rows, _ in self.shards():
            yield rows.tolist()
