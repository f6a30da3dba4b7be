"""Hooks: everything the training loop does besides the step (fast-reid's ``HookBase``).

The loop (:class:`reid.engine.trainer.Trainer`) calls, in registration order::

    before_train()
    for each epoch:  before_epoch();  for each step: run_step(); after_step();  after_epoch()
    after_train()          # also when training stopped with an error (trainer.completed is False)

A hook reads and writes the trainer's state (``trainer.epoch``, ``trainer.global_step``,
``trainer.step_stats``, ``trainer.eval_result``, ``trainer.best``, ...). The default hooks, in
their order: the learning-rate schedule, progress reporting (console, ``train_log.jsonl``,
TensorBoard), evaluation (periodic and final) and checkpointing (``checkpoint_last.pth`` every
epoch, ``model_best.pth`` on a better mAP). A statistic returned by the step (a new loss term)
is logged, averaged and plotted without touching any hook; a new metric of the evaluator
reaches the logs and TensorBoard through :data:`EVAL_SCALARS`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Optional

from . import distributed as du
from .checkpoint import BEST_NAME, FORMAT_VERSION, LAST_NAME, atomic_save, capture_rng_state
from .evaluator import evaluate, format_results
from .fileio import atomic_write_text, writing

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

__all__ = [
    "HookBase",
    "LRScheduleHook",
    "ProgressHook",
    "EvaluationHook",
    "CheckpointHook",
    "STEP_LOG_NAME",
    "EVAL_SCALARS",
    "format_duration",
]

STEP_LOG_NAME = "train_log.jsonl"
# evaluation metrics written to TensorBoard after a periodic and after the final evaluation
EVAL_SCALARS = ("rank1", "mAP", "mINP")
TEST_SCALARS = ("rank1", "rank5", "mAP", "mINP")


def _log() -> logging.Logger:
    return logging.getLogger("reid")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def loss_text(stats: dict) -> str:
    """``loss 1.2345 (ce 0.9, triplet 0.3)``: the total, then every other term of the step."""
    parts = ", ".join(f"{k} {v:.4f}" for k, v in stats.items() if k not in ("loss", "acc"))
    return f"loss {stats['loss']:.4f}" + (f" ({parts})" if parts else "")


class HookBase:
    """Override any of the five methods; ``self.trainer`` is set when the hook is registered."""

    trainer: "Trainer"

    def before_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class LRScheduleHook(HookBase):
    """Steps the per-epoch learning-rate schedule at the end of every epoch."""

    def after_epoch(self):
        self.trainer.scheduler.step()


class ProgressHook(HookBase):
    """Rank 0: a tqdm bar, one ``train_log.jsonl`` record and TensorBoard scalars per step, a log
    line every ``log_every`` steps when not on a terminal, and a summary per epoch.

    On resume the step log is cut back to the checkpoint's step (the steps after it are
    replayed); a fresh run moves an earlier run's log aside instead of appending to it."""

    def before_train(self):
        t = self.trainer
        self.path = os.path.join(t.out_dir, STEP_LOG_NAME)
        if t.resumed_from:
            _trim_step_log(self.path, t.global_step)
        else:
            moved = _move_aside(self.path)
            if moved:
                _log().info(f"the step log of an earlier run in this directory was moved to {moved}")
        self.file = open(self.path, "a")
        from tqdm import tqdm

        total = (t.cfg.epochs - t.start_epoch) * t.steps_per_epoch
        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, disable=None)

    def before_epoch(self):
        t = self.trainer
        self.bar.set_description(f"epoch {t.epoch + 1}/{t.cfg.epochs}")
        self.sums: dict = {}
        self.t_epoch = self.t_step = time.time()

    def after_step(self):
        t = self.trainer
        stats = t.step_stats
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        now = time.time()
        clips_per_s = t.batch_size / max(now - self.t_step, 1e-9)
        self.t_step = now
        with writing(self.path):  # a full disk surfaces when the buffer is written: name the file
            self.file.write(json.dumps({"epoch": t.epoch, "step": t.global_step, **stats, "lr": t.lr}) + "\n")
        t.tb.scalars(
            t.global_step, **{f"train/{k}": v for k, v in stats.items()}, **{"train/lr": t.lr, "train/clips_per_s": clips_per_s}
        )
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{100 * stats['acc']:.0f}%", clips_s=f"{clips_per_s:.1f}")
        if self.bar.disable and (t.inner_step + 1) % t.cfg.log_every == 0:
            _log().info(
                f"epoch {t.epoch + 1}/{t.cfg.epochs} step {t.inner_step + 1}/{t.steps_per_epoch} | {loss_text(stats)} | "
                f"{clips_per_s:.1f} clips/s"
            )

    def after_epoch(self):
        t = self.trainer
        with writing(self.path):
            self.file.flush()  # the epoch's records are on disk before its checkpoint
        done = t.epoch + 1
        mean = {k: v / t.steps_per_epoch for k, v in self.sums.items()}
        epoch_time = time.time() - self.t_epoch
        eta = (time.time() - t.t_start) / (done - t.start_epoch) * (t.cfg.epochs - done)
        _log().info(
            f"epoch {done}/{t.cfg.epochs} | {loss_text(mean)} | acc {100 * mean.get('acc', 0.0):.1f}% | lr {t.lr:.2e} | "
            f"{t.steps_per_epoch * t.batch_size / epoch_time:.1f} clips/s | "
            f"{format_duration(epoch_time)} | ETA {format_duration(eta)}"
        )
        t.tb.scalars(done, **{"epoch/loss": mean["loss"], "epoch/acc": mean.get("acc", 0.0), "epoch/lr": t.lr})

    def after_train(self):
        for resource in (getattr(self, "bar", None), getattr(self, "file", None)):  # (if before_train got so far)
            if resource is not None:
                resource.close()


