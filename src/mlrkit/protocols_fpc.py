r"""The fixed-per-category (FPC) observation protocol, ``fpc:<N>``.

Ben-Baruch, Ridnik, Friedman, Ben-Cohen, Zamir, Noy, Zelnik-Manor, "Multi-label classification
with partial annotations using class-aware selective loss", CVPR 2022, Sec. 5 ("fixed per class",
their OpenImages-like simulation of COCO): for every class :math:`c` independently,

.. math::
    \mathcal P_c \subset \{i : y_{ic}=1\},\ |\mathcal P_c| = \min(N, n^+_c), \qquad
    \mathcal N_c \subset \{i : y_{ic}=0\},\ |\mathcal N_c| = \min(N, n^-_c)

are drawn uniformly without replacement; :math:`o_{ic}=+1` on :math:`\mathcal P_c`, :math:`-1` on
:math:`\mathcal N_c`, 0 elsewhere. So every class gets up to :math:`N` positive *and* up to
:math:`N` negative annotations, whatever its frequency: rare classes keep all their positives,
frequent ones are capped (the paper uses :math:`N=1000` on COCO).

This follows the paper's code (``simulate_coco``, mode ``fpc``: ``N`` positives and ``N``
negatives). mlcpl's ``drop_labels_fix_per_category(N)`` keeps instead
:math:`\min(n^+_c, n^-_c, \lfloor N/2\rfloor)` of *each* (at most ``N`` in all, balanced;
mlrkit's ``fpc:M`` with :math:`M=\lfloor N/2\rfloor` agrees with it only on classes
that have at least :math:`M` positives and :math:`M` negatives); docs/comparison.md has the difference.

With a ``known`` mask (incomplete ground truth), only known entries are candidates.
"""

from __future__ import annotations

import numpy as np

from mlrkit.errors import MlrkitError
from mlrkit.labels import NEGATIVE, POSITIVE, PROTOCOL_ARG_EXAMPLES, PROTOCOL_ARGS, PROTOCOLS


def parse_count(protocol: str, arg: str) -> float:
    """``fpc``'s argument: a whole number of annotations per class and side, >= 1."""
    try:
        value = float(arg)
    except ValueError:
        raise MlrkitError(f"protocol {protocol!r}: {arg!r} is not a number") from None
    if not value.is_integer() or value < 1:
        raise MlrkitError(f"protocol {protocol!r}: the count per class must be a whole number >= 1, got {arg}")
    return value


def fixed_per_category(
    targets: np.ndarray, known: np.ndarray | None, rng: np.random.Generator, n_per_class: float | None
) -> np.ndarray:
    """``fpc:<N>``: up to N known positives and up to N known negatives per class (see the module doc)."""
    assert n_per_class is not None
    n = int(n_per_class)
    t = targets
    ok = np.ones(t.shape, dtype=bool) if known is None else known
    obs = np.zeros(t.shape, dtype=np.int8)
    for c in range(t.shape[1]):
        for value, label in ((1, POSITIVE), (0, NEGATIVE)):
            rows = np.flatnonzero((t[:, c] == value) & ok[:, c])
            keep = rows[rng.permutation(rows.size)[: min(n, rows.size)]]
            obs[keep, c] = label
    return obs


PROTOCOLS.add("fpc", fixed_per_category,
              "fpc:<N> - up to N positives and N negatives known per class (Ben-Baruch et al. 2022)")
PROTOCOL_ARGS["fpc"] = parse_count
PROTOCOL_ARG_EXAMPLES["fpc"] = ("a count per class", "100")
