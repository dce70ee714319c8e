"""Linear probe on cached CLIP features vs recomputing the frozen encoder every epoch.

Both paths train the same linear classifier (same loss, batches, optimizer) on the same images;
the first extracts features once (FeatureStore, timed separately) and then reads them, the
second runs the frozen image encoder on every batch of every epoch (what VLPL's code does).
"""

from __future__ import annotations

import platform
import tempfile
import time

import numpy as np
import torch
from torch import nn

from mlrkit.data import load_dataset
from mlrkit.features import FeatureStore
from mlrkit.losses import build


def _epoch(head: nn.Module, opt, batches, loss_fn) -> float:
    t = time.perf_counter()
    for x, obs, idx in batches():
        logits = head(x)
        loss = loss_fn(logits, obs, index=idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def _batches(order: torch.Tensor, batch: int, obs: torch.Tensor, inputs):
    """A re-iterable batch source: ``inputs(idx)`` gives the features of rows ``idx``."""

    def gen():
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            with torch.no_grad():
                x = inputs(idx)
            yield x, obs[idx], idx

    return gen


def bench_features(archs: tuple[str, ...] = ("RN50", "ViT-B-16"), n_images: int = 64, batch: int = 32,
                   image_size: int = 224, epochs: int = 3, device: str = "cpu") -> list[dict]:
    from mlrkit import vl
    from mlrkit.vl.features import vl_image_features

    ds = load_dataset("fashion-mosaic", limit_train=n_images, limit_test=1)
    images = ds.trainval.images
    targets = torch.from_numpy(ds.trainval.targets.astype(np.int8))
    obs = torch.where(targets == 1, 1, -1).to(torch.int8)
    loss_fn = build("bce")
    rows = []
    for arch in archs:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = vl.load(f"openclip:{arch}", seed=0, device=device).freeze()
        tf = model.transform(train=False, image_size=image_size)
        with tempfile.TemporaryDirectory() as tmp:
            store = FeatureStore(tmp)
            t0 = time.perf_counter()
            feats = torch.from_numpy(np.array(vl_image_features(model, images, image_size=image_size, store=store,
                                                                batch_size=batch, device=device, progress=False)))
            extract_s = time.perf_counter() - t0
        order = torch.arange(n_images)

        pixels = torch.stack([tf(images.load(i)) for i in range(n_images)])
        cached_batches = _batches(order, batch, obs, lambda idx, f=feats: f[idx])
        recompute_batches = _batches(order, batch, obs,
                                     lambda idx, m=model, px=pixels: m.encode_image(px[idx].to(device)))
        results = {}
        for name, batches in (("cached", cached_batches), ("recompute", recompute_batches)):
            torch.manual_seed(0)
            head = nn.Linear(feats.shape[1], targets.shape[1]).to(device)
            opt = torch.optim.Adam(head.parameters(), lr=1e-3)
            times = [_epoch(head, opt, batches, loss_fn) for _ in range(epochs)]
            results[name] = float(np.median(times))
        rows.append({
            "encoder": f"openclip:{arch} (random weights)", "image_size": image_size, "images": n_images,
            "extract_once_s": extract_s, "epoch_cached_s": results["cached"],
            "epoch_recompute_s": results["recompute"], "speedup_per_epoch": results["recompute"] / results["cached"],
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads" if device == "cpu" else device,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| encoder | px | images | extract once (s) | epoch cached (s) | epoch recompute (s) | speed-up/epoch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['image_size']} | {r['images']} | {r['extract_once_s']:.2f} | "
                     f"{r['epoch_cached_s']:.4f} | {r['epoch_recompute_s']:.2f} | {r['speedup_per_epoch']:.0f}x |")
    lines.append(f"machine: {rows[0]['machine']}")
    return "\n".join(lines)
