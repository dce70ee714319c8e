"""The built-in mosaic-clip: compact checkpoint format, and (once shipped) that it knows its classes."""

from __future__ import annotations

import json

import pytest
import torch

from mlrkit.vl import builtin_dir, load, save_vl_checkpoint
from mlrkit.vl.backends import tiny_config
from mlrkit.vl.pretraining import build_clip, caption_for, join_names


def test_captions_name_every_present_class_once():
    import numpy as np

    names = ["T-shirt/top", "Trouser", "Bag", "Ankle boot"]
    rng = np.random.default_rng(0)
    cap = caption_for(np.array([1, 0, 1, 1]), names, rng)
    for n in ("t-shirt/top", "bag", "an ankle boot"):
        assert n in cap
    assert "trouser" not in cap
    assert join_names(["bag"]) == "a bag" and join_names(["bag", "coat"]) == "a bag and a coat"


def test_sparse_token_table_round_trip_is_exact(tmp_path):
    cfg = tiny_config("vit")
    model = build_clip(cfg, 3)
    with torch.no_grad():
        model.token_embedding.weight[[5, 100, 2000]] += 1.0
        model.visual.proj += 0.1
    save_vl_checkpoint(model, tmp_path / "sparse.pt", cfg, sparse_token_init_seed=3)
    save_vl_checkpoint(model, tmp_path / "dense.pt", cfg)
    meta = json.loads((tmp_path / "sparse.json").read_text())["metadata"]["sparse_token_embedding"]
    assert meta == {"init_seed": 3, "stored_rows": 3}
    assert (tmp_path / "sparse.pt").stat().st_size < (tmp_path / "dense.pt").stat().st_size / 5
    a = load(f"openclip:custom@{tmp_path / 'sparse.pt'}")
    b = load(f"openclip:custom@{tmp_path / 'dense.pt'}")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("spec", ["mosaic-clip", "mosaic-clip-heldout"])
def test_shipped_mosaic_clip_is_small_and_knows_its_classes(spec):
    from mlrkit.data import load_dataset
    from mlrkit.metrics import mean_average_precision
    from mlrkit.vl import zeroshot_scores
    from mlrkit.vl.backends import BUILTIN_VL_WEIGHTS

    shipped = builtin_dir() / BUILTIN_VL_WEIGHTS[spec]
    assert shipped.stat().st_size < 8 * 2**20
    meta = json.loads(shipped.with_suffix(".json").read_text())["metadata"]
    assert meta["name"] == spec
    assert ("never seen" in meta["trained_on"]) == (spec == "mosaic-clip-heldout")
    model = load(spec)
    ds = load_dataset("fashion-mosaic", limit_train=1, limit_test=400)
    tf = model.transform(train=False)
    x = torch.stack([tf(ds.test.images.load(i)) for i in range(len(ds.test))])
    with torch.no_grad():
        text = model.class_text_embeddings(ds.class_names)
        scores = zeroshot_scores(model, x, text)
    zs = mean_average_precision(scores.numpy(), ds.test.targets)
    prevalence = float(ds.test.targets.mean())
    assert zs > prevalence + 0.2, (zs, prevalence)
    assert meta["zeroshot_test_map"] > prevalence + 0.2
