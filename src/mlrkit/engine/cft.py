r"""Category-wise fine-tuning (CFT) of the classification head after training (the ``cft`` config section).

After the usual training (and model selection on validation), CFT revisits the linear classifier
one class at a time. With :math:`z` the classifier's input (the frozen features the model computes
before ``model.classifier``) and :math:`(w_c, b_c)` class :math:`c`'s row of the head, it fine-tunes
:math:`(w_c, b_c)` on the training images whose label :math:`c` is *known* (unknown entries are
never used, so wrong "assumed negatives" cannot pull the class down), and keeps the result only
if it improves class :math:`c`'s validation AP:

.. math::
    (w_c, b_c)^\star = \operatorname*{arg\,max}_{(w_c,b_c)\in\{\text{initial}\}\cup\{\text{after each epoch}\}}
    \operatorname{AP}_c^{\text{val}}\big(w_c^\top z + b_c\big).

Two optimisers of :math:`(w_c, b_c)`:

* ``variant: bp`` (back-propagation): minimise a registered loss (default ``asl``:
  :math:`\gamma_-=4, \gamma_+=0, m=0.05`) on the known labels of class :math:`c` with Adam
  (lr :math:`10^{-4}`), mini-batches of ``batch_size``; the setting of mlcpl's CFT example
  (``BP-Asym``).
* ``variant: ga`` (genetic algorithm, non-differentiable): maximise the *training* AP of class
  :math:`c` directly. A population of :math:`P` copies of :math:`(w_c,b_c)` evolves one
  generation per epoch: fitness = training AP; parents drawn with probability proportional to
  fitness; uniform crossover (a gene from the first parent with probability :math:`C_r`);
  mutation of an offspring with probability :math:`p_m`, each gene by :math:`U(-r, r)` with
  probability :math:`p_g`; the best :math:`e` individuals survive unchanged (elitism). Defaults
  (mlcpl's ``GAForLinear``): :math:`P=50, C_r=0.2, p_m=0.5, p_g=1, r=10^{-3}, e=1`. mlcpl
  writes the GA's bias to the optimiser instead of the head (``self.bias = ...``), so its GA never
  changes the bias; here the whole row is evolved.

Chong, Fang, Guo, Wang, Ke, Lam, Im, "Category-wise fine-tuning: resisting incorrect pseudo-labels
in multi-label image classification with partial labels" (the mlcpl authors' method). A class whose
known training labels or validation labels lack a positive or a negative is left as is (recorded).
The fine-tuned head is written into ``best.pt`` (marked, so a resumed run does not fine-tune twice)
and ``cft.json`` lists every class's validation AP before and after.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.errors import ConfigError, MlrkitError
from mlrkit.methods.training_sections import CFTSection
from mlrkit.metrics import average_precision

log = logging.getLogger("mlrkit")


def parse_cft(section: Any) -> CFTSection | None:
    """The ``cft`` section, checked (:class:`~mlrkit.methods.training_sections.CFTSection`); None if absent/``none``."""
    if section is None:
        return None
    spec = CFTSection.parse(section, "cft")
    return None if spec.variant == "none" else spec


# --------------------------------------------------------------------------- features
def classifier_of(model: nn.Module) -> nn.Linear:
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise MlrkitError(f"cft fine-tunes a linear classifier `model.classifier`; {type(model).__name__} has "
                          f"{type(head).__name__ if head is not None else 'none'} (use method linear, mlp, "
                          "finetune or cam)")
    return head


@torch.no_grad()
def head_inputs(model: nn.Module, score_fn) -> tuple[Tensor, Tensor]:
    """(z, logits): the classifier's inputs and the model's logits over a split (``score_fn()`` runs it)."""
    head = classifier_of(model)
    captured: list[Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().cpu()))
    try:
        logits = torch.as_tensor(score_fn())
    finally:
        hook.remove()
    z = torch.cat(captured) if captured else torch.zeros(0, head.in_features)
    if z.ndim != 2 or z.shape[0] != logits.shape[0]:
        raise MlrkitError(f"cft: the classifier's input is {tuple(z.shape)}, expected [N={logits.shape[0]}, D] "
                          "(one feature vector per image)")
    recomputed = z @ head.weight.detach().float().cpu().T + head.bias.detach().float().cpu()
    if not torch.allclose(recomputed, logits.float(), atol=1e-3, rtol=1e-3):
        raise MlrkitError("cft: the model's logits are not its classifier's output (a post-processing step "
                          "follows the linear head), so fine-tuning the head alone is not defined")
    return z, logits


# --------------------------------------------------------------------------- one class
def _ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AP of each column of ``scores`` [n, P] against binary ``labels`` [n]."""
    t = np.repeat(labels.reshape(-1, 1), scores.shape[1], axis=1)
    return average_precision(scores, t)


