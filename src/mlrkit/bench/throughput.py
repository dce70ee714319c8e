"""``mlrkit bench throughput`` / ``mlrkit bench classes``: where the time and memory go.

Every case runs in a fresh subprocess (so its peak memory is its own): the method is built exactly
as ``mlrkit train`` builds it, with full-size random-weight backbones at the papers' resolutions
(speed does not depend on the weights' values), and timed on synthetic input tensors of the right
shape (timing only: no claim about quality is made from them).

* training images/s: forward + loss + backward + optimizer step (median of ``steps`` after one
  warm-up step);
* inference images/s: forward from pixels, no gradient (prompt methods include their frozen CLIP
  image encoder here, while their training step reads cached region features as ``mlrkit train``
  does);
* method overhead: the method's training step over the bare backbone's (forward + backward of the
  pooled features), for methods that train a backbone (target ≤ 1.15× for those that only add a head);
* peak memory: CUDA ``max_memory_allocated`` on a GPU, else the process's peak resident set size.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

import torch

#: method -> (config flags, loss, image size, kind); the papers' backbones and resolutions
CASES: dict[str, dict[str, Any]] = {
    "finetune": {"flags": {"method": {"name": "finetune"}, "model": {"name": "resnet50"}}, "loss": "an",
                 "size": 448, "kind": "backbone", "paper": "Cole et al.: ResNet-50, 448 px"},
    "cam": {"flags": {"method": {"name": "cam"}, "model": {"name": "resnet50"}, "boostlu": {"train": True,
                                                                                          "infer": True}},
            "loss": "ll_r", "size": 448, "kind": "backbone", "paper": "BoostLU: ResNet-50, 448 px"},
    "vlpl": {"flags": {"method": {"name": "vlpl"}, "model": {"name": "resnet50"}}, "loss": "vlpl", "size": 448,
             "kind": "backbone", "paper": "VLPL: ResNet-50, 448 px (pseudo-labels computed once, not timed)"},
    "dualcoop": {"flags": {"method": {"name": "dualcoop"}, "vl": {"model": "openclip:RN101"}}, "loss": "asl",
                 "size": 448, "kind": "region", "paper": "DualCoOp: CLIP RN101, 448 px"},
    "positivecoop": {"flags": {"method": {"name": "positivecoop"}, "vl": {"model": "openclip:RN101"}},
                     "loss": "asl", "size": 448, "kind": "region", "paper": "PositiveCoOp: CLIP RN101, 448 px"},
    "negativecoop": {"flags": {"method": {"name": "negativecoop"}, "vl": {"model": "openclip:RN101"}},
                     "loss": "asl", "size": 448, "kind": "region", "paper": "NegativeCoOp: CLIP RN101, 448 px"},
    "baseline": {"flags": {"method": {"name": "baseline"}, "vl": {"model": "openclip:RN101"}}, "loss": "asl",
                 "size": 448, "kind": "region", "paper": "vision-only baseline: CLIP RN101, 448 px"},
    "scpnet": {"flags": {"method": {"name": "scpnet"}, "vl": {"model": "openclip:RN50"}}, "loss": "splc",
               "size": 224, "kind": "scpnet", "paper": "SCPNet: CLIP RN50, 224 px"},
}


def _min_times(fns: dict[str, Any], steps: int, warmup: bool = True) -> dict[str, float]:
    """Fastest of ``steps`` timed calls of each function, the functions alternating (a shared machine
    slows both sides alike; the minimum is the least disturbed run). One warm-up call each unless
    ``warmup`` is false (for steps of many minutes, where first-call costs are negligible)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    if warmup:
        for fn in fns.values():
            fn()
    sync()
    best = {k: float("inf") for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(name: str, classes: int = 80, batch: int = 2, steps: int = 2, device: str = "auto",
             train_only: bool = False, warmup: bool = True, text_chunk: int | None = None,
             small: dict[str, Any] | None = None, amp: str | None = None) -> dict[str, Any]:
    """Time one method in this process (call through :func:`bench_throughput` for clean memory).
    ``text_chunk``: class prompts per checkpointed text pass of the prompt methods and SCPNet (None:
    the method's default, 0: one pass). ``small`` swaps in small models for tests:
    ``{"backbone": ..., "vl_model": ..., "image_size": ...}`` (the figures are then not the papers').
    ``amp``: ``"bf16"`` or ``"fp16"`` autocast around the training step's forward and loss (fp32 weights),
    as ``train.amp`` does in ``mlrkit train``; None = fp32."""
    import warnings

    from mlrkit.config import build_config
    from mlrkit.engine.trainer import build_run_loss
    from mlrkit.methods.base import TaskInfo, build_method

    warnings.simplefilter("ignore")
    case = CASES[name]
    dev = torch.device("cuda" if (device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if device == "auto" else device))
    size = int((small or {}).get("image_size", case["size"]))
    flags = {**case["flags"], "data": {"image_size": size}, "loss": {"name": case["loss"]},
             "train": {"batch_size": batch}}
    if small:
        if "model" in flags and "backbone" in small:
            flags["model"] = {"name": small["backbone"]}
        if "vl" in flags and "vl_model" in small:
            flags["vl"] = {"model": small["vl_model"]}
    if text_chunk is not None and case["kind"] in ("region", "scpnet") and name != "baseline":
        section = "scpnet" if case["kind"] == "scpnet" else "method"
        flags[section] = {**flags.get(section, {}), "text_chunk": int(text_chunk)}
    cfg = build_config(flags=flags)
    method = build_method(cfg)
    task = TaskInfo(class_names=[f"class number {i}" for i in range(classes)], input_kind=method.input_kind,
                    image_size=size)
    torch.manual_seed(0)
    model = method.build_model(task).to(dev)
    loss = build_run_loss(cfg).to(dev)
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(batch, classes, generator=g) < 0.1).to(torch.int8)
    observed = torch.where(targets == 1, 1, 0).to(torch.int8)
    observed[:, 0] = 1
    loss.prepare(observed)
    if hasattr(loss, "set_pseudo_labels"):
        loss.set_pseudo_labels(observed)
    pixels = torch.randn(batch, 3, size, size, generator=g).to(dev)
    index = torch.arange(batch, device=dev)
    train_inputs = pixels
    if case["kind"] == "region":
        with torch.no_grad():
            train_inputs = model.vl.encode_dense(pixels).float() if hasattr(model, "vl") else \
                method.vl_model(dev).encode_dense(pixels).float()
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in loss.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-6)
    batch_dict = {"inputs": train_inputs, "observed": observed.to(dev), "targets": targets.to(dev), "index": index}
    if case["kind"] == "scpnet":
        batch_dict["strong"] = pixels.flip(-1)

    from contextlib import nullcontext

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]

    def train_step():
        model.train()
        with torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            out = method.training_step(model, batch_dict, loss, 1).loss
        opt.zero_grad(set_to_none=True)
        out.backward()
        opt.step()

    from mlrkit.models.prompt_learner import PromptLearner

    chunk = next((m.text_chunk for m in model.modules() if isinstance(m, PromptLearner)), None)
    setting = case["paper"] if not small else f"small models for tests: {small}"
    row: dict[str, Any] = {"method": name, "classes": classes, "batch": batch, "image_size": size, "text_chunk": chunk,
                           "setting": setting, "trainable_params": sum(p.numel() for p in params),
                           "amp": amp or "off",
                           "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
                           f"{platform.machine()} CPU ({torch.get_num_threads()} threads)"}
    fns: dict[str, Any] = {"train": train_step}
    if not train_only:
        def infer():
            model.eval()
            with torch.no_grad():
                model(pixels)

        fns["infer"] = infer
        bb = getattr(model, "backbone", None)
        if case["kind"] == "backbone" and bb is not None:
            def bare():
                bb.train()
                f = bb(pixels)
                opt.zero_grad(set_to_none=True)
                f.float().mean().backward()

            fns["bare"] = bare
    t = _min_times(fns, steps, warmup=warmup)
    row["train_step_s"] = t["train"]
    row["train_img_s"] = batch / t["train"]
    if "infer" in t:
        row["infer_img_s"] = batch / t["infer"]
    if "bare" in t:
        row["bare_backbone_step_s"] = t["bare"]
        row["overhead_vs_backbone"] = t["train"] / t["bare"]
    row["peak_memory_mb"] = _peak_mb(dev)
    row["memory_kind"] = "cuda max allocated" if dev.type == "cuda" else "process peak RSS"
    return row


