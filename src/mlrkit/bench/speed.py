"""``mlrkit bench loop|loader|gpu``: the training loop's own overhead, image decoding, the GPU table.

* ``loop``: mlrkit's training loop (``Trainer.fit``: epochs of steps, validation each epoch,
  checkpoints) against a bare PyTorch loop doing the same work, timed alternately in one process.
  Two workloads: the demo MLP on ``scene`` (features) and the small CNN on ``fashion-mosaic``
  (images; both loops read the same :class:`~mlrkit.engine.image_data.ImageBatches`, so decoding
  costs the same and the ratio is the loop's own overhead). Both run with the thread count mlrkit's
  thread policy chose. Target (issue 20): ratio <= 1.25.
* ``loader``: images/s of decode + resize + normalise in one process (= per DataLoader worker; best of
  two passes after a warm-up) at 224 and 448 px, with Pillow (mlrkit's transforms) and
  ``torchvision.io.decode_jpeg`` (+ tensor resize), on JPEGs of real photos (fashion-mosaic mosaics,
  enlarged to 500x375), against the training step rate of a model at the same resolution:
  ``workers_needed`` = step rate / per-worker rate.
* ``gpu``: for the device machine: the throughput table of every method (:data:`CASES` of
  :mod:`mlrkit.bench.throughput`) with AMP off and bf16, and the share of step time spent waiting for
  data with the default loader (workers, pinned memory, prefetch) for the pixel-consuming methods.
  ``--smoke`` runs it with small models on the CPU (a check of the code, not a figure).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


# ---------------------------------------------------------------------------- loop
def _median_alternating(fns: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Call the functions in turn, ``repeats`` rounds, alternating which goes first; each returns seconds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            times[k].append(float(fns[k]()))
    return times


def _loop_config(workload: str, out: str, epochs: int, limit: int | None):
    from mlrkit.config import build_config
    from mlrkit.engine.demo import DEMO_RECIPE

    common = {"out": out, "labels": {"protocol": "single-positive"}, "loss": {"name": "an"}}
    if workload == "mlp":  # the demo recipe (configs/demo/mlp.yaml)
        flags = {**DEMO_RECIPE, **common, "data": {"name": "scene"}}
        flags["train"] = {**flags["train"], "epochs": epochs}
        return build_config(flags=flags)
    if workload == "cnn":  # configs/fashion-mosaic/smallcnn.yaml on the first `limit` training mosaics
        flags = {**common, "data": {"name": "fashion-mosaic", "image_size": 56, "limit_train": limit or 1000},
                 "method": {"name": "finetune"}, "model": {"name": "smallcnn", "width": 16},
                 "train": {"epochs": epochs, "batch_size": 64, "lr": 2e-3, "optimizer": "adam", "progress": False}}
        return build_config(flags=flags)
    raise ValueError(f"unknown loop workload {workload!r} (mlp or cnn)")


def _mlrkit_fit(cfg) -> tuple[float, int]:
    """Seconds of ``Trainer.fit``'s epochs (``timings.train_s``) and the threads its policy chose."""
    import json

    from mlrkit.engine.trainer import train

    train(cfg, quiet=True)
    info = json.loads((Path(cfg.out) / "run.json").read_text())
    return float(info["timings"]["train_s"]), int(info["threads"]["threads"])


def _bare_fit(cfg, threads: int) -> float:
    """The same epochs as a plain PyTorch loop: same data, model, loss, Adam, batches; a forward of the
    validation split each epoch; no checks, no checkpoints, no logging."""
    import torch.nn.functional as F

    from mlrkit.engine.build import build_for_task
    from mlrkit.engine.loaders import make_loader
    from mlrkit.engine.run_data import prepare_run_data, task_info
    from mlrkit.methods import build_method

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = prepare_run_data(cfg)
        method = build_method(cfg)
        method.prepare_data(data, device=torch.device("cpu"), progress=False)
        built = build_for_task(cfg, task_info(cfg, data, method.input_kind), method)
        model = built.model
        method.init_from_train(model, data, None, device=torch.device("cpu"))
        tc = cfg.train
        train_batches = make_loader(method, data.train, data.observed_train, tc.batch_size, train=True, seed=cfg.seed,
                                    cfg=cfg)
        val_batches = make_loader(method, data.val, None, max(tc.batch_size, 256), train=False, seed=cfg.seed,
                                  cfg=cfg)
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
        t = time.perf_counter()
        for epoch in range(tc.epochs):
            train_batches.set_epoch(epoch)
            model.train()
            for b in train_batches:
                logits = model(b["inputs"])
                loss = F.binary_cross_entropy_with_logits(logits, (b["observed"] == 1).float())
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                for b in val_batches:
                    model(b["inputs"])
        return time.perf_counter() - t
    finally:
        torch.set_num_threads(before)


