"""Negation benchmarks: NegRefCOCOg-format referring retrieval, a builder for box-annotated data,
caption retrieval against negated distractors, and the zero-shot mAP of the original task.

**Referring retrieval with negation** (NegRefCOCOg, Park et al. 2025). An item is an image, a text
with a negation, the box the text refers to (``ref_bbox``) and candidate boxes (``bbox_list``,
which contains ``ref_bbox``). Each candidate region is encoded by the image tower and compared with
the text (cosine similarity); the item scores a point when ``Sim(T, P+) > Sim(T, P-)`` for every
negative ``P-`` (strictly: a tie is a miss). Regions are ``crop``-ped (the reference evaluation:
crop, then the model's own resize + centre crop) or ``mask``-ed (the image keeps its size and
everything outside the box is filled with ``fill``; natural for mosaics, whose model was trained
on whole 2x2 mosaics).

File format (JSON) read by :func:`load_referring`: either the published NegRefCOCOg list
``[{"image": "COCO_train2014_...jpg", "phrase": "...", "ref_bbox": [x, y, w, h], "bbox_list":
[[x, y, w, h], ...]}, ...]`` (COCO boxes: top-left corner, width, height, in pixels), or mlrkit's
object ``{"format": "negrefcocog", "version": 1, "dataset": ..., "split": ..., "region_mode": ...,
"items": [<the same items, optionally with "kind" and "bbox_classes">]}`` written by the builder.

**Builder** (:func:`build_referring`): from any images with labelled boxes. Candidate regions are
the union boxes of two objects that cover no third object (by more than half of its area); a
region *contains* the objects it covers by more than half. For an ordered class pair (A, B):

* ``negated`` item: text "a {A} with no {B}" (or another :data:`NEGATED_PHRASES`); positive = a
  region containing A and not B; negatives = every region containing A **and** B. A model that
  ignores "no" prefers the negatives (they match both nouns);
* ``affirmative`` control: text "a {A} and a {B}"; positive = a region containing A and B;
  negatives = every region containing A and not B. A model that learnt "mentioning B means avoid
  B" would fail these.

For fashion-mosaic the objects are the 2x2 cells (28 px tiles, classes from
``Split.extras["tile_labels"]``), so the regions are the four halves (top, bottom, left, right);
only held-out test images are used.

**Caption retrieval**: per test image, the true caption against a negated distractor; a point
when the image is closer to the true caption. ``affirmative``: "a photo of a bag and a shirt." vs
"a photo of a bag with no shirt." (a present object negated); ``negated``: "a photo of a bag and a
shirt with no sneaker." (a true absence) vs "a photo of a bag and a sneaker with no shirt." — the
distractor names exactly the present objects, so a bag-of-words model prefers it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlrkit.errors import DataError, MlrkitError
from mlrkit.negation.captions import article, display_name
from mlrkit.negation.images import encode_images, encode_texts

NEGATED_PHRASES: tuple[str, ...] = (
    "{a_A} with no {B}",
    "{a_A} but no {B}",
    "{a_A} without {a_B}",
    "{a_A}, and there is no {B}",
)
AFFIRMATIVE_PHRASES: tuple[str, ...] = (
    "{a_A} and {a_B}",
    "{a_A} with {a_B}",
    "{a_A} next to {a_B}",
    "{a_A}, and there is {a_B}",
)
KINDS = ("negated", "affirmative")
REGION_MODES = ("crop", "mask")
FORMAT = "negrefcocog"


# ---------------------------------------------------------------------------- items and files
@dataclass
class RefItem:
    """One referring item: ``phrase`` refers to ``ref_bbox`` among ``bbox_list`` (boxes [x, y, w, h])."""

    image: str
    phrase: str
    ref_bbox: list[float]
    bbox_list: list[list[float]]
    kind: str = "negated"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def negatives(self) -> list[list[float]]:
        return [b for b in self.bbox_list if b != self.ref_bbox]

    def as_json(self) -> dict[str, Any]:
        return {"image": self.image, "phrase": self.phrase, "ref_bbox": self.ref_bbox, "bbox_list": self.bbox_list,
                "kind": self.kind, **self.extra}


def _box(value: Any, where: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DataError(f"{where}: a box must be [x, y, w, h] numbers, got {value!r}")
    box = [float(v) for v in value]
    if box[2] <= 0 or box[3] <= 0:
        raise DataError(f"{where}: box {value!r} has no area (w, h must be > 0)")
    return box


def parse_referring(doc: Any, source: str = "<json>") -> tuple[dict[str, Any], list[RefItem]]:
    """Items of a NegRefCOCOg-format document (module docstring) -> (header, items)."""
    if isinstance(doc, list):
        header: dict[str, Any] = {"format": FORMAT}
        raw = doc
    elif isinstance(doc, dict) and isinstance(doc.get("items"), list):
        header = {k: v for k, v in doc.items() if k != "items"}
        raw = doc["items"]
    else:
        raise DataError(f"{source}: expected a JSON list of items or an object with 'items'")
    items = []
    for n, it in enumerate(raw):
        where = f"{source}: item {n}"
        if not isinstance(it, dict):
            raise DataError(f"{where}: not an object")
        missing = [k for k in ("image", "phrase", "ref_bbox", "bbox_list") if k not in it]
        if missing:
            raise DataError(f"{where}: missing {missing}")
        if not isinstance(it["phrase"], str) or not it["phrase"].strip():
            raise DataError(f"{where}: empty phrase")
        if not isinstance(it["bbox_list"], list) or not it["bbox_list"]:
            raise DataError(f"{where}: bbox_list must be a non-empty list of boxes")
        ref = _box(it["ref_bbox"], where)
        boxes = [_box(b, f"{where}, bbox_list[{k}]") for k, b in enumerate(it["bbox_list"])]
        if ref not in boxes:
            raise DataError(f"{where}: ref_bbox {it['ref_bbox']} is not one of bbox_list")
        item = RefItem(image=str(it["image"]), phrase=it["phrase"], ref_bbox=ref, bbox_list=boxes,
                       kind=str(it.get("kind", "negated")),
                       extra={k: v for k, v in it.items()
                              if k not in ("image", "phrase", "ref_bbox", "bbox_list", "kind")})
        if not item.negatives:
            raise DataError(f"{where}: bbox_list has no box besides ref_bbox, nothing to compare against")
        items.append(item)
    if not items:
        raise DataError(f"{source}: no items")
    return header, items


def load_referring(path: str | Path) -> tuple[dict[str, Any], list[RefItem]]:
    """Read a NegRefCOCOg-format JSON file (module docstring)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"cannot read benchmark {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    return parse_referring(doc, str(path))


