"""Load a finished run and use it: evaluate on its dataset, predict on new inputs."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrkit.config import RunConfig
from mlrkit.data import Split
from mlrkit.engine.build import BuiltRun, build_for_task, resolve_device, score_split
from mlrkit.engine.checkpoint import load_checkpoint, load_trainable_state
from mlrkit.engine.rundir import config_diff, saved_config
from mlrkit.errors import DataError, MlrkitError
from mlrkit.methods import TaskInfo
from mlrkit.metrics import MultiLabelMeter, f1_scores, hamming_loss, jaccard_index


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    built: BuiltRun
    device: torch.device
    checkpoint: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return self.built.task.class_names

    @property
    def calibration(self):
        """The run's :class:`~mlrkit.engine.calibration.Calibration` (T = 1 and 0.5 for runs without one)."""
        if getattr(self, "_calibration", None) is None:
            from mlrkit.engine.calibration import Calibration

            self._calibration = Calibration.load(self.run_dir, self.class_names)
        return self._calibration

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw model outputs: the run's calibration applied to the logits of
        its loss's link (:func:`mlrkit.engine.calibration.link_logits`; the plain logits for most losses)."""
        from mlrkit.engine.calibration import link_logits

        return self.calibration.probabilities(link_logits(self.cfg.loss.name, dict(self.cfg.loss.params), logits))

    def predict(self, inputs: Any, *, threshold: float | None = None, skip_bad_images: bool = False,
                batch_size: int = 64) -> Predictions:
        """Calibrated class probabilities and labels for new inputs.

        ``inputs``: one input or a list of them; each is a file, a folder (its images, recursively)
        or a glob pattern, a PIL image, or a raw image as a numpy array / torch tensor ([H, W, 3],
        [3, H, W] or a batch [N, ...]; uint8 or floats in [0, 1]; the run's own preprocessing is
        applied). Runs on fixed features take feature rows ([D] or [N, D]) or feature files (.npy, .npz,
        .csv); those trained on a features file that records its encoder (``mlrkit extract-features``)
        also take images, encoded as the file's rows were (:mod:`mlrkit.engine.feature_source`).
        ``threshold``: one global threshold instead of the run's per-class thresholds.
        ``skip_bad_images``: report unreadable files in ``Predictions.skipped`` instead of failing.
        """
        return predict(self, inputs, threshold=threshold, skip_bad_images=skip_bad_images, batch_size=batch_size)

    def scores(self, split: Split, batch_size: int = 256) -> np.ndarray:
        """Logits for every row; under torchrun each rank scores rows rank::world and all gather."""
        ema = self.checkpoint.get("ema")
        if ema and not getattr(self, "_ema_loaded", False):
            sd = self.built.model.state_dict()
            sd.update({k: v.to(sd[k].device) for k, v in ema["shadow"].items()})
            self.built.model.load_state_dict(sd)
            self._ema_loaded = True
        return score_split(self.built.method, self.built.model, split, None, batch_size=batch_size,
                           device=self.device, cfg=self.cfg)


