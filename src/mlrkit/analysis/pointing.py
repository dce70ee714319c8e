r"""CAM pointing game and attribution statistics on grid mosaics (``fashion-mosaic``).

A mosaic is a ``g x g`` grid of tiles whose classes are known (``Split.extras["tile_labels"]``,
row-major cells, and ``extras["grid"]``), so every object's location is known exactly.

**Pointing game.** For every (image :math:`n`, positive class :math:`c`) pair, the class
activation map :math:`M_c` ([h, w]) is upsampled bilinearly to the image size :math:`S\times S`
(as an overlay is drawn) and its arg-max pixel :math:`(y, x)` is taken; the pair is a *hit* if the
grid cell :math:`(\lfloor yg/S\rfloor, \lfloor xg/S\rfloor)` holds class :math:`c`. Upsampling
makes every position fall in exactly one cell (a 7×7 map's middle row straddles two 28-px
tiles; the bilinear arg-max falls on the side of the larger neighbour). Accuracy = hits / pairs.

**Chance level.** A point drawn uniformly over the image hits with probability (number of cells
holding :math:`c`)/:math:`g^2`; the chance level is its mean over the evaluated pairs, which is
above :math:`1/g^2` because a class can fill several cells of a mosaic (0.25 only if every class
filled exactly one cell).

**BoostLU** (:math:`\max(x,\alpha x)`, :math:`\alpha\ge1`) is applied to the CAM before
upsampling. It is strictly increasing, so it cannot move the arg-max of a map; pointing
accuracy with and without it agrees up to the rare case where the bilinear arg-max moves between
two pixels of nearly equal value. What BoostLU changes is the *scale* of the attributions,
which :func:`attribution_stats` measures: the mean upsampled CAM value inside the cells holding a
positive class ("on object"), in the other cells of the same image ("off object"), and over the
whole image for classes that are absent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mlrkit.errors import MlrkitError
from mlrkit.models.cam import boostlu


def _as_tensor(x) -> Tensor:
    return x.detach().float().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


def upsample(cam: Tensor, image_size: int) -> Tensor:
    """Bilinear upsampling of CAMs [B, C, h, w] to [B, C, S, S] (``align_corners=False``)."""
    return F.interpolate(cam, size=(image_size, image_size), mode="bilinear", align_corners=False)


def cell_of_pixel(y: Tensor, x: Tensor, image_size: int, grid: int) -> Tensor:
    """Row-major grid cell index of pixel (y, x) in an ``S x S`` image cut into ``grid x grid`` cells."""
    return (y * grid // image_size) * grid + (x * grid // image_size)


def cell_masks(image_size: int, grid: int) -> Tensor:
    """Bool [g*g, S, S]: the pixels of each cell (row-major)."""
    ys = torch.arange(image_size)
    cell = cell_of_pixel(ys[:, None], ys[None, :], image_size, grid)
    return torch.stack([cell == k for k in range(grid * grid)])


@dataclass
class PointingCounts:
    """Running sums of the pointing game (and its chance level) over (image, positive class) pairs."""

    pairs: int = 0
    hits: int = 0
    chance_sum: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.hits / self.pairs if self.pairs else float("nan")

    @property
    def chance(self) -> float:
        return self.chance_sum / self.pairs if self.pairs else float("nan")


def pointing_hits(cam, targets, tile_labels, grid: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Hit and chance of every (image, positive class) pair of a batch.

    Args:
        cam: CAMs [B, C, h, w] (raw, or already BoostLU'd).
        targets: [B, C] ground truth 0/1.
        tile_labels: [B, g*g] class of each cell (row-major).
        grid: g.
        image_size: S (pixels; the CAM is upsampled to S x S).

    Returns:
        ``(hit, chance)``, two arrays over the positive pairs in row-major (image, class) order:
        hit is bool, chance = fraction of the cells holding that class.
    """
    cam = _as_tensor(cam)
    t = torch.as_tensor(np.asarray(targets)).bool()
    tiles = torch.as_tensor(np.asarray(tile_labels)).long()
    b, c = cam.shape[:2]
    if cam.ndim != 4 or t.shape != (b, c):
        raise MlrkitError(f"cam must be [B, C, h, w] and targets [B, C]; got {tuple(cam.shape)} and {tuple(t.shape)}")
    if tiles.shape != (b, grid * grid):
        raise MlrkitError(f"tile_labels must be [B, {grid * grid}], got {tuple(tiles.shape)}")
    up = upsample(cam, image_size).flatten(2)  # [B, C, S*S]
    arg = up.argmax(dim=2)  # first maximum in row-major order
    cell = cell_of_pixel(arg // image_size, arg % image_size, image_size, grid)  # [B, C]
    hit_all = tiles.gather(1, cell) == torch.arange(c)[None, :]  # class in the pointed cell
    holds = tiles[:, None, :] == torch.arange(c)[None, :, None]  # [B, C, g*g]
    chance_all = holds.float().mean(dim=2)
    return hit_all[t].numpy(), chance_all[t].numpy()


def attribution_stats(cam, targets, tile_labels, grid: int, image_size: int) -> dict[str, tuple[float, int]]:
    """Sums and counts of mean upsampled CAM values (see module docstring) for one batch.

    Returns ``{"on_object": (sum, n), "off_object": (sum, n), "absent": (sum, n)}``: ``on_object``
    sums, over positive pairs, the mean CAM over the cells holding the class; ``off_object`` the
    mean over the other cells (pairs whose class fills the whole mosaic are skipped there);
    ``absent`` the mean over the whole image, for pairs whose class is absent.
    """
    cam = _as_tensor(cam)
    t = torch.as_tensor(np.asarray(targets)).bool()
    tiles = torch.as_tensor(np.asarray(tile_labels)).long()
    c = cam.shape[1]
    up = upsample(cam, image_size)  # [B, C, S, S]
    masks = cell_masks(image_size, grid).float()  # [K, S, S]
    cell_mean = torch.einsum("bcyx,kyx->bck", up, masks) / masks.sum(dim=(1, 2))  # [B, C, K]
    holds = (tiles[:, None, :] == torch.arange(c)[None, :, None]).float()  # [B, C, K]
    n_hold = holds.sum(2)
    on = (cell_mean * holds).sum(2) / n_hold.clamp(min=1)
    off = (cell_mean * (1 - holds)).sum(2) / (grid * grid - n_hold).clamp(min=1)
    whole = cell_mean.mean(2)
    has_off = t & (n_hold < grid * grid)
    absent = ~t
    return {
        "on_object": (float(on[t].sum()), int(t.sum())),
        "off_object": (float(off[has_off].sum()), int(has_off.sum())),
        "absent": (float(whole[absent].sum()), int(absent.sum())),
    }


@dataclass
class PointingResult:
    """Pointing game and attribution statistics of a CAM model on a mosaic split."""

    pairs: int
    accuracy: float
    accuracy_boostlu: float
    chance: float
    alpha: float
    on_object: float
    off_object: float
    absent: float
    on_object_boostlu: float
    off_object_boostlu: float
    absent_boostlu: float
    n_images: int
    map_shape: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["map_shape"] = list(self.map_shape)
        return d


class PointingAccumulator:
    """Feed CAM batches (:meth:`add`), read a :class:`PointingResult` (:meth:`result`)."""

    def __init__(self, grid: int, image_size: int, alpha: float) -> None:
        self.grid, self.image_size, self.alpha = int(grid), int(image_size), float(alpha)
        self.plain, self.boosted = PointingCounts(), PointingCounts()
        self.sums: dict[str, list[float]] = {}
        self.n_images = 0
        self.map_shape: tuple[int, int] = (0, 0)

    def add(self, cam, targets, tile_labels) -> None:
        cam = _as_tensor(cam)
        self.n_images += cam.shape[0]
        self.map_shape = (int(cam.shape[2]), int(cam.shape[3]))
        for counts, m, tag in ((self.plain, cam, ""), (self.boosted, boostlu(cam, self.alpha), "_boostlu")):
            hit, chance = pointing_hits(m, targets, tile_labels, self.grid, self.image_size)
            counts.pairs += int(hit.size)
            counts.hits += int(hit.sum())
            counts.chance_sum += float(chance.sum())
            for key, (s, n) in attribution_stats(m, targets, tile_labels, self.grid, self.image_size).items():
                acc = self.sums.setdefault(key + tag, [0.0, 0])
                acc[0] += s
                acc[1] += n

    def _mean(self, key: str) -> float:
        s, n = self.sums.get(key, [0.0, 0])
        return s / n if n else float("nan")

    def result(self) -> PointingResult:
        return PointingResult(
            pairs=self.plain.pairs, accuracy=self.plain.accuracy, accuracy_boostlu=self.boosted.accuracy,
            chance=self.plain.chance, alpha=self.alpha,
            on_object=self._mean("on_object"), off_object=self._mean("off_object"), absent=self._mean("absent"),
            on_object_boostlu=self._mean("on_object_boostlu"), off_object_boostlu=self._mean("off_object_boostlu"),
            absent_boostlu=self._mean("absent_boostlu"), n_images=self.n_images, map_shape=self.map_shape,
        )


def pointing_game(cams, targets, tile_labels, grid: int, image_size: int, alpha: float = 5.0) -> PointingResult:
    """Pointing game + attribution statistics of CAMs [N, C, h, w] in one call (small inputs, tests)."""
    acc = PointingAccumulator(grid, image_size, alpha)
    acc.add(cams, targets, tile_labels)
    return acc.result()


@torch.no_grad()
def pointing_of_run(run_dir, split: str = "test", limit: int | None = None, batch_size: int = 256,
                    alpha: float | None = None) -> PointingResult:
    """Pointing game of a trained ``cam`` run on its own dataset's ``val`` or ``test`` split.

    The dataset must describe tile locations (``extras["tile_labels"]`` and ``extras["grid"]``,
    as ``fashion-mosaic`` does); ``alpha`` defaults to the run's ``boostlu.alpha``.
    """
    from mlrkit.analysis.explain import require_cam_model
    from mlrkit.engine.inference import load_run
    from mlrkit.engine.loaders import make_loader
    from mlrkit.engine.run_data import prepare_run_data

    run = load_run(run_dir)
    model = require_cam_model(run)
    data = prepare_run_data(run.cfg)
    if split not in ("val", "test"):
        raise MlrkitError(f"split must be 'val' or 'test', got {split!r}")
    sp = getattr(data, split)
    if "tile_labels" not in sp.extras or "grid" not in sp.extras:
        raise MlrkitError(f"dataset {data.dataset.name!r} has no tile locations (extras tile_labels/grid); "
                          "the pointing game needs a mosaic dataset such as fashion-mosaic")
    if limit is not None:
        sp = sp.subset(np.arange(min(int(limit), len(sp))))
    grid = int(sp.extras["grid"])
    tiles = np.asarray(sp.extras["tile_labels"])
    image_size = int(run.cfg.data.image_size)
    acc = PointingAccumulator(grid, image_size, model.alpha if alpha is None else alpha)
    loader = make_loader(run.built.method, sp, None, batch_size, train=False, seed=run.cfg.seed, cfg=run.cfg)
    model.eval()
    start = 0
    for batch in loader:
        cam = model.cam(batch["inputs"].to(run.device)).float().cpu()
        n = cam.shape[0]
        acc.add(cam, sp.targets[start:start + n], tiles[start:start + n])
        start += n
    return acc.result()


def format_pointing(rows: dict[str, PointingResult]) -> str:
    """A text table: one row per run."""
    w = max([len("run"), *(len(str(n)) for n in rows)]) + 2
    head = (f"{'run':<{w}}{'pairs':>7}{'chance':>8}{'point':>8}{'point+B':>9}"
            f"{'on-obj':>9}{'off-obj':>9}{'absent':>9}{'on+B':>9}{'off+B':>9}{'abs+B':>9}")
    lines = [head]
    for name, r in rows.items():
        lines.append(f"{name:<{w}}{r.pairs:>7}{r.chance:>8.3f}{r.accuracy:>8.3f}{r.accuracy_boostlu:>9.3f}"
                     f"{r.on_object:>9.3f}{r.off_object:>9.3f}{r.absent:>9.3f}"
                     f"{r.on_object_boostlu:>9.3f}{r.off_object_boostlu:>9.3f}{r.absent_boostlu:>9.3f}")
    return "\n".join(lines)