def save_referring(path: str | Path, header: dict[str, Any], items: Sequence[RefItem]) -> Path:
    from mlrkit.utils import write_json

    write_json(path, {**header, "format": FORMAT, "version": 1, "items": [it.as_json() for it in items]})
    return Path(path)


# ---------------------------------------------------------------------------- builder
def _area(b: Sequence[float]) -> float:
    return float(b[2]) * float(b[3])


def _inter(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def _union(a: Sequence[float], b: Sequence[float]) -> list[float]:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def candidate_regions(objects: Sequence[tuple[Sequence[float], int]], cover: float = 0.5
                      ) -> list[tuple[list[float], set[int]]]:
    """Union boxes of two objects that cover no third object by more than ``cover`` of its area,
    each with the set of classes it contains (objects covered by more than ``cover``); deduplicated."""
    out: dict[tuple[float, ...], set[int]] = {}
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            box = _union(objects[i][0], objects[j][0])
            inside = [k for k, (b, _) in enumerate(objects) if _inter(box, b) > cover * _area(b)]
            if sorted(inside) != [i, j]:
                continue
            out.setdefault(tuple(box), {objects[k][1] for k in inside})
    return [(list(k), v) for k, v in out.items()]


def build_referring(
    objects_per_image: Sequence[Sequence[tuple[Sequence[float], int]]],
    image_ids: Sequence[str],
    class_names: Sequence[str],
    *,
    seed: int = 0,
    per_image: int = 1,
    kinds: Sequence[str] = KINDS,
    negated_phrases: Sequence[str] = NEGATED_PHRASES,
    affirmative_phrases: Sequence[str] = AFFIRMATIVE_PHRASES,
) -> list[RefItem]:
    """Referring items with negation from labelled boxes (module docstring); ``per_image`` items per kind."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise MlrkitError(f"kinds must be among {KINDS}, got {list(kinds)}")
    if len(objects_per_image) != len(image_ids):
        raise MlrkitError(f"{len(objects_per_image)} object lists for {len(image_ids)} images")
    names = [display_name(n) for n in class_names]
    rng = np.random.default_rng(seed)
    items: list[RefItem] = []
    for objs, image_id in zip(objects_per_image, image_ids):
        regions = candidate_regions(objs)
        classes = sorted({c for _, c in objs})
        for kind in kinds:
            options = []
            for a in classes:
                for b in classes:
                    if a == b:
                        continue
                    with_ab = [r for r in regions if a in r[1] and b in r[1]]
                    a_only = [r for r in regions if a in r[1] and b not in r[1]]
                    pos, neg = (a_only, with_ab) if kind == "negated" else (with_ab, a_only)
                    if pos and neg:
                        options.append((a, b, pos, neg))
            if not options:
                continue
            for o in rng.choice(len(options), size=min(per_image, len(options)), replace=False):
                a, b, pos, neg = options[int(o)]
                p = pos[int(rng.integers(len(pos)))]
                phrases = negated_phrases if kind == "negated" else affirmative_phrases
                phrase = phrases[int(rng.integers(len(phrases)))].format(
                    A=names[a], B=names[b], a_A=article(names[a]), a_B=article(names[b]))
                boxes = [p, *neg]
                order = rng.permutation(len(boxes))
                boxes = [boxes[int(k)] for k in order]
                items.append(RefItem(
                    image=str(image_id), phrase=phrase, ref_bbox=list(p[0]), bbox_list=[list(r[0]) for r in boxes],
                    kind=kind, extra={"target_class": class_names[a], "other_class": class_names[b],
                                      "bbox_classes": [[class_names[c] for c in sorted(r[1])] for r in boxes]}))
    return items


def mosaic_objects(tile_labels: np.ndarray, grid: int = 2, tile: int = 28) -> list[list[tuple[list[float], int]]]:
    """Each mosaic's cells as labelled boxes ``([x, y, w, h], class)``, row-major (``Split.extras["tile_labels"]``)."""
    tl = np.asarray(tile_labels)
    if tl.ndim != 2 or tl.shape[1] != grid * grid:
        raise MlrkitError(f"tile_labels must be [N, {grid * grid}], got {tl.shape}")
    cells = [[float((k % grid) * tile), float((k // grid) * tile), float(tile), float(tile)]
             for k in range(grid * grid)]
    return [[(cells[k], int(row[k])) for k in range(grid * grid)] for row in tl]


def build_mosaic_benchmark(dataset: Any, *, split: str = "test", seed: int = 0, per_image: int = 1,
                           kinds: Sequence[str] = KINDS, limit: int | None = None
                           ) -> tuple[dict[str, Any], list[RefItem]]:
    """The referring benchmark of a mosaic dataset (fashion-mosaic): held-out ``test`` images by default."""
    sp = dataset.test if split == "test" else dataset.trainval
    if "tile_labels" not in sp.extras:
        raise MlrkitError(f"dataset {dataset.name!r} has no tile_labels: the mosaic builder needs cell labels")
    grid = int(sp.extras.get("grid", 2))
    arr = getattr(sp.images, "array", None)
    tile = int(arr.shape[1] // grid) if arr is not None else 28
    n = len(sp) if limit is None else min(limit, len(sp))
    objs = mosaic_objects(sp.extras["tile_labels"][:n], grid, tile)
    items = build_referring(objs, sp.ids[:n], dataset.class_names, seed=seed, per_image=per_image, kinds=kinds)
    header = {"dataset": dataset.name, "split": split, "region_mode": "mask", "fill": 0,
              "builder": {"seed": seed, "per_image": per_image, "kinds": list(kinds), "images": n, "tile": tile,
                          "grid": grid, "negated_phrases": list(NEGATED_PHRASES),
                          "affirmative_phrases": list(AFFIRMATIVE_PHRASES)}}
    return header, items


# ---------------------------------------------------------------------------- scoring
def referring_points(text_emb: torch.Tensor, region_emb: torch.Tensor, owner: np.ndarray, positive: np.ndarray,
                     item_text: np.ndarray) -> np.ndarray:
    """Per item: does its positive region beat every negative? (strict ``>``; embeddings are normalised here)

    Args:
        text_emb: [T, D] embeddings of the distinct texts; ``item_text[i]`` is item i's row.
        region_emb: [M, D] embeddings of all regions; ``owner[m]`` the item of region m, ``positive[m]``
            whether it is that item's ``ref_bbox`` (exactly one per item).
    """
    t = F.normalize(text_emb.float(), dim=-1)[torch.as_tensor(item_text)[torch.as_tensor(owner)]]
    r = F.normalize(region_emb.float(), dim=-1)
    sims = (t * r).sum(-1).numpy()
    n = int(owner.max()) + 1 if len(owner) else 0
    pos = np.full(n, np.nan)
    best_neg = np.full(n, -np.inf)
    pos_mask = np.asarray(positive, bool)
    pos[owner[pos_mask]] = sims[pos_mask]
    np.maximum.at(best_neg, owner[~pos_mask], sims[~pos_mask])
    if np.isnan(pos).any():
        raise MlrkitError("every item needs exactly one positive region")
    return pos > best_neg


def region_image(image: Any, box: Sequence[float], mode: str, fill: int = 0) -> Any:
    """The region of a PIL image: ``crop`` (the box only) or ``mask`` (same size, outside filled with ``fill``)."""
    from PIL import Image

    x, y, w, h = (float(v) for v in box)
    rect = (int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h)))
    if mode == "crop":
        return image.crop(rect)
    if mode == "mask":
        out = Image.new(image.mode, image.size, (fill,) * len(image.getbands()))
        out.paste(image.crop(rect), rect[:2])
        return out
    raise MlrkitError(f"region mode must be one of {REGION_MODES}, got {mode!r}")


@torch.no_grad()
def evaluate_referring(model: Any, items: Sequence[RefItem], load_image: Callable[[str], Any], *, mode: str = "crop",
                       fill: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """Accuracy of ``model`` on referring items (module docstring), overall and per kind."""
    if mode not in REGION_MODES:
        raise MlrkitError(f"region mode must be one of {REGION_MODES}, got {mode!r}")
    texts = sorted({it.phrase for it in items})
    where = {t: k for k, t in enumerate(texts)}
    text_emb = encode_texts(model, texts)
    owner, positive, embs = [], [], []
    pending: list[torch.Tensor] = []
    cache: dict[str, Any] = {}

    def flush() -> None:
        if pending:
            embs.append(model.encode_image(torch.stack(pending), normalize=True).float().cpu())
            pending.clear()

    for n, it in enumerate(items):
        if it.image not in cache:
            cache.clear()
            cache[it.image] = load_image(it.image)
        img = cache[it.image]
        for box in it.bbox_list:
            pending.append(model.preprocess_val(region_image(img, box, mode, fill)))
            owner.append(n)
            positive.append(box == it.ref_bbox)
            if len(pending) >= batch_size:
                flush()
    flush()
    points = referring_points(text_emb, torch.cat(embs), np.asarray(owner), np.asarray(positive),
                              np.asarray([where[it.phrase] for it in items]))
    kinds = np.asarray([it.kind for it in items])
    inv = np.asarray([1.0 / len(it.bbox_list) for it in items])  # chance of a random pick per item
    per_kind = {k: {"accuracy": float(points[kinds == k].mean()), "n": int((kinds == k).sum()),
                    "chance": float(inv[kinds == k].mean())} for k in sorted(set(kinds.tolist()))}
    chance = float(inv.mean())
    return {"accuracy": float(points.mean()), "correct": int(points.sum()), "total": len(items), "mode": mode,
            "chance": chance, "per_kind": per_kind}


# ---------------------------------------------------------------------------- caption retrieval
def _join(names: Sequence[str]) -> str:
    items = [article(n) for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def build_caption_pairs(targets: np.ndarray, class_names: Sequence[str], *, seed: int = 0,
                        kinds: Sequence[str] = KINDS) -> list[dict[str, Any]]:
    """(true caption, negated distractor) pairs per image (module docstring); images with < 2 present skip."""
    names = [display_name(n) for n in class_names]
    rng = np.random.default_rng(seed)
    pairs = []
    for i, row in enumerate(np.asarray(targets)):
        present = [int(c) for c in np.flatnonzero(row == 1)]
        absent = [int(c) for c in np.flatnonzero(row == 0)]
        if len(present) < 2:
            continue
        order = [present[int(k)] for k in rng.permutation(len(present))]
        x = order[-1]  # the present object the distractor negates
        rest = [names[c] for c in order[:-1]]
        if "affirmative" in kinds:
            pairs.append({"index": i, "kind": "affirmative",
                          "true": f"a photo of {_join([names[c] for c in order])}.",
                          "distractor": f"a photo of {_join(rest)} with no {names[x]}."})
        if "negated" in kinds and absent:
            y = absent[int(rng.integers(len(absent)))]
            pairs.append({"index": i, "kind": "negated",
                          "true": f"a photo of {_join([names[c] for c in order])} with no {names[y]}.",
                          "distractor": f"a photo of {_join([*rest, names[y]])} with no {names[x]}."})
    return pairs


def caption_points(image_emb: torch.Tensor, true_emb: torch.Tensor, distractor_emb: torch.Tensor) -> np.ndarray:
    """Per pair: is the image closer (cosine) to the true caption than to the distractor? (strict)"""
    i = F.normalize(image_emb.float(), dim=-1)
    return ((i * F.normalize(true_emb.float(), dim=-1)).sum(-1)
            > (i * F.normalize(distractor_emb.float(), dim=-1)).sum(-1)).numpy()


@torch.no_grad()
def evaluate_caption_pairs(model: Any, split: Any, class_names: Sequence[str], *, seed: int = 0,
                           limit: int | None = None) -> dict[str, Any]:
    """Caption-retrieval accuracy with negated distractors on a split's images, overall and per kind."""
    n = len(split) if limit is None else min(limit, len(split))
    pairs = build_caption_pairs(split.targets[:n], class_names, seed=seed)
    if not pairs:
        raise MlrkitError("no caption pairs: the images need at least two present classes")
    idx = sorted({p["index"] for p in pairs})
    row = {k: r for r, k in enumerate(idx)}
    img = encode_images(model, split.images, idx)
    texts = sorted({p["true"] for p in pairs} | {p["distractor"] for p in pairs})
    where = {t: k for k, t in enumerate(texts)}
    temb = encode_texts(model, texts)
    pts = caption_points(img[[row[p["index"]] for p in pairs]], temb[[where[p["true"]] for p in pairs]],
                         temb[[where[p["distractor"]] for p in pairs]])
    kinds = np.asarray([p["kind"] for p in pairs])
    return {"accuracy": float(pts.mean()), "total": len(pairs),
            "per_kind": {k: {"accuracy": float(pts[kinds == k].mean()), "n": int((kinds == k).sum())}
                         for k in sorted(set(kinds.tolist()))}}


@torch.no_grad()
def zeroshot_map(model: Any, split: Any, class_names: Sequence[str]) -> float:
    """Zero-shot mAP with the prompt "a photo of a {class}." (lower case, as mosaic-clip's training and
    :func:`mlrkit.vl.pretraining.zeroshot_map`)."""
    from mlrkit.metrics import mean_average_precision

    txt = encode_texts(model, [f"a photo of {article(display_name(c))}." for c in class_names])
    img = encode_images(model, split.images, list(range(len(split))))
    return float(mean_average_precision((img @ txt.t()).numpy(), split.targets))
