r"""``mlrkit analyze prompts``: do a VL model's text embeddings tell "with" from "without"?

PositiveCoOp (Rawlekar et al., WACV 2025) argues that CLIP's text encoder barely separates a
negative prompt from the positive one, because its training captions rarely describe what an
image does *not* contain. For every class :math:`c` this analysis encodes three hand-written
prompts and compares their normalised embeddings:

* positive :math:`p_c` = ``"a photo of a {c}."``,
* negative :math:`n_c` = ``"a photo without a {c}."``,
* a second positive :math:`q_c` = ``"a picture of a {c}."`` (a paraphrase: the reference level of
  similarity for two prompts that *mean the same*).

It reports :math:`\cos(p_c, n_c)` ("positive vs negative") and :math:`\cos(p_c, q_c)` ("positive
vs positive"): mean ± std (population std over classes), min and max. If the first is about as
high as the second, the encoder treats the negative prompt as a paraphrase of the positive one.
The templates are options (``--positive``, ``--negative``, ``--reference``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mlrkit.errors import MlrkitError

POSITIVE = "a photo of a {}."
NEGATIVE = "a photo without a {}."
REFERENCE = "a picture of a {}."


def _stats(x: torch.Tensor) -> dict[str, float]:
    x = x.double()
    return {"mean": float(x.mean()), "std": float(x.std(unbiased=False)), "min": float(x.min()),
            "max": float(x.max())}


@torch.no_grad()
def prompt_similarity(vl, class_names: Sequence[str], *, positive: str = POSITIVE, negative: str = NEGATIVE,
                      reference: str = REFERENCE) -> dict[str, Any]:
    """Cosine similarities of positive vs negative and positive vs paraphrase prompts, per class and summarised."""
    names = [n.replace("_", " ") for n in class_names]
    if not names:
        raise MlrkitError("no class names to analyse")
    for t in (positive, negative, reference):
        if t.count("{}") != 1:
            raise MlrkitError(f"each template needs exactly one '{{}}', got {t!r}")
    p = vl.encode_text([positive.format(n) for n in names], normalize=True).float()
    n = vl.encode_text([negative.format(c) for c in names], normalize=True).float()
    q = vl.encode_text([reference.format(c) for c in names], normalize=True).float()
    pn, pq = (p * n).sum(-1), (p * q).sum(-1)
    return {
        "vl_model": vl.spec, "classes": len(names),
        "templates": {"positive": positive, "negative": negative, "reference": reference},
        "pos_vs_neg": _stats(pn), "pos_vs_pos": _stats(pq),
        "per_class": [{"class": c, "pos_vs_neg": float(a), "pos_vs_pos": float(b)}
                      for c, a, b in zip(class_names, pn, pq)],
    }


def format_report(rep: dict[str, Any]) -> str:
    """The summary table (one row per comparison)."""
    t = rep["templates"]
    rows = [(f"positive vs negative  ({t['positive']!r} vs {t['negative']!r})", rep["pos_vs_neg"]),
            (f"positive vs positive  ({t['positive']!r} vs {t['reference']!r})", rep["pos_vs_pos"])]
    w = max(len(r[0]) for r in rows)
    cells = [f"{s['mean']:.4f} ± {s['std']:.4f}" for _, s in rows]
    cw = max(len("mean ± std"), *(len(c) for c in cells))
    lines = [f"{rep['vl_model']}, {rep['classes']} classes: cosine similarity of text embeddings",
             f"{'':<{w}}  {'mean ± std':>{cw}}  {'min':>7}  {'max':>7}"]
    for (label, s), cell in zip(rows, cells):
        lines.append(f"{label:<{w}}  {cell:>{cw}}  {s['min']:>7.4f}  {s['max']:>7.4f}")
    return "\n".join(lines)
