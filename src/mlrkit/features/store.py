"""FeatureStore: frozen-encoder outputs cached on disk, computed once, never once per epoch.

An entry is identified by the encoder's identity (spec + weights hash), the transform's text
form and the identities of the images (path, size and mtime for files). It holds a
memory-mapped ``.npy`` array [N, ...] and a ``done`` mask flushed after every chunk, so an
interrupted extraction resumes where it stopped. Entries never change once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mlrkit.data.base import ImageSource
from mlrkit.data.transforms import describe
from mlrkit.errors import DataError
from mlrkit.utils import write_json


def default_cache_dir() -> Path:
    """``$MLRKIT_CACHE/features``, else ``~/.cache/mlrkit/features``."""
    base = os.environ.get("MLRKIT_CACHE")
    return Path(base) / "features" if base else Path.home() / ".cache" / "mlrkit" / "features"


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, images: ImageSource, transform: Callable, rows: np.ndarray) -> None:
        self.images, self.transform, self.rows = images, transform, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tensor:
        return self.transform(self.images.load(int(self.rows[i])))


class FeatureStore:
    """``get(encoder_key, encode, images, transform)`` returns the cached [N, ...] array."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry_dir(self, encoder_key: str, images: ImageSource, transform) -> Path:
        h = hashlib.sha256()
        h.update(encoder_key.encode())
        h.update(b"\0" + describe(transform).encode() + b"\0")
        for i in range(len(images)):
            h.update(images.key(i).encode() + b"\n")
        return self.root / h.hexdigest()[:24]

    def get(
        self,
        encoder_key: str,
        encode: Callable[[Tensor], Tensor],
        images: ImageSource,
        transform: Callable,
        *,
        batch_size: int = 64,
        device: torch.device | str = "cpu",
        num_workers: int | None = 0,
        dtype: np.dtype = np.float32,
        progress: bool = True,
        desc: str = "extracting features",
        stop_after: int | None = None,
    ) -> np.ndarray:
        """Cached features of every image; extracts the missing rows (all, the first time).

        Under ``torchrun`` each rank extracts rows ``rank::world`` into its own shard file
        (resumable), then rank 0 merges the shards. ``stop_after`` (rows) interrupts extraction on
        purpose (tests of resumption).
        """
        from mlrkit.engine.distributed import current

        env = current()
        d = self.entry_dir(encoder_key, images, transform)
        d.mkdir(parents=True, exist_ok=True)
        data_path, done_path = d / "features.npy", d / "done.npy"
        n = len(images)
        if done_path.exists() and data_path.exists() and _load_cache(done_path).all():
            return _checked_cache(data_path, n)
        t0 = time.perf_counter()
        if not env.enabled:
            complete = self._extract(np.arange(n), data_path, done_path, encode, images, transform, batch_size,
                                     device, num_workers, dtype, progress, desc, stop_after)
        else:
            rows = np.arange(n)[env.rank :: env.world]
            tag = f"shard-{env.rank}-of-{env.world}"
            mine = self._extract(rows, d / f"{tag}.npy", d / f"{tag}.done.npy", encode, images, transform,
                                 batch_size, device, num_workers, dtype, progress and env.is_main, desc, stop_after)
            flags = [None] * env.world
            torch.distributed.all_gather_object(flags, mine)
            complete = all(flags)
            if complete and env.is_main:
                self._merge(d, n, env.world, data_path, done_path)
            env.barrier()
        write_json(d / "meta.json", {"encoder": encoder_key, "transform": describe(transform), "n": n,
                                     "dtype": np.dtype(dtype).str, "complete": bool(complete),
                                     "seconds": time.perf_counter() - t0})
        if not complete:
            if stop_after is not None:
                return np.load(data_path, mmap_mode="r") if data_path.exists() else np.zeros((0,))
            raise RuntimeError(f"feature extraction in {d} ended incomplete")
        return _checked_cache(data_path, n)

    def _extract(self, rows: np.ndarray, data_path: Path, done_path: Path, encode, images, transform,
                 batch_size: int, device, num_workers: int | None, dtype, progress: bool, desc: str,
                 stop_after: int | None) -> bool:
        """Fill ``data_path`` (one row per entry of ``rows``) where ``done_path`` says missing."""
        m = len(rows)
        done = _load_cache(done_path) if done_path.exists() else np.zeros(m, dtype=bool)
        if done.shape != (m,):
            raise DataError(f"feature cache {done_path} has {done.shape} flags for {m} rows (corrupt); delete "
                            f"{done_path.parent} to recompute it")
        todo = np.flatnonzero(~done)
        arr = _load_cache(data_path, "r+") if data_path.exists() else None
        ds = _Transformed(images, transform, rows[todo])
        from mlrkit.engine.image_data import loader_options

        opts = loader_options(num_workers, torch.device(device).type == "cuda")
        opts.pop("persistent_workers", None)  # one pass over the images
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, **opts)
        pos = 0
        from mlrkit.engine.progress import progress as progress_bar

        bar = progress_bar(total=len(todo), desc=desc, enabled=progress)
        with torch.no_grad():
            for x in loader:
                feats = encode(x.to(device, non_blocking=True)).float().cpu().numpy()
                if arr is None:
                    arr = np.lib.format.open_memmap(data_path, mode="w+", dtype=dtype, shape=(m, *feats.shape[1:]))
                local = todo[pos : pos + len(feats)]
                arr[local] = feats.astype(dtype)
                arr.flush()
                done[local] = True
                np.save(done_path, done)
                pos += len(feats)
                bar.update(len(feats))
                if stop_after is not None and pos >= stop_after:
                    break
        bar.close()
        if m == 0:
            np.save(done_path, done)
        return bool(done.all())

    @staticmethod
    def _merge(d: Path, n: int, world: int, data_path: Path, done_path: Path) -> None:
        """Rank 0: interleave the per-rank shards into the full array, then drop the shards."""
        shards = [np.load(d / f"shard-{r}-of-{world}.npy", mmap_mode="r") for r in range(world)
                  if (d / f"shard-{r}-of-{world}.npy").exists()]
        ref = next(s for s in shards if len(s))
        out = np.lib.format.open_memmap(data_path, mode="w+", dtype=ref.dtype, shape=(n, *ref.shape[1:]))
        for r in range(world):
            path = d / f"shard-{r}-of-{world}.npy"
            if path.exists():
                out[r::world] = np.load(path, mmap_mode="r")
        out.flush()
        np.save(done_path, np.ones(n, dtype=bool))
        for r in range(world):
            for suffix in (".npy", ".done.npy"):
                (d / f"shard-{r}-of-{world}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def _incomplete(d: Path) -> np.ndarray:
        raise RuntimeError(f"feature extraction in {d} ended incomplete")

    def info(self, encoder_key: str, images: ImageSource, transform) -> dict | None:
        meta = self.entry_dir(encoder_key, images, transform) / "meta.json"
        return json.loads(meta.read_text()) if meta.exists() else None


def _load_cache(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """One array of the cache; a truncated or corrupt file is a DataError naming it (never a traceback)."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"feature cache {path} is truncated or corrupt ({str(e).splitlines()[0][:120]}); delete "
                        f"{path.parent} to recompute it") from None


def _checked_cache(path: Path, n: int) -> np.ndarray:
    """The complete cache entry: ``n`` rows of finite values, or a DataError naming the file."""
    arr = _load_cache(path, "r")
    if arr.ndim < 2 or arr.shape[0] != n:
        raise DataError(f"feature cache {path} holds {arr.shape} for {n} images (corrupt); delete {path.parent} "
                        "to recompute it")
    bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
    if bad.any():
        raise DataError(f"feature cache {path}: {int(bad.sum())} row(s) hold NaN/inf (first: row "
                        f"{int(np.argmax(bad))}); delete {path.parent} to recompute it")
    return arr