def bench_throughput(methods: list[str] | None = None, classes: int = 80, batch: int = 2, steps: int = 2,
                     timeout: float = 900, train_only: bool = False, warmup: bool = True,
                     text_chunk: int | None = None, small: dict[str, Any] | None = None,
                     env: dict[str, str] | None = None, amp: str | None = None) -> list[dict[str, Any]]:
    """Each case in its own subprocess (``env``: extra environment variables for it); a case that fails
    or times out is reported as such."""
    rows = []
    for name in methods or list(CASES):
        if name not in CASES:
            from mlrkit.errors import MlrkitError

            raise MlrkitError(f"unknown benchmark method {name!r}; choose from {', '.join(CASES)}")
        kwargs = {"name": name, "classes": classes, "batch": batch, "steps": steps, "train_only": train_only,
                  "warmup": warmup, "text_chunk": text_chunk, "small": small, "amp": amp}
        cmd = [sys.executable, "-m", "mlrkit.bench.throughput", json.dumps(kwargs)]
        t = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, **env} if env else None)
            if r.returncode == 0:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            else:
                lines = r.stderr.strip().splitlines()
                why = lines[-1][:200] if lines else (
                    f"killed by signal {-r.returncode}" + (" (out of memory?)" if r.returncode == -9 else "")
                    if r.returncode < 0 else f"exit status {r.returncode}, no message")
                rows.append({"method": name, "classes": classes, "error": why})
        except subprocess.TimeoutExpired:
            rows.append({"method": name, "classes": classes,
                         "error": f"not finished within {timeout:.0f} s ({time.perf_counter() - t:.0f} s)"})
        r = rows[-1]
        done = r["error"] if "error" in r else \
            f"train step {r['train_step_s']:.2f} s, peak {r['peak_memory_mb']:.0f} MB"
        print(f"[bench] {name}, {classes} classes: {done} ({time.perf_counter() - t:.0f} s)", file=sys.stderr,
              flush=True)
    return rows


