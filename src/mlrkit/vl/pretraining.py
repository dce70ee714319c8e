"""Contrastive CLIP pre-training on fashion-mosaic (the built-in ``mosaic-clip``).

Captions are generated from each mosaic's labels with several templates and a shuffled class
order ("a photo of a sneaker, a bag and a shirt."); the model is an open_clip ``CLIP`` with a
small ViT and a small text transformer, trained with the symmetric InfoNCE loss of Radford et
al. (2021): L = ½ [CE(s·I·Tᵀ, diag) + CE(s·T·Iᵀ, diag)], s = exp(logit_scale).

Images are normalised on tensors exactly as the model's own eval transform does (the mosaics
are already at the model's resolution), so training and inference see the same inputs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlrkit.errors import MlrkitError
from mlrkit.utils import derive_seed

if TYPE_CHECKING:
    from mlrkit.engine.loop import LoopRun

log = logging.getLogger("mlrkit")

#: the mosaic-clip architecture (open_clip CLIP keyword config); ~7.7M parameters
MOSAIC_CLIP_CONFIG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 56, "layers": 4, "width": 128, "head_width": 32, "patch_size": 7, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a picture of {}.",
    "an image with {}.",
    "{}.",
)


def _article(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def join_names(names: Sequence[str]) -> str:
    """['bag', 'shirt', 'ankle boot'] -> 'a bag, a shirt and an ankle boot'."""
    items = [_article(n) for n in names]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption_for(labels: np.ndarray, class_names: Sequence[str], rng: np.random.Generator,
                templates: Sequence[str] = CAPTION_TEMPLATES) -> str:
    """One caption naming every present class, in random order, with a random template."""
    return caption_and_classes(labels, class_names, rng, templates)[0]


def caption_and_classes(labels: np.ndarray, class_names: Sequence[str], rng: np.random.Generator,
                        templates: Sequence[str] = CAPTION_TEMPLATES, subset_prob: float = 0.0
                        ) -> tuple[str, np.ndarray]:
    """A caption and the classes it names. With probability ``subset_prob`` it names a random
    non-empty subset of the present classes (as real captions mention only some objects)."""
    present = np.flatnonzero(labels)
    if len(present) > 1 and rng.random() < subset_prob:
        k = int(rng.integers(1, len(present)))
        present = rng.choice(present, size=k, replace=False)
    present = np.array(present)
    rng.shuffle(present)
    named = [class_names[j].lower() for j in present]
    return templates[int(rng.integers(len(templates)))].format(join_names(named)), present


@dataclass
class PretrainResult:
    steps: int
    seconds: float
    final_loss: float
    zeroshot_map: float | None


def build_clip(config: dict, seed: int) -> nn.Module:
    """An open_clip ``CLIP`` from a keyword config, initialised deterministically from ``seed``."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=config["embed_dim"],
        vision_cfg=CLIPVisionCfg(**config["vision_cfg"]),
        text_cfg=CLIPTextCfg(**config["text_cfg"]),
    )


