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

``protocol="templates"`` (:func:`template_similarity`) measures the same question over *many*
templates per class, as the PositiveCoOp poster's "80 classes × 85 prompts" analysis does: for
each class :math:`c` and each template pair :math:`k` of a list (default: CLIP's 80 ImageNet
templates with a negated form of each, ``mlrkit/builtin/prompt_templates.json``),
:math:`\cos(p_{ck}, n_{ck})` (positive vs its own negation) and, as the paraphrase level,
:math:`\cos(p_{ck}, p_{ck'})` over all template pairs :math:`k < k'` (positive vs another
positive template of the same class); also the share of :math:`(c, k)` whose negation is closer
to :math:`p_{ck}` than the mean paraphrase :math:`\frac{1}{K-1}\sum_{k' \ne k} \cos(p_{ck}, p_{ck'})`,
and the prompt-ensembled similarity :math:`\cos(\bar p_c, \bar n_c)` of the normalised template
means (CLIP's prompt ensembling). The poster's own 85 prompts are not public; give them with
``templates=`` / ``--templates FILE`` to measure exactly its list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mlrkit.errors import DataError, MlrkitError

POSITIVE = "a photo of a {}."
NEGATIVE = "a photo without a {}."
REFERENCE = "a picture of a {}."
TEMPLATES_FILE = Path(__file__).resolve().parents[1] / "builtin" / "prompt_templates.json"


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
        "vl_model": vl.spec, "protocol": "single", "classes": len(names),
        "templates": {"positive": positive, "negative": negative, "reference": reference},
        "pos_vs_neg": _stats(pn), "pos_vs_pos": _stats(pq),
        "per_class": [{"class": c, "pos_vs_neg": float(a), "pos_vs_pos": float(b)}
                      for c, a, b in zip(class_names, pn, pq)],
    }


def _table(title: str, rows: list[tuple[str, dict[str, float]]]) -> list[str]:
    """``title`` and one line per (label, stats): mean ± std, min, max."""
    w = max(len(r[0]) for r in rows)
    cells = [f"{s['mean']:.4f} ± {s['std']:.4f}" for _, s in rows]
    cw = max(len("mean ± std"), *(len(c) for c in cells))
    lines = [title, f"{'':<{w}}  {'mean ± std':>{cw}}  {'min':>7}  {'max':>7}"]
    for (label, s), cell in zip(rows, cells):
        lines.append(f"{label:<{w}}  {cell:>{cw}}  {s['min']:>7.4f}  {s['max']:>7.4f}")
    return lines


def format_report(rep: dict[str, Any]) -> str:
    """The summary table (one row per comparison)."""
    t = rep["templates"]
    rows = [(f"positive vs negative  ({t['positive']!r} vs {t['negative']!r})", rep["pos_vs_neg"]),
            (f"positive vs positive  ({t['positive']!r} vs {t['reference']!r})", rep["pos_vs_pos"])]
    return "\n".join(_table(f"{rep['vl_model']}, {rep['classes']} classes: cosine similarity of text embeddings",
                            rows))