def load_run(run_dir: str | Path, which: str = "best", device: str = "auto") -> LoadedRun:
    """Rebuild a run's model from ``config.yaml`` and ``best.pt`` (or ``last.pt``); no dataset needed."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MlrkitError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = saved_config(run_dir, resuming=False)
    ck = load_checkpoint(run_dir / f"{which}.pt")
    diff = config_diff(ck.get("config") or {}, cfg.to_dict(), ("out", "train.epochs"))
    if diff:
        raise MlrkitError(f"{run_dir / f'{which}.pt'} was not trained with {run_dir / 'config.yaml'} "
                          f"({'; '.join(diff[:3])}): a checkpoint of another run?")
    t = ck["task"]
    task = TaskInfo(class_names=t["class_names"], input_kind=t["input_kind"], feature_dim=t["feature_dim"],
                    image_size=t["image_size"], extras=t.get("extras", {}))
    built = build_for_task(cfg, task)
    load_trainable_state(built.model, ck["model"], run_dir / f"{which}.pt")
    from mlrkit.engine.distributed import current

    dev = resolve_device(device)
    if dev.type == "cuda" and current().enabled:
        dev = torch.device("cuda", current().local_rank)
    built.model.to(dev)
    return LoadedRun(run_dir, cfg, built, dev, ck)


def evaluate_run(run_dir: str | Path, splits: tuple[str, ...] = ("val", "test"), threshold: float | None = None,
                 k: int = 3) -> dict[str, dict]:
    """Metrics of the best checkpoint on the run's own validation and test splits, over their known
    entries: the :func:`mlrkit.metrics.summary` metrics plus ``per_class`` (AP, AUROC, known
    positives/negatives per class) and ``unscored_classes``.

    mAP, AUROC and P@k/R@k rank the raw scores; CP/CR/CF1/OP/OR/OF1, Hamming loss and Jaccard
    threshold the calibrated probabilities at the run's per-class thresholds (``calibration.json``),
    or at ``threshold`` for every class if given; ``ece`` is that of the calibrated probabilities.
    """
    return evaluate_run_report(run_dir, splits, threshold, k, grouped=False)[0]


def evaluate_grouped(run_dir: str | Path) -> dict[str, Any] | None:
    """Grouped test mAP of a finished run's best checkpoint (None when the run's method/dataset has it off)."""
    return evaluate_run_report(run_dir, (), grouped=True)[1]


def evaluate_run_report(run_dir: str | Path, splits: tuple[str, ...] = ("val", "test"), threshold: float | None = None,
                        k: int = 3, *, grouped: bool = True,
                        plots: str | Path | None = None,
                        device: str = "auto") -> tuple[dict[str, dict], dict | None]:
    """:func:`evaluate_run`'s metrics and the grouped test mAP (:mod:`mlrkit.engine.reports`; None when
    off), from one load of the run (on ``device``) and its data. ``plots``: a directory for the test
    split's PR/ROC curves per class and reliability diagram (:mod:`mlrkit.analysis.curves`)."""
    from mlrkit.engine.reports import grouped_report
    from mlrkit.engine.run_data import prepare_run_data
    from mlrkit.metrics import expected_calibration_error

    run = load_run(run_dir, device=device)
    if not splits and (not grouped or run.built.method.report_groups() == 0):
        return {}, None
    data = prepare_run_data(run.cfg)
    cal = run.calibration
    th = cal.threshold_array(threshold)
    # what the Trainer does before scoring: e.g. frozen-backbone features of a linear probe on images
    run.built.method.prepare_data(data, device=run.device, progress=False)
    out: dict[str, dict] = {}
    test_scores = None
    for name in splits:
        if name == "val":
            split, targets, mask = data.val, data.val_targets, data.val_mask
        elif name == "test":
            split, targets, mask = data.test, data.test.targets, data.test.known
        else:
            raise MlrkitError(f"unknown split {name!r} (val or test)")
        if run.built.task.input_kind == "features" and split.features is None:  # e.g. zeroshot, vl:/backbone probes
            run.built.method.attach_features({name: split}, device=run.device, progress=False)
        scores = run.scores(split)
        if name == "test":
            test_scores = scores
        meter = MultiLabelMeter(data.class_names, 0.5, k)
        meter.update(_metric_scores(run, scores), targets, mask)
        m = meter.compute()
        probs = run.calibrated(scores)
        m.update(f1_scores(probs, targets, th, mask))
        m["ece"] = expected_calibration_error(probs, targets, mask, cal.n_bins)
        m["hamming_loss"] = hamming_loss(probs, targets, th, mask)
        m["jaccard"] = jaccard_index(probs, targets, th, mask)
        m["known_fraction"] = 1.0 if mask is None else float(np.asarray(mask).mean())
        out[name] = m
        if plots is not None and name == "test":
            from mlrkit.analysis.curves import write_curve_plots

            out[name]["plots"] = [str(p) for p in write_curve_plots(probs, targets, mask, data.class_names, plots)]
    report = None
    if grouped:
        report = grouped_report(run.built.method, data,
                                (lambda: test_scores) if test_scores is not None else (lambda: run.scores(data.test)))
    return out, report


