"""``mlrkit export RUN --format torchscript|onnx``: a self-contained model for serving.

The exported model takes a **preprocessed batch** and returns **calibrated probabilities**
:math:`p = \\sigma((f(x) - b) / T)` [B, C] (the run's calibration, ``calibration.json``); for a loss
with its own inverse link (``spa``), :math:`p = \\sigma((\\mathrm{link}(f(x)) - b) / T)`, the link
clamped as :func:`mlrkit.engine.calibration.link_logits` does, i.e. what ``predict`` computes:

* runs on images (``finetune``, ``cam``, ``vlpl``, prompt methods, ``scpnet``, ...): a batch
  [B, 3, S, S] resized to the run's ``image_size`` and normalised with the model's mean/std
  (both recorded in ``export.json``);
* linear probes on a frozen encoder (``linear``/``mlp`` with ``model.name`` a backbone or
  ``vl:<spec>``, ``zeroshot``) and runs on a features file that records its encoder
  (``mlrkit extract-features --out``; :mod:`mlrkit.engine.feature_source`): the same image batch,
  the encoder (and the file's L2 normalisation, if any) included in the file;
* runs on other fixed features (built-in feature sets, files without that record): a batch [B, D]
  of raw features (the standardisation is inside the model).

``export.json`` next to the file holds the class names, the per-class thresholds, the input
shape, normalisation and the largest absolute difference to mlrkit's own prediction path on a
check batch (the export fails above ``TOLERANCE[format]``: 1e-5 for TorchScript, which runs
PyTorch's own kernels; 1e-4 for ONNX Runtime, whose CPU kernels differ by instruction set: the
ResNet-18 run of ``tests/test_photos_e2e.py``, temperature 0.028, differs by 9e-7 on this project's
machine and by 3.7e-5 on the CI machine's CPU, the temperature multiplying float32 rounding 36x).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.errors import ConfigError, MlrkitError

TOLERANCE = {"torchscript": 1e-5, "onnx": 1e-4}


class ProbabilityModel(nn.Module):
    """``sigmoid((link(head(encoder(x))) - b) / T)``: ``encoder`` is the identity for models that take their input
    as is, ``link`` for losses without an inverse link of their own (all but ``spa``)."""

    def __init__(self, model: nn.Module, calibration, encoder: nn.Module | None = None,
                 link: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.model = model
        self.link = link if link is not None else nn.Identity()
        self.register_buffer("inv_temperature", torch.tensor(1.0 / float(calibration.temperature)))
        self.register_buffer("bias", torch.tensor(float(calibration.bias)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid((self.link(self.model(self.encoder(x)).float()) - self.bias) * self.inv_temperature)


class LossLink(nn.Module):
    """A loss's own inverse link as the logits calibration works on: ``clamp(loss.link(z), ±LINK_BOUND)``
    (:func:`mlrkit.engine.calibration.link_logits`, here in float32)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        from mlrkit.engine.calibration import LINK_BOUND

        self.loss, self.bound = loss, LINK_BOUND

    def forward(self, z: Tensor) -> Tensor:
        return self.loss.link(z).clamp(-self.bound, self.bound)


def run_link(cfg) -> LossLink | None:
    """The run's loss's inverse link (``spa``), or None for the sigmoid of the logits."""
    import mlrkit.losses.zoo  # noqa: F401 - registers every loss
    from mlrkit.losses import LOSSES, build

    if not hasattr(LOSSES.get(cfg.loss.name), "link"):
        return None
    return LossLink(build(cfg.loss.name, **dict(cfg.loss.params)))


def serving_model(run) -> tuple[ProbabilityModel, dict[str, Any]]:
    """The exportable module of a loaded run and what its input is (``export.json``'s ``input``)."""
    from mlrkit.engine import feature_source

    task = run.built.task
    method = run.built.method
    cfg = run.cfg
    model = run.built.model.eval()
    cal = run.calibration
    link = run_link(cfg)
    if task.input_kind == "images":
        tf = method.eval_transform()
        return ProbabilityModel(model, cal, link=link), _image_input(cfg, tf, task)
    enc_kind = task.extras.get("feature_encoder")
    source = task.extras.get("feature_source")  # features:FILE made by extract-features: its encoder is known
    if not enc_kind and source is None:
        return ProbabilityModel(model, cal, link=link), {"kind": "features", "shape": ["B", task.feature_dim]}
    if source is None:  # zeroshot runs trained before they recorded "vl" hold "frozen": their method says it
        source = feature_source.source_of_frozen_run(cfg, "vl" if getattr(method, "uses_vl", False) else enc_kind)
    enc, tf = feature_source.encoder_module(source, run.device)
    info = _image_input(cfg, tf, task)
    info["encoder"] = feature_source.describe_source(source)
    return ProbabilityModel(model, cal, enc, link=link), info