def _bp_epochs(spec: CFTSection, w: Tensor, z: Tensor, y: Tensor, gen: torch.Generator):
    """Backprop variant: the class's row [w, b] trained with ``spec.loss`` on the shared loop
    (:class:`mlrkit.engine.loop.TrainLoop`, one process: CFT runs after training, on rank 0's data)."""
    from mlrkit.engine.distributed import DistEnv
    from mlrkit.engine.loop import StepResult, TrainLoop
    from mlrkit.losses import build

    loss = build(spec.loss)
    row = nn.Module()
    row.param = nn.Parameter(w.clone())
    loop = TrainLoop(row, torch.optim.Adam([row.param], lr=spec.lr), env=DistEnv())
    obs = torch.where(y > 0, 1, -1).to(torch.int8).view(-1, 1)
    zb = torch.cat([z, torch.ones(len(z), 1)], dim=1)
    for _ in range(spec.epochs):
        order = torch.randperm(len(z), generator=gen)

        def compute(s: int, order=order) -> StepResult:
            rows = order[s : s + spec.batch_size]
            return StepResult(loss(zb[rows] @ row.param.view(-1, 1), obs[rows], index=rows, epoch=0), n=len(rows))

        loop.run_epoch(range(0, len(z), spec.batch_size), compute, where="in cft")
        yield row.param.detach().clone()


def _ga_epochs(spec: CFTSection, w: Tensor, z: Tensor, y: Tensor, gen: torch.Generator):
    zb = torch.cat([z, torch.ones(len(z), 1)], dim=1).double()
    pop = w.double().repeat(spec.population, 1)
    labels = y.numpy().astype(np.uint8)
    for _ in range(spec.epochs):
        fitness = torch.as_tensor(_ap((zb @ pop.T).numpy(), labels))
        fitness = torch.nan_to_num(fitness, nan=0.0)
        best = int(torch.argmax(fitness))
        yield pop[best].float().clone()
        prob = fitness + 1e-12
        p1 = pop[torch.multinomial(prob, spec.population, replacement=True, generator=gen)]
        p2 = pop[torch.multinomial(prob, spec.population, replacement=True, generator=gen)]
        child = torch.where(torch.rand(pop.shape, generator=gen, dtype=pop.dtype) < spec.crossover, p1, p2)
        noise = (torch.rand(pop.shape, generator=gen, dtype=pop.dtype) * 2 - 1) * spec.mutation_range
        noise = noise * (torch.rand(pop.shape, generator=gen, dtype=pop.dtype) < spec.mutation_genes)
        noise = noise * (torch.rand(spec.population, 1, generator=gen, dtype=pop.dtype) < spec.mutation_p)
        child = child + noise
        if spec.elitism:
            elite = pop[torch.argsort(fitness, descending=True, stable=True)[: spec.elitism]]
            child = torch.cat([elite, child[spec.elitism :]])
        pop = child


def finetune_class(spec: CFTSection, w: Tensor, z_tr: Tensor, y_tr: Tensor, z_va: Tensor, y_va: np.ndarray,
                   seed: int) -> tuple[Tensor, dict[str, Any]]:
    """Fine-tune one class's row ``w`` = [w_c, b_c] (D+1,); returns the selected row and a record."""
    zv = torch.cat([z_va, torch.ones(len(z_va), 1)], dim=1)
    before = float(_ap((zv @ w).numpy().reshape(-1, 1), y_va)[0])
    best, best_ap, best_epoch, since = w.clone(), before, -1, 0
    gen = torch.Generator().manual_seed(seed)
    steps = _bp_epochs if spec.variant == "bp" else _ga_epochs
    for epoch, cand in enumerate(steps(spec, w, z_tr, y_tr, gen)):
        ap = float(_ap((zv @ cand).numpy().reshape(-1, 1), y_va)[0])
        if ap > best_ap:
            best, best_ap, best_epoch, since = cand, ap, epoch, 0
        else:
            since += 1
            if since >= spec.patience:
                break
    return best, {"status": "tuned" if best_epoch >= 0 else "kept", "val_ap_before": before,
                  "val_ap_after": best_ap, "best_epoch": best_epoch}