def read_feature_inputs(paths: list[str | Path], dim: int) -> tuple[np.ndarray, list[str]]:
    """Feature rows from .npy ([N, D] or [D]), .npz (X, X_test or the only array) or .csv (one row each)."""
    import zipfile

    rows, ids = [], []
    for p in map(Path, paths):
        if p.is_dir():
            raise DataError(f"input {p} is a directory; give feature files (.npy, .npz, .csv)")
        if not p.is_file():
            raise DataError(f"input not found: {p}")
        if p.suffix not in (".npy", ".npz", ".csv"):
            raise DataError(f"{p}: unsupported input type {p.suffix!r} for a features model (.npy, .npz, .csv)")
        try:
            x = _read_feature_file(p)
            x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        except DataError:
            raise
        except (ValueError, TypeError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{p}: not a readable numeric feature file ({str(e).splitlines()[0][:200]})") from None
        if x.ndim != 2 or x.shape[1] != dim:
            raise DataError(f"{p}: features must be [N, {dim}], got {x.shape}")
        if not np.isfinite(x).all():
            r = int(np.argwhere(~np.isfinite(x))[0][0])
            raise DataError(f"{p}: row {r} contains NaN/inf")
        rows.append(x)
        ids += [f"{p.name}#{i}" for i in range(len(x))] if len(x) > 1 else [p.name]
    return np.concatenate(rows), ids


def _read_feature_file(p: Path) -> np.ndarray:
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            key = next((k for k in ("X", "X_test", "features") if k in z.files), None)
            if key is None and len(z.files) == 1:
                key = z.files[0]
            if key is None:
                raise DataError(f"{p}: expected an array named X, X_test or features, found {z.files}")
            return z[key]
    return np.loadtxt(p, delimiter=",", ndmin=2, dtype=np.float64)




IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def expand_inputs(inputs: Sequence[str | Path], *, images: bool = True) -> list[Path]:
    """Files from files, folders (recursively: files with an image extension, sorted) and glob patterns."""
    out: list[Path] = []
    for item in inputs:
        s = str(item)
        p = Path(s).expanduser()
        if p.is_dir():
            if not images:
                raise DataError(f"{p} is a directory; give feature files (.npy, .npz, .csv): this run takes features")
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"{p}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below")
            out += found
        elif not p.exists() and any(ch in s for ch in "*?["):
            found = sorted(Path(h) for h in glob.glob(os.path.expanduser(s), recursive=True) if Path(h).is_file())
            if not found:
                raise DataError(f"{s}: the pattern matches no file")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"input not found: {p}")
    return out


@dataclass
class Predictions:
    """Calibrated probabilities [N, C] and the labels above each class's threshold, for N inputs."""

    ids: list[str]
    probs: np.ndarray
    labels: np.ndarray  # bool [N, C]
    class_names: list[str]
    thresholds: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, why) of unreadable inputs

    def __len__(self) -> int:
        return len(self.ids)

    def records(self) -> list[dict[str, Any]]:
        """One dict per input: ``{"input", "scores": {class: p}, "labels": [classes]}``."""
        names = self.class_names
        return [{"input": i, "scores": {n: float(p) for n, p in zip(names, row)},
                 "labels": [n for n, on in zip(names, lab) if on]}
                for i, row, lab in zip(self.ids, self.probs, self.labels)]


def _is_image_like(x: Any) -> bool:
    return hasattr(x, "convert") and hasattr(x, "size")  # a PIL image


def _array_to_pils(a: np.ndarray) -> list:
    """Raw images as arrays: [H, W], [H, W, 3], [3, H, W] or a batch of those; uint8 or floats in [0, 1]."""
    from PIL import Image

    a = np.asarray(a)
    if a.ndim == 4 or (a.ndim == 3 and a.shape[0] not in (1, 3) and a.shape[-1] not in (1, 3)):
        return [p for x in a for p in _array_to_pils(x)]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
            raise DataError(f"an image array must be uint8 or floats in [0, 1] (raw pixels, not preprocessed); "
                            f"got {a.dtype} in [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]")
        a = np.round(a * 255).astype(np.uint8)
    if a.ndim not in (2, 3):
        raise DataError(f"cannot read an image from an array of shape {a.shape}")
    return [Image.fromarray(a).convert("RGB")]


