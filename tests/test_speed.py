"""Issue 20: thread policy, lean training loop, GPU-ready defaults (checked on the CPU), ``bench loop|loader|gpu``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mlrkit.config import build_config
from mlrkit.engine import devices
from mlrkit.engine import threads as tp
from mlrkit.engine.image_data import ImageBatches, auto_workers, loader_options
from mlrkit.engine.trainer import train
from mlrkit.errors import MlrkitError

QUICK = {"method": {"name": "mlp", "hidden_dim": 64}, "train": {"epochs": 3, "batch_size": 32, "lr": 1e-3},
         "data": {"name": "scene"}, "labels": {"protocol": "single-positive"}, "loss": {"name": "an"}}


def quick_cfg(out: Path, **over):
    flags = {**QUICK, "out": str(out)}
    for k, v in over.items():
        flags[k] = {**flags.get(k, {}), **v} if isinstance(v, dict) else v
    return build_config(flags=flags)


# ---------------------------------------------------------------------------- thread policy
def test_usable_cpus_is_the_smallest_limit(tmp_path, monkeypatch):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2
    limits = tp.cpu_limits({}, v2)
    assert limits["cgroup_quota"] == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert "cgroup_quota" not in tp.cpu_limits({}, v2)
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu.cfs_period_us").write_text("100000")
    assert tp.cpu_limits({}, tmp_path / "v1")["cgroup_quota"] == 1
    assert tp.usable_cpus({}, tmp_path / "v1") == 1
    assert tp.cpu_limits({"OMP_NUM_THREADS": "3"}, v2)["OMP_NUM_THREADS"] == 3
    assert "OMP_NUM_THREADS" not in tp.cpu_limits({"OMP_NUM_THREADS": "junk"}, v2)
    monkeypatch.setattr(tp.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(tp.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert tp.usable_cpus({"OMP_NUM_THREADS": "5"}, v2) == 5
    assert tp.usable_cpus({}, v2) == 8, "the affinity mask"


def test_tiny_models_single_threaded_large_ones_use_the_cpus_override_wins():
    mlp = nn.Sequential(nn.Linear(294, 256), nn.ReLU(), nn.Linear(256, 6))
    assert tp.model_flops(mlp, "features") == 294 * 256 + 256 * 6
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten())
    assert math.isinf(tp.model_flops(cnn, "features")) and math.isinf(tp.model_flops(mlp, "images"))
    limits = {"cpu_count": 16, "affinity": 8, "cgroup_quota": 4}
    tiny = tp.choose_threads(tp.model_flops(mlp, "features"), 0, limits)
    assert (tiny.threads, tiny.usable_cpus) == (1, 4) and "tiny" in tiny.reason
    big = tp.choose_threads(math.inf, 0, limits)
    assert big.threads == 4 and "usable" in big.reason
    forced = tp.choose_threads(1.0, 3, limits)
    assert forced.threads == 3 and forced.reason == "train.threads"


def test_run_json_records_the_thread_choice_and_the_caller_keeps_its_threads(tmp_path):
    before = torch.get_num_threads()
    train(quick_cfg(tmp_path / "a", train={"epochs": 1}), quiet=True)
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["threads"]["threads"] == 1 and "tiny model" in info["threads"]["reason"]
    assert info["amp"] == "off" and info["channels_last"] is False and info["compile"] is False
    assert torch.get_num_threads() == before
    train(quick_cfg(tmp_path / "b", train={"threads": 2, "epochs": 1}), quiet=True)
    info = json.loads((tmp_path / "b" / "run.json").read_text())
    assert info["threads"]["threads"] == 2 and info["threads"]["reason"] == "train.threads"
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------- lean loop
def test_inputs_are_checked_once_and_non_finite_loss_still_stops_the_run(tmp_path, monkeypatch):
    from mlrkit.losses import base

    calls = {"n": 0}
    original = base.check_inputs

    def counting(*a, **k):
        calls["n"] += 1
        return original(*a, **k)

    monkeypatch.setattr(base, "check_inputs", counting)
    train(quick_cfg(tmp_path / "ok"), quiet=True)
    assert calls["n"] == 1, "the loss contract's checks run on the first batch only"

    from mlrkit.losses.basic import AssumeNegativeLoss

    monkeypatch.setattr(AssumeNegativeLoss, "loss_matrix",
                        lambda self, logits, observed, **k: (logits * float("nan"), None))
    with pytest.raises(MlrkitError, match="loss became nan"):
        train(quick_cfg(tmp_path / "nan"), quiet=True)


def test_one_param_group_fused_optimiser_and_whole_split_tensors(tmp_path):
    from mlrkit.engine.optim import build_optimizer, param_groups

    cfg = quick_cfg(tmp_path / "x")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    groups = param_groups(model, list(model[2].parameters()), cfg.train)
    assert len(groups) == 1, "same lr and weight decay: one group, one optimizer kernel per step"
    opt = build_optimizer(groups, cfg.train)
    assert opt.defaults.get("fused") or opt.defaults.get("foreach")
    cfg2 = quick_cfg(tmp_path / "y", train={"classifier_lr_mult": 10.0, "weight_decay": 1e-4})
    assert len(param_groups(model, list(model[2].parameters()), cfg2.train)) == 4

    from mlrkit.data import load_dataset
    from mlrkit.engine.loaders import FeatureBatches

    split = load_dataset("scene").trainval
    fb = FeatureBatches(split, None, 32, shuffle=True, seed=0, device="cpu")
    b = next(iter(fb))
    assert torch.equal(b["inputs"], fb.x[b["index"]]) and fb.x.shape[0] == len(split)


def test_checkpoints_written_only_when_due_and_kept_on_an_interrupt(tmp_path, monkeypatch):
    from mlrkit.engine import trainer as tr

    writes: list[str] = []
    original_save = tr.save_checkpoint
    monkeypatch.setattr(tr, "save_checkpoint", lambda path, payload: (writes.append(Path(path).name),
                                                                      original_save(path, payload)))
    straight = train(quick_cfg(tmp_path / "s", train={"epochs": 4, "checkpoint_every_s": 3600}), quiet=True)
    assert writes == ["best.pt", "last.pt"], "a short run writes its checkpoints once, at the end"
    writes.clear()
    train(quick_cfg(tmp_path / "e", train={"epochs": 4, "checkpoint_every_s": 0}), quiet=True)
    assert writes.count("last.pt") == 4 and 1 <= writes.count("best.pt") <= 4

    original_epoch = tr.Trainer._train_epoch

    def dies_in_third_epoch(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return original_epoch(self, epoch)

    killed = tmp_path / "k"
    monkeypatch.setattr(tr.Trainer, "_train_epoch", dies_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(quick_cfg(killed, train={"epochs": 4, "checkpoint_every_s": 3600}), quiet=True)
    from mlrkit.engine.checkpoint import load_checkpoint

    assert load_checkpoint(killed / "last.pt")["epoch"] == 2, "the finished epochs survive the interrupt"
    monkeypatch.setattr(tr.Trainer, "_train_epoch", original_epoch)
    resumed = train(quick_cfg(killed, train={"epochs": 4, "checkpoint_every_s": 3600}), resume=True, quiet=True)
    assert resumed == {**straight, "observed_sha256": resumed["observed_sha256"]}
    assert resumed["test_map"] == straight["test_map"] and resumed["best_epoch"] == straight["best_epoch"]


def test_compiled_model_trains_to_the_same_result(tmp_path):
    pytest.importorskip("torch._dynamo")
    plain = train(quick_cfg(tmp_path / "p", train={"epochs": 1}), quiet=True)
    compiled = train(quick_cfg(tmp_path / "c", train={"epochs": 1, "compile": "eager"}), quiet=True)
    assert compiled["test_map"] == pytest.approx(plain["test_map"], abs=1e-6)
    assert json.loads((tmp_path / "c" / "run.json").read_text())["compile"] == "eager"


def test_features_command_imports_neither_torchvision_nor_open_clip(tmp_path):
    code = ("import sys; from mlrkit.cli.main import main; "
            f"rc = main(['train', '--dataset', 'scene', '--method', 'mlp', '--epochs', '1', '--quiet', "
            f"'--out', {str(tmp_path / 'r')!r}]); "
            "heavy = [m for m in ('torchvision', 'open_clip', 'timm') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc or bool(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-500:] + r.stderr[-2000:]
    assert "HEAVY []" in r.stdout


# ---------------------------------------------------------------------------- GPU-ready defaults
def test_auto_device_precision_and_layout_follow_the_accelerator(monkeypatch):
    assert devices.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(MlrkitError, match="not a device"):
        devices.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(MlrkitError, match="CUDA is not available"):
            devices.resolve_device("cuda")
    monkeypatch.setattr(devices, "accelerator", lambda: "cpu:0")  # a fake accelerator on the CPU
    assert devices.resolve_device("auto") == torch.device("cpu:0")
    cuda = torch.device("cuda")
    monkeypatch.setattr(devices, "bf16_supported", lambda d: True)
    assert devices.autocast_dtype(cuda, None) == torch.bfloat16, "bf16 autocast by default on CUDA"
    assert devices.autocast_dtype(cuda, False) is None
    assert devices.autocast_dtype(torch.device("cpu"), None) is None, "no autocast by default on the CPU"
    monkeypatch.setattr(devices, "bf16_supported", lambda d: False)
    assert devices.autocast_dtype(cuda, None) is None and devices.autocast_dtype(cuda, True) == torch.float16
    conv = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert devices.wants_channels_last(conv, cuda) and not devices.wants_channels_last(conv, torch.device("cpu"))
    assert not devices.wants_channels_last(nn.Linear(2, 2), cuda)


def test_loader_defaults_on_cuda_and_cpu():
    assert loader_options(None, cuda=False, usable=16) == {"num_workers": 0, "pin_memory": False}
    opts = loader_options(None, cuda=True, usable=16)
    assert opts == {"num_workers": 15, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 4}
    assert auto_workers(True, usable=64) == 16 and auto_workers(True, usable=16, local_world=2) == 7
    assert auto_workers(True, usable=1) == 0 and loader_options(2, cuda=False)["num_workers"] == 2
    with pytest.raises(ValueError, match="num_workers"):
        loader_options(-1, cuda=False)


def test_persistent_workers_give_the_same_augmented_batches_whatever_the_worker_count():
    from mlrkit.data import load_dataset
    from mlrkit.data.transforms import build_transform

    split = load_dataset("fashion-mosaic").trainval.subset(np.arange(24))
    tf = build_transform(28, (0.5,) * 3, (0.5,) * 3, train=True, randaugment=True)

    def epochs(workers: int) -> list[list[torch.Tensor]]:
        loader = ImageBatches(split, None, tf, 8, shuffle=True, seed=3, num_workers=workers)
        out = []
        for e in (0, 1, 0):
            loader.set_epoch(e)
            out.append([b["inputs"] for b in loader])
        assert loader.num_workers == workers and (loader._persistent is not None) == (workers > 0)
        return out

    one, two = epochs(1), epochs(2)
    for a, b in zip(one, two):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), "augmentation seeded per (epoch, row), not per worker"
    assert all(torch.equal(x, y) for x, y in zip(one[0], one[2])), "an epoch replays exactly (resume)"
    assert not all(torch.equal(x, y) for x, y in zip(one[0], one[1])), "epochs differ"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("speed") / "run"
    train(quick_cfg(out, train={"epochs": 1}), quiet=True)
    return out


class _Stop(Exception):
    pass


def _spy(record: list, name: str):
    def fake(*args, **kwargs):
        record.append((name, kwargs.get("device")))
        raise _Stop(name)

    return fake


@pytest.mark.parametrize("argv, target", [
    (["pseudo-label", "--dataset", "fashion-mosaic", "--vl-model", "tiny"], "mlrkit.vl.load_frozen"),
    (["extract-features", "--dataset", "fashion-mosaic", "--vl-model", "tiny"], "mlrkit.vl.load_frozen"),
    (["extract-features", "--dataset", "fashion-mosaic", "--backbone", "smallcnn"],
     "mlrkit.methods.image.frozen_features"),
    (["vl", "pretrain", "--steps", "1"], "mlrkit.vl.pretraining.pretrain_mosaic_clip"),
    (["analyze", "prompts", "--dataset", "fashion-mosaic", "--vl-model", "tiny"], "mlrkit.vl.load"),
    (["analyze", "prior", "--dataset", "fashion-mosaic", "--vl-model", "tiny", "--out", "x.png"],
     "mlrkit.vl.load_frozen"),
    (["negation", "eval", "--vl-model", "tiny", "--dataset", "fashion-mosaic", "--tasks", "zeroshot"],
     "mlrkit.vl.load"),
    (["negation", "finetune", "--vl-model", "tiny", "--dataset", "fashion-mosaic", "--captions", "{captions}",
      "--out", "x.pt"], "mlrkit.vl.load"),
    (["evaluate", "{run}"], "mlrkit.engine.inference.resolve_device"),
    (["predict", "{run}", "x.npy"], "mlrkit.engine.inference.resolve_device"),
    (["explain", "{run}", "x.png"], "mlrkit.engine.inference.resolve_device"),
])
def test_every_model_command_takes_the_accelerator_by_default(argv, target, tmp_path, monkeypatch, quick_run):
    """A fake accelerator ("cpu:0") is present: each command's model must be loaded there with no flag."""
    import importlib

    from mlrkit.cli.main import main

    captions = tmp_path / "c.jsonl"
    captions.write_text(json.dumps({"image_id": "0", "caption": "a bag", "negated_caption": "a bag, no shirt",
                                    "absent_objects": ["shirt"], "kind": "negated", "proposer": "test"}) + "\n")
    argv = [a.replace("{captions}", str(captions)).replace("{run}", str(quick_run)) for a in argv]
    monkeypatch.setattr(devices, "accelerator", lambda: "cpu:0")
    monkeypatch.chdir(tmp_path)
    record: list = []
    mod, attr = target.rsplit(".", 1)
    if not hasattr(importlib.import_module(mod), attr):
        pytest.fail(f"{target} is gone: update this test")
    if attr == "resolve_device":  # run-directory commands: record where load_run puts the model
        def spy(name):
            record.append((attr, devices.resolve_device(name)))
            raise _Stop(attr)

        monkeypatch.setattr(importlib.import_module(mod), attr, spy)
    else:
        monkeypatch.setattr(importlib.import_module(mod), attr, _spy(record, attr))
    with pytest.raises(_Stop):
        main(argv)
    assert record and torch.device(record[0][1]) == torch.device("cpu:0"), record