def bench_loop(workloads: tuple[str, ...] = ("mlp", "cnn"), repeats: int = 3, epochs: int | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """mlrkit's ``Trainer.fit`` vs a bare loop (module docstring); medians of ``repeats`` alternated pairs."""
    return [_loop_row(w, repeats, epochs or (30 if w == "mlp" else 2), limit) for w in workloads]


def _loop_row(workload: str, repeats: int, epochs: int, limit: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(10_000))
        threads = {}

        def mlrkit_run() -> float:
            s, threads["n"] = _mlrkit_fit(_loop_config(workload, f"{tmp}/r{next(runs)}", epochs, limit))
            return s

        def bare_run() -> float:
            return _bare_fit(_loop_config(workload, f"{tmp}/bare", epochs, limit), threads["n"])

        mlrkit_run()  # warm-up (imports, first allocations); also learns the thread count
        times = _median_alternating({"mlrkit": mlrkit_run, "bare": bare_run}, repeats)
    cfg = _loop_config(workload, "x", epochs, limit)
    m, b = statistics.median(times["mlrkit"]), statistics.median(times["bare"])
    return {"workload": workload, "dataset": cfg.data.name, "method": cfg.method.name, "epochs": epochs,
            "batch": cfg.train.batch_size, "threads": threads["n"], "mlrkit_s": m, "bare_s": b, "ratio": m / b,
            "mlrkit_all_s": times["mlrkit"], "bare_all_s": times["bare"], "repeats": repeats}


def format_loop(rows: list[dict[str, Any]]) -> str:
    lines = ["| workload | epochs x batch | threads | mlrkit s | bare PyTorch s | ratio |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} on {r['dataset']} | {r['epochs']} x {r['batch']} | {r['threads']} | "
                     f"{r['mlrkit_s']:.2f} | {r['bare_s']:.2f} | {r['ratio']:.2f}x |")
    lines.append(f"\nmedians of {rows[0]['repeats'] if rows else 0} alternated runs (the first mlrkit run is a "
                 "warm-up and not counted); target: ratio <= 1.25")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- loader
def photo_jpegs(directory: Path, n: int, size: tuple[int, int] = (500, 375), quality: int = 90) -> list[Path]:
    """``n`` JPEGs of real photos: fashion-mosaic mosaics (Fashion-MNIST photos) enlarged to ``size``
    (a VOC/COCO-like 500x375 frame), for timing decoders (timing only)."""
    from PIL import Image

    from mlrkit.data import load_dataset

    imgs = load_dataset("fashion-mosaic").trainval.images
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = directory / f"photo{i:04d}.jpg"
        if not p.is_file():
            imgs.load(i % len(imgs)).convert("RGB").resize(size, Image.BILINEAR).save(p, quality=quality)
        paths.append(p)
    return paths


def _pil_rate(paths: list[Path], size: int) -> float:
    from PIL import Image

    from mlrkit.data.transforms import build_transform

    tf = build_transform(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), train=False)

    def one_pass(ps: list[Path]) -> float:
        t = time.perf_counter()
        for p in ps:
            with Image.open(p) as im:
                tf(im.convert("RGB"))
        return time.perf_counter() - t

    one_pass(paths[:4])  # warm-up: plugin loading, first allocations
    return len(paths) / min(one_pass(paths), one_pass(paths))