def predict(run: LoadedRun, inputs: Any, *, threshold: float | None = None, skip_bad_images: bool = False,
            batch_size: int = 64) -> Predictions:
    """Calibrated predictions for ``inputs`` (see :meth:`LoadedRun.predict`)."""
    task = run.built.task
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    source = task.extras.get("feature_source")  # a features file that records its encoder (extract-features)
    takes_images = task.input_kind == "images" or bool(task.extras.get("feature_encoder"))
    if not takes_images:
        kinds = [_input_kind(x) for x in items]
        if "images" in kinds:
            if source is None:
                raise _no_encoder_error(run, items[kinds.index("images")])
            if "features" in kinds:
                raise DataError("give images or feature rows in one call, not both (this run takes either)")
            takes_images = True
    skipped: list[tuple[str, str]] = []
    if takes_images:
        split, skipped = _image_split(items, task.num_classes, skip_bad_images)
        if source is not None:
            from mlrkit.engine.feature_source import extract

            extract(source, {"predict": split}, device=run.device, progress=False, batch_size=batch_size,
                    cache_dir=_cache_dir(run.cfg))
        elif task.input_kind == "features":
            run.built.method.attach_features({"predict": split}, device=run.device, progress=False)
    else:
        split = _feature_split(items, task.num_classes, int(task.feature_dim or 0))
    logits = run.scores(split, batch_size=batch_size)
    cal = run.calibration
    probs = run.calibrated(logits)
    return Predictions(ids=list(split.ids), probs=probs, labels=cal.decide(probs, threshold),
                       class_names=list(run.class_names), thresholds=cal.threshold_array(threshold), skipped=skipped)


FEATURE_SUFFIXES = (".npy", ".npz", ".csv")


def _input_kind(x: Any) -> str:
    """``images`` or ``features``: what an input of a run on fixed features is (arrays of 1 or 2 dimensions
    are feature rows, of 3 or 4 raw images; files by their extension; folders hold images)."""
    if _is_image_like(x):
        return "images"
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        return "images" if x.ndim >= 3 else "features"
    if isinstance(x, (str, Path)):
        p = Path(str(x)).expanduser()
        if p.is_dir():
            return "images"
        if not p.exists() and any(ch in str(x) for ch in "*?["):
            found = glob.glob(os.path.expanduser(str(x)), recursive=True)
            return "images" if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in found) else "features"
        return "images" if p.suffix.lower() in IMAGE_EXTENSIONS else "features"
    return "features"  # reported by _feature_split


def _no_encoder_error(run: LoadedRun, item: Any) -> DataError:
    """Images given to a run on features that no recorded encoder made: say why and what to do."""
    dim = run.built.task.feature_dim
    if isinstance(item, (str, Path)):
        what = f"{item} is a directory" if Path(item).is_dir() else f"{item} is an image"
    else:
        what = f"a {type(item).__name__} is an image"
    head = f"{what}; give feature files (.npy, .npz, .csv) or arrays [N, {dim}]: run {run.run_dir} "
    name = run.cfg.data.name
    if name.startswith("features:"):
        return DataError(
            head + f"cannot predict from images: it was trained on {name[len('features:'):]}, and its checkpoint holds "
            "no record of how those features were made (the file has no feature_source: written by an older mlrkit "
            "or another tool, or the run predates such records), so new images cannot be encoded the same way. To "
            "predict from images, re-make the file with `mlrkit extract-features --dataset DATASET --vl-model SPEC "
            "(or --backbone NAME) --out FILE.npz` (which records its encoder), train on features:FILE.npz again and "
            "predict with that run")
    return DataError(head + f"was trained on the precomputed features of dataset {name!r}, made by no encoder "
                     "mlrkit has, so it cannot predict from images")


def _cache_dir(cfg: RunConfig) -> str | None:
    """The run's ``features.cache_dir`` (None: the default FeatureStore) when its method owns that section."""
    from mlrkit.errors import ConfigError

    try:
        return cfg.section("features").cache_dir
    except ConfigError:  # a method without the section
        return None