def _move_aside(path: str) -> Optional[str]:
    """Rename a non-empty ``path`` to ``<stem>.previous-<time>[-n]<ext>``; returns the new name."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    stem, ext = os.path.splitext(path)
    base = f"{stem}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = base + ext, 1
    while os.path.exists(target):
        n += 1
        target = f"{base}-{n}{ext}"
    os.replace(path, target)
    return target


def _trim_step_log(path: str, last_step: int) -> None:
    """Keep the records up to ``last_step`` (the checkpoint's): the steps after it are replayed.
    A line cut short by a kill does not parse and goes too."""
    if not os.path.isfile(path):
        return
    keep = []
    with open(path) as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
                keep.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(keep))


class EvaluationHook(HookBase):
    """Every ``eval_every`` epochs (before the last) and once training completed: features on
    every rank, metrics on rank 0 in ``trainer.eval_result`` (None elsewhere), a table in the log."""

    def _evaluate(self):
        t = self.trainer
        du.broadcast_module_state(t.model)  # rank 0's BatchNorm statistics on every rank
        t.eval_result = evaluate(t.model, t.dataset, t.cfg, t.device)
        return t.eval_result

    def after_epoch(self):
        t = self.trainer
        t.eval_result = None
        done, every = t.epoch + 1, t.cfg.eval_every
        if every and done % every == 0 and done < t.cfg.epochs:
            result = self._evaluate()
            if t.info.is_main:
                _log().info(format_results(result, title=f"Evaluation after epoch {done}"))
                t.tb.scalars(done, **{f"eval/{k}": v for k, v in result["metrics"].items() if k in EVAL_SCALARS})

    def after_train(self):
        t = self.trainer
        t.eval_result = None
        if not t.completed:
            return
        result = self._evaluate()
        if t.info.is_main:
            t.tb.scalars(t.cfg.epochs, **{f"test/{k}": v for k, v in result["metrics"].items() if k in TEST_SCALARS})
            _log().info(format_results(result, title=f"Final evaluation (epoch {t.cfg.epochs})"))


class CheckpointHook(HookBase):
    """Rank 0: ``checkpoint_last.pth`` (full training state) after every epoch, ``model_best.pth``
    (weights) when an evaluation beats the best mAP; the final evaluation wins ties."""

    def before_train(self):
        t = self.trainer
        self.last_path = os.path.join(t.out_dir, LAST_NAME)
        self.best_path = os.path.join(t.out_dir, BEST_NAME)

    def state(self, epoch_done: int, with_training_state: bool) -> dict:
        t = self.trainer
        ck = {
            "format_version": FORMAT_VERSION,
            "model": t.model.state_dict(),
            "epoch": epoch_done,
            "global_step": t.global_step,
            "config": t.run_config,
            "num_classes": t.num_classes,
            "feature_dim": int(t.model.feature_dim),
            "best": dict(t.best),
        }
        if with_training_state:
            ck.update(
                optimizer=t.optimizer.state_dict(),
                scheduler=t.scheduler.state_dict(),
                scaler=t.scaler.state_dict() if t.scaler.is_enabled() else {},
                rng=capture_rng_state(),
            )
        return ck

    def _improves(self, result, epoch_done: int, ties_win: bool) -> bool:
        t = self.trainer
        if result is None:
            return False
        mAP = result["metrics"]["mAP"]
        if mAP > t.best["mAP"] or (ties_win and mAP == t.best["mAP"]):
            t.best = {"mAP": mAP, "epoch": epoch_done}
            return True
        return False

    def _save(self, epoch_done: int, with_training_state: bool, path: str) -> None:
        t = self.trainer
        atomic_save(self.state(epoch_done, with_training_state), path)
        if with_training_state:
            t.last_checkpoint = (path, epoch_done)

    def after_epoch(self):
        done = self.trainer.epoch + 1
        improved = self._improves(self.trainer.eval_result, done, ties_win=False)
        self._save(done, True, self.last_path)
        if improved:
            self._save(done, False, self.best_path)

    def after_train(self):
        t = self.trainer
        if t.completed and self._improves(t.eval_result, t.cfg.epochs, ties_win=True):
            self._save(t.cfg.epochs, False, self.best_path)
