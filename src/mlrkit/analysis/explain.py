r"""``mlrkit explain``: class activation maps of a ``cam`` run, without and with BoostLU.

For each image the model's CAM :math:`M_c` ([h, w], paper eq. 2) is computed for the requested
classes (default: the top-k predicted ones, ranked as the run predicts, i.e. with BoostLU at
inference iff ``boostlu.infer``). One PNG per image shows, for each class, the image, the CAM
overlay and the BoostLU'd CAM overlay :math:`\max(M_c, \alpha M_c)`, both upsampled bilinearly to
the image and drawn on **one** diverging colour scale centred at 0 (red: evidence for the class,
blue: against), so the boost is visible as stronger red. The attribution scores, i.e. the logits
:math:`\frac{1}{hw}\sum M_c` and :math:`\frac{1}{hw}\sum \mathrm{BoostLU}(M_c)` (eq. 3) and their
sigmoids, are written for every class to ``scores.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrkit.errors import DataError, MlrkitError
from mlrkit.models.cam import CAMClassifier, boostlu


def require_cam_model(run) -> CAMClassifier:
    """The run's model if it is a CAM classifier (method ``cam``), else a clear error."""
    model = run.built.model
    if not isinstance(model, CAMClassifier):
        raise MlrkitError(
            f"{run.run_dir}: explain needs a CAM model, i.e. a run trained with --method cam "
            f"(this run used method {run.cfg.method.name!r}); e.g. mlrkit train --config "
            "configs/boostlu/fashion-mosaic-llr-train-infer.yaml --out runs/fm-cam")
    return model


def resolve_classes(requested: list[str], class_names: list[str]) -> list[int]:
    """Class indices from names (exact, then case-insensitive) or integer indices; unknown names are errors."""
    out: list[int] = []
    lower = {n.lower(): i for i, n in enumerate(class_names)}
    for r in requested:
        r = r.strip()
        if r in class_names:
            out.append(class_names.index(r))
        elif r.lower() in lower:
            out.append(lower[r.lower()])
        elif r.lstrip("-").isdigit() and 0 <= int(r) < len(class_names):
            out.append(int(r))
        else:
            raise MlrkitError(f"unknown class {r!r}; the run's classes: {', '.join(class_names)}")
    return list(dict.fromkeys(out))


def load_image(path: str | Path):
    """An RGB PIL image, or a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {p}: {e}") from None


def _upsample(cam: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def draw_explanation(image, rows: list[dict[str, Any]], alpha: float, path: Path, title: str) -> None:
    """One PNG: a row per class with the image, the CAM overlay and the BoostLU CAM overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = image.size[0]
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    n = len(rows)
    fig, axes = plt.subplots(n, 3, figsize=(9.0, 2.9 * n + 0.4), squeeze=False, layout="constrained")
    for r, row in enumerate(rows):
        plain = _upsample(row["cam"], size)
        boosted = _upsample(boostlu(torch.from_numpy(row["cam"]), alpha).numpy(), size)
        lim = float(max(np.abs(boosted).max(), np.abs(plain).max(), 1e-8))
        ax = axes[r, 0]
        ax.imshow(image)
        ax.set_title(f"{row['name']}\np = {row['prob']:.3f} / {row['prob_boostlu']:.3f} (BoostLU)", fontsize=9)
        for ax, m, label, s in ((axes[r, 1], plain, "CAM", row["score"]),
                                (axes[r, 2], boosted, f"BoostLU CAM (alpha={alpha:g})", row["score_boostlu"])):
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.6)
            ax.set_title(f"{label}\nscore (mean) = {s:+.3f}", fontsize=9)
        fig.colorbar(im, ax=list(axes[r, 1:]), shrink=0.9, pad=0.02, label="attribution")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def explain_images(run_dir: str | Path, images: list[str | Path], *, classes: list[str] | None = None,
                   top_k: int = 3, out_dir: str | Path = "explain", alpha: float | None = None,
                   device: str = "auto") -> dict[str, Any]:
    """CAM overlays (PNG per image) and attribution scores (``scores.json``) of a ``cam`` run.

    Args:
        run_dir: a run trained with method ``cam``.
        images: image files.
        classes: class names (or indices) to show; default: each image's ``top_k`` predicted classes.
        out_dir: where the PNGs and ``scores.json`` go.
        alpha: BoostLU's alpha for the "with BoostLU" column (default: the run's ``boostlu.alpha``).

    Returns:
        The content of ``scores.json``.
    """
    from mlrkit.engine.inference import load_run
    from mlrkit.models.cam import check_alpha

    if not images:
        raise MlrkitError("no image given")
    run = load_run(run_dir, device=device)
    model = require_cam_model(run)
    model.eval()
    a = model.alpha if alpha is None else check_alpha(alpha, "--alpha")
    names = run.class_names
    fixed = resolve_classes(classes, names) if classes else None
    if top_k < 1:
        raise MlrkitError(f"--top-k must be >= 1, got {top_k}")
    size = int(run.cfg.data.image_size)
    tf = run.built.method.transform(train=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"run": str(run_dir), "alpha": a, "boostlu_infer": model.boost_infer,
                              "ranked_by": "score_boostlu" if model.boost_infer else "score", "images": []}
    used: set[str] = set()
    for path in images:
        img = load_image(path)
        x = tf(img)[None].to(run.device)
        cam = model.cam(x).float().cpu()[0]  # [C, h, w]
        plain = cam.mean(dim=(1, 2))
        boosted = boostlu(cam, a).mean(dim=(1, 2))
        ranking = boosted if model.boost_infer else plain
        shown = fixed or [int(i) for i in torch.argsort(ranking, descending=True)[:top_k]]
        scores = {n: {"score": float(plain[i]), "score_boostlu": float(boosted[i]),
                      "prob": _sigmoid(float(plain[i])), "prob_boostlu": _sigmoid(float(boosted[i]))}
                  for i, n in enumerate(names)}
        stem = Path(path).stem
        name = stem
        k = 1
        while name in used:
            k += 1
            name = f"{stem}-{k}"
        used.add(name)
        png = out / f"{name}.cam.png"
        rows = [{"name": names[i], "cam": cam[i].numpy(), **scores[names[i]]} for i in shown]
        draw_explanation(img.resize((size, size)), rows, a, png, f"{Path(path).name}  ({Path(run_dir).name})")
        report["images"].append({"image": str(path), "png": str(png), "shown": [names[i] for i in shown],
                                 "cam_shape": list(cam.shape[1:]), "classes": scores})
    (out / "scores.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict[str, Any]) -> str:
    """Text lines: per image, the shown classes with their scores without / with BoostLU."""
    lines = [f"alpha = {report['alpha']:g}; score = spatial mean of the CAM (logit), p = sigmoid"]
    for im in report["images"]:
        lines.append(f"{im['image']}  ->  {im['png']}")
        for n in im["shown"]:
            s = im["classes"][n]
            lines.append(f"  {n:<24} score {s['score']:+8.3f}  with BoostLU {s['score_boostlu']:+8.3f}   "
                         f"p {s['prob']:.3f} -> {s['prob_boostlu']:.3f}")
    return "\n".join(lines)