# ---------------------------------------------------------------------------- benchmarks and the demo
def test_bench_loop_compares_fit_with_a_bare_loop():
    from mlrkit.bench.speed import bench_loop, format_loop

    rows = bench_loop(("mlp",), repeats=1, epochs=2)
    r = rows[0]
    assert (r["dataset"], r["method"], r["epochs"], r["threads"]) == ("scene", "mlp", 2, 1)
    assert r["mlrkit_s"] > 0 and r["bare_s"] > 0 and r["ratio"] == pytest.approx(r["mlrkit_s"] / r["bare_s"])
    assert "| mlp on scene | 2 x 32 | 1 |" in format_loop(rows)


@pytest.mark.slow  # two subprocesses building a model each
def test_bench_loader_and_gpu_smoke_on_the_cpu():
    from mlrkit.bench.speed import bench_gpu, bench_loader, format_gpu, format_loader

    rows = bench_loader((32,), n_images=6, model="smallcnn", batch=2, steps=1, device="cpu")
    r = rows[0]
    assert r["pil_img_s"] > 0 and r["tv_cpu_img_s"] > 0 and r["step_img_s"] > 0 and r["default_workers"] == 0
    assert r["workers_needed_pil"] == pytest.approx(r["step_img_s"] / r["pil_img_s"])
    assert "| 32 |" in format_loader(rows)
    res = bench_gpu(smoke=True, methods=["finetune"], device="cpu")
    assert [(x["method"], x.get("amp")) for x in res["rows"]] == [("finetune", "off"), ("finetune", "bf16")]
    assert all("error" not in x for x in res["rows"]), res["rows"]
    assert 0.0 <= res["data_wait"]["data_wait_share"] <= 1.0 and "finetune" in res["bf16_speedup"]
    assert "SMOKE RUN" in format_gpu(res), "a CPU smoke run must never read as a GPU figure"