def bench_classes(methods: tuple[str, ...] = ("dualcoop", "positivecoop", "negativecoop", "baseline", "scpnet"),
                  class_counts: tuple[int, ...] = (20, 80, 312, 1000, 5000), batch: int = 2, steps: int = 1,
                  timeout: float = 600, warmup: bool = True, text_chunk: int | None = None,
                  small: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Training step time and peak memory against the number of classes."""
    rows = []
    for name in methods:
        for c in class_counts:
            rows += bench_throughput([name], classes=c, batch=batch, steps=steps, timeout=timeout, train_only=True,
                                     warmup=warmup, text_chunk=text_chunk, small=small)
            if "error" in rows[-1]:
                break  # larger class counts would not finish either
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| method | setting | classes | train step s | train img/s | infer img/s | overhead vs backbone | "
            "peak MB | text chunk | trainable params |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | | {r['classes']} | {r['error']} | | | | | | |")
            continue
        ov = f"{r['overhead_vs_backbone']:.2f}x" if "overhead_vs_backbone" in r else "-"
        inf = f"{r['infer_img_s']:.2f}" if "infer_img_s" in r else "-"
        chunk = r.get("text_chunk")
        chunk_s = "-" if chunk is None else ("one pass" if chunk == 0 else str(chunk))
        lines.append(f"| {r['method']} | {r['setting']} | {r['classes']} | {r['train_step_s']:.2f} | "
                     f"{r['train_img_s']:.2f} | {inf} | {ov} | {r['peak_memory_mb']:.0f} | {chunk_s} | "
                     f"{r['trainable_params']:,} |")
    dev = next((r["device"] for r in rows if "device" in r), "?")
    alloc = next((r["host_allocator"] for r in rows if "host_allocator" in r), None)
    lines.append(f"\ndevice: {dev}; batch {rows[0].get('batch', '?')}; memory: "
                 f"{next((r['memory_kind'] for r in rows if 'memory_kind' in r), '?')}"
                 + (f"; host allocator: {alloc}" if alloc else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    from mlrkit.engine.host_memory import configure_host_allocator, host_allocator_setting

    configure_host_allocator()  # as `mlrkit` itself starts (see mlrkit.engine.host_memory)
    row = run_case(**json.loads(sys.argv[1]))
    print(json.dumps({**row, "host_allocator": host_allocator_setting()}))  # as the case ran
