"""NegationCLIP fine-tuning: symmetric InfoNCE on (image, caption) pairs mixing original and negated captions.

Park et al. ("Know 'No' Better", 2025) fine-tune CLIP's **text encoder** on captions that state
what is absent, with the usual CLIP loss: for a batch of B images and their captions,
``L = ½ [CE(s·I·Tᵀ, diag) + CE(s·T·Iᵀ, diag)]`` with ``s = exp(logit_scale)``
(:func:`mlrkit.vl.pretraining.contrastive_loss`). Here:

* each batch holds B **distinct images** (no image is its own in-batch negative); each image takes
  one of its rows of the negated-caption file, and within it the negated caption with probability
  ``p_negated`` (else the original caption), so the model keeps the plain captions it knew;
  ``rows_per_epoch="all"`` is the reference's loader instead: every row of every training image once
  per epoch, B rows per batch (an image may then appear twice in a batch);
* ``train=("text",)`` (default) updates every text-tower parameter (token and positional embeddings,
  transformer, final norm, projection); the image tower is frozen, so its embeddings are computed
  once; ``("image", "text")`` trains both towers. ``logit_scale`` stays fixed unless
  ``train_logit_scale``; ``freeze_ln_final`` keeps the text tower's final LayerNorm frozen (the
  reference code's choice);
* AdamW with the paper's defaults ``lr = 1e-6``, 15 epochs (PyTorch's default weight decay 0.01),
  constant learning rate;
* ``multi_positive`` (mosaic captions that name a subset of the present classes): the target of
  an image is uniform over the batch's texts that truly describe it, and vice versa
  (:func:`match_matrix`, the multi-positive loss of :func:`mlrkit.vl.pretraining.contrastive_loss`):
  "a bag with no shirt" describes every image with a bag and without a shirt, and an image with a
  bag **and** a shirt is a negative for it. Without it, a text that fits several images of the
  batch would push all but one of them away;
* validation is split **by image** (a seeded ``val_fraction`` of the images with all their rows; no
  image is on both sides, unlike a split by caption, where the same image's other captions leak
  into training); the epoch with the lowest validation loss is kept.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from mlrkit.data.base import ImageSource
from mlrkit.errors import DataError, MlrkitError
from mlrkit.negation.images import encode_images, image_batch
from mlrkit.utils import derive_seed

if TYPE_CHECKING:
    from mlrkit.engine.loop import LoopRun

log = logging.getLogger("mlrkit")

TOWERS = ("image", "text")


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters (module docstring); paper defaults where the paper gives them."""

    train: tuple[str, ...] = ("text",)
    lr: float = 1e-6
    epochs: int = 15
    batch_size: int = 128
    weight_decay: float = 0.01
    p_negated: float = 0.5
    val_fraction: float = 0.2
    seed: int = 0
    train_logit_scale: bool = False
    freeze_ln_final: bool = False  # the reference freezes the text tower's final LayerNorm
    multi_positive: bool = False
    rows_per_epoch: str = "image"  # image: one row per image per epoch | all: every row (the reference's loader)
    max_steps: int | None = None
    time_limit_s: float | None = None
    amp: bool | None = False  # autocast as train.amp (None = auto: bf16 on CUDA); off: fp32 as the paper's runs

    def validate(self) -> None:
        bad = [t for t in self.train if t not in TOWERS]
        if not self.train or bad:
            raise MlrkitError(f"train must name towers among {TOWERS}, got {self.train!r}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 2:
            raise MlrkitError(f"need lr > 0, epochs >= 1, batch_size >= 2; got {self.lr}, {self.epochs}, "
                              f"{self.batch_size}")
        if self.rows_per_epoch not in ("image", "all"):
            raise MlrkitError(f"rows_per_epoch must be 'image' or 'all', got {self.rows_per_epoch!r}")
        if not 0.0 <= self.p_negated <= 1.0:
            raise MlrkitError(f"p_negated must be in [0, 1], got {self.p_negated}")
        if not 0.0 < self.val_fraction < 1.0:
            raise MlrkitError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class FinetuneResult:
    """What a fine-tuning run did."""

    config: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_loss: float
    steps: int
    seconds: float
    n_rows: int
    n_train_images: int
    n_val_images: int
    trainable_params: int
    val_image_ids: list[str] = field(repr=False, default_factory=list)

    def as_dict(self, with_ids: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_ids:
            d.pop("val_image_ids")
        return d


def split_by_image(image_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of the distinct image ids into (train, val); every id is on exactly one side."""
    uniq = sorted(set(map(str, image_ids)))
    if len(uniq) < 2:
        raise MlrkitError(f"need at least 2 distinct images to split by image, got {len(uniq)}")
    perm = np.random.default_rng(derive_seed(seed, 1201)).permutation(len(uniq))
    n_val = min(len(uniq) - 1, max(1, int(round(val_fraction * len(uniq)))))
    val = sorted(uniq[i] for i in perm[:n_val])
    train = sorted(uniq[i] for i in perm[n_val:])
    return train, val


def _tower(key: str) -> str:
    """The part of a CLIP state-dict key: ``image``, ``scale`` (logit scale/bias) or ``text``."""
    if key.startswith("visual."):
        return "image"
    return "scale" if key in ("logit_scale", "logit_bias") else "text"


def trainable_parameters(model: Any, towers: Sequence[str], train_logit_scale: bool = False,
                         freeze_ln_final: bool = False) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` on the chosen towers of ``model.clip`` (and logit_scale), return those parameters.

    ``freeze_ln_final``: the text tower's final LayerNorm (``ln_final.*``) stays frozen, as in the reference code.
    """
    params = []
    for name, p in model.clip.named_parameters():
        if name in ("logit_scale", "logit_bias"):
            on = train_logit_scale
        elif name.startswith("ln_final."):
            on = "text" in towers and not freeze_ln_final
        elif name.startswith("visual."):
            on = "image" in towers
        else:
            on = "text" in towers
        p.requires_grad_(on)
        if on:
            params.append(p)
    return params


@dataclass
class _Text:
    text: str
    named: np.ndarray | None  # bool [C]: classes the text says are present (None: unknown)
    negated: np.ndarray | None  # bool [C]: classes the text says are absent


def _class_mask(names: Sequence[str] | None, lookup: dict[str, int] | None, num_classes: int) -> np.ndarray | None:
    if names is None or lookup is None:
        return None
    mask = np.zeros(num_classes, dtype=bool)
    for n in names:
        c = lookup.get(str(n).lower())
        if c is None:
            return None
        mask[c] = True
    return mask


def _pick_text(rows: list[dict[str, Any]], rng: np.random.Generator, p_negated: float,
               lookup: dict[str, int] | None, num_classes: int) -> _Text:
    return _row_text(rows[int(rng.integers(len(rows)))], rng, p_negated, lookup, num_classes)


def _row_text(row: dict[str, Any], rng: np.random.Generator, p_negated: float,
              lookup: dict[str, int] | None, num_classes: int) -> _Text:
    """The row's negated caption with probability ``p_negated`` (always when it has no caption), else its caption."""
    original = row.get("caption")
    named = _class_mask(row.get("mentioned"), lookup, num_classes)
    if not original or rng.random() < p_negated:
        negated = _class_mask(row.get("absent_objects"), lookup, num_classes)
        return _Text(row["negated_caption"], named if negated is not None else None, negated)
    return _Text(original, named, np.zeros(num_classes, dtype=bool) if named is not None else None)


def match_matrix(labels: np.ndarray, texts: Sequence[_Text]) -> torch.Tensor:
    """[B, B] bool: text j truly describes image i (every class it names is in i, none it negates is).

    Texts without class information match their own image only; the diagonal is always True.
    """
    lab = np.asarray(labels, dtype=bool)
    b = len(texts)
    match = np.eye(b, dtype=bool)
    known = [j for j, t in enumerate(texts) if t.named is not None and t.negated is not None]
    if known:
        named = np.stack([texts[j].named for j in known])  # [K, C]
        neg = np.stack([texts[j].negated for j in known])
        ok = ~((~lab[:, None, :] & named[None]).any(-1)) & ~((lab[:, None, :] & neg[None]).any(-1))  # [B, K]
        match[:, known] |= ok
    return torch.from_numpy(match)


def finetune_negation(
    model: Any,
    rows: Sequence[dict[str, Any]],
    images: ImageSource,
    image_ids: Sequence[str],
    config: FinetuneConfig | None = None,
    *,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    targets: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    run: LoopRun | None = None,
    checkpoint_every_s: float = 60.0,
) -> FinetuneResult:
    """Fine-tune ``model`` (a :class:`mlrkit.vl.VisionLanguageModel`, in place) on negated-caption rows.

    Args:
        rows: rows of a negated-caption file (``image_id``, ``caption``, ``negated_caption``...).
        images, image_ids: the images the rows refer to, and their ids (``Split.ids``).
        targets, class_names: the images' labels [N, C] and the class names, for
            ``multi_positive`` (rows then need ``mentioned``; see :func:`match_matrix`).
        run: the run directory (:class:`~mlrkit.engine.loop.LoopRun`): a ``metrics.jsonl`` row per epoch
            and ``last.pt`` (trained towers' weights, optimizer, batch generator, best epoch so far) at
            most every ``checkpoint_every_s`` seconds (0: every epoch), so that ``--resume`` continues
            exactly after the last saved epoch.
    Returns:
        A :class:`FinetuneResult`; the model holds the weights of the best validation epoch.

    The steps run on the shared loop (:class:`mlrkit.engine.loop.TrainLoop`: AMP, DDP, NaN checks);
    under ``torchrun`` each rank encodes its slice of every batch and the loss is taken over the
    gathered batch, as in one process.
    """
    from mlrkit.data.sampler import rank_slice
    from mlrkit.engine import distributed as ddp
    from mlrkit.engine.loop import StepResult, TrainLoop, cpu_copy, gather_batch
    from mlrkit.vl.pretraining import contrastive_loss

    cfg = config or FinetuneConfig()
    cfg.validate()
    ck = run.claim() if run is not None else None  # before any long setup: a refused directory fails fast
    lookup: dict[str, int] | None = None
    num_classes = 0
    if cfg.multi_positive:
        if targets is None or class_names is None or len(targets) != len(image_ids):
            raise MlrkitError("multi_positive needs the images' targets [N, C] and the class names")
        from mlrkit.negation.captions import class_lookup

        lookup = {k.lower(): v for k, v in class_lookup(class_names).items()}
        num_classes = len(class_names)
        if not any("mentioned" in r for r in rows):
            raise MlrkitError("multi_positive needs rows with 'mentioned' classes (captions made from the labels "
                              "by `mlrkit negation captions`)")

    def match_for(idx: np.ndarray, texts: list[_Text]) -> torch.Tensor | None:
        if not cfg.multi_positive:
            return None
        assert targets is not None
        return match_matrix(targets[idx], texts).to(model.device)
    position = {str(i): n for n, i in enumerate(image_ids)}
    by_image: dict[str, list[dict[str, Any]]] = {}
    for n, r in enumerate(rows):
        key = str(r["image_id"])
        if key not in position:
            raise DataError(f"row {n}: image_id {key!r} is not an image of the dataset split "
                            f"(ids look like {list(position)[:2]})")
        by_image.setdefault(key, []).append(r)
    train_ids, val_ids = split_by_image(list(by_image), cfg.val_fraction, cfg.seed)
    if set(train_ids) & set(val_ids):  # pragma: no cover - split_by_image guarantees it
        raise MlrkitError("internal error: an image is on both sides of the validation split")
    train_img = np.array([position[i] for i in train_ids])
    val_img = np.array([position[i] for i in val_ids])
    b = min(cfg.batch_size, len(train_ids))

    grad_flags = {n: p.requires_grad for n, p in model.clip.named_parameters()}
    params = trainable_parameters(model, cfg.train, cfg.train_logit_scale, cfg.freeze_ln_final)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    image_frozen = "image" not in cfg.train
    model.eval()
    cached: torch.Tensor | None = None
    if image_frozen:
        order = np.concatenate([train_img, val_img])
        feats = encode_images(model, images, order)
        cached = torch.empty(len(image_ids), feats.shape[1])
        cached[torch.from_numpy(order)] = feats

    def image_embeddings(idx: np.ndarray, grad: bool) -> torch.Tensor:
        if cached is not None:
            return cached[torch.from_numpy(idx)].to(model.device)
        with torch.set_grad_enabled(grad):
            return model.encode_image(image_batch(model, images, idx).to(model.device))

    vrng = np.random.default_rng(derive_seed(cfg.seed, 1202))
    val_texts = [_pick_text(by_image[i], vrng, cfg.p_negated, lookup, num_classes) for i in val_ids]

    @torch.no_grad()
    def validate() -> tuple[float, float]:
        was = model.training
        model.eval()
        losses, correct, n = [], 0, 0
        vb = min(cfg.batch_size, len(val_ids))
        for s in range(0, len(val_ids), vb):
            idx = val_img[s:s + vb]
            if len(idx) < 2:
                continue
            img = image_embeddings(idx, grad=False)
            chunk = val_texts[s:s + vb]
            txt = model.encode_text([t.text for t in chunk])
            match = match_for(idx, chunk)
            losses.append(float(contrastive_loss(img, txt, model.logit_scale, match)) * len(idx))
            sims = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
            top = sims.argmax(1)
            if match is None:
                correct += int((top == torch.arange(len(idx), device=sims.device)).sum())
            else:  # a hit when the closest text truly describes the image
                correct += int(match[torch.arange(len(idx)), top].sum())
            n += len(idx)
        model.train(was)
        if n == 0:
            raise MlrkitError("the validation split needs at least 2 images")
        return sum(losses) / n, correct / n

    def set_train_mode() -> None:
        model.train()
        if image_frozen:
            model.clip.visual.eval()

    rng = np.random.default_rng(derive_seed(cfg.seed, 1203))
    env = ddp.current()
    loop = TrainLoop(model.clip, opt, device=model.device, amp=cfg.amp, env=env, synced=params)

    def trained_state() -> dict[str, torch.Tensor]:  # the trained towers' weights and buffers (the rest is frozen)
        return {k: v.detach().clone() for k, v in model.clip.state_dict().items() if _tower(k) in trained}

    trained = set(cfg.train) | ({"scale"} if cfg.train_logit_scale else set())
    history: list[dict[str, Any]] = []
    best = (math.inf, 0)
    best_state: dict[str, torch.Tensor] | None = None
    start, step, elapsed_before = 0, 0, 0.0
    if ck is not None:  # --resume: the state after ck["epoch"] epochs, exactly
        model.clip.load_state_dict(ck["model"], strict=False)
        loop.load_state_dict(ck["loop"])
        rng.bit_generator.state = ck["rng"]
        start, step, elapsed_before = int(ck["epoch"]), int(ck["step"]), float(ck["seconds"])
        history, best, best_state = list(ck["history"]), (float(ck["best"][0]), int(ck["best"][1])), ck["best_state"]
        log.info("resuming %s after epoch %d", run.dir, start)  # type: ignore[union-attr]
    else:
        v_loss, v_acc = validate()
        history.append({"epoch": 0, "train_loss": None, "val_loss": v_loss, "val_acc": v_acc, "seconds": 0.0})
    if run is not None:
        run.truncate_metrics("epoch", start if start else -1)  # from scratch: row 0 is written again below
        if start == 0:
            run.log_row(history[0])
    # rows_per_epoch "all": every (image, row) pair of the training images once per epoch, in batches of b
    # rows (an image with several rows can appear twice in a batch, as in the reference's caption loader)
    pairs = [(position[i], r) for i in train_ids for r in by_image[i]]
    steps_per_epoch = (len(pairs) if cfg.rows_per_epoch == "all" else len(train_ids)) // b
    t0 = time.perf_counter()
    stop = False
    mine = rank_slice(b, env.rank, env.world)  # this rank's rows of every batch (all batches hold b rows)
    pending: dict[str, Any] | None = None
    last_write = time.monotonic()
    try:
        for epoch in range(start + 1, cfg.epochs + 1):
            set_train_mode()
            perm = rng.permutation(train_img)
            ids_perm = [image_ids[i] for i in perm]
            pair_perm = rng.permutation(len(pairs)) if cfg.rows_per_epoch == "all" else None

            def compute(k: int, perm=perm, ids_perm=ids_perm, pair_perm=pair_perm) -> StepResult:
                sl = slice(k * b, (k + 1) * b)
                if pair_perm is not None:
                    chosen = [pairs[j] for j in pair_perm[sl]]
                    idx = np.array([pos for pos, _ in chosen])
                    texts = [_row_text(r, rng, cfg.p_negated, lookup, num_classes) for _, r in chosen]
                else:
                    idx = perm[sl]
                    texts = [_pick_text(by_image[str(i)], rng, cfg.p_negated, lookup, num_classes)
                             for i in ids_perm[sl]]
                img = gather_batch(image_embeddings(idx[mine], grad=True), env)
                txt = gather_batch(model.encode_text([t.text for t in texts[mine]]), env)
                return StepResult(contrastive_loss(img, txt, model.logit_scale, match_for(idx, texts)), share=env.world)

            def limit(k: int, out: StepResult) -> bool:
                nonlocal step, stop
                step += 1
                stop = (cfg.max_steps is not None and step >= cfg.max_steps) or \
                    (cfg.time_limit_s is not None and time.perf_counter() - t0 > cfg.time_limit_s)
                return stop

            stats = loop.run_epoch(range(steps_per_epoch), compute, desc=f"negation fine-tune {epoch}/{cfg.epochs}",
                                   progress=progress and env.is_main, where=f"in epoch {epoch}", after_step=limit)
            v_loss, v_acc = validate()
            rec = {"epoch": epoch, "train_loss": stats.loss if stats.steps else 0.0, "val_loss": v_loss,
                   "val_acc": v_acc, "steps": step, "seconds": round(elapsed_before + time.perf_counter() - t0, 2)}
            history.append(rec)
            log.info("epoch %d: train loss %.4f, val loss %.4f, val image->text acc %.4f", epoch, rec["train_loss"],
                     v_loss, v_acc)
            if on_epoch is not None:
                on_epoch(rec)
            if v_loss < best[0]:
                best = (v_loss, epoch)
                best_state = trained_state()
            if run is not None:
                run.log_row(rec)
                state = {"epoch": epoch, "step": step, "seconds": rec["seconds"], "history": history,
                         "best": list(best), "best_state": best_state, "model": trained_state(),
                         "loop": loop.state_dict(), "rng": rng.bit_generator.state}
                if checkpoint_every_s <= 0 or time.monotonic() - last_write >= checkpoint_every_s \
                        or epoch == cfg.epochs or stop:
                    run.save_last(state)
                    pending, last_write = None, time.monotonic()
                else:
                    pending = cpu_copy(state)  # the live state moves on; keep this epoch's
            if stop:
                break
    except BaseException:
        if run is not None and pending is not None:  # interrupted: keep what the finished epochs computed
            run.save_last(pending)
        raise
    if best_state is not None:
        model.clip.load_state_dict(best_state, strict=False)
    for n, p in model.clip.named_parameters():  # as it came (a loaded model: all True)
        p.requires_grad_(grad_flags[n])
    model.eval()
    return FinetuneResult(
        config={**asdict(cfg), "train": list(cfg.train)}, history=history, best_epoch=best[1], best_val_loss=best[0],
        steps=step, seconds=round(elapsed_before + time.perf_counter() - t0, 2), n_rows=len(rows),
        n_train_images=len(train_ids),
        n_val_images=len(val_ids), trainable_params=sum(p.numel() for p in params), val_image_ids=list(val_ids),
    )


def save_finetuned(model: Any, path: str, result: FinetuneResult, *, source_spec: str, captions: str,
                   half: bool = True, extra: dict[str, Any] | None = None) -> str:
    """Save with :func:`mlrkit.vl.save_vl_checkpoint` (loads as ``openclip:custom@<path>``)."""
    from mlrkit.vl import save_vl_checkpoint

    meta = {"negationclip": {"base_model": source_spec, "captions": captions, **result.as_dict(), **(extra or {})}}
    return str(save_vl_checkpoint(model, path, metadata=copy.deepcopy(meta), half=half))
