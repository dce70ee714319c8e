"""Everything a run needs from the data side, built once from the config.

The observed labels are made on the whole official training set (or read from a
``mlrkit prepare`` file, checked against the dataset); the validation split is then carved
out of it (Cole et al.). Validation uses clean labels by default (Cole's ``val_set_variant =
'clean'``; on partial ground truth, the known entries of the validation rows);
``data.val_labels: observed`` selects on the observed labels instead (unknowns count
as negatives, as Cole's ``observed`` variant). The test split always uses the ground truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlrkit.config import RunConfig
from mlrkit.data import MultiLabelDataset, Split, load_dataset, split_train_val
from mlrkit.errors import ConfigError, DataError
from mlrkit.labels import ObservedLabels, observe
from mlrkit.methods.base import TaskInfo

log = logging.getLogger("mlrkit")


@dataclass
class RunData:
    dataset: MultiLabelDataset
    train: Split
    val: Split
    test: Split
    observed: ObservedLabels  # over the official training set
    observed_train: np.ndarray  # int8 [N_train, C]
    val_targets: np.ndarray  # what validation mAP is computed against
    val_mask: np.ndarray | None
    skipped_images: dict[str, list[str]]

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names


def load_run_dataset(cfg: RunConfig) -> tuple[MultiLabelDataset, dict[str, list[str]]]:
    """The configured dataset, with unreadable images dropped when ``data.skip_bad_images``."""
    ds = load_dataset(cfg.data.name, cfg.data.root, **cfg.data.options)
    if cfg.data.limit_train is not None:
        n = min(cfg.data.limit_train, len(ds.trainval))
        ds.trainval = ds.trainval.subset(np.arange(n))
    skipped: dict[str, list[str]] = {}
    if cfg.data.skip_bad_images:
        skipped = ds.drop_bad_images()
        n_skipped = sum(len(v) for v in skipped.values())
        if n_skipped:
            listing = "; ".join(f"{k}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}" for k, v in skipped.items())
            log.warning("skipped %d unreadable images (%s)", n_skipped, listing)
    return ds, skipped


def resolve_observed(cfg: RunConfig, ds: MultiLabelDataset) -> ObservedLabels:
    """Observed labels for the official training set: from a protocol string or a prepared file."""
    proto = cfg.labels.protocol
    tv = ds.trainval
    if proto.endswith(".npz") or Path(proto).is_file():
        obs = ObservedLabels.load(proto)
        obs.check_matches(tv.targets, ds.name, tv.known)
        if cfg.labels.seed is not None and cfg.labels.seed != obs.seed:
            raise ConfigError(f"labels.seed={cfg.labels.seed} but {proto} was made with seed {obs.seed}")
        return obs
    return observe(tv.targets, proto, cfg.labels_seed, ds.name, ds.class_names, known=tv.known,
                   annotations=tv.annotations)


def prepare_run_data(cfg: RunConfig) -> RunData:
    ds, skipped = load_run_dataset(cfg)
    observed = resolve_observed(cfg, ds)
    train, val = split_train_val(ds.trainval, cfg.data.val_fraction, cfg.data.split_seed)
    obs_train = observed.observed[train.index]
    if cfg.data.val_labels == "full":
        val_targets, val_mask = val.targets, val.known
        if val.is_partial:
            log.warning("the ground truth of %s is partial: validation (model selection) scores only the known "
                        "entries of its %d rows (%.1f%% of their entries); there is no clean validation set",
                        ds.name, len(val), 100 * float(val.known.mean()))
    elif cfg.data.val_labels == "observed":
        val_targets = (observed.observed[val.index] == 1).astype(np.uint8)
        val_mask = None
    else:
        raise ConfigError(f"data.val_labels must be 'full' or 'observed', got {cfg.data.val_labels!r}")
    if not ((val_targets if val_mask is None else val_targets & val_mask).sum(axis=0) > 0).any():
        raise DataError("the validation split has no (known) positive label: mAP cannot select a model")
    test = ds.test
    if test.known is not None:
        if not test.known.any():
            raise DataError(f"{ds.name}: the test split has no known entry: nothing can be scored")
        if test.is_partial:
            log.info("test metrics of %s score only the known entries (%.1f%% of the test entries)",
                     ds.name, 100 * float(test.known.mean()))
    return RunData(ds, train, val, ds.test, observed, obs_train, val_targets, val_mask, skipped)


def task_info(cfg: RunConfig, data: RunData, input_kind: str) -> TaskInfo:
    feature_dim = None
    if data.train.features is not None:
        feature_dim = int(data.train.features.shape[1])
    extras = {}
    if data.dataset.trainval.features is None and feature_dim is not None:
        extras["feature_encoder"] = "frozen"  # features made from images by a frozen encoder
    elif input_kind == "features" and "feature_source" in data.dataset.extras:
        # a features file that records its encoder (extract-features): the run can encode new images the same way
        extras["feature_source"] = dict(data.dataset.extras["feature_source"])
    return TaskInfo(
        extras=extras,
        class_names=list(data.class_names),
        input_kind=input_kind,
        feature_dim=feature_dim,
        image_size=cfg.data.image_size,
    )
