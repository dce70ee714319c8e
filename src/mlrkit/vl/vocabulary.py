r"""Can a VL model's text side tell a class list apart? Measured before the model is used on it.

Zero-shot scores, VLPL's pseudo-labels, SCPNet's label prior and the prompt methods' text
initialisation all start from the class-name text embeddings :math:`t_c` (unit vectors, the
prompt-template mean). When these are (nearly) the same vector for every class, every one of
those methods runs on noise. The check reports, over the :math:`C(C-1)` ordered pairs
:math:`c \neq c'`:

* ``mean_cosine`` :math:`= \frac{1}{C(C-1)}\sum_{c \neq c'} t_c^\top t_{c'}` and ``max_cosine``;
* ``indistinct_pairs``: pairs with :math:`t_c^\top t_{c'} \geq` :data:`PAIR_COSINE_BOUND`;
* ``token_coverage``: for a model whose checkpoint stores which token embeddings were trained
  (the built-in ``mosaic-clip`` family: a sparse token table), the share of class names whose
  every token was trained; ``None`` (not measurable, assumed complete) for full vocabularies.

The model **fails** the check, with a loud warning in the console and in ``run.json``, when
``mean_cosine >= MEAN_COSINE_BOUND`` or ``token_coverage < 1`` or any pair is indistinct.
The bounds are documented in ``docs/vl-backends.md`` with the measured numbers: ``mosaic-clip``
on its own ten Fashion-MNIST classes passes (mean 0.80, max 0.84, coverage 1.0); on VOC's 20
classes it fails (mean 0.999, max 1.000, coverage 0.0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

MEAN_COSINE_BOUND = 0.95
PAIR_COSINE_BOUND = 0.99


@dataclass
class VocabularyReport:
    spec: str
    n_classes: int
    mean_cosine: float
    max_cosine: float
    closest_pairs: list[tuple[str, str, float]] = field(default_factory=list)  # the 5 most similar pairs
    indistinct_pairs: int = 0
    token_coverage: float | None = None
    uncovered: list[str] = field(default_factory=list)  # class names with an untrained token
    passed: bool = True

    def message(self) -> str:
        cov = "n/a" if self.token_coverage is None else f"{self.token_coverage:.2f}"
        head = (f"{self.spec} on {self.n_classes} classes: mean pairwise cosine of the class text embeddings "
                f"{self.mean_cosine:.4f}, max {self.max_cosine:.4f}, {self.indistinct_pairs} pair(s) >= "
                f"{PAIR_COSINE_BOUND}, token coverage {cov}")
        if self.passed:
            return head
        why = []
        if self.mean_cosine >= MEAN_COSINE_BOUND:
            why.append(f"mean cosine >= {MEAN_COSINE_BOUND}")
        if self.indistinct_pairs:
            a, b, c = self.closest_pairs[0]
            why.append(f"e.g. {a!r} vs {b!r} at {c:.4f}")
        if self.token_coverage is not None and self.token_coverage < 1:
            why.append(f"never trained on the words of {', '.join(map(repr, self.uncovered[:6]))}"
                       + (" ..." if len(self.uncovered) > 6 else ""))
        return (f"the VL model cannot tell these classes apart ({'; '.join(why)}): zero-shot scores, "
                f"pseudo-labels, label priors and prompts built on it are noise. {head}. Use a VL model that "
                "knows these words (e.g. --vl-model openclip:ViT-B-16@/path/to/weights)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def trained_token_ids(model) -> set[int] | None:
    """Token ids whose embeddings the checkpoint trained (sparse token table), or None if unknown/all."""
    from mlrkit.vl.backends import BUILTIN_VL_WEIGHTS, builtin_dir
    from mlrkit.vl.checkpoint import read_weights

    spec = model.spec
    path: Path | None = None
    if spec in BUILTIN_VL_WEIGHTS:
        path = builtin_dir() / BUILTIN_VL_WEIGHTS[spec]
    elif "@" in spec and Path(spec.split("@", 1)[1]).expanduser().is_file():
        path = Path(spec.split("@", 1)[1]).expanduser()
    if path is None:
        return None
    rows = getattr(model, "_trained_tokens", None)
    if rows is None:
        sd = read_weights(path).state_dict
        if "token_embedding.rows" not in sd:
            return None
        rows = {int(r) for r in sd["token_embedding.rows"].tolist()}
        model._trained_tokens = rows
    return rows


def vocabulary_check(model, class_names: list[str], templates: tuple[str, ...] | None = None) -> VocabularyReport:
    """The report of the module docstring for ``model`` (a :class:`~mlrkit.vl.VisionLanguageModel`);
    ``templates``: the prompt templates the run uses (default: ``TEMPLATES["single"]``)."""
    from mlrkit.vl.model import TEMPLATES

    templates = TEMPLATES["single"] if templates is None else templates
    names = list(class_names)
    with torch.no_grad():
        emb = model.class_text_embeddings(names, templates).float().cpu().numpy()
    c = len(names)
    sim = emb @ emb.T
    off = ~np.eye(c, dtype=bool)
    if c < 2:
        return VocabularyReport(model.spec, c, float("nan"), float("nan"))
    vals = sim[off]
    iu = np.triu_indices(c, 1)
    order = np.argsort(-sim[iu])[:5]
    pairs = [(names[iu[0][k]], names[iu[1][k]], round(float(sim[iu][k]), 6)) for k in order]
    n_close = int((sim[iu] >= PAIR_COSINE_BOUND).sum())
    coverage, uncovered = None, []
    trained = trained_token_ids(model)
    if trained is not None:
        special = set(model.tokenize("")[0].tolist())  # start/end of text and padding
        for name, row in zip(names, model.tokenize(names)):
            if any(int(t) not in trained for t in row.tolist() if int(t) not in special):
                uncovered.append(name)
        coverage = 1.0 - len(uncovered) / c
    rep = VocabularyReport(model.spec, c, float(vals.mean()), float(vals.max()), pairs, n_close, coverage, uncovered)
    rep.passed = rep.mean_cosine < MEAN_COSINE_BOUND and n_close == 0 and (coverage is None or coverage >= 1.0)
    return rep
