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
from tqdm.auto import tqdm

from mlrkit.data.base import ImageSource
from mlrkit.data.transforms import describe
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
        num_workers: int = 0,
        dtype: np.dtype = np.float32,
        progress: bool = True,
        desc: str = "extracting features",
        stop_after: int | None = None,
    ) -> np.ndarray:
        """Cached features of every image; extracts the missing rows (all, the first time).

        ``stop_after`` (rows) interrupts extraction on purpose (tests of resumption).
        """
        d = self.entry_dir(encoder_key, images, transform)
        d.mkdir(parents=True, exist_ok=True)
        meta_path, data_path, done_path = d / "meta.json", d / "features.npy", d / "done.npy"
        n = len(images)
        done = np.load(done_path) if done_path.exists() else np.zeros(n, dtype=bool)
        if done.all() and data_path.exists():
            return np.load(data_path, mmap_mode="r")
        todo = np.flatnonzero(~done)
        ds = _Transformed(images, transform, todo)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        arr = np.load(data_path, mmap_mode="r+") if data_path.exists() else None
        t0 = time.perf_counter()
        pos = 0
        bar = tqdm(total=len(todo), desc=desc, disable=not progress, leave=False)
        with torch.no_grad():
            for x in loader:
                feats = encode(x.to(device)).float().cpu().numpy()
                if arr is None:
                    arr = np.lib.format.open_memmap(data_path, mode="w+", dtype=dtype, shape=(n, *feats.shape[1:]))
                rows = todo[pos : pos + len(feats)]
                arr[rows] = feats.astype(dtype)
                arr.flush()
                done[rows] = True
                np.save(done_path, done)
                pos += len(feats)
                bar.update(len(feats))
                if stop_after is not None and pos >= stop_after:
                    break
        bar.close()
        write_json(meta_path, {"encoder": encoder_key, "transform": describe(transform), "n": n,
                               "shape": list(arr.shape) if arr is not None else None, "dtype": np.dtype(dtype).str,
                               "complete": bool(done.all()), "seconds": time.perf_counter() - t0})
        if not done.all():
            return np.load(data_path, mmap_mode="r") if stop_after is not None else self._incomplete(d)
        return np.load(data_path, mmap_mode="r")

    @staticmethod
    def _incomplete(d: Path) -> np.ndarray:
        raise RuntimeError(f"feature extraction in {d} ended incomplete")

    def info(self, encoder_key: str, images: ImageSource, transform) -> dict | None:
        meta = self.entry_dir(encoder_key, images, transform) / "meta.json"
        return json.loads(meta.read_text()) if meta.exists() else None