# ---------------------------------------------------------------------------- the demo's time (issue 20 part 2)
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_lean_step_is_bit_identical_to_optimizer_step(cls, monkeypatch):
    """LeanStep calls the fused kernel directly: parameters and optimizer state (hence last.pt) must be
    exactly those of optimizer.step(), with two groups, weight decay and a per-step schedule."""
    from mlrkit.engine.optim import LeanStep

    def run(lean: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
        opt = cls([{"params": model[0].parameters(), "weight_decay": 1e-2},
                   {"params": model[2].parameters(), "lr": 3e-3, "weight_decay": 0.0}], lr=1e-3, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
        stepper = LeanStep(opt)
        x = torch.randn(40, 6)
        for i in range(8):
            (stepper.zero_grad if lean else lambda: opt.zero_grad(set_to_none=True))()
            model(x[i * 5:(i + 1) * 5]).square().mean().backward()
            stepper.step() if lean else opt.step()
            sched.step()
        return model, opt, calls["n"]

    calls = {"n": 0}
    plain_step = cls.step

    def counted(self, *a, **k):
        calls["n"] += 1
        return plain_step(self, *a, **k)

    monkeypatch.setattr(cls, "step", counted)
    m_ref, o_ref, n_ref = run(False)
    calls["n"] = 0
    m_new, o_new, n_new = run(True)
    assert n_ref == 8 and n_new == 1, "only the first step (state creation) goes through optimizer.step()"
    for a, b in zip(m_ref.parameters(), m_new.parameters()):
        assert torch.equal(a, b)
    s_ref, s_new = o_ref.state_dict(), o_new.state_dict()
    assert s_ref["param_groups"] == s_new["param_groups"]
    for k, st in s_ref["state"].items():
        for name, t in st.items():
            assert torch.equal(t, s_new["state"][k][name]), (k, name)


def test_lean_step_falls_back_to_optimizer_step_when_not_plain():
    from mlrkit.engine.optim import LeanStep

    p = nn.Parameter(torch.ones(3))
    assert not LeanStep(torch.optim.Adam([p], amsgrad=True, fused=True)).lean
    assert not LeanStep(torch.optim.Adam([p], foreach=True)).lean
    assert not LeanStep(torch.optim.SGD([p], lr=0.1)).lean
    opt = torch.optim.Adam([p], fused=True)
    lean = LeanStep(opt)
    assert lean.lean
    seen = []
    opt.register_step_post_hook(lambda *a: seen.append(1))
    for _ in range(2):
        p.grad = torch.ones(3)
        lean.step()
    assert seen == [1, 1], "a registered hook must still run: the step goes through optimizer.step()"


@pytest.mark.parametrize("shard,drop_last", [((0, 1), False), ((1, 2), False), ((0, 3), True)])
def test_feature_batches_gathered_once_per_epoch_are_the_samplers_batches(shard, drop_last, monkeypatch):
    from mlrkit.data import load_dataset
    from mlrkit.engine import loaders

    split = load_dataset("emotions").trainval
    obs = np.where(split.targets > 0, 1, 0).astype(np.int8)
    fb = loaders.FeatureBatches(split, obs, 32, shuffle=True, seed=3, drop_last=drop_last, shard=shard)
    fb.set_epoch(2)
    expected = list(fb.sampler.shards())
    for limit in (loaders.GATHER_EPOCH_MAX_BYTES, 0):  # gathered per epoch, and per batch for large splits
        monkeypatch.setattr(loaders, "GATHER_EPOCH_MAX_BYTES", limit)
        got = list(fb)
        assert len(got) == len(expected)
        for b, (rows, n_global) in zip(got, expected):
            assert torch.equal(b["index"], rows) and b["n_global"] == n_global
            assert torch.equal(b["inputs"], fb.x[rows]) and torch.equal(b["observed"], fb.observed[rows])
            assert torch.equal(b["targets"], fb.targets[rows])


PROC_STAT = """cpu  {a} 0 0 {b} 0 0 0 0 0 0
cpu0 {u0} 0 {s0} {i0} {w0} 0 0 0 0 0
cpu1 {u1} 0 0 {i1} 0 0 0 0 0 0
intr 1 2 3
"""


def test_busy_cpus_counts_the_usable_cpus_other_work_keeps_busy(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    frames = iter([dict(u0=100, s0=0, i0=100, w0=0, u1=50, i1=50),
                   # cpu0: 90 busy of 100 ticks; cpu1: 10 busy (iowait counts as idle) of 100 ticks
                   dict(u0=180, s0=10, i0=110, w0=0, u1=60, i1=140)])

    def write_next(*_):
        stat.write_text(PROC_STAT.format(a=0, b=0, **next(frames)))

    write_next()
    monkeypatch.setattr("time.sleep", write_next)
    assert tp.busy_cpus(0.2, stat=stat, cpus={0, 1}) == pytest.approx(0.9 + 0.1)
    assert tp.busy_cpus(0.2, stat=tmp_path / "missing", cpus={0}) == 0.0
    monkeypatch.undo()
    assert 0.0 <= tp.busy_cpus(0.05) <= len(os_affinity())


def os_affinity():
    import os

    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)


def test_demo_jobs_one_per_usable_cpu_plus_one_per_busy_cpu():
    from mlrkit.engine.demo import default_jobs

    assert default_jobs(46, usable=2, busy=0.1)[0] == 2
    jobs, why = default_jobs(46, usable=2, busy=1.0)
    assert jobs == 3 and "busy" in why
    assert default_jobs(46, usable=2, busy=7.0)[0] == 4, "at most twice the usable CPUs"
    assert default_jobs(2, usable=2, busy=1.0)[0] == 2, "never more workers than runs"
    assert default_jobs(46, usable=1, busy=0.0)[0] == 1


def test_burn_cpu_is_pinned_and_killed():
    from mlrkit.bench.demo_time import burn_cpu, busy_core

    if len(os_affinity()) < 2:
        pytest.skip("needs two usable CPUs")
    cpu = busy_core()
    hog = burn_cpu(cpu)
    try:
        import time

        for _ in range(50):  # the child pins itself first thing
            allowed = Path(f"/proc/{hog.pid}/status").read_text().split("Cpus_allowed_list:")[1].split()[0]
            if allowed == str(cpu):
                break
            time.sleep(0.05)
        assert allowed == str(cpu) and hog.poll() is None
    finally:
        hog.kill()
        hog.wait()
    assert hog.returncode is not None


@pytest.mark.slow  # a forkserver (imports torch) and a 3-run demo
def test_demo_in_forkserver_workers_equals_the_runs_in_process(tmp_path):
    from mlrkit.engine.demo import _demo_run, run_demo, start_method

    rows = run_demo(tmp_path / "pool", datasets=["emotions"], losses=["an", "role"], jobs=2)
    assert start_method() in ("forkserver", "spawn")
    for r in rows:
        here = _demo_run(str(tmp_path / f"here-{r['loss']}"), "emotions", r["labels"], r["loss"], 0)
        assert here == r["test_map"], r
    assert (tmp_path / "pool" / "runs" / "emotions-single-positive-role-s0" / "best.pt").is_file()


@pytest.mark.slow  # four fresh `mlrkit demo` processes (2-run smoke demo), one of them next to a busy core
def test_bench_demo_times_idle_and_busy_alternately(tmp_path):
    from mlrkit.bench.demo_time import bench_demo, format_demo

    if len(os_affinity()) < 2:
        pytest.skip("needs two usable CPUs")
    res = bench_demo(repeats=1, busy=True, smoke=True, workdir=tmp_path)
    assert [(r["condition"], r["repeat"]) for r in res["runs"]] == [("idle", 0), ("busy", 0)]
    assert all(r["wall_s"] > 0 and r["jobs"] >= 1 for r in res["runs"])
    assert res["busy_over_idle"] == pytest.approx(res["busy_median_s"] / res["idle_median_s"])
    text = format_demo(res)
    assert text.startswith("SMOKE RUN") and "busy median" in text
    assert not list(tmp_path.iterdir()), "the timed demos' directories are removed"


def test_cheap_epoch_seed_gives_the_cpu_generator_torch_manual_seeds_state():
    from mlrkit.utils import seed_torch_for

    torch.manual_seed(123)
    want = torch.rand(5)
    torch.manual_seed(7)  # something else in between
    seed_torch_for(123, torch.device("cpu"))
    assert torch.equal(torch.rand(5), want)


def test_bench_demo_cli_passes_its_flags_and_writes_the_json(tmp_path, monkeypatch, capsys):
    from mlrkit.bench import demo_time
    from mlrkit.cli.main import main

    seen = {}

    def fake(repeats, busy, smoke):
        seen.update(repeats=repeats, busy=busy, smoke=smoke)
        runs = [{"condition": c, "repeat": 0, "wall_s": w, "load_1min_before": 0.1, "jobs": j, "jobs_reason": "x"}
                for c, w, j in (("idle", 10.0, 2), ("busy", 12.0, 3))]
        return {"smoke": smoke, "runs": runs, "idle_median_s": 10.0, "busy_median_s": 12.0, "busy_over_idle": 1.2,
                "busy_cpu": 1}

    monkeypatch.setattr(demo_time, "bench_demo", fake)
    out = tmp_path / "b.json"
    assert main(["bench", "demo", "--busy", "--smoke", "--repeats", "2", "--json", str(out)]) == 0
    assert seen == {"repeats": 2, "busy": True, "smoke": True}
    assert json.loads(out.read_text())["busy_over_idle"] == 1.2
    text = capsys.readouterr().out
    assert "SMOKE RUN" in text and "1.20x idle" in text and "| busy | 1 | 12.0 | 3 |" in text


def test_lean_step_falls_back_when_the_private_kernel_refuses_its_arguments():
    """Another torch whose ``_fused_adam_`` takes other arguments: the step is torch's own, exactly once."""
    from mlrkit.engine.optim import LeanStep

    def run(broken: bool):
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(4))
        opt = torch.optim.Adam([p], lr=1e-2, fused=True)
        lean = LeanStep(opt)
        if broken:
            def refuse(*a, **k):
                raise TypeError("unexpected keyword argument")
            lean.kernels = [refuse]
        for _ in range(3):
            lean.zero_grad()
            (p * torch.arange(4.0)).sum().backward()
            lean.step()
        return p.detach().clone(), opt.state[p]["step"].item(), lean.lean

    ref, broken = run(False), run(True)
    assert torch.equal(ref[0], broken[0]) and ref[1] == broken[1] == 3 and ref[2] and not broken[2]