def _tv_rate(paths: list[Path], size: int, device: torch.device) -> float:
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg, read_file

    mean = torch.full((3, 1, 1), 0.5, device=device)
    data = [read_file(str(p)) for p in paths]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def one_pass(ds: list[torch.Tensor]) -> float:
        sync()
        t = time.perf_counter()
        for d in ds:
            img = decode_jpeg(d, device=device) if device.type == "cuda" else decode_jpeg(d)
            x = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
            ((x / 255.0) - mean) / mean
        sync()
        return time.perf_counter() - t

    one_pass(data[:4])  # warm-up (nvjpeg handles, kernels)
    return len(paths) / min(one_pass(data), one_pass(data))


def _step_rate(model_name: str, size: int, batch: int, device: torch.device, steps: int, amp: bool) -> float:
    """Training images/s of a classifier (random weights: speed does not depend on them)."""
    from mlrkit.models.backbones import build_backbone

    backbone = build_backbone(model_name, image_size=size, **({"width": 16} if model_name == "smallcnn" else {}))
    head = torch.nn.Linear(backbone.feature_dim, 80)
    model = torch.nn.Sequential(backbone, head).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 80, device=device) < 0.1).float()
    dtype = torch.bfloat16 if amp else None

    def step():
        with torch.autocast(device.type, dtype=dtype) if dtype else _null():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def bench_loader(sizes: tuple[int, ...] = (224, 448), n_images: int = 64, model: str = "resnet50", batch: int = 8,
                 steps: int = 3, device: str = "auto") -> list[dict[str, Any]]:
    """Per-worker decode+transform rate (Pillow, torchvision.io) vs the model's training step rate."""
    from mlrkit.engine.devices import resolve_device
    from mlrkit.engine.image_data import auto_workers

    dev = resolve_device(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_jpegs(Path(tmp), n_images)
        for size in sizes:
            step = _step_rate(model, size, batch, dev, steps, amp=dev.type == "cuda")
            row = {"image_size": size, "images": n_images, "pil_img_s": _pil_rate(paths, size),
                   "tv_cpu_img_s": _tv_rate(paths, size, torch.device("cpu")), "model": model, "batch": batch,
                   "device": str(dev), "step_img_s": step, "default_workers": auto_workers(dev.type == "cuda")}
            if dev.type == "cuda":
                row["tv_gpu_img_s"] = _tv_rate(paths, size, dev)
            row["workers_needed_pil"] = step / row["pil_img_s"]
            row["workers_needed_tv_cpu"] = step / row["tv_cpu_img_s"]
            rows.append(row)
    return rows


def format_loader(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | Pillow img/s/worker | torchvision.io CPU img/s/worker | torchvision.io GPU img/s | model step "
             "img/s | workers needed (Pillow / tv.io) | default workers |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gpu = f"{r['tv_gpu_img_s']:.0f}" if "tv_gpu_img_s" in r else "-"
        lines.append(f"| {r['image_size']} | {r['pil_img_s']:.1f} | {r['tv_cpu_img_s']:.1f} | {gpu} | "
                     f"{r['step_img_s']:.1f} ({r['model']}, batch {r['batch']}) | {r['workers_needed_pil']:.1f} / "
                     f"{r['workers_needed_tv_cpu']:.1f} | {r['default_workers']} |")
    if rows:
        lines.append(f"\ndevice: {rows[0]['device']}; {rows[0]['images']} JPEGs of 500x375 (enlarged fashion-mosaic "
                     "photos); per-worker rates measured in one process")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- gpu
def data_wait_share(model_name: str, size: int, batch: int, steps: int, device: torch.device,
                    n_images: int, num_workers: int | None = None, amp: bool = True) -> dict[str, Any]:
    """Share of a training loop's time spent waiting for the next batch, with mlrkit's image pipeline
    (:class:`ImageBatches`: Pillow decode + resize + normalise) and the default loader options."""
    from mlrkit.data import Split
    from mlrkit.data.base import PathImageSource
    from mlrkit.data.transforms import build_transform
    from mlrkit.engine.image_data import ImageBatches
    from mlrkit.models.backbones import build_backbone

    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_jpegs(Path(tmp), n_images)
        targets = np.zeros((n_images, 80), np.uint8)
        targets[:, 0] = 1
        split = Split(targets=targets, ids=[p.name for p in paths], images=PathImageSource(paths))
        tf = build_transform(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), train=True)
        loader = ImageBatches(split, None, tf, batch, shuffle=True, seed=0, num_workers=num_workers,
                              pin_memory=device.type == "cuda", drop_last=True)
        backbone = build_backbone(model_name, image_size=size, **({"width": 16} if model_name == "smallcnn" else {}))
        model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.feature_dim, 80)).to(device)
        channels_last = device.type == "cuda"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        wait = compute = 0.0
        done = 0
        epoch = 0
        while done < steps + 1:
            loader.set_epoch(epoch)
            epoch += 1
            it = iter(loader)
            while done < steps + 1:
                t0 = time.perf_counter()
                try:
                    b = next(it)
                except StopIteration:
                    break
                x = b["inputs"].to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                t1 = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16) if amp else _null():
                    out = model(x)
                loss = out.float().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sync()
                t2 = time.perf_counter()
                if done > 0:  # the first step (worker start-up, first kernels) is not counted
                    wait += t1 - t0
                    compute += t2 - t1
                done += 1
        return {"model": model_name, "image_size": size, "batch": batch, "steps": steps, "workers": loader.num_workers,
                "pin_memory": loader.pin_memory, "data_wait_share": wait / max(wait + compute, 1e-9),
                "step_s": (wait + compute) / max(steps, 1)}