def category_wise_finetune(spec: CFTSection, head: nn.Linear, z_train: Tensor, observed_train: np.ndarray,
                           z_val: Tensor, val_targets: np.ndarray, val_mask: np.ndarray | None, seed: int,
                           class_names: list[str]) -> list[dict[str, Any]]:
    """CFT of every class of ``head`` (in place); one record per class."""
    from mlrkit.utils import derive_seed

    records = []
    weight = torch.cat([head.weight.detach().float().cpu(), head.bias.detach().float().cpu().view(-1, 1)], dim=1)
    for c, name in enumerate(class_names):
        known = observed_train[:, c] != 0
        y_tr = torch.as_tensor(observed_train[known, c] == 1)
        vrows = np.ones(len(val_targets), bool) if val_mask is None else np.asarray(val_mask[:, c], bool)
        y_va = np.asarray(val_targets[vrows, c], np.uint8)
        rec: dict[str, Any] = {"class": name, "n_train_known": int(known.sum())}
        missing = [what for what, ok in (("training positive", bool(y_tr.any())),
                                         ("training negative", bool((~y_tr).any())),
                                         ("validation positive", bool(y_va.any())),
                                         ("validation negative", bool((y_va == 0).any()))) if not ok]
        if missing:
            rec.update(status="skipped", reason="no known " + " and no ".join(missing))
            records.append(rec)
            continue
        row, r = finetune_class(spec, weight[c], z_train[torch.as_tensor(known)], y_tr.float(),
                                z_val[torch.as_tensor(vrows)], y_va, derive_seed(seed, 7919, c))
        weight[c] = row
        rec.update(r)
        records.append(rec)
    with torch.no_grad():
        head.weight.copy_(weight[:, :-1].to(head.weight))
        head.bias.copy_(weight[:, -1].to(head.bias))
    return records


# --------------------------------------------------------------------------- the trainer's post-training step
def apply_cft(trainer, spec: CFTSection) -> dict[str, Any]:
    """Fine-tune the head of ``trainer``'s best checkpoint, write it back into ``best.pt``; returns the summary."""
    from mlrkit.engine.checkpoint import load_checkpoint, load_trainable_state, save_checkpoint, trainable_state_dict
    from mlrkit.utils import write_json

    if trainer.env.enabled:
        raise ConfigError("cft runs in a single process (it is cheap); train without torchrun, or drop cft")
    if trainer.ema is not None:
        raise ConfigError("cft fine-tunes the head of the trained weights; with train.ema the evaluated weights "
                          "are the EMA ones: set train.ema=0 or drop cft")
    best = trainer.out / "best.pt"
    ck = load_checkpoint(best)
    if ck.get("cft") is not None:  # a resumed run: already fine-tuned
        load_trainable_state(trainer.model, ck["model"])
        return ck["cft"]
    load_trainable_state(trainer.model, ck["model"])
    data = trainer.data
    z_tr, _ = head_inputs(trainer.model, lambda: trainer.scores(data.train, data.observed_train))
    z_va, _ = head_inputs(trainer.model, lambda: trainer.scores(data.val))
    head = classifier_of(trainer.model)
    records = category_wise_finetune(spec, head, z_tr, data.observed_train, z_va, data.val_targets, data.val_mask,
                                     trainer.cfg.seed, data.class_names)
    tuned = [r for r in records if r["status"] != "skipped"]
    summary = {"spec": spec.as_dict(),
               "classes_tuned": sum(r["status"] == "tuned" for r in records),
               "classes_kept": sum(r["status"] == "kept" for r in records),
               "classes_skipped": sum(r["status"] == "skipped" for r in records),
               "mean_val_ap_before": float(np.mean([r["val_ap_before"] for r in tuned])) if tuned else None,
               "mean_val_ap_after": float(np.mean([r["val_ap_after"] for r in tuned])) if tuned else None}
    write_json(trainer.out / "cft.json", {**summary, "classes": records})
    ck["model"] = trainable_state_dict(trainer.model)
    ck["cft"] = summary
    save_checkpoint(best, ck)
    log.info("cft: %s", json.dumps({k: v for k, v in summary.items() if k != "spec"}))
    return summary
