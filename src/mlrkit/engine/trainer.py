"""The Trainer: fit on train, select on validation mAP, test the best checkpoint once.

Run directory (DESIGN.md): ``config.yaml``, ``run.json`` (with ``warnings``), ``console.log``
(everything the run printed), ``metrics.jsonl`` (one line per epoch), ``best.pt`` (the best
epoch's weights only), ``last.pt`` (weights + optimizer state for ``--resume``; deleted when the
run finishes unless ``train.keep_last``), ``calibration.json`` (temperature, shift and per-class
thresholds fitted on validation, :mod:`mlrkit.engine.calibration`), ``results.json`` and ``plots/``.

Conventions: epochs are counted from 1 everywhere (console, ``metrics.jsonl``, ``best_epoch``;
0 = nothing trained, e.g. zero-shot); metrics in JSON files are fractions in [0, 1], the console
shows them as percentages with a ``%`` sign.

Every epoch's randomness (shuffling, dropout, augmentation) is seeded from (seed, epoch), so a
run killed at any point and resumed with ``--resume`` ends with the same ``results.json``.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import mlrkit
from mlrkit.config import RunConfig
from mlrkit.engine import distributed as ddp
from mlrkit.engine import threads as thread_policy
from mlrkit.engine.build import (  # noqa: F401 - re-exported: build_run_loss, predict_scores
    BuiltRun,
    build_for_task,
    build_run_loss,
    predict_scores,
    score_split,
)
from mlrkit.engine.checkpoint import load_checkpoint, load_trainable_state, save_checkpoint, trainable_state_dict
from mlrkit.engine.checks import check_observed, check_training_plan
from mlrkit.engine.console import ConsoleLog, console_write
from mlrkit.engine.devices import resolve_device, wants_channels_last
from mlrkit.engine.loaders import make_loader
from mlrkit.engine.loop import StepResult, TrainLoop, cpu_copy, join_processes
from mlrkit.engine.optim import build_optimizer, build_scheduler, param_groups
from mlrkit.engine.reports import grouped_report
from mlrkit.engine.run_data import RunData, prepare_run_data, task_info
from mlrkit.engine.rundir import (
    RUN_FILES,
    RunLock,
    append_metrics_row,
    check_out_path,
    config_diff,
    saved_config,
    truncate_metrics,
)
from mlrkit.errors import MlrkitError
from mlrkit.methods import build_method
from mlrkit.metrics import MultiLabelMeter, f1_scores, hamming_loss, jaccard_index, map_report
from mlrkit.utils import derive_seed, seed_everything, seed_torch_for, write_json

log = logging.getLogger("mlrkit")


__all__ = ["BuiltRun", "Trainer", "build_for_task", "build_run_loss", "predict_scores", "resolve_device", "train"]

class Trainer:
    """Runs one configuration end to end in ``cfg.out``."""

    def __init__(self, cfg: RunConfig, *, resume: bool = False, quiet: bool = False, extend: bool = False) -> None:
        if not cfg.out:
            raise MlrkitError("no output directory: pass --out RUN_DIR")
        if extend and not resume:
            raise MlrkitError("extending train.epochs applies to --resume only")
        check_training_plan(cfg)  # epochs and loss vs method: before anything is touched or set up
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.resume = resume
        self.extend = extend
        self.lock: RunLock | None = None
        # a bar on a terminal, periodic lines with rate and ETA elsewhere (batch logs): mlrkit.engine.progress
        self.progress = cfg.train.progress and not quiet
        self.device, self.env = join_processes(cfg.train.device)
        self.verbose = not quiet and self.env.is_main
        self.progress = self.progress and self.env.is_main

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        t0 = time.perf_counter()
        self.data: RunData = prepare_run_data(cfg)
        check_observed(self.data.observed_train, cfg.labels.protocol, cfg.train.epochs > 0)
        self.timings: dict[str, float] = {"data_s": time.perf_counter() - t0}
        method = build_method(cfg)
        if method.input_kind == "images" and self.data.train.images is None:
            raise MlrkitError(f"method {cfg.method.name!r} trains on images; dataset {self.data.dataset.name!r} has "
                              "features only (use a method on features: linear, mlp)")
        t0 = time.perf_counter()
        method.prepare_data(self.data, device=self.device, progress=self.progress)
        self.timings["prepare_data_s"] = time.perf_counter() - t0
        self.checks = method.check_data(self.data.class_names)  # e.g. the VL-vocabulary check
        task = task_info(cfg, self.data, method.input_kind)
        self.built = build_for_task(cfg, task, method)
        self.method, self.model = self.built.method, self.built.model
        self.model.to(self.device)
        tc = cfg.train
        flops = thread_policy.model_flops(self.model, method.input_kind)
        self.threads = thread_policy.apply(thread_policy.choose_threads(flops, tc.threads))
        if wants_channels_last(self.model, self.device):
            self.model.to(memory_format=torch.channels_last)
            self.model._mlrkit_channels_last = True
        self.loss = build_run_loss(cfg).to(self.device)
        self.loss.prepare(torch.from_numpy(self.data.observed_train).to(self.device))
        if self.loss.ignores_unknowns and not (self.data.observed_train == -1).any() and cfg.train.epochs > 0:
            method.warn(f"loss {cfg.loss.name!r} gives unknown labels zero loss and the training labels have no "
                        f"known negative (protocol {cfg.labels.protocol!r}): nothing teaches the model what an "
                        "absent class looks like, so every score rises and the best epoch is usually the first; "
                        "use a loss that treats unknowns as negatives (an, wan, role, ll_r...) or "
                        "--set loss.unknown=negative where the loss has it (spa, focal)")
        from mlrkit.engine.cft import classifier_of, parse_cft
        from mlrkit.engine.mixing import build_mixer
        from mlrkit.methods import Method

        own_step = type(self.method).training_step is not Method.training_step
        self.mixer = build_mixer(cfg, self.method, self.loss, own_step)  # mix: LogicMix / MixUp-PME (None: off)
        self.cft = parse_cft(cfg.extra.get("cft"))  # cft: category-wise fine-tuning after training (None: off)
        if self.cft is not None:
            classifier_of(self.model)  # a head CFT can tune, checked before training
        resuming = self.resume and (self.out / "last.pt").exists()  # checked by _claim before any setup
        self.method.init_from_train(self.model, self.data, self.loss, device=self.device, resuming=resuming)
        self._eval_loaders: dict[tuple[int, int], Any] = {}
        self.train_loader = make_loader(self.method, self.data.train, self.data.observed_train, tc.batch_size,
                                        train=True, seed=cfg.seed, cfg=cfg,
                                        shard=(self.env.rank, self.env.world), device=self.device)
        loss_mult = self.loss.lr_mult if self.loss.lr_mult is not None else tc.classifier_lr_mult
        extra = [(list(self.loss.parameters()), loss_mult)]
        if tc.epochs == 0:  # evaluation only (e.g. zero-shot): nothing to optimise
            self.optimizer = _NoOptimizer()
            self.scheduler = None
        else:
            groups = param_groups(self.model, self.method.classifier_parameters(self.model), tc, extra)
            self.optimizer = build_optimizer(groups, tc)
            self.scheduler = build_scheduler(self.optimizer, tc, len(self.train_loader))
        synced = [p for p in self.model.parameters() if p.requires_grad] + \
            [p for p in self.loss.parameters() if p.requires_grad]
        # the shared loop (mlrkit.engine.loop): AMP, DDP gradient averaging, clipping, scheduler, EMA
        self.loop = TrainLoop(self.model, self.optimizer, device=self.device, amp=tc.amp, ema=tc.ema,
                              grad_clip=tc.grad_clip, scheduler=self.scheduler, synced=synced, env=self.env,
                              hint="lower train.lr?")
        self.ema, self.amp_dtype, self.scaler = self.loop.ema, self.loop.amp_dtype, self.loop.scaler
        if tc.compile:  # in place: parameters and state_dict keys stay those of the model
            backend = "inductor" if tc.compile is True else str(tc.compile)
            if not hasattr(self.model, "compile"):
                raise MlrkitError(f"train.compile needs torch >= 2.2 (nn.Module.compile); this is {torch.__version__}")
            self.model.compile(backend=backend)

    # ------------------------------------------------------------------ state
    def _checkpoint(self, epoch: int, best_map: float, best_epoch: int) -> dict[str, Any]:
        if getattr(self, "_ck_run", None) is None:  # the run's constant entries, built once per fit
            self._ck_run = {"task": self.built.task.as_dict(), "config": self.cfg.to_dict()}
        return {
            "format": "mlrkit-checkpoint-1",
            "epoch": epoch,  # epochs completed
            "best_val_map": best_map,
            "best_epoch": best_epoch,
            "model": trainable_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "loss": self.loss.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "task": self._ck_run["task"],
            "config": self._ck_run["config"],
            "observed_sha256": self.data.observed.sha256,
        }

    def _restore(self, ck: dict[str, Any]) -> tuple[int, float, int]:
        if ck.get("observed_sha256") != self.data.observed.sha256:
            raise MlrkitError("cannot resume: the observed labels differ from the checkpoint's")
        load_trainable_state(self.model, ck["model"], self.out / "last.pt")
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck["scheduler"] is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.loss.load_state_dict(ck["loss"])
        if self.ema is not None and ck.get("ema"):
            self.ema.load_state_dict(ck["ema"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        return int(ck["epoch"]), float(ck["best_val_map"]), int(ck["best_epoch"])

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Claim ``cfg.out`` (lock, checks, ``config.yaml``), train, test; the lock is released at the end."""
        finished = self._finished_results()
        if finished is not None:
            return finished
        threads_before = torch.get_num_threads()
        claimed = False
        try:
            ck = self._claim()
            claimed = True
            with ConsoleLog(self.out / "console.log" if self.env.is_main else None):
                return self._fit(ck)
        except MlrkitError:
            if claimed and not self.resume and self.env.is_main and not (self.out / "last.pt").exists():
                # refused input found during setup: leave no half-made run behind (a killed setup keeps its
                # config.yaml, so that --resume can continue it)
                for name in ("config.yaml", "observed_labels.npz", "run.json", "console.log"):
                    (self.out / name).unlink(missing_ok=True)
            raise
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
            if torch.get_num_threads() != threads_before:  # the thread policy applies to this run only
                torch.set_num_threads(threads_before)

    def _finished_results(self) -> dict[str, Any] | None:
        """``--resume`` of a finished run whose ``last.pt`` was removed at the end: its results (nothing to do)."""
        out = self.out
        if not (self.resume and (out / "results.json").is_file() and (out / "config.yaml").is_file()
                and not (out / "last.pt").exists()):
            return None
        saved = saved_config(out)
        if saved.train.epochs != self.cfg.train.epochs and self.extend:
            raise MlrkitError(f"--resume --epochs: {out} is finished and its last.pt (optimizer state) was removed at "
                              "the end (train.keep_last: false); it cannot be extended. Train it with --set "
                              "train.keep_last=true to extend it later")
        diff = config_diff(saved.to_dict(), self.cfg.to_dict(), ("out",))
        if diff:
            raise MlrkitError(f"--resume: the configuration differs from {out / 'config.yaml'} ({'; '.join(diff[:4])})")
        log.info("%s is finished (results.json; last.pt was removed at the end): nothing to resume", out)
        return json.loads((out / "results.json").read_text())

    def _say(self, message: str) -> None:
        """A console line of the run (also kept in console.log, even when quiet)."""
        if self.verbose:
            tqdm.write(message)
        console_write(message)

    def _claim(self) -> dict[str, Any] | None:
        """Check the run directory, lock it (rank 0) and save ``config.yaml`` before any long setup.

        Returns the checkpoint to resume from (rank 0; ``None`` elsewhere and on a fresh start).
        """
        cfg, out, main = self.cfg, self.out, self.env.is_main
        check_out_path(out)
        if self.resume and not out.is_dir():
            raise MlrkitError(f"--resume: {out} does not exist; to start a new run there, drop --resume")
        ck, error = None, None
        if main:
            try:
                self.lock = RunLock(out).acquire()
                if self.lock.stale:
                    log.warning("mlrkit: warning: %s", self.lock.stale)
                ck = self._check_directory()
                cfg.save(out / "config.yaml")  # before data, features and models: a killed setup can be resumed
            except MlrkitError as e:
                error = str(e)
        error = ddp.broadcast_object(error, self.env)  # every rank stops with rank 0's verdict on the directory
        if error is not None:
            raise MlrkitError(error)
        return ck

    def _check_directory(self) -> dict[str, Any] | None:
        cfg, out = self.cfg, self.out
        if not self.resume:
            held = [n for n in RUN_FILES if (out / n).exists()]
            if held:
                raise MlrkitError(f"{out} already holds a run ({', '.join(held)}); continue it with --resume "
                                  "or choose another --out")
            return None
        ignore = ("out", "train.epochs") if self.extend else ("out",)
        diff = config_diff(saved_config(out).to_dict(), cfg.to_dict(), ignore)
        if diff:
            raise MlrkitError(f"--resume: the configuration differs from {out / 'config.yaml'} ({'; '.join(diff[:4])})")
        last = out / "last.pt"
        if not last.exists():
            return None  # set up (config.yaml) but never checkpointed: starts from the first epoch
        ck = load_checkpoint(last)
        diff = config_diff(ck.get("config") or {}, cfg.to_dict(), ("out", "train.epochs"))
        if diff:
            raise MlrkitError(f"--resume: {out / 'config.yaml'} no longer matches the configuration {last} was "
                              f"trained with ({'; '.join(diff[:4])}); restore it, or train the new configuration "
                              "in another --out")
        done = int(ck.get("epoch", 0))
        if done > cfg.train.epochs:
            raise MlrkitError(f"--resume: {last} has {done} epochs done, more than train.epochs={cfg.train.epochs}")
        if self.extend and cfg.train.epochs != ck["config"]["train"]["epochs"] and cfg.train.scheduler == "onecycle":
            raise MlrkitError("--epochs with --resume: train.scheduler=onecycle has a fixed length and cannot be "
                              "extended")
        return ck

    def _fit(self, ck: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.cfg
        main = self.env.is_main
        last = self.out / "last.pt"
        from mlrkit.engine.tracking import Trackers

        self.trackers = Trackers(cfg, self.out, enabled=main)
        self._setup()
        self._ck_run = None  # built by the first _checkpoint of this fit
        if main:
            self.data.observed.save(self.out / "observed_labels.npz")
        start, best_map, best_epoch = 0, -1.0, 0
        if self.resume and ddp.broadcast_object(ck is not None if main else None, self.env):
            # every rank restores rank 0's reading of last.pt (never two different files)
            ck = ddp.broadcast_object(ck if main else None, self.env)
            start, best_map, best_epoch = self._restore(ck)
            log.info("resuming %s after epoch %d", self.out, start)
        run_info = self._run_info()
        if self.lock is not None and self.lock.stale:
            run_info["stale_lock"] = self.lock.stale
        run_info["method_info"] = self.method.run_info()
        if "feature_source" in self.built.task.extras:  # how the features file's rows were made (extract-features)
            run_info["feature_source"] = self.built.task.extras["feature_source"]
        run_info["warnings"] = list(getattr(self.method, "warnings", []))
        run_info.update(self.checks)
        if main:
            truncate_metrics(self.out / "metrics.jsonl", "epoch", start)  # epochs counted from 1
            write_json(self.out / "run.json", run_info)
        t_train = time.perf_counter()
        epoch_times = []
        # last.pt is written at most every train.checkpoint_every_s seconds and after the last epoch; the
        # newest unwritten end-of-epoch state (and best state) is kept in memory and written if the run
        # stops on an exception. A run killed outright loses at most that interval: epochs are seeded from
        # (seed, epoch), so resuming from an older last.pt gives the same results.
        interval = cfg.train.checkpoint_every_s
        last_write = time.monotonic()
        pending: dict[str, Any] | None = None
        pending_best: dict[str, Any] | None = None
        try:
            for epoch in range(start, cfg.train.epochs):
                te = time.perf_counter()
                seed_torch_for(derive_seed(cfg.seed, epoch, 1), self.device)
                train_loss, terms = self._train_epoch(epoch)
                val_map = self._validate()
                epoch_times.append(time.perf_counter() - te)
                improved = val_map > best_map
                if improved:
                    best_map, best_epoch = val_map, epoch + 1  # epochs count from 1 everywhere
                row = {"epoch": epoch + 1, "train_loss": train_loss, "val_map": val_map, "best_val_map": best_map,
                       "lr": self.optimizer.param_groups[0]["lr"], "epoch_s": round(epoch_times[-1], 4)}
                if terms:  # the method's named extra terms (StepOutput.terms), epoch means
                    row["terms"] = terms
                if main:
                    # the row first, then last.pt: a kill between them leaves a row ahead of last.pt, which the
                    # resume drops and recomputes (truncate_metrics); the other order would lose the row. The
                    # row is synced to disk when last.pt follows; rows between checkpoints are lost with the
                    # state they describe if the machine goes down (the resume recomputes both)
                    due = epoch + 1 == cfg.train.epochs or interval <= 0 or time.monotonic() - last_write >= interval
                    append_metrics_row(self.out / "metrics.jsonl", row, sync=due)
                    self.trackers.log_epoch(row)
                    ck = self._checkpoint(epoch + 1, best_map, best_epoch)
                    if not due:
                        # the live optimizer/loss state moves on; keep this epoch's (the run's constant
                        # entries are shared, not copied)
                        ck = {**cpu_copy({k: v for k, v in ck.items() if k not in self._ck_run}), **self._ck_run}
                    if improved:
                        pending_best = ck
                    pending = ck
                    if due:
                        self._write_checkpoints(pending, pending_best)
                        pending = pending_best = None
                        last_write = time.monotonic()
                self.env.barrier()
                self._say(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {train_loss:.4f}  val mAP {100 * val_map:.2f}%"
                          f"  best {100 * best_map:.2f}% (epoch {best_epoch})")
        except BaseException:
            if main and pending is not None:  # interrupted: keep what the finished epochs computed
                self._write_checkpoints(pending, pending_best)
            raise
        if cfg.train.epochs == 0:
            best_map, best_epoch = self._validate(), 0
            if main:
                self._write_checkpoints(None, self._checkpoint(0, best_map, best_epoch))
            self.env.barrier()
        self.timings["train_s"] = time.perf_counter() - t_train
        if epoch_times:
            self.timings["epoch_s_mean"] = float(np.mean(epoch_times))
        extra_results = {}
        if self.cft is not None and cfg.train.epochs > 0:
            from mlrkit.engine.cft import apply_cft

            t0 = time.perf_counter()
            extra_results["cft"] = {**apply_cft(self, self.cft), "val_map_before": best_map}
            best_map = self._validate()  # of the fine-tuned head, which _test_best reloads from best.pt
            self.timings["cft_s"] = time.perf_counter() - t0
        results = self._test_best(best_map, best_epoch, extra_results)
        run_info["timings"] = self.timings
        run_info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        run_info["warnings"] = list(getattr(self.method, "warnings", []))
        if main:
            write_json(self.out / "run.json", run_info)
            self.trackers.log_results(results, run_info)
            if not cfg.train.keep_last:
                last.unlink(missing_ok=True)  # optimizer state is only for resuming an unfinished run
        self.trackers.close()
        self.env.barrier()
        return results

    def _write_checkpoints(self, last_ck: dict[str, Any] | None, best_ck: dict[str, Any] | None) -> None:
        """best.pt first (when a new best is unwritten), then last.pt: last.pt never names a best epoch
        whose best.pt is missing."""
        if best_ck is not None:
            # weights only: the optimizer/scheduler/loss state lives in last.pt alone
            weights = {k: v for k, v in best_ck.items() if k not in ("optimizer", "scheduler", "loss", "scaler")}
            save_checkpoint(self.out / "best.pt", {**weights, "kind": "best"})
        if last_ck is not None:
            save_checkpoint(self.out / "last.pt", {**last_ck, "kind": "last"})

    def _train_epoch(self, epoch: int) -> tuple[float, dict[str, float]]:
        """One epoch on the shared loop; returns the mean training loss and the means of the method's extra terms."""
        self.model.train()
        self.loss.on_epoch_start(epoch)
        loader = self.train_loader
        loader.set_epoch(epoch)
        world = self.env.world
        device = self.device
        channels_last = getattr(self.model, "_mlrkit_channels_last", False)

        def compute(batch: dict[str, Any]) -> StepResult:
            n_global = int(batch.pop("n_global", len(batch["index"])))
            if device.type != "cpu":
                batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            if channels_last and batch["inputs"].ndim == 4:
                batch["inputs"] = batch["inputs"].contiguous(memory_format=torch.channels_last)
            loss_fn = self.loss
            if self.mixer is not None:  # mix: LogicMix / MixUp-PME
                batch, loss_fn = self.mixer(batch)
            out = self.method.training_step(self.model, batch, loss_fn, epoch)
            if self.loss.validate_inputs:  # checked on the first batch; the loader serves the same tensors
                self.loss.validate_inputs = False
            n = len(batch["inputs"])
            # each rank's share of the global mean: averaged gradients then equal one process's
            return StepResult(out.loss, out.terms, n=n, share=n * world / n_global)

        stats = self.loop.run_epoch(loader, compute, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                                    progress=self.progress, where=f"in epoch {epoch + 1}")
        self._end_epoch_hooks(epoch)
        return stats.loss, stats.terms

    def _end_epoch_hooks(self, epoch: int) -> None:
        if self.loss.needs_epoch_scores:
            scores = torch.from_numpy(self.scores(self.data.train, self.data.observed_train)).to(self.device)
            self.loss.update_pseudo_labels(scores, epoch)
        self.loss.on_epoch_end(epoch)
        if self.env.enabled:
            self.loss.sync_state(lambda t: ddp.all_reduce_max_(t, self.env))

    def scores(self, split, observed=None, progress: bool = False, desc: str = "") -> np.ndarray:
        """Logits of every row of ``split``; with several ranks each scores rows rank::world, then all gather."""
        return score_split(self.method, self.model, split, observed, batch_size=max(self.cfg.train.batch_size, 256),
                           device=self.device, cfg=self.cfg, progress=progress, desc=desc, loaders=self._eval_loaders)

    def _eval_model(self):
        return self.loop.ema_weights()

    def _validate(self) -> float:
        with self._eval_model():
            scores = self.scores(self.data.val)
        return map_report(scores, self.data.val_targets, self.data.val_mask).map

    def _test_best(self, best_map: float, best_epoch: int,
                   extra_results: dict[str, Any] | None = None) -> dict[str, Any]:
        best = self.out / "best.pt"
        ck = load_checkpoint(best)
        load_trainable_state(self.model, ck["model"], best)
        if self.ema is not None and ck.get("ema"):
            self.ema.load_state_dict(ck["ema"])
        with self._eval_model():
            val_scores = self.scores(self.data.val)
            scores = self.scores(self.data.test, progress=self.progress, desc="test")
        cal = self._calibrate(val_scores, scores)
        test = self.data.test
        meter = MultiLabelMeter(self.data.class_names)
        metric_scores = scores
        if hasattr(self.loss, "probabilities"):  # a loss with a calibrated inverse link (spa): its probabilities
            from mlrkit.losses import probabilities

            metric_scores = probabilities(self.cfg.loss.name, dict(self.cfg.loss.params), scores)
        meter.update(metric_scores, test.targets, test.known)  # the scores are already gathered from every rank
        extra = meter.compute()
        per_class = extra.pop("per_class")
        # thresholded metrics and ECE on the calibrated probabilities at the per-class thresholds
        from mlrkit.engine.calibration import link_logits

        probs = cal.probabilities(link_logits(self.cfg.loss.name, dict(self.cfg.loss.params), scores))
        th = cal.threshold_array()
        extra.update(f1_scores(probs, test.targets, th, test.known))
        extra["ece"] = cal.ece["test_after"]
        extra["hamming_loss"] = hamming_loss(probs, test.targets, th, test.known)
        extra["jaccard"] = jaccard_index(probs, test.targets, th, test.known)
        self.trackers.set_pr_data(probs, test.targets, test.known, self.data.class_names)
        results = {
            "val_map": best_map,
            "test_map": extra["map"],
            "best_epoch": best_epoch,
            "per_class_ap": {name: row["ap"] for name, row in per_class.items()},
            "n_classes_scored": extra["n_classes_scored"],
            "n_classes_skipped": extra["n_classes_skipped"],
            "test_metrics": {k: v for k, v in extra.items() if k not in ("map", "unscored_classes")},
            "calibration": {"temperature": cal.temperature, "bias": cal.bias, "thresholds": cal.policy,
                            "ece": cal.ece},
            "test_per_class": per_class,
            "unscored_classes": extra["unscored_classes"],
            "test_known_fraction": 1.0 if test.known is None else float(test.known.mean()),
            "observed_sha256": self.data.observed.sha256,
            "dataset": self.data.dataset.name,
            "method": self.cfg.method.name,
            "loss": self.cfg.loss.name,
            "labels": self.cfg.labels.protocol,
            "seed": self.cfg.seed,
        }
        grouped = grouped_report(self.method, self.data, scores)  # OpenImages: mAP per annotation-count group
        if grouped is not None:
            results["grouped_map"] = grouped
        results.update(extra_results or {})  # e.g. the cft summary
        if self.env.is_main:
            write_json(self.out / "results.json", results)
        self._say(f"test mAP {100 * results['test_map']:.2f}% (best val mAP {100 * best_map:.2f}%, epoch {best_epoch})")
        return results

    def _calibrate(self, val_scores: np.ndarray, test_scores: np.ndarray):
        """Temperature, shift and per-class thresholds on validation (engine.calibration); ECE on val and test."""
        from mlrkit.engine.calibration import SATURATED_SHARE, calibrate, link_logits, sigmoid
        from mlrkit.metrics import expected_calibration_error

        cc, d = self.cfg.calibration, self.data
        link = dict(self.cfg.loss.params)
        val_scores = link_logits(self.cfg.loss.name, link, val_scores)  # the loss's own link (spa), else logits
        test_scores = link_logits(self.cfg.loss.name, link, test_scores)
        cal = calibrate(val_scores, d.val_targets, d.val_mask, d.class_names, policy=cc.thresholds,
                        temperature=cc.temperature, bias=cc.bias, global_threshold=cc.threshold, n_bins=cc.n_bins)
        cal.ece["test_before"] = expected_calibration_error(sigmoid(test_scores), d.test.targets, d.test.known,
                                                            cc.n_bins)
        cal.ece["test_after"] = expected_calibration_error(cal.probabilities(test_scores), d.test.targets,
                                                           d.test.known, cc.n_bins)
        if cal.saturated_share > SATURATED_SHARE:
            self.method.warn(f"raw scores saturate: {100 * cal.saturated_share:.0f}% of the validation scores are "
                             f"above 0.99 or below 0.01; temperature scaling (T = {cal.temperature:.3g}, "
                             f"b = {cal.bias:.3g}) and per-class thresholds fitted on validation are applied by "
                             "evaluate and predict")
        if cal.uninformative:
            self.method.warn(f"calibration: the validation scores do not rank the validation labels (the fitted "
                             f"temperature T = {cal.temperature:.3g} is at its bound, 100 standard deviations of the "
                             "logits): calibrated probabilities are nearly constant; validate on more data or train "
                             "a better model before trusting them")
        if cal.fallback_classes:
            self.method.warn(f"{len(cal.fallback_classes)} classes have no validation positive and keep the global "
                             f"threshold {cal.global_threshold}: {', '.join(cal.fallback_classes[:10])}")
        if self.env.is_main:
            cal.save(self.out)
        self._say(f"calibration on validation: T = {cal.temperature:.3g}, b = {cal.bias:.3g}, "
                  f"ECE {100 * cal.ece['val_before']:.2f}% -> {100 * cal.ece['val_after']:.2f}% "
                  f"(test {100 * cal.ece['test_before']:.2f}% -> {100 * cal.ece['test_after']:.2f}%), "
                  f"thresholds: {cal.policy}")
        return cal

    def _run_info(self) -> dict[str, Any]:
        d = self.data
        return {
            "mlrkit": mlrkit.__version__,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
            "device": str(self.device),
            "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                            else platform.processor()),
            "threads": self.threads.as_dict(),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "channels_last": bool(getattr(self.model, "_mlrkit_channels_last", False)),
            "compile": self.cfg.train.compile,
            "world_size": self.env.world,
            "command": sys.argv,
            "seed": self.cfg.seed,
            "labels_seed": self.cfg.labels_seed,
            "split_seed": self.cfg.data.split_seed,
            "observed_sha256": d.observed.sha256,
            "observed_protocol": d.observed.protocol,
            "n_train": len(d.train),
            "n_val": len(d.val),
            "n_test": len(d.test),
            "skipped_images": d.skipped_images,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "timings": self.timings,
        }


class _NoOptimizer:
    """Stands in for the optimizer of an evaluation-only run (``train.epochs: 0``)."""

    param_groups = [{"lr": 0.0}]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


def train(cfg: RunConfig, *, resume: bool = False, quiet: bool = False, extend: bool = False) -> dict[str, Any]:
    """Train ``cfg`` in ``cfg.out``; returns ``results.json``'s content.

    ``resume`` continues the run in ``cfg.out`` exactly (its saved configuration must equal ``cfg``);
    ``extend`` (with ``resume``) allows ``cfg.train.epochs`` to differ: more epochs than were done.
    """
    return Trainer(cfg, resume=resume, quiet=quiet, extend=extend).fit()
