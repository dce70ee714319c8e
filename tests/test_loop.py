"""The one training loop (mlrkit.engine.loop): pre-training and negation fine-tuning run on it and get
exact resume, metrics.jsonl, safe checkpoints and the AMP switch; the Trainer and linear-init step through it.

Resume is checked against an uninterrupted run bitwise: a run interrupted mid-epoch/mid-interval keeps the
last.pt of its last metrics row, and ``--resume`` from there ends with the same weights and the same rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrkit import vl
from mlrkit.engine.loop import LoopRun, TrainLoop
from mlrkit.errors import MlrkitError


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
            for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


class Interrupt(BaseException):
    """Stands for a kill (KeyboardInterrupt-like: not an Exception)."""


def interrupt_after(monkeypatch, module, name: str, calls: int) -> None:
    """Make ``module.name`` raise :class:`Interrupt` on its call number ``calls + 1``."""
    original = getattr(module, name)
    seen = {"n": 0}

    def wrapped(*a, **k):
        seen["n"] += 1
        if seen["n"] > calls:
            raise Interrupt
        return original(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


def same_state(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- pre-training
PRETRAIN = dict(steps=3, batch_size=4, lr=1e-3, warmup=2, seed=1, limit_train=16, progress=False, log_every=1,
                checkpoint_every_s=0.0)


@pytest.fixture
def fast_zeroshot(monkeypatch):
    """The zero-shot test mAP (1000 test mosaics) is not what these tests check: a constant stands in."""
    import mlrkit.vl.pretraining as pt

    monkeypatch.setattr(pt, "zeroshot_map", lambda *a, **k: 0.5)
    return pt


def pretrain_run(pt, run_dir: Path, resume: bool = False, **over):
    settings = {**{k: v for k, v in PRETRAIN.items() if k != "checkpoint_every_s"}, **over}
    run = LoopRun(run_dir, settings, resume=resume, command="test")
    try:
        return pt.pretrain_mosaic_clip(**{**PRETRAIN, **over}, run=run)
    finally:
        run.release()


@pytest.mark.slow
def test_pretraining_resumed_equals_uninterrupted_bitwise(tmp_path, fast_zeroshot, monkeypatch):
    pt = fast_zeroshot
    plain, _, res_plain, _ = pt.pretrain_mosaic_clip(**{k: v for k, v in PRETRAIN.items()
                                                        if k not in ("log_every", "checkpoint_every_s")})
    straight, _, res, _ = pretrain_run(pt, tmp_path / "straight")
    assert same_state(plain.state_dict(), straight.state_dict())  # the run directory changes no number
    assert [r["step"] for r in rows(tmp_path / "straight")] == [1, 2, 3]
    assert json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[0])["lr"] == 5e-4
    with monkeypatch.context() as m:
        interrupt_after(m, pt, "contrastive_loss", 1)  # killed in the 2nd step
        with pytest.raises(Interrupt):
            pretrain_run(pt, tmp_path / "killed")
    killed = tmp_path / "killed"
    assert [r["step"] for r in rows(killed)] == [1]
    ck = torch.load(killed / "last.pt", weights_only=True)  # plain data: tensors, numbers, the generator state
    assert ck["step"] == 1 and ck["rng"]["bit_generator"] == "PCG64"
    with pytest.raises(MlrkitError, match="already holds a run"):
        pretrain_run(pt, killed)
    with pytest.raises(MlrkitError, match=r"settings differ .*lr: 0.001 -> 0.002"):
        pretrain_run(pt, killed, resume=True, lr=2e-3)
    resumed, _, res2, _ = pretrain_run(pt, killed, resume=True)
    assert same_state(resumed.state_dict(), straight.state_dict())
    assert rows(killed) == rows(tmp_path / "straight")
    assert res2.final_loss == res.final_loss == res_plain.final_loss and res2.steps == 3


@pytest.mark.slow
def test_pretraining_ema_is_evaluated_returned_and_resumed(tmp_path, fast_zeroshot, monkeypatch):
    pt = fast_zeroshot
    kw = dict(PRETRAIN, ema=0.5, eval_every=2)
    plain, _, _, _ = pt.pretrain_mosaic_clip(**{k: v for k, v in PRETRAIN.items()
                                                if k not in ("log_every", "checkpoint_every_s")})
    straight, _, _, _ = pretrain_run(pt, tmp_path / "straight", **{k: kw[k] for k in ("ema", "eval_every")})
    w = "text_projection"
    assert not torch.equal(straight.state_dict()[w], plain.state_dict()[w])  # the average, not the last weights
    with monkeypatch.context() as m:
        interrupt_after(m, pt, "contrastive_loss", 1)
        with pytest.raises(Interrupt):
            pretrain_run(pt, tmp_path / "killed", ema=0.5, eval_every=2)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["loop"]["ema"]["decay"] == 0.5
    resumed, _, _, _ = pretrain_run(pt, tmp_path / "killed", resume=True, ema=0.5, eval_every=2)
    assert same_state(resumed.state_dict(), straight.state_dict())


@pytest.mark.slow
def test_pretraining_amp_switch_and_nan_check(tmp_path, fast_zeroshot, monkeypatch):
    pt = fast_zeroshot
    fp32, _, r32, _ = pt.pretrain_mosaic_clip(steps=1, batch_size=4, limit_train=16, progress=False, seed=0)
    bf16, _, r16, _ = pt.pretrain_mosaic_clip(steps=1, batch_size=4, limit_train=16, progress=False, seed=0, amp=True)
    assert np.isfinite(r16.final_loss) and r16.final_loss != r32.final_loss  # autocast ran (bf16 on the CPU)
    assert abs(r16.final_loss - r32.final_loss) < 0.05
    monkeypatch.setattr(pt, "contrastive_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(MlrkitError, match="loss became nan at step 1"):
        pt.pretrain_mosaic_clip(steps=1, batch_size=4, limit_train=16, progress=False)


# ---------------------------------------------------------------------------- negation fine-tuning
@pytest.fixture(scope="module")
def neg_data():
    from mlrkit.data import load_dataset
    from mlrkit.negation import captions

    ds = load_dataset("fashion-mosaic", limit_train=40)
    sp = ds.trainval
    rows_, _ = captions.generate_p1(class_names=ds.class_names, targets=sp.targets, ids=sp.ids, per_image=2, seed=0)
    return ds, rows_


def finetune_run(neg_data, run_dir: Path | None, resume: bool = False, **over):
    from dataclasses import asdict

    from mlrkit.negation.finetune import FinetuneConfig, finetune_negation

    ds, rows_ = neg_data
    cfg = FinetuneConfig(lr=1e-3, epochs=3, batch_size=8, seed=2, **over)
    model = vl.load("tiny")
    run = LoopRun(run_dir, {**asdict(cfg), "train": list(cfg.train)}, resume=resume) if run_dir else None
    try:
        res = finetune_negation(model, rows_, ds.trainval.images, ds.trainval.ids, cfg, progress=False, run=run,
                                checkpoint_every_s=0.0)
    finally:
        if run is not None:
            run.release()
    return model, res


@pytest.mark.slow
def test_finetune_resumed_equals_uninterrupted_bitwise(tmp_path, neg_data, monkeypatch):
    import mlrkit.vl.pretraining as ft  # finetune_negation's contrastive_loss

    plain, res_plain = finetune_run(neg_data, None)
    straight, res = finetune_run(neg_data, tmp_path / "straight")
    assert same_state(plain.clip.state_dict(), straight.clip.state_dict())  # the run directory changes no number
    assert [r["epoch"] for r in rows(tmp_path / "straight")] == [0, 1, 2, 3]
    per_epoch = res.steps // 3
    val_calls = len([s for s in range(0, res.n_val_images, 8) if min(8, res.n_val_images - s) >= 2])
    with monkeypatch.context() as m:  # killed in the middle of epoch 2 (validation calls the loss too)
        interrupt_after(m, ft, "contrastive_loss", 2 * val_calls + per_epoch + per_epoch // 2)
        with pytest.raises(Interrupt):
            finetune_run(neg_data, tmp_path / "killed")
    killed = tmp_path / "killed"
    assert [r["epoch"] for r in rows(killed)] == [0, 1] and torch.load(killed / "last.pt")["epoch"] == 1
    resumed, res2 = finetune_run(neg_data, killed, resume=True)
    assert same_state(resumed.clip.state_dict(), straight.clip.state_dict())  # best epoch's weights, restored
    assert rows(killed) == rows(tmp_path / "straight")
    assert (res2.best_epoch, res2.best_val_loss, res2.steps) == (res.best_epoch, res.best_val_loss, res.steps)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in res2.history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in res_plain.history]


def test_finetune_cli_resume_and_finished_run(tmp_path, neg_data, capsys):
    from mlrkit.cli.main import main
    from mlrkit.negation.captions import write_jsonl

    _, rows_ = neg_data
    caps = tmp_path / "caps.jsonl"
    write_jsonl(caps, rows_)
    argv = ["negation", "finetune", "--vl-model", "tiny", "--dataset", "fashion-mosaic", "--captions", str(caps),
            "--lr", "1e-3", "--epochs", "1", "--batch-size", "8", "--max-steps", "2", "--quiet", "--fp32",
            "--device", "cpu", "--out", str(tmp_path / "neg.pt")]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run_dir = tmp_path / "neg.run"
    assert sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") == ["config.yaml", "metrics.jsonl",
                                                                             "results.json"]
    assert [r["epoch"] for r in rows(run_dir)] == [0, 1]
    assert main(argv) == 2 and "already holds a run" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # finished: its results, nothing trained again
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == first
    assert main([*argv[:-1], str(tmp_path / "other.pt"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the loop itself
def test_loop_epoch_means_and_state_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    loop = TrainLoop(model, opt, ema=0.5)
    x = torch.randn(10, 3)
    batches = [slice(0, 4), slice(4, 10)]

    def compute(sl):
        from mlrkit.engine.loop import StepResult

        loss = model(x[sl]).pow(2).mean()
        return StepResult(loss, {"twice": 2 * loss}, n=sl.stop - sl.start)

    stats = loop.run_epoch(batches, compute)
    assert stats.steps == 2 and stats.n == 10 and stats.terms["twice"] == pytest.approx(2 * stats.loss)
    state = loop.state_dict()
    assert state["ema"]["decay"] == 0.5 and state["optimizer"]["state"]
    other = TrainLoop(model, torch.optim.Adam(model.parameters(), lr=0.1), ema=0.5)
    other.load_state_dict(state)
    assert torch.equal(other.ema.shadow["weight"], loop.ema.shadow["weight"])


@pytest.mark.slow
def test_finetune_two_processes_match_one_process(tmp_path, neg_data):
    """torchrun, 2 CPU processes (gloo): each encodes half of every batch, the loss is over the gathered batch."""
    import os
    import subprocess

    from mlrkit.negation.captions import write_jsonl

    _, rows_ = neg_data
    caps = tmp_path / "caps.jsonl"
    write_jsonl(caps, rows_)
    args = ["negation", "finetune", "--vl-model", "tiny", "--dataset", "fashion-mosaic", "--captions", str(caps),
            "--lr", "1e-3", "--epochs", "2", "--batch-size", "9", "--quiet", "--fp32", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "mlrkit", *args, "--out", str(tmp_path / "two.pt")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "mlrkit", *args, "--out", str(tmp_path / "one.pt")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = rows(tmp_path / "two.run"), rows(tmp_path / "one.run")
    assert [r["epoch"] for r in a] == [0, 1, 2]
    for ra, rb in zip(a, b):
        for k in ("val_loss", "val_acc", "train_loss"):
            assert (ra[k] is None and rb[k] is None) or abs(ra[k] - rb[k]) <= 1e-5, (k, ra, rb)
    ma, mb = vl.load(f"openclip:custom@{tmp_path / 'two.pt'}"), vl.load(f"openclip:custom@{tmp_path / 'one.pt'}")
    # the models agree as functions; single weights may not: float sums in another order give gradients
    # that differ in the last bits, and Adam turns a ~0 gradient's noise into an update of up to ~lr
    texts = [r["negated_caption"] for r in rows_[:16]] + [r["caption"] for r in rows_[:16]]
    with torch.no_grad():
        ta, tb, untouched = ma.encode_text(texts), mb.encode_text(texts), vl.load("tiny").encode_text(texts)
    assert float((ta - tb).abs().max()) <= 1e-4 * float(tb.abs().max()), float((ta - tb).abs().max())
    assert float((untouched - tb).abs().max()) > 100 * float((ta - tb).abs().max())  # training moved them far more