# ---------------------------------------------------------------------------- many templates per class
def load_template_pairs(path: str | Path | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(name, [(positive, negative), ...]) from a template-pair JSON: ``{"name", "pairs": [{"positive",
    "negative"}, ...]}`` or a bare list of such pairs. Default: CLIP's 80 ImageNet templates
    (:data:`TEMPLATES_FILE`). Errors name the file and the entry."""
    path = Path(path) if path is not None else TEMPLATES_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read template pairs from {path}: {e}") from None
    entries = doc.get("pairs") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or len(entries) < 2:
        raise DataError(f"{path}: expected a list of at least 2 {{positive, negative}} pairs (or {{'pairs': [...]}})")
    pairs = []
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) and e[k].count("{}") == 1
                                              for k in ("positive", "negative")):
            raise DataError(f"{path}: pair {n} must be {{positive, negative}} templates with one '{{}}' each, got "
                            f"{str(e)[:120]}")
        pairs.append((e["positive"], e["negative"]))
    name = doc.get("name", path.stem) if isinstance(doc, dict) else path.stem
    return str(name), pairs


@torch.no_grad()
def _encode(vl, texts: list[str], chunk: int = 512) -> torch.Tensor:
    return torch.cat([vl.encode_text(texts[i:i + chunk], normalize=True).float() for i in range(0, len(texts), chunk)])


@torch.no_grad()
def template_similarity(vl, class_names: Sequence[str], *, pairs: Sequence[tuple[str, str]] | None = None,
                        name: str | None = None) -> dict[str, Any]:
    """Positive vs negated prompts over many templates per class (module docstring, ``protocol="templates"``).

    Returns the summaries ``pos_vs_neg`` (over C×K pairs), ``pos_vs_pos`` (over C×K(K−1)/2 paraphrase
    pairs), ``neg_closer_than_paraphrase`` (share of the C×K negations closer to their positive than the
    positive's mean paraphrase), ``ensembled_pos_vs_neg`` (over C classes) and per-class means.
    """
    names = [n.replace("_", " ") for n in class_names]
    if not names:
        raise MlrkitError("no class names to analyse")
    if pairs is None:
        name, pairs = load_template_pairs()
    name = name or "custom"
    pairs = list(pairs)
    k = len(pairs)
    if k < 2:
        raise MlrkitError(f"the templates protocol needs at least 2 template pairs, got {k}")
    c = len(names)
    pos = _encode(vl, [p.format(n) for n in names for p, _ in pairs]).reshape(c, k, -1)
    neg = _encode(vl, [q.format(n) for n in names for _, q in pairs]).reshape(c, k, -1)
    pn = (pos * neg).sum(-1)  # [C, K]
    gram = pos @ pos.transpose(1, 2)  # [C, K, K]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool), diagonal=1)
    pp = gram[:, upper]  # [C, K(K-1)/2]
    mean_para = (gram.sum(-1) - gram.diagonal(dim1=1, dim2=2)) / (k - 1)  # [C, K]
    closer = (pn > mean_para).double()
    ens = (torch.nn.functional.normalize(pos.mean(1), dim=-1) * torch.nn.functional.normalize(neg.mean(1), dim=-1)
           ).sum(-1)
    return {
        "vl_model": vl.spec, "protocol": "templates", "classes": c, "template_pairs": k, "template_list": name,
        "prompts_per_class": 2 * k,
        "pos_vs_neg": _stats(pn.flatten()), "pos_vs_pos": _stats(pp.flatten()),
        "neg_closer_than_paraphrase": float(closer.mean()), "ensembled_pos_vs_neg": _stats(ens),
        "pairs": [{"positive": p, "negative": q} for p, q in pairs],
        "per_template": [{"positive": p, "negative": q, "pos_vs_neg": float(v)}
                         for (p, q), v in zip(pairs, pn.mean(0))],
        "per_class": [{"class": cn, "pos_vs_neg": float(a), "pos_vs_pos": float(b), "ensembled": float(e)}
                      for cn, a, b, e in zip(class_names, pn.mean(1), pp.mean(1), ens)],
    }


def format_template_report(rep: dict[str, Any]) -> str:
    """The summary of :func:`template_similarity` (one row per comparison)."""
    k, c = rep["template_pairs"], rep["classes"]
    rows = [(f"positive vs its negation ({c} x {k} pairs)", rep["pos_vs_neg"]),
            (f"positive vs another positive template ({c} x {k * (k - 1) // 2} pairs)", rep["pos_vs_pos"]),
            (f"ensembled positive vs ensembled negative ({c} classes)", rep["ensembled_pos_vs_neg"])]
    lines = _table(f"{rep['vl_model']}, {c} classes x {rep['prompts_per_class']} prompts ({k} templates "
                   f"'{rep['template_list']}' and their negations): cosine similarity of text embeddings", rows)
    lines.append(f"negation closer to its positive than the positive's mean paraphrase: "
                 f"{100 * rep['neg_closer_than_paraphrase']:.1f}% of the {c * k} (class, template) pairs")
    return "\n".join(lines)
