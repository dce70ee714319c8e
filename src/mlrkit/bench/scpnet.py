"""``mlrkit bench scpnet``: cost of an SCPNet training step vs a plain fine-tuning step of the same
image encoder, side by side in one process.

Setup (defaults): ``openclip:RN50`` with random weights (speed does not depend on the values),
224 px, batch 8, the first 8 fashion-mosaic training images (single-positive labels), the 80 COCO
class names (the text side's cost grows with the number of classes), Adam.

* **fine-tune**: a trainable copy of the CLIP image tower + a linear head, loss ``an``, one view.
* **scpnet**: the full method (eq. 14): the same tower on the weak and the strong view (one batch of
  2B), the learned prompts through the frozen text encoder (forward + backward to the context),
  the 3-layer GCN, SPLC on the weak view and both PESSL terms.

The two steps alternate ``repeats`` times after one warm-up step each; the median of each is
reported with the text side alone (prompts + GCN, forward + backward) and the augmentation cost
of one batch (weak view only vs weak + strong views, done by the data loader). Inputs are
transformed once beforehand, so neither step is charged for decoding or augmentation.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

import torch
from torch import nn


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def class_names_for(classes: int) -> list[str]:
    """``classes`` names: the COCO names first, then ``object <i>``."""
    from mlrkit.methods.prompting import COCO_CLASSES

    names = list(COCO_CLASSES[:classes])
    return names + [f"object {i}" for i in range(len(names), classes)]


def bench_scpnet(vl_spec: str = "openclip:RN50", image_size: int = 224, batch: int = 8, classes: int = 80,
                 repeats: int = 5, seed: int = 0, threads: int | None = None) -> list[dict[str, Any]]:
    """Rows: fine-tune step, SCPNet step, their ratio, text side, augmentation (seconds, medians)."""
    from mlrkit import losses
    from mlrkit.data import load_dataset
    from mlrkit.labels import make_observed
    from mlrkit.methods.scpnet import DEFAULTS, build_scpnet_model, scpnet_step, scpnet_transforms
    from mlrkit.models.scpnet import CLIPImageEncoder, prior_from_features, prior_text_features
    from mlrkit.vl import load_frozen

    if threads:
        torch.set_num_threads(int(threads))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights, on purpose
        vl = load_frozen(vl_spec, seed=seed)
    names = class_names_for(classes)
    opts = DEFAULTS
    ds = load_dataset("fashion-mosaic", limit_train=batch, limit_test=1)
    split = ds.trainval
    imgs = [split.images.load(i) for i in range(batch)]
    _, weak_tf, strong_tf = scpnet_transforms(vl, image_size, opts)
    torch.manual_seed(seed)
    aug_weak = statistics.median(_timed(lambda: [weak_tf(im) for im in imgs]) for _ in range(3))
    aug_both = statistics.median(_timed(lambda: [(weak_tf(im), strong_tf(im)) for im in imgs]) for _ in range(3))
    x_w = torch.stack([weak_tf(im) for im in imgs])
    x_s = torch.stack([strong_tf(im) for im in imgs])
    targets = torch.zeros(batch, classes, dtype=torch.uint8)
    n = min(classes, ds.num_classes)
    targets[:, :n] = torch.from_numpy(split.targets[:, :n])
    observed = torch.from_numpy(make_observed(targets.numpy(), "single-positive", seed))
    index = torch.arange(batch)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ft_encoder = CLIPImageEncoder(vl).train()
        ft_head = nn.Linear(vl.embed_dim, classes)
    ft_params = list(ft_encoder.parameters()) + list(ft_head.parameters())
    ft_opt = torch.optim.Adam(ft_params, lr=1e-5)
    an = losses.build("an")

    prior = prior_from_features(prior_text_features(vl, names, opts.template), k=opts.k, s=opts.s, tau=opts.tau_prior)
    model = build_scpnet_model(vl, names, opts, train_rows=batch, seed=seed, prior=prior).train()
    scp_opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    splc = losses.build("splc")
    scp_batch = {"inputs": x_w, "strong": x_s, "observed": observed, "index": index}

    def ft_step() -> None:
        loss = an(ft_head(ft_encoder(x_w)).float(), observed, index=index)
        ft_opt.zero_grad(set_to_none=True)
        loss.backward()
        ft_opt.step()

    def scp_step() -> None:
        loss, _ = scpnet_step(model, scp_batch, splc, 1, opts)
        scp_opt.zero_grad(set_to_none=True)
        loss.backward()
        scp_opt.step()

    def text_side() -> None:
        t, z = model.class_features()
        z.sum().backward()

    ft_step()
    scp_step()  # warm-up
    ft_t, scp_t, text_t = [], [], []
    for _ in range(repeats):
        ft_t.append(_timed(ft_step))
        scp_t.append(_timed(scp_step))
        text_t.append(_timed(text_side))
    scp_opt.zero_grad(set_to_none=True)
    ft_m, scp_m = statistics.median(ft_t), statistics.median(scp_t)
    common = {"vl_model": vl_spec, "image_size": image_size, "batch": batch, "classes": classes,
              "threads": torch.get_num_threads(), "repeats": repeats}
    return [
        {"path": "finetune", **common, "step_s": ft_m, "min_s": min(ft_t), "steps_s": ft_t,
         "trainable_params": sum(p.numel() for p in ft_params)},
        {"path": "scpnet", **common, "step_s": scp_m, "min_s": min(scp_t), "steps_s": scp_t,
         "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)},
        {"path": "text side (prompts + GCN, fwd+bwd)", **common, "step_s": statistics.median(text_t),
         "min_s": min(text_t), "steps_s": text_t},
        {"path": "ratio scpnet / finetune", **common, "ratio": scp_m / ft_m, "ratio_of_min": min(scp_t) / min(ft_t),
         "within_3x": scp_m <= 3 * ft_m},
        {"path": "augmentation of one batch", **common, "weak_s": aug_weak, "weak_and_strong_s": aug_both},
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The benchmark table (median seconds per training step)."""
    r0 = rows[0]
    lines = [f"{r0['vl_model']}, {r0['image_size']} px, batch {r0['batch']}, {r0['classes']} classes, "
             f"{r0['threads']} torch threads, median of {r0['repeats']} alternating steps",
             f"{'path':<38} {'median s':>9} {'min s':>8} {'trainable params':>17}"]
    for r in rows:
        if "ratio" in r:
            verdict = "within" if r["within_3x"] else "ABOVE"
            lines.append(f"{r['path']:<38} {r['ratio']:>8.2f}x {r['ratio_of_min']:>7.2f}x  ({verdict} the 3x budget)")
        elif "weak_s" in r:
            lines.append(f"{r['path']:<38} weak view {r['weak_s']:.3f} s, weak + strong {r['weak_and_strong_s']:.3f} s "
                         "(data loader)")
        else:
            params = f"{r['trainable_params']:>17,}" if "trainable_params" in r else ""
            lines.append(f"{r['path']:<38} {r['step_s']:>9.3f} {r['min_s']:>8.3f} {params}")
    return "\n".join(lines)


__all__ = ["bench_scpnet", "format_table"]
