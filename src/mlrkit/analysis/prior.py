r"""``mlrkit analyze prior``: SCPNet's structured semantic prior :math:`A^*` of a VL model, drawn.

The prior (Ding et al., CVPR 2023, eqs. 1-4; :func:`mlrkit.models.scpnet.prior_from_features`) is
computed from the VL model's text features of ``"a photo of a [CLS]."`` for a dataset's class names
and drawn as a heatmap (as the paper's Fig. 3): left the whole :math:`A^*` (its diagonal carries
most of each row's mass, about :math:`1-s` before the softmax), right the same matrix with the
diagonal blanked, so the label-to-label associations are readable. The report lists, per class,
its strongest associations and summarises the raw cosine similarities (eq. 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrkit.errors import MlrkitError
from mlrkit.models.scpnet import PRIOR_TEMPLATE, StructuredPrior, cached_structured_prior


def prior_report(vl, class_names: Sequence[str], *, k: int | None = None, s: float = 0.2, tau: float = 0.2,
                 template: str = PRIOR_TEMPLATE, seed: int = 0, top: int = 3,
                 cache_dir=None) -> tuple[StructuredPrior, dict[str, Any]]:
    """The prior (cached) and a JSON-able report: parameters, similarity statistics, top associations."""
    names = list(class_names)
    if len(names) < 2:
        raise MlrkitError("the prior needs at least two classes")
    p = cached_structured_prior(vl, names, k=k, s=s, tau=tau, template=template, seed=seed, cache_dir=cache_dir)
    c = len(names)
    off = ~torch.eye(c, dtype=torch.bool)
    sim = p.similarity[off]
    a = p.prior.clone()
    a.fill_diagonal_(-1.0)
    top = min(top, c - 1)
    vals, idx = a.topk(top, dim=1)
    assoc = [{"class": names[i], "diagonal": float(p.prior[i, i]),
              "top": [{"class": names[int(j)], "weight": float(v)} for v, j in zip(vals[i], idx[i])]}
             for i in range(c)]
    report = {
        "vl_model": vl.spec, "classes": c, "k": k if k is not None else c, "s": s, "tau": tau, "template": template,
        "similarity_offdiag": {"mean": float(sim.mean()), "min": float(sim.min()), "max": float(sim.max())},
        "nonzeros_per_row": float((p.prior > 0).sum(dim=1).float().mean()),
        "diagonal_mean": float(p.prior.diag().mean()),
        "associations": assoc,
        "prior": p.prior.tolist(),
    }
    return p, report


def draw_prior(prior: torch.Tensor | np.ndarray, class_names: Sequence[str], path: str | Path,
               title: str = "") -> Path:
    """Write the heatmap PNG of :math:`A^*` (whole, and without its diagonal); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.asarray(prior.detach().cpu() if isinstance(prior, torch.Tensor) else prior, dtype=np.float64)
    c = len(class_names)
    if a.shape != (c, c):
        raise MlrkitError(f"prior {a.shape} does not fit {c} class names")
    off = a.copy()
    np.fill_diagonal(off, np.nan)
    show_names = c <= 40
    side = min(max(4.0, 0.32 * c + 2.5), 14.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side), constrained_layout=True)
    for ax, m, sub in ((axes[0], a, "A*"), (axes[1], off, "A* without the diagonal")):
        im = ax.imshow(m, cmap="viridis", interpolation="nearest")
        ax.set_title(sub)
        if show_names:
            ax.set_xticks(range(c), [str(n) for n in class_names], rotation=90, fontsize=8)
            ax.set_yticks(range(c), [str(n) for n in class_names], fontsize=8)
        else:
            ax.set_xlabel("class j")
            ax.set_ylabel("class i")
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_prior(report: dict[str, Any], limit: int = 20) -> str:
    """A text summary: parameters, similarity range and each class's strongest associations."""
    s = report["similarity_offdiag"]
    lines = [f"{report['vl_model']}, {report['classes']} classes: structured prior A* "
             f"(K={report['k']}, s={report['s']}, tau'={report['tau']}, template {report['template']!r})",
             f"cosine similarity off the diagonal: mean {s['mean']:.4f}, min {s['min']:.4f}, max {s['max']:.4f}; "
             f"non-zeros per row {report['nonzeros_per_row']:.1f}; diagonal mean {report['diagonal_mean']:.4f}"]
    w = max(len(a["class"]) for a in report["associations"])
    for a in report["associations"][:limit]:
        tops = ", ".join(f"{t['class']} {t['weight']:.4f}" for t in a["top"])
        lines.append(f"  {a['class']:<{w}}  self {a['diagonal']:.4f} | {tops}")
    if len(report["associations"]) > limit:
        lines.append(f"  ... ({len(report['associations']) - limit} more classes in --json)")
    return "\n".join(lines)
