"""torch.distributed for mlrkit: ``torchrun --nproc_per_node=N -m mlrkit train …``.

Conventions:
* ``--batch-size`` is the *global* batch. Every epoch all ranks draw the same seeded permutation;
  each global batch is split into contiguous per-rank slices, so N processes see exactly the
  batches one process would.
* Gradients (model and loss parameters, e.g. ROLE's label table) are averaged across ranks after
  each backward pass; each rank's loss is scaled by ``n_rank * world / n_global`` so that uneven
  last batches still give the single-process gradient of the mean loss.
* Evaluation is sharded (rows ``rank::world``) and the (row, score) pairs are gathered, so no
  sample is dropped or counted twice.
* Rank 0 alone writes checkpoints, logs and results; the others wait at barriers.
* gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from mlrkit.data.sampler import rank_slice  # noqa: F401 - re-exported (the sampler's per-rank slice)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(rank=rank, world=world, local_rank=local_rank)


def current() -> DistEnv:
    """The process group's view if one is initialised, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistEnv()


def average_gradients(params: list[torch.nn.Parameter], env: DistEnv) -> None:
    """All-reduce (mean) the gradients of ``params`` in one flat buffer."""
    if not env.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= env.world
    pos = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[pos : pos + n].view_as(g))
        pos += n


def gather_rows(index: np.ndarray, values: np.ndarray, n: int, env: DistEnv) -> np.ndarray:
    """Every rank's (row index, values) pairs -> the full [n, ...] array on every rank, by index."""
    if not env.enabled:
        out = np.empty((n, *values.shape[1:]), dtype=values.dtype)
        out[index] = values
        return out
    parts: list = [None] * env.world
    dist.all_gather_object(parts, (index, values))
    out = np.empty((n, *values.shape[1:]), dtype=values.dtype)
    seen = np.zeros(n, dtype=bool)
    for idx, val in parts:
        out[idx] = val
        seen[idx] = True
    if not seen.all():
        raise RuntimeError(f"distributed gather lost {int((~seen).sum())} of {n} rows")
    return out


def all_reduce_max_(t: torch.Tensor, env: DistEnv) -> None:
    """In-place element-wise max across ranks (used for index-keyed loss state, e.g. LL-Cp flips)."""
    if env.enabled:
        orig = t.dtype
        buf = t.to(torch.float32) if orig in (torch.bool, torch.int8, torch.uint8) else t
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        if buf is not t:
            t.copy_(buf.to(orig))


def broadcast_object(obj, env: DistEnv):
    """Rank 0's ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
