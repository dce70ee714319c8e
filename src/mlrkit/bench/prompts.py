"""``mlrkit bench prompts``: epoch time of prompt learning on cached dense features vs recomputing
the frozen image encoder at every step, side by side in one process.

Setup (defaults): ``openclip:RN50`` with random weights (speed does not depend on the values),
224 px, the first 64 fashion-mosaic training images (already transformed once, so the recompute
path is not charged for decoding), batch 16, SGD, ASL with unknowns ignored, the fashion-mosaic
class names (10). For every method, an epoch on cached features (``DenseBatches`` over the cached
[N, HW, D] array) and an epoch that runs ``encode_dense`` on the image batch at every step
alternate ``repeats`` times; the fastest of each is reported (the machine is shared), with the
one-off extraction time, the text encoder's time per step (forward + backward of the learned
prompts) and the image encoder's time per step. The text encoder runs at every step in both paths,
so the speed-up of the prompt methods is bounded by (image + text) / text; the vision-only
baseline has no text encoder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_METHODS = ("dualcoop", "positivecoop", "negativecoop", "baseline")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_prompts(vl_spec: str = "openclip:RN50", image_size: int = 224, n_images: int = 64, batch: int = 16,
                  methods: Sequence[str] = DEFAULT_METHODS, repeats: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Rows: one per method (cached vs recompute epoch seconds and their ratio) plus the extraction row."""
    import warnings

    from mlrkit import losses
    from mlrkit.config import build_config
    from mlrkit.data import Split, load_dataset
    from mlrkit.labels import make_observed
    from mlrkit.methods.base import TaskInfo, build_method
    from mlrkit.methods.prompting import DenseBatches
    from mlrkit.vl import load_frozen

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights, on purpose
        vl = load_frozen(vl_spec, seed=seed)
    ds = load_dataset("fashion-mosaic", limit_train=n_images, limit_test=1)
    split: Split = ds.trainval
    n = len(split)
    tf = vl.transform(train=False, image_size=image_size)
    images = torch.stack([tf(split.images.load(i)) for i in range(n)])
    chunks: list[torch.Tensor] = []
    with torch.no_grad():
        extract_s = _timed(lambda: chunks.extend(vl.encode_dense(images[i:i + batch]).float()
                                                 for i in range(0, n, batch)))
    dense = torch.cat(chunks).numpy()
    observed = make_observed(split.targets, "partial:0.5", seed)
    loss_fn = losses.build("asl", gamma_pos=1.0, gamma_neg=2.0, clip=0.05, unknown="ignore")
    obs_t = torch.from_numpy(observed)
    loader = DenseBatches([dense], split, observed, batch, shuffle=True, seed=seed, sample_views=False)
    grid = list(vl.dense_grid(image_size))
    common = {"vl_model": vl_spec, "image_size": image_size, "images": n, "batch": batch,
              "threads": torch.get_num_threads(), "dense_grid": grid, "classes": len(ds.class_names)}
    rows: list[dict[str, Any]] = [{"method": "(extract once)", **common, "extract_s": extract_s}]
    for name in methods:
        cfg = build_config(flags={"seed": seed, "method": {"name": name}, "vl": {"model": vl_spec}})
        model = build_method(cfg).build_model(TaskInfo(list(ds.class_names), "images", image_size=image_size))
        rows.append({"method": name, **common,
                     **_time_method(model, vl, loader, images, dense, obs_t, loss_fn, batch, repeats)})
    return rows


def _time_method(model, vl, loader, images: torch.Tensor, dense, obs_t: torch.Tensor, loss_fn, batch: int,
                 repeats: int) -> dict[str, Any]:
    """Fastest cached and recompute epochs of one model (alternating), plus per-step encoder times."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step(x: torch.Tensor, idx: torch.Tensor) -> None:
        loss = loss_fn(model(x), obs_t[idx], index=idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def cached_epoch(epoch: int) -> None:
        loader.set_epoch(epoch)
        for b in loader:
            step(b["inputs"], b["index"])

    def recompute_epoch(epoch: int) -> None:
        loader.set_epoch(epoch)
        for b in loader:
            step(images[b["index"]], b["index"])  # the model runs encode_dense on the images

    def text() -> None:
        t_pos, t_neg = model.class_features()
        (t_pos.sum() + t_neg.sum()).backward()

    model.train()
    step(torch.from_numpy(dense[:batch]), torch.arange(min(batch, len(dense))))  # warm-up
    cached, recompute = [], []
    for r in range(repeats):
        cached.append(_timed(lambda r=r: cached_epoch(r)))
        recompute.append(_timed(lambda r=r: recompute_epoch(r)))
    with torch.no_grad():
        image_step = _timed(lambda: vl.encode_dense(images[:batch]))
    text_step = _timed(text) if hasattr(model, "class_features") else 0.0
    opt.zero_grad(set_to_none=True)
    c, rc = min(cached), min(recompute)
    return {"trainable_params": sum(p.numel() for p in params), "steps_per_epoch": len(loader),
            "cached_epoch_s": c, "recompute_epoch_s": rc, "speedup": rc / c if c > 0 else float("nan"),
            "text_step_s": text_step, "image_step_s": image_step, "repeats": repeats}


def format_table(rows: list[dict[str, Any]]) -> str:
    """The benchmark table (seconds per epoch; speed-up = recompute / cached)."""
    head = f"{'method':<14} {'cached s/epoch':>15} {'recompute s/epoch':>18} {'speed-up':>9} {'text s/step':>12} " \
           f"{'image s/step':>13}"
    lines = []
    for r in rows:
        if "extract_s" in r:
            lines.append(f"{r['vl_model']}, {r['image_size']} px (grid {r['dense_grid'][0]}x{r['dense_grid'][1]}), "
                         f"{r['images']} images, batch {r['batch']}, {r['classes']} classes, "
                         f"{r['threads']} torch threads")
            lines.append(f"one-off dense extraction of the {r['images']} images: {r['extract_s']:.2f} s")
            lines.append(head)
            continue
        lines.append(f"{r['method']:<14} {r['cached_epoch_s']:>15.3f} {r['recompute_epoch_s']:>18.3f} "
                     f"{r['speedup']:>8.1f}x {r['text_step_s']:>12.3f} {r['image_step_s']:>13.3f}")
    return "\n".join(lines)


__all__ = ["bench_prompts", "format_table"]