def bench_gpu(smoke: bool = False, methods: list[str] | None = None, batch: int = 32, steps: int = 10,
              device: str = "auto") -> dict[str, Any]:
    """The device machine's table: every method's train step with AMP off and bf16, and the data-wait
    share of ResNet-50 at 448 px with the default loader. ``smoke``: small models, few steps, any device."""
    from mlrkit.bench.throughput import CASES, bench_throughput
    from mlrkit.engine.devices import resolve_device

    dev = resolve_device(device)
    small = {"backbone": "smallcnn", "vl_model": "tiny", "image_size": 32} if smoke else None
    names = methods or list(CASES)
    b, n = (2, 1) if smoke else (batch, steps)
    rows = []
    for amp in (None, "bf16"):
        rows += bench_throughput(names, batch=b, steps=n, train_only=True, small=small, amp=amp)
    for r in rows:
        r.setdefault("amp", "?")
    speedups = {}
    for name in names:
        off = next((r for r in rows if r["method"] == name and r.get("amp") == "off" and "error" not in r), None)
        on = next((r for r in rows if r["method"] == name and r.get("amp") == "bf16" and "error" not in r), None)
        if off and on:
            speedups[name] = off["train_step_s"] / on["train_step_s"]
    wait = data_wait_share("smallcnn" if smoke else "resnet50", 32 if smoke else 448, 4 if smoke else batch,
                           2 if smoke else steps, dev, n_images=16 if smoke else 4 * batch,
                           amp=dev.type == "cuda")
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU", "smoke": smoke,
            "rows": rows, "bf16_speedup": speedups, "data_wait": wait}


def format_gpu(res: dict[str, Any]) -> str:
    lines = ["| method | AMP | train step s | train img/s | peak MB |", "|---|---|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r.get('amp', '?')} | {r['error']} | | |")
        else:
            lines.append(f"| {r['method']} | {r['amp']} | {r['train_step_s']:.3f} | {r['train_img_s']:.1f} | "
                         f"{r['peak_memory_mb']:.0f} |")
    sp = ", ".join(f"{k} {v:.2f}x" for k, v in res["bf16_speedup"].items())
    w = res["data_wait"]
    lines.append(f"\nbf16 vs fp32 step: {sp or '-'}")
    lines.append(f"data wait: {100 * w['data_wait_share']:.1f}% of step time ({w['model']} at {w['image_size']} px, "
                 f"batch {w['batch']}, {w['workers']} workers, pinned memory {w['pin_memory']})")
    lines.append(f"device: {res['device']}" + (" (SMOKE RUN: small models, not a GPU figure)" if res["smoke"] else ""))
    return "\n".join(lines)
