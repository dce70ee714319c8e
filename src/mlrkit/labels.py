"""Observed labels and the observation protocols that make them.

Convention (Cole et al. 2021), used everywhere in mlrkit:
``targets`` uint8 [N, C] (1 present, 0 absent) and ``observed`` int8 [N, C] with
+1 = known positive, 0 = unknown, -1 = known negative.

A protocol turns ``targets`` into ``observed`` deterministically from a seed:

* ``full``                   every entry known.
* ``single-positive``        one positive per image drawn uniformly; images without positives keep none.
* ``partial:<f>``            a uniformly random subset of round(f*N*C) entries is known (DualCoOp).
* ``drop-positives:<f>``     round(f*P) of the P positives are kept, nothing else is known (SPLC).
* ``observed``               the dataset's own annotations exactly as given (real incomplete labels).
* ``fpc:<N>``                up to N positives and N negatives known per class (Ben-Baruch et al. 2022).

Where the ground truth itself is incomplete (a three-state manifest, a features file's
``observed_train``, LVIS/CheXpert/VAW/OpenImages), a ``known`` mask restricts every protocol to the
entries whose ground truth is known; the rest stay 0. ``observed`` is then exactly those known
entries (+1/-1); on complete ground truth it equals ``full``. A dataset that ships both complete
ground truth and its own partial annotations (a features file with ``Y_train`` *and*
``observed_train``) passes the latter as ``annotations``: ``observed`` returns them as they are,
while the simulating protocols draw from the complete ground truth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlrkit.errors import DataError, MlrkitError
from mlrkit.registry import Registry

POSITIVE, UNKNOWN, NEGATIVE = 1, 0, -1

ProtocolFn = Callable[[np.ndarray, "np.ndarray | None", np.random.Generator, "float | None"], np.ndarray]

PROTOCOLS: Registry[ProtocolFn] = Registry("protocol")


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-order bytes (so a reshape changes the hash)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def ground_truth_sha256(targets: np.ndarray, known: np.ndarray | None = None) -> str:
    """SHA-256 of a ground truth: of ``targets`` alone when complete, of targets and ``known`` when
    partial (so that editing which entries are known changes it)."""
    t = array_sha256(check_targets(targets))
    if known is None:
        return t
    return hashlib.sha256(f"{t}|{array_sha256(np.asarray(known, dtype=bool))}".encode()).hexdigest()


def check_targets(targets: np.ndarray, what: str = "targets") -> np.ndarray:
    """Validate a ground-truth matrix: 2-D, values in {0, 1}. Returns it as uint8."""
    t = np.asarray(targets)
    if t.ndim != 2:
        raise DataError(f"{what} must be a 2-D [N, C] array, got shape {t.shape}")
    if t.size and not _only_01(t):
        bad = np.unique(t[~np.isin(t, (0, 1))])[:5]
        raise DataError(f"{what} must hold only 0/1, found {bad.tolist()}")
    return t.astype(np.uint8, copy=False)


def _only_01(t: np.ndarray) -> bool:
    """Cheap check for large matrices: min/max for integer and boolean types, isin otherwise."""
    if t.dtype == bool:
        return True
    if t.dtype.kind in "ui":
        return int(t.min()) >= 0 and int(t.max()) <= 1
    return bool(np.isin(t, (0, 1)).all())


def check_observed(observed: np.ndarray, what: str = "observed labels") -> np.ndarray:
    """Validate an observed-label matrix: 2-D, values in {-1, 0, +1}. Returns it as int8."""
    o = np.asarray(observed)
    if o.ndim != 2:
        raise DataError(f"{what} must be a 2-D [N, C] array, got shape {o.shape}")
    if o.size and not np.isin(o, (-1, 0, 1)).all():
        bad = np.unique(o[~np.isin(o, (-1, 0, 1))])[:5]
        raise DataError(f"{what} must hold only -1/0/+1, found {bad.tolist()}")
    return o.astype(np.int8, copy=False)


def parse_protocol(protocol: str) -> tuple[str, float | None]:
    """Split ``"partial:0.3"`` into ``("partial", 0.3)``; validates the name and the argument."""
    if not isinstance(protocol, str) or not protocol.strip():
        raise MlrkitError(f"label protocol must be a non-empty string, got {protocol!r}")
    name, sep, arg = protocol.strip().partition(":")
    PROTOCOLS.entry(name)  # raises with suggestions
    parse_arg = PROTOCOL_ARGS.get(name)
    needs_arg = parse_arg is not None
    if needs_arg and not sep:
        what, example = PROTOCOL_ARG_EXAMPLES[name]
        raise MlrkitError(f"protocol {name!r} needs {what}, e.g. '{name}:{example}'")
    if not needs_arg and sep:
        raise MlrkitError(f"protocol {name!r} takes no argument, got {protocol!r}")
    value: float | None = None
    if parse_arg is not None:
        value = parse_arg(protocol, arg)
    return name, value


def parse_fraction(protocol: str, arg: str) -> float:
    """A protocol's fraction argument, in (0, 1]."""
    try:
        value = float(arg)
    except ValueError:
        raise MlrkitError(f"protocol {protocol!r}: {arg!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise MlrkitError(f"protocol {protocol!r}: the fraction must be in (0, 1], got {value}")
    return value


#: protocols that take an argument (``name:<arg>``): the parser of the argument, and what it is (+ an example).
PROTOCOL_ARGS: dict[str, Callable[[str, str], float]] = {}
PROTOCOL_ARG_EXAMPLES: dict[str, tuple[str, str]] = {}


def protocol_argument(name: str, parse: Callable[[str, str], float], what: str, example: str) -> None:
    """Declare that protocol ``name`` takes an argument (``name:<arg>``), parsed by ``parse(protocol, arg)``."""
    PROTOCOL_ARGS[name] = parse
    PROTOCOL_ARG_EXAMPLES[name] = (what, example)


def make_observed(
    targets: np.ndarray, protocol: str, seed: int, *, known: np.ndarray | None = None,
    annotations: np.ndarray | None = None,
) -> np.ndarray:
    """Apply an observation protocol to ground truth; returns int8 [N, C] in {-1, 0, +1}.

    Deterministic in ``(targets, protocol, seed, known)``. ``known`` (bool [N, C]) marks the
    entries whose ground truth exists; entries outside it are always 0 (unknown).
    ``annotations`` (int8 [N, C], optional) are a dataset's own three-state labels where they are
    not simply its known ground truth; only the ``observed`` protocol reads them, and they must
    agree with ``targets`` wherever ``known``.
    """
    t = check_targets(targets)
    if known is not None:
        known = np.asarray(known, dtype=bool)
        if known.shape != t.shape:
            raise DataError(f"known mask shape {known.shape} != targets shape {t.shape}")
    name, value = parse_protocol(protocol)
    if name == "observed" and annotations is not None:
        a = check_observed(annotations, "dataset annotations")
        if a.shape != t.shape:
            raise DataError(f"annotations shape {a.shape} != targets shape {t.shape}")
        check_consistent(a, t, known, "dataset annotations")
        return a.copy()
    rng = np.random.default_rng(seed)
    out = PROTOCOLS.get(name)(t, known, rng, value)
    return check_observed(out)


def check_consistent(observed: np.ndarray, targets: np.ndarray, known: np.ndarray | None, what: str) -> None:
    """Refuse observed labels that contradict the ground truth or claim an entry it does not know."""
    o = observed
    wrong = ((o == POSITIVE) & (targets == 0)) | ((o == NEGATIVE) & (targets == 1))
    if known is not None:
        wrong |= (o != UNKNOWN) & ~np.asarray(known, dtype=bool)
    if wrong.any():
        r, c = np.argwhere(wrong)[0]
        raise DataError(f"{what} contradict the ground truth at {int(wrong.sum())} entries "
                        f"(first: row {r}, class {c})")


def _known(t: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    return np.ones(t.shape, dtype=bool) if known is None else known


@PROTOCOLS.register("full", "every (image, class) label known: +1 present, -1 absent")
def _full(t: np.ndarray, known: np.ndarray | None, rng: np.random.Generator, _: float | None) -> np.ndarray:
    obs = np.where(t == 1, POSITIVE, NEGATIVE).astype(np.int8)
    obs[~_known(t, known)] = UNKNOWN
    return obs


@PROTOCOLS.register(
    "single-positive", "one positive per image drawn uniformly (seeded); all else unknown (Cole et al.)"
)
def _single_positive(
    t: np.ndarray, known: np.ndarray | None, rng: np.random.Generator, _: float | None
) -> np.ndarray:
    eligible = (t == 1) & _known(t, known)
    keys = rng.random(t.shape)
    keys[~eligible] = -1.0
    pick = keys.argmax(axis=1)
    rows = np.flatnonzero(eligible.any(axis=1))
    obs = np.zeros(t.shape, dtype=np.int8)
    obs[rows, pick[rows]] = POSITIVE
    return obs


@PROTOCOLS.register(
    "partial", "partial:<f> - a uniform random subset of round(f*N*C) entries is known (DualCoOp)"
)
def _partial(t: np.ndarray, known: np.ndarray | None, rng: np.random.Generator, frac: float | None) -> np.ndarray:
    assert frac is not None
    candidates = np.flatnonzero(_known(t, known).ravel())
    n_keep = int(round(frac * candidates.size))
    keep = candidates[rng.permutation(candidates.size)[:n_keep]]
    obs = np.zeros(t.size, dtype=np.int8)
    flat = t.ravel()
    obs[keep] = np.where(flat[keep] == 1, POSITIVE, NEGATIVE)
    return obs.reshape(t.shape)


@PROTOCOLS.register(
    "drop-positives", "drop-positives:<f> - round(f*P) of the P positives kept, nothing else known (SPLC)"
)
def _drop_positives(
    t: np.ndarray, known: np.ndarray | None, rng: np.random.Generator, frac: float | None
) -> np.ndarray:
    assert frac is not None
    positives = np.flatnonzero(((t == 1) & _known(t, known)).ravel())
    n_keep = int(round(frac * positives.size))
    keep = positives[rng.permutation(positives.size)[:n_keep]]
    obs = np.zeros(t.size, dtype=np.int8)
    obs[keep] = POSITIVE
    return obs.reshape(t.shape)


@PROTOCOLS.register(
    "observed", "the dataset's own annotations as given: known positives +1, known negatives -1, rest 0 "
    "(= full on complete ground truth)"
)
def _observed(t: np.ndarray, known: np.ndarray | None, rng: np.random.Generator, _: float | None) -> np.ndarray:
    return _full(t, known, rng, None)


def parse_count(protocol: str, arg: str) -> float:
    """``fpc``'s argument: a whole number of annotations per class and side, >= 1."""
    try:
        value = float(arg)
    except ValueError:
        raise MlrkitError(f"protocol {protocol!r}: {arg!r} is not a number") from None
    if not value.is_integer() or value < 1:
        raise MlrkitError(f"protocol {protocol!r}: the count per class must be a whole number >= 1, got {arg}")
    return value


@PROTOCOLS.register("fpc", "fpc:<N> - up to N positives and N negatives known per class (Ben-Baruch et al. 2022)")
def _fixed_per_category(
    targets: np.ndarray, known: np.ndarray | None, rng: np.random.Generator, n_per_class: float | None
) -> np.ndarray:
    r"""``fpc:<N>``, fixed per category (Ben-Baruch, Ridnik, Friedman, Ben-Cohen, Zamir, Noy, Zelnik-Manor,
    "Multi-label classification with partial annotations using class-aware selective loss", CVPR 2022).

    For every class :math:`c` independently,

    .. math::
        \mathcal P_c \subset \{i : y_{ic}=1\},\ |\mathcal P_c| = \min(N, n^+_c), \qquad
        \mathcal N_c \subset \{i : y_{ic}=0\},\ |\mathcal N_c| = \min(N, n^-_c)

    are drawn uniformly without replacement; :math:`o_{ic}=+1` on :math:`\mathcal P_c`, :math:`-1` on
    :math:`\mathcal N_c`, 0 elsewhere: every class gets up to :math:`N` positive *and* up to :math:`N`
    negative annotations whatever its frequency (the paper: :math:`N=1000` on COCO). This follows the
    paper's code (``simulate_coco``, mode ``fpc``). mlcpl's ``drop_labels_fix_per_category(N)`` keeps
    :math:`\min(n^+_c, n^-_c, \lfloor N/2\rfloor)` of *each* instead (balanced, at most :math:`N` in
    all); docs/comparison.md has the difference. With a ``known`` mask only known entries are candidates.
    """
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


protocol_argument("partial", parse_fraction, "a fraction", "0.5")
protocol_argument("drop-positives", parse_fraction, "a fraction", "0.5")
protocol_argument("fpc", parse_count, "a count per class", "100")


# --------------------------------------------------------------------------- artifact


@dataclass
class ObservedLabels:
    """An observed-label matrix with the parameters that made it, saved as one ``.npz``.

    ``sha256`` is :func:`array_sha256` of ``observed``; ``targets_sha256`` the
    :func:`ground_truth_sha256` of the ground truth it was drawn from (with its known mask),
    so a file made for another dataset or split is refused.
    """

    observed: np.ndarray
    protocol: str
    seed: int
    dataset: str
    targets_sha256: str
    class_names: list[str] = field(default_factory=list)
    sha256: str = ""

    def __post_init__(self) -> None:
        self.observed = check_observed(self.observed)
        actual = array_sha256(self.observed)
        if self.sha256 and self.sha256 != actual:
            raise DataError(
                f"observed labels are corrupt: stored sha256 {self.sha256[:12]}… != computed {actual[:12]}…"
            )
        self.sha256 = actual

    def meta(self) -> dict:
        d = asdict(self)
        d.pop("observed")
        d["shape"] = list(self.observed.shape)
        return d

    def save(self, path: str | Path) -> Path:
        """Write ``observed`` and the metadata (JSON) into one ``.npz`` atomically."""
        from mlrkit.utils import save_array_with_meta

        return save_array_with_meta(path, "observed", self.observed, self.meta())

    @classmethod
    def load(cls, path: str | Path) -> ObservedLabels:
        from mlrkit.utils import load_array_with_meta

        path = Path(path)
        observed, meta = load_array_with_meta(path, "observed", "observed-label")
        shape = tuple(meta.pop("shape", observed.shape))
        if tuple(observed.shape) != shape:
            raise DataError(f"{path}: observed shape {observed.shape} != recorded {shape}")
        try:
            return cls(observed=observed, **meta)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None

    def check_matches(self, targets: np.ndarray, dataset: str, known: np.ndarray | None = None) -> None:
        """Refuse labels made for other data: shape, ground-truth hash, and consistency."""
        if self.observed.shape != targets.shape:
            raise DataError(
                f"observed labels have shape {self.observed.shape} but dataset {dataset!r} "
                f"training split has {targets.shape}"
            )
        if self.targets_sha256 != ground_truth_sha256(targets, known):
            raise DataError(
                f"observed labels were made for dataset {self.dataset!r} with other ground truth "
                f"(hash mismatch) - not for {dataset!r}; run `mlrkit prepare` again"
            )
        check_consistent(self.observed, targets, known, "observed labels")


def observe(
    targets: np.ndarray,
    protocol: str,
    seed: int,
    dataset: str,
    class_names: list[str] | None = None,
    known: np.ndarray | None = None,
    annotations: np.ndarray | None = None,
) -> ObservedLabels:
    """:func:`make_observed` wrapped into a hashed, saveable :class:`ObservedLabels`."""
    obs = make_observed(targets, protocol, seed, known=known, annotations=annotations)
    return ObservedLabels(
        observed=obs,
        protocol=protocol,
        seed=int(seed),
        dataset=dataset,
        targets_sha256=ground_truth_sha256(targets, known),
        class_names=list(class_names or []),
    )


# --------------------------------------------------------------------------- statistics


@dataclass
class LabelStats:
    """Label statistics of a ground-truth or observed-label matrix (see :func:`label_stats`)."""

    n_images: int
    n_classes: int
    positives_per_image_mean: float
    positives_per_image_min: int
    positives_per_image_max: int
    images_without_positive: int
    known_fraction: float
    known_positives: int
    known_negatives: int
    positives_per_class: list[int]
    classes_without_positive: list[str]
    negatives_per_class: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self, per_class: bool = False) -> str:
        lines = [
            f"images {self.n_images}, classes {self.n_classes}",
            f"positives per image: mean {self.positives_per_image_mean:.3f}, "
            f"min {self.positives_per_image_min}, max {self.positives_per_image_max}; "
            f"images without a positive: {self.images_without_positive}",
            f"known fraction {self.known_fraction:.4f} "
            f"({self.known_positives} positive, {self.known_negatives} negative entries)",
            f"classes without a positive: {len(self.classes_without_positive)}"
            + (f" ({', '.join(self.classes_without_positive[:10])}"
               + (", ..." if len(self.classes_without_positive) > 10 else "") + ")"
               if self.classes_without_positive else ""),
        ]
        if per_class and self.negatives_per_class:
            width = max(8, *(len(n) for n in self.class_names))
            lines.append(f"{'class':<{width}} {'known +':>8} {'known -':>8} {'unknown':>8}")
            for name, npos, nneg in zip(self.class_names, self.positives_per_class, self.negatives_per_class):
                lines.append(f"{name:<{width}} {npos:>8} {nneg:>8} {self.n_images - npos - nneg:>8}")
        return "\n".join(lines)


def label_stats(matrix: np.ndarray, class_names: list[str] | None = None) -> LabelStats:
    """Statistics of a ground-truth (0/1) or observed (-1/0/+1) matrix.

    For ground truth every entry counts as known; for observed labels, positives are the +1s,
    negatives the -1s, and per-class counts of both are given (``unknown = N - known +/-``).
    """
    m = np.asarray(matrix)
    n, c = m.shape
    names = list(class_names) if class_names else [str(i) for i in range(c)]
    is_observed = m.dtype == np.int8 or bool((m < 0).any())
    pos = m == 1
    if is_observed:
        known = m != 0
        neg = m == -1
    else:
        known = np.ones_like(pos)
        neg = m == 0
    ppi = pos.sum(axis=1)
    ppc = pos.sum(axis=0)
    return LabelStats(
        n_images=int(n),
        n_classes=int(c),
        positives_per_image_mean=float(ppi.mean()) if n else 0.0,
        positives_per_image_min=int(ppi.min()) if n else 0,
        positives_per_image_max=int(ppi.max()) if n else 0,
        images_without_positive=int((ppi == 0).sum()),
        known_fraction=float(known.mean()) if m.size else 0.0,
        known_positives=int(pos.sum()),
        known_negatives=int(neg.sum()),
        positives_per_class=[int(x) for x in ppc],
        classes_without_positive=[names[j] for j in np.flatnonzero(ppc == 0)],
        negatives_per_class=[int(x) for x in neg.sum(axis=0)],
        class_names=names,
    )