def _image_split(items: list, num_classes: int, skip_bad_images: bool) -> tuple[Split, list[tuple[str, str]]]:
    """A Split of the images among ``items`` (paths, folders, globs, PIL images, arrays, tensors) and the
    unreadable files skipped (an error unless ``skip_bad_images``)."""
    from mlrkit.data import ImageList, PathImageSource

    entries: list = []
    ids: list[str] = []
    for k, x in enumerate(items):
        if isinstance(x, (str, Path)):
            for p in expand_inputs([x]):
                entries.append(p)
                ids.append(str(p))
        elif _is_image_like(x):
            entries.append(x)
            ids.append(f"image#{k}")
        elif torch.is_tensor(x) or isinstance(x, np.ndarray):
            arr = x.detach().cpu().numpy() if torch.is_tensor(x) else x
            pils = _array_to_pils(arr)
            entries += pils
            ids += [f"array#{k}"] if len(pils) == 1 else [f"array#{k}[{j}]" for j in range(len(pils))]
        else:
            raise DataError(f"input #{k}: expected a path, a PIL image, an array or a tensor, got "
                            f"{type(x).__name__}")
    paths = [i for i, e in enumerate(entries) if isinstance(e, Path)]
    bad = set(paths[j] for j in PathImageSource([entries[i] for i in paths]).find_bad())
    if bad and not skip_bad_images:
        first = entries[min(bad)]
        raise DataError(f"{len(bad)} unreadable image(s), first {first}; pass --skip-bad-images "
                        "(skip_bad_images=True) to skip and report them")
    skipped = [(ids[i], "unreadable image") for i in sorted(bad)]
    keep = [i for i in range(len(entries)) if i not in bad]
    if not keep:
        raise DataError("no readable input to predict on")
    split = Split(targets=np.zeros((len(keep), num_classes), np.uint8), ids=[ids[i] for i in keep],
                  images=ImageList([entries[i] for i in keep]))
    return split, skipped


def _feature_split(items: list, num_classes: int, dim: int) -> Split:
    """A Split of the feature rows among ``items`` (feature files, arrays, tensors)."""
    rows, ids = [], []
    for k, x in enumerate(items):
        if isinstance(x, (str, Path)):
            feats, names = read_feature_inputs(expand_inputs([x], images=False), dim)
            rows.append(feats)
            ids += names
        elif torch.is_tensor(x) or isinstance(x, np.ndarray):
            a = np.atleast_2d(x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x))
            if a.ndim != 2 or a.shape[1] != dim:
                raise DataError(f"input #{k}: this run takes feature rows [N, {dim}], got {a.shape}")
            rows.append(a.astype(np.float32))
            ids += [f"array#{k}"] if len(a) == 1 else [f"array#{k}[{j}]" for j in range(len(a))]
        else:
            raise DataError(f"input #{k}: this run takes feature rows (files, arrays or tensors), got "
                            f"{type(x).__name__}")
    x = np.concatenate(rows).astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"input row {int(np.argwhere(~np.isfinite(x))[0][0])} contains NaN/inf")
    return Split(targets=np.zeros((len(x), num_classes), np.uint8), ids=ids, features=x)


def _metric_scores(run: LoadedRun, logits: np.ndarray) -> np.ndarray:
    """What the metrics read: the logits, or the calibrated probabilities of a loss with an inverse link (spa)."""
    import mlrkit.losses.zoo  # noqa: F401 - registers every loss
    from mlrkit.losses import LOSSES

    return run_probabilities(run, logits) if hasattr(LOSSES.get(run.cfg.loss.name), "probabilities") else logits


def run_probabilities(run: LoadedRun, logits: np.ndarray) -> np.ndarray:
    """The run's probabilities: its loss's inverse link where it has one (``spa``), else the sigmoid."""
    from mlrkit.losses import probabilities

    return probabilities(run.cfg.loss.name, dict(run.cfg.loss.params), logits)


def predict_inputs(run: LoadedRun, inputs: list[str | Path]) -> tuple[list[str], np.ndarray]:
    """Calibrated probabilities [N, C] for input files (kept for callers of the earlier API)."""
    p = predict(run, inputs)
    return p.ids, p.probs