def _image_input(cfg, tf, task) -> dict[str, Any]:
    from mlrkit.data.transforms import transform_identity

    ident = transform_identity(tf) if tf is not None else {"transform": None, "input_size": None, "mean": None}
    info: dict[str, Any] = {"kind": "images", "transform": ident["transform"]}
    if ident["mean"] is not None:
        info["mean"], info["std"] = ident["mean"], ident["std"]
    size = ident["input_size"] or [task.image_size or cfg.data.image_size] * 2
    info["shape"] = ["B", 3, *size]
    return info


def example_batch(run, info: dict[str, Any], n: int = 2) -> Tensor:
    """A check batch: the run's preprocessing of real images when it has images, else feature rows."""
    g = torch.Generator().manual_seed(0)
    if info["kind"] == "features":
        return torch.randn(n, int(info["shape"][1]), generator=g)
    return torch.randn(n, 3, int(info["shape"][2]), int(info["shape"][3]), generator=g)


def export_run(run_dir: str | Path, fmt: str = "torchscript", out: str | Path | None = None,
               inputs: Tensor | None = None) -> dict[str, Any]:
    """Write the run's serving model; returns ``export.json``'s content (module docstring)."""
    from mlrkit.engine.inference import load_run

    if fmt not in ("torchscript", "onnx"):
        raise ConfigError(f"--format must be torchscript or onnx, got {fmt!r}")
    run = load_run(run_dir, device="cpu")
    module, info = serving_model(run)
    module = module.cpu().eval()
    x = example_batch(run, info) if inputs is None else inputs
    with torch.no_grad():
        ref = module(x).numpy()
    out = Path(out) if out else Path(run_dir) / ("model.ts" if fmt == "torchscript" else "model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape checks that are constant for a fixed input size
            traced = torch.jit.trace(module, (x,), check_trace=False)
        traced.save(str(out))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(out), map_location="cpu")
        with torch.no_grad():
            got = loaded(x).numpy()
    else:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MlrkitError("--format onnx needs onnx and onnxruntime: pip install 'mlrkit[export]'") from None
        import warnings

        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks constant for a fixed input size
                torch.onnx.export(module, (x,), str(out), input_names=["inputs"], output_names=["probabilities"],
                                  dynamic_axes={"inputs": {0: "batch"}, "probabilities": {0: "batch"}}, dynamo=False)
        except Exception as e:  # noqa: BLE001 - the exporter raises many types
            raise MlrkitError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                              "--format torchscript covers every model") from None
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"inputs": x.numpy()})[0]
    diff = float(np.abs(got - ref).max()) if ref.size else 0.0
    if diff > TOLERANCE[fmt]:
        raise MlrkitError(f"the exported {fmt} model differs from mlrkit's by {diff:.3g} (> {TOLERANCE[fmt]}) on a "
                          f"check batch; not written as valid ({out} left for inspection)")
    meta = {"format": fmt, "file": out.name, "run": str(Path(run_dir).resolve()), "input": info,
            "output": "probabilities [B, C] = sigmoid((" + ("clamp(link(logits), +-27.63)" if run_link(run.cfg)
                                                          else "logits") + " - bias) / temperature)",
            "loss_link": run.cfg.loss.name if run_link(run.cfg) else None,
            "temperature": run.calibration.temperature, "bias": run.calibration.bias,
            "class_names": list(run.class_names),
            "thresholds": dict(zip(run.class_names, map(float, run.calibration.threshold_array()))),
            "max_abs_diff_vs_mlrkit": diff}
    (out.parent / (out.stem + ".json")).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