def images_to_tensor(batch_u8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 [B, H, W] (grey) or [B, H, W, 3] -> normalised float [B, 3, H, W] (ToTensor + Normalize)."""
    x = torch.from_numpy(np.ascontiguousarray(batch_u8)).float().div_(255.0)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def contrastive_loss(img: Tensor, txt: Tensor, logit_scale: Tensor, match: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE over normalised embeddings (CLIP eq.).

    ``match`` [B, B] (bool, image i x caption j) makes it multi-positive: the target of each row is
    uniform over the captions that truly describe the image (and of each column over the images
    the caption describes), so two images sharing a class are not pushed apart by "a bag".
    """
    img = F.normalize(img, dim=-1)
    txt = F.normalize(txt, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.t()
    if match is None:
        target = torch.arange(len(img), device=img.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    m = match.float()
    t_i = m / m.sum(dim=1, keepdim=True)
    t_t = m.t() / m.t().sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, t_i) + F.cross_entropy(logits.t(), t_t))


BUILTIN_TRAINED_ON = "mlrkit built-in fashion-mosaic training split (real Fashion-MNIST photos tiled 2x2)"
HELDOUT_TRAINED_ON = ("{n} 2x2 mosaics of Fashion-MNIST training photos that the built-in fashion-mosaic does not "
                      "contain (seed {seed}): it has never seen a fashion-mosaic image")


def heldout_mosaics(source: str | Path, n_mosaics: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mosaics made of Fashion-MNIST photos that the built-in fashion-mosaic does **not** contain.

    Tiles: every photo of the Fashion-MNIST *training* file in ``source`` whose pixels occur once
    over the training and test files (as for the built-in subset), minus the photos the built-in
    subset's training split uses (``train_tile_source``); the built-in test photos come from the
    test file, which is not used at all. ``n_mosaics`` 2x2 mosaics are drawn as the built-in ones
    (each cell's class uniform, then a photo uniform within the class; seeded by ``seed``).
    Returns uint8 mosaics [N, 56, 56] and their targets [N, C] (union of the cells' classes).
    """
    from mlrkit.data.datasets.builtin import builtin_path
    from mlrkit.data.datasets.fashion_mosaic import FILENAME
    from mlrkit.data.fashion_mosaic import (
        NUM_CLASSES,
        _unique_pixel_mask,
        load_fashion_mnist,
        load_subset,
        make_mosaics,
        union_targets,
    )

    if n_mosaics < 1:
        raise MlrkitError(f"n_mosaics must be >= 1, got {n_mosaics}")
    source = Path(source)
    tr_img, tr_lab = load_fashion_mnist(source, "train")
    te_img, _ = load_fashion_mnist(source, "test")
    eligible, _ = _unique_pixel_mask(tr_img, te_img)
    sub = load_subset(builtin_path(FILENAME))
    eligible[np.asarray(sub["train_tile_source"], dtype=np.intp)] = False
    rng = np.random.default_rng(derive_seed(seed, 11))
    pools = [np.flatnonzero(eligible & (tr_lab == c)) for c in range(NUM_CLASSES)]
    grid = int(sub["build_params"]["grid"])
    classes = rng.integers(0, NUM_CLASSES, size=(n_mosaics, grid * grid))
    tiles = np.empty_like(classes)
    for c, pool in enumerate(pools):
        where = classes == c
        tiles[where] = pool[rng.integers(0, len(pool), size=int(where.sum()))]
    mosaics = make_mosaics(tr_img, tiles, grid)
    return mosaics, union_targets(classes, NUM_CLASSES)


def pretrain_mosaic_clip(
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    seed: int = 0,
    config: dict | None = None,
    time_limit_s: float | None = None,
    eval_every: int = 0,
    device: str = "cpu",
    progress: bool = True,
    limit_train: int | None = None,
    init: str | None = None,
    subset_prob: float = 0.0,
    multi_positive: bool = False,
    heldout_source: str | Path | None = None,
    heldout_mosaics_count: int = 20000,
    amp: bool | None = False,
    ema: float = 0.0,
    run: LoopRun | None = None,
    log_every: int = 50,
    checkpoint_every_s: float = 60.0,
) -> tuple[nn.Module, dict, PretrainResult, list[dict]]:
    """Train the mosaic CLIP on the shared loop (:mod:`mlrkit.engine.loop`); returns (model, config, result, history).

    Training images: the built-in fashion-mosaic training split, or, with ``heldout_source`` (a
    Fashion-MNIST directory), ``heldout_mosaics_count`` mosaics of photos the built-in data does not
    contain (:func:`heldout_mosaics`), so that the model has never seen fashion-mosaic's images.

    Token embeddings and norms/biases get no weight decay, so the rows of tokens that never
    occur in a caption keep their seeded initial values (the compact checkpoint relies on it).

    ``run`` (a :class:`~mlrkit.engine.loop.LoopRun`): the run directory; a row in its ``metrics.jsonl``
    every ``log_every`` steps and at each zero-shot evaluation, ``last.pt`` (weights, optimizer, the
    caption/batch generator's state) at most every ``checkpoint_every_s`` seconds (0: at every row), so
    that ``--resume`` continues exactly where the run stopped. ``amp``: autocast as ``train.amp``
    (False by default: the shipped checkpoints were trained in fp32). ``ema`` > 0: an exponential
    moving average of the weights (decay ``ema``) is kept; the zero-shot evaluations use it and the
    returned model holds it (off by default, as for the shipped checkpoints). Under ``torchrun`` each rank
    encodes its slice of every global batch (:func:`mlrkit.data.sampler.rank_slice`) and the loss is
    taken over the gathered batch (:func:`mlrkit.engine.loop.gather_batch`).
    """
    import open_clip

    from mlrkit.data import load_dataset
    from mlrkit.data.sampler import rank_slice
    from mlrkit.engine import distributed as ddp
    from mlrkit.engine.loop import StepResult, TrainLoop, cpu_copy, gather_batch
    from mlrkit.engine.progress import progress as progress_bar

    previous: dict | None = None
    if init is not None:
        previous = load_raw_checkpoint(init)
        config = previous["config"]
    config = config or MOSAIC_CLIP_CONFIG
    env = ddp.current()
    ck = run.claim() if run is not None else None  # before the data and the model: a refused directory fails fast
    try:
        ds = load_dataset("fashion-mosaic", **({"limit_train": limit_train} if limit_train else {}))
        if heldout_source is not None:
            images, targets = heldout_mosaics(heldout_source, heldout_mosaics_count, seed)
        else:
            images = ds.trainval.images.array  # type: ignore[union-attr]
            targets = ds.trainval.targets
        names = ds.class_names
        model = build_clip(config, seed).to(device)
        if previous is not None:  # a further phase with its own warm-up + cosine schedule
            model.load_state_dict(previous["state_dict"])
        tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=config["text_cfg"]["context_length"])
        mean = open_clip.OPENAI_DATASET_MEAN
        std = open_clip.OPENAI_DATASET_STD
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            (no_decay if p.ndim < 2 or "token_embedding" in n or "positional_embedding" in n
             or "class_embedding" in n or "logit_scale" in n else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
        loop = TrainLoop(model, opt, device=device, amp=amp, ema=ema, env=env)

        def lr_at(step: int) -> float:
            if step < warmup:
                return lr * (step + 1) / warmup
            t = (step - warmup) / max(1, steps - warmup)
            return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        phase = 0 if previous is None else len(previous.get("phases", [previous.get("result", {})]))
        rng = np.random.default_rng(derive_seed(seed, 5, phase))
        history: list[dict] = []
        loss_ema: float | None = None
        start, elapsed_before = 0, 0.0
        if ck is not None:  # --resume: the state after ck["step"] steps, exactly
            model.load_state_dict(ck["model"])
            loop.load_state_dict(ck["loop"])
            rng.bit_generator.state = ck["rng"]
            start, loss_ema, history = int(ck["step"]), ck["loss_ema"], list(ck["history"])
            elapsed_before = float(ck["seconds"])
            log.info("resuming %s after step %d", run.dir, start)  # type: ignore[union-attr]
        if run is not None:
            run.truncate_metrics("step", start)
        t0 = time.perf_counter()
        share = env.world  # the loss is over the gathered global batch: each rank's gradient is its part of it

        def compute(step: int) -> StepResult:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            idx = rng.choice(len(images), size=batch_size, replace=False)
            x = images_to_tensor(images[idx], mean, std)
            flip = torch.from_numpy(rng.random(batch_size) < 0.5)
            x[flip] = x[flip].flip(-1)
            pairs = [caption_and_classes(targets[i], names, rng, subset_prob=subset_prob) for i in idx]
            captions = [c for c, _ in pairs]
            match = None
            if multi_positive:  # caption j describes image i when every class it names is in image i
                named = np.zeros((batch_size, targets.shape[1]), dtype=bool)
                for j, (_, cls) in enumerate(pairs):
                    named[j, cls] = True
                present = targets[idx].astype(bool)
                match = torch.from_numpy(~(named[None, :, :] & ~present[:, None, :]).any(-1)).to(device)
            tok = tokenizer(captions)
            mine = rank_slice(batch_size, env.rank, env.world)  # this rank's rows of the global batch
            model.train()
            img = gather_batch(model.encode_image(x[mine].to(device)), env)
            txt = gather_batch(model.encode_text(tok[mine].to(device)), env)
            return StepResult(contrastive_loss(img, txt, model.logit_scale, match), n=batch_size, share=share)

        pending: dict | None = None
        last_write = time.monotonic()
        bar = progress_bar(total=steps, desc="mosaic-clip", enabled=progress and env.is_main)
        bar.update(start)
        step = start - 1
        try:
            for step in range(start, steps):
                out = loop.step(lambda s=step: compute(s), where=f"at step {step + 1}")
                lv = float(out.loss.detach())
                loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
                bar.update(1)
                bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
                seconds = elapsed_before + time.perf_counter() - t0
                row = None
                if eval_every and (step + 1) % eval_every == 0:
                    with loop.ema_weights():
                        zs = zeroshot_map(model, tokenizer, mean, std, device=device)
                    history.append({"step": step + 1, "loss": loss_ema, "zeroshot_test_map": zs, "seconds": seconds})
                    log.info("step %d loss %.3f zero-shot test mAP %.4f", step + 1, loss_ema, zs)
                    row = dict(history[-1])
                stop = time_limit_s is not None and time.perf_counter() - t0 > time_limit_s
                if row is None and ((step + 1) % max(1, log_every) == 0 or step + 1 == steps or stop):
                    row = {"step": step + 1, "loss": loss_ema, "seconds": seconds}
                if row is not None and run is not None:
                    run.log_row({**row, "lr": opt.param_groups[0]["lr"]})
                    state = {"step": step + 1, "loss_ema": loss_ema, "history": history, "seconds": seconds,
                             "rng": rng.bit_generator.state, "model": model.state_dict(), "loop": loop.state_dict()}
                    if checkpoint_every_s <= 0 or time.monotonic() - last_write >= checkpoint_every_s \
                            or step + 1 == steps or stop:
                        run.save_last(state)
                        pending, last_write = None, time.monotonic()
                    else:
                        pending = cpu_copy(state)  # the live state moves on; keep this row's
                if stop:
                    log.info("time limit reached after %d steps", step + 1)
                    break
        except BaseException:
            if run is not None and pending is not None:  # interrupted: keep what the logged steps computed
                run.save_last(pending)
            raise
        finally:
            bar.close()
        if loop.ema is not None:  # the averaged weights are the result
            loop.ema.swap_into(model)
        model.eval()
        zs = zeroshot_map(model, tokenizer, mean, std, device=device)
        result = PretrainResult(steps=step + 1, seconds=elapsed_before + time.perf_counter() - t0,
                                final_loss=float(loss_ema or 0), zeroshot_map=zs)
        return model, config, result, history
    except BaseException:
        if run is not None:
            run.release()
        raise


@torch.no_grad()
def zeroshot_map(model: nn.Module, tokenizer, mean, std, *, device: str = "cpu", batch_size: int = 500) -> float:
    """Zero-shot test mAP on fashion-mosaic with the prompt 'a photo of a {class}.'."""
    from mlrkit.data import load_dataset
    from mlrkit.metrics import mean_average_precision

    ds = load_dataset("fashion-mosaic")
    was = model.training
    model.eval()
    txt = F.normalize(model.encode_text(tokenizer([f"a photo of {_article(n.lower())}." for n in ds.class_names])
                                        .to(device)), dim=-1)
    arr = ds.test.images.array  # type: ignore[union-attr]
    scores = []
    for i in range(0, len(arr), batch_size):
        img = F.normalize(model.encode_image(images_to_tensor(arr[i : i + batch_size], mean, std).to(device)), dim=-1)
        scores.append((img @ txt.t()).cpu())
    model.train(was)
    return mean_average_precision(torch.cat(scores).numpy(), ds.test.targets)


def save_pretrained(model: nn.Module, config: dict, path, *, result: PretrainResult, history: list[dict],
                    command: list[str], seed: int, init_payload: dict | None = None,
                    trained_on: str = BUILTIN_TRAINED_ON) -> None:
    """Save the raw pre-training output: config, fp32 state dict, result, history, the command and a
    description of the training images (``trained_on``)."""
    from dataclasses import asdict

    from mlrkit.utils import save_torch_file

    phases = []
    if init_payload is not None:
        first = {"result": init_payload["result"], "command": init_payload["command"],
                 "history": init_payload.get("history", [])}
        phases = list(init_payload.get("phases") or [first])
    phases.append({"result": asdict(result), "command": command, "history": history})
    payload = {"format": "mlrkit-mosaic-clip-raw-1", "config": config, "seed": seed,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "result": asdict(result), "history": history, "command": command, "phases": phases,
               "trained_on": trained_on}
    save_torch_file(path, payload)


RAW_KEYS = ("config", "seed", "state_dict", "result")


def load_raw_checkpoint(path: str | Path) -> dict:
    """A raw ``vl pretrain`` checkpoint, read with ``weights_only=True``; a foreign file is a clear error."""
    from mlrkit.utils import load_torch_file

    raw = load_torch_file(path, "raw pre-training checkpoint")
    missing = [k for k in RAW_KEYS if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise MlrkitError(f"{path}: not a raw checkpoint of `mlrkit vl pretrain` (missing {', '.join(missing)})")
    return raw


def export_mosaic_clip(raw_path, out_path, name: str = "mosaic-clip") -> dict:
    """Turn a raw pre-training checkpoint into the shipped format (fp16, sparse token table, JSON sidecar).

    The metadata records every training phase's command, steps, time and zero-shot test mAP.
    """
    import open_clip

    from mlrkit.vl import save_vl_checkpoint

    raw = load_raw_checkpoint(raw_path)
    model = build_clip(raw["config"], raw["seed"])
    model.load_state_dict(raw["state_dict"])
    phases = raw.get("phases") or [{"result": raw["result"], "command": raw["command"], "history": raw["history"]}]
    meta = {
        "name": name,
        "trained_on": raw.get("trained_on", BUILTIN_TRAINED_ON),
        "captions": {"templates": list(CAPTION_TEMPLATES), "order": "present classes shuffled"},
        "seed": raw["seed"],
        "phases": [{"command": " ".join(p["command"][1:]) if p["command"] else "", **p["result"],
                    "history": p.get("history", [])} for p in phases],
        "zeroshot_test_map": raw["result"]["zeroshot_map"],
        "prompt": "a photo of a {class}.",
        "normalisation": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)},
    }
    save_vl_checkpoint(model, out_path, raw["config"], metadata=meta, sparse_token_init_seed=raw["seed"])
    return meta
