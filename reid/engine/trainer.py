"""The trainer: a loop, one step function, and hooks for everything else.

``Trainer(cfg, split_id, out_dir, info).run()`` builds the run's parts (:mod:`.builders`),
resumes if asked (:mod:`.resume`), then ``train()`` (the loop) and returns the final evaluation
(torchreid's ``run -> train -> forward_backward``; fast-reid's ``TrainerBase`` and hooks).
:meth:`Trainer.run_step` is the whole of a training step: forward, loss, statistics, backward,
update. Everything else the loop does (the learning-rate schedule, progress and logs,
evaluation, checkpoints) is a hook in :mod:`.hooks`, so a new loss term is added in the step
(its value then reaches the logs by itself) and a new periodic action is one more hook.

Determinism and exact resume: at the start of every epoch the torch / numpy / Python RNGs are
re-seeded from (seed, epoch, rank) and the identity sampler is told the epoch. The random
stream of an epoch is therefore a function of those three numbers only, and a run resumed
from an end-of-epoch checkpoint replays exactly the steps an uninterrupted run would take
(on CPU: identical losses), whatever the number of data-loader workers. The RNG states are
stored in the checkpoint as well, for anything drawn outside an epoch.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import time
from typing import Optional

import numpy as np
import torch
import yaml

from ..losses import ReIDLoss
from . import distributed as du
from .allocator import configure_allocator
from .builders import (
    build_data,
    build_grad_scaler,
    build_network,
    build_optimizer_and_schedule,
    build_train_loader,
    config_values,
)
from .checkpoint import BEST_NAME, LAST_NAME, load_checkpoint
from .config import Config
from .evaluator import format_results, mean_over_splits, write_json
from .fileio import FileWriteError, atomic_write_text, remove_stale_temporaries
from .hooks import STEP_LOG_NAME, CheckpointHook, EvaluationHook, HookBase, LRScheduleHook, ProgressHook, format_duration
from .precision import resolve_policy
from .workers import describe_workers
from .reporting import TensorBoard, setup_logger
from .resume import check_resumable, resolve_resume_path, restore_training_state

__all__ = ["NonFiniteLossError", "OutputWriteError", "Trainer", "train", "seed_everything", "epoch_seed"]

RESULTS_NAME = "results.json"
CONFIG_NAME = "config.yaml"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


class OutputWriteError(RuntimeError):
    """A file of the run could not be written (disk full, unwritable directory); the message
    names it, the last good checkpoint and how to continue."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A well-mixed 32-bit seed for (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _log() -> logging.Logger:
    return logging.getLogger("reid")


class Trainer:
    """Trains one split in ``out_dir``.

    The state hooks read: ``epoch`` (0-based, current), ``inner_step`` (0-based, within the
    epoch), ``global_step``, ``lr`` (this epoch's), ``step_stats`` (the last step's),
    ``eval_result``, ``best``, ``last_checkpoint`` ((path, epoch) or None), ``completed``; and the
    parts: ``model`` (unwrapped), ``optimizer``, ``scheduler``, ``scaler``, ``dataset``,
    ``loader``, ``tb``. Nothing is written before :meth:`run`."""

    def __init__(self, cfg: Config, split_id: int, out_dir: str, info: du.DistInfo):
        self.cfg, self.split_id, self.out_dir, self.info = cfg, split_id, out_dir, info
        self.device = info.device
        self.run_config = {**cfg.to_dict(), "split_id": split_id}  # stored in config.yaml and checkpoints
        self.policy = resolve_policy(cfg.amp, cfg.memory_format, self.device)  # precision + layout for this machine
        self.allocator = configure_allocator(cfg.malloc)  # before the first big allocation and the workers' fork
        self.scaler = build_grad_scaler(self.policy.amp, self.device)
        seed_everything(cfg.seed)
        self.dataset = build_data(cfg, split_id, info)
        self.num_classes = self.dataset.num_train_pids
        self.loader, self.steps_per_epoch = build_train_loader(cfg, self.dataset, info)
        self.batch_size = cfg.num_identities * cfg.num_instances  # the global batch, all ranks together
        seed_everything(cfg.seed)  # same initial weights on every rank and in every run
        self.model = self.policy.prepare_model(build_network(cfg, self.num_classes, cfg.pretrained).to(self.device))
        self.criterion = self.build_criterion()
        self.optimizer, self.scheduler = build_optimizer_and_schedule(cfg, self.model)
        self.start_epoch, self.global_step, self.epoch = 0, 0, 0
        self.best = {"mAP": -1.0, "epoch": None}
        self.last_checkpoint: Optional[tuple] = None  # (path, epoch) of the last complete checkpoint
        self.eval_result: Optional[dict] = None
        self.completed = False
        self.resumed_from = self.resume()
        self.train_model = self.model
        if info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:  # training steps only: evaluation feeds clips of every length, which would recompile
            self.train_model = torch.compile(self.train_model)
        self.tb = TensorBoard(out_dir, enabled=info.is_main)
        self.hooks: list[HookBase] = []
        self.register_hooks(self.build_hooks())

    # -- parts --------------------------------------------------------------------------------
    def build_criterion(self) -> torch.nn.Module:
        options = config_values(self.cfg, "ce_weight", "triplet_weight", "margin", "label_smoothing", "triplet_distance")
        return ReIDLoss(self.num_classes, **options)

    def build_hooks(self) -> list[HookBase]:
        """Order matters: the schedule steps before the checkpoint saves it, and the evaluation
        runs before the checkpoint hook reads its mAP."""
        hooks: list[HookBase] = [LRScheduleHook()]
        if self.info.is_main:
            hooks.append(ProgressHook())
        hooks.append(EvaluationHook())
        if self.info.is_main:
            hooks.append(CheckpointHook())
        return hooks

    def register_hooks(self, hooks) -> None:
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def resume(self) -> Optional[str]:
        """Restore the checkpoint named by ``cfg.resume``, if any; returns its path."""
        path = resolve_resume_path(self.cfg.resume, self.out_dir)
        if path is None:
            return None
        ckpt = load_checkpoint(path, for_resume=True)
        check_resumable(ckpt, path, self.run_config, self.num_classes)
        restore_training_state(ckpt, path, self)
        self.start_epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.best = dict(ckpt.get("best", self.best))
        self.last_checkpoint = (path, self.start_epoch)
        return path

    def _prepare_output_dir(self) -> None:
        """The run's directory changes only from here on, once a resume was accepted."""
        os.makedirs(self.out_dir, exist_ok=True)
        log = _log()
        run_files = [os.path.join(self.out_dir, n) for n in (LAST_NAME, BEST_NAME, RESULTS_NAME, CONFIG_NAME, STEP_LOG_NAME)]
        for tmp in remove_stale_temporaries(run_files):
            log.info(f"removed {tmp}, left by a write that was interrupted")
        atomic_write_text(os.path.join(self.out_dir, CONFIG_NAME), yaml.safe_dump(self.run_config, sort_keys=False))
        log.info(self.dataset.summary() if hasattr(self.dataset, "summary") else f"dataset {self.cfg.dataset}")
        if self.resumed_from:
            log.info(f"resumed from {self.resumed_from} at epoch {self.start_epoch} (step {self.global_step})")
            if self.start_epoch == self.cfg.epochs:
                log.info(f"the checkpoint is at the last epoch ({self.start_epoch}): nothing left to train, evaluating it")

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> Optional[dict]:
        """Train, then the final evaluation; returns it (rank 0) or None (other ranks)."""
        try:
            if self.info.is_main:
                self._prepare_output_dir()
            self.train()
            result = self.eval_result
            if self.info.is_main:
                result.update(
                    checkpoint=os.path.abspath(os.path.join(self.out_dir, LAST_NAME)),
                    best_checkpoint=os.path.abspath(os.path.join(self.out_dir, BEST_NAME)),
                    best=self.best,
                    epochs=self.cfg.epochs,
                    train_time_s=round(self.train_time, 1),
                    arch=self.cfg.arch,
                    precision=self.policy.as_dict(),
                )
                write_json(result, os.path.join(self.out_dir, RESULTS_NAME))
                _log().info(f"training time {format_duration(self.train_time)}; outputs in {os.path.abspath(self.out_dir)}")
        except FileWriteError as exc:
            raise OutputWriteError(self._write_failure(exc)) from exc
        du.barrier()
        return result

    def _write_failure(self, exc: FileWriteError) -> str:
        head = f"could not write {exc.path} ({exc.reason})."
        fix = f"Free space or make {os.path.abspath(self.out_dir)} writable, then"
        if self.last_checkpoint is None:
            return f"{head} No checkpoint of this run exists yet. {fix} start the run again."
        path, epoch = self.last_checkpoint
        own = os.path.abspath(path) == os.path.abspath(os.path.join(self.out_dir, LAST_NAME))
        return (
            f"{head} The last good checkpoint, {path} (epoch {epoch}), is intact. {fix} continue from "
            f"epoch {epoch} with the same command plus --resume {'auto' if own else path}."
        )

    def train(self) -> None:
        cfg = self.cfg
        if self.info.is_main:
            n_params = sum(p.numel() for p in self.model.parameters()) / 1e6
            _log().info(
                f"{cfg.arch} ({n_params:.2f}M parameters) | {self.info.world_size} process(es) on {self.device} "
                f"({self.info.backend}) | batch {cfg.num_identities}x{cfg.num_instances} clips of "
                f"{cfg.seq_len}x{cfg.height}x{cfg.width} | {self.steps_per_epoch} steps/epoch | "
                f"epochs {self.start_epoch}->{cfg.epochs}"
            )
            _log().info(f"{self.policy.describe()} | {describe_workers(cfg.num_workers, self.device)} | {self.allocator}")
        self.t_start = time.time()
        self.completed = False
        try:
            self._call("before_train")
            for self.epoch in range(self.start_epoch, cfg.epochs):
                self.before_epoch()
                self.data_wait, t_ready = 0.0, time.time()
                for self.inner_step, batch in enumerate(itertools.islice(self.loader, self.steps_per_epoch)):
                    self.data_wait += time.time() - t_ready  # blocked on the loader: reported per epoch
                    self.step_stats = self.run_step(batch)
                    self.global_step += 1
                    self._call("after_step")
                    t_ready = time.time()
                self._call("after_epoch")
            self.completed = True
        finally:
            self.train_time = time.time() - self.t_start
            self._after_train()

    def before_epoch(self) -> None:
        # the epoch's whole random stream follows from (seed, epoch, rank): exact resume
        seed_everything(epoch_seed(self.cfg.seed, self.epoch, self.info.rank))
        self.loader.batch_sampler.set_epoch(self.epoch)
        self.train_model.train()
        self.lr = self.optimizer.param_groups[0]["lr"]
        self._call("before_epoch")

    def run_step(self, batch) -> dict:
        """One training step; returns its statistics (averaged over ranks): the loss, each of its
        terms as the criterion names them, and the batch accuracy."""
        clips, pids, _camids = batch
        clips = self.policy.prepare_batch(clips.to(self.device, non_blocking=True))
        pids = torch.as_tensor(pids).long().to(self.device, non_blocking=True)
        with self.policy.autocast(self.device):
            logits, feats = self.train_model(clips)
        loss, parts = self.criterion(logits.float(), feats.float(), pids)
        acc = (logits.argmax(1) == pids).float().mean()
        names = ["loss", *parts, "acc"]
        stats = torch.stack([loss.detach().float(), *(p.float() for p in parts.values()), acc.detach()]).cpu()
        stats = torch.cat([stats, (~torch.isfinite(stats[:-1])).any().float().reshape(1)])
        if self.info.distributed:  # one reduction gives the mean statistics AND a shared stop decision
            stats = du.all_reduce_sum(stats.to(self.device)).cpu()
            stats[:-1] /= self.info.world_size
        if stats[-1] > 0:
            self._raise_non_finite(dict(zip(names, stats.tolist())))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return dict(zip(names, stats[:-1].tolist()))

    def _raise_non_finite(self, stats: dict) -> None:
        values = ", ".join(f"{k}={v}" for k, v in stats.items() if k != "acc")
        last = self.last_checkpoint[0] if self.last_checkpoint else "none (no epoch completed)"
        raise NonFiniteLossError(
            f"non-finite loss at epoch {self.epoch + 1}, step {self.inner_step + 1} (global step {self.global_step + 1}): "
            f"{values}; lr={self.lr:.2e}. Training stopped; the last good checkpoint is {last}. "
            "Try a lower --lr, --warmup-epochs, or --amp none."
        )

    def _call(self, method: str) -> None:
        for hook in self.hooks:
            getattr(hook, method)()

    def _after_train(self) -> None:
        """Every hook's ``after_train``. After a failure an error while stopping is logged, so
        the error that stopped training is the one the user sees."""
        for hook in self.hooks:
            try:
                hook.after_train()
            except Exception as exc:
                if self.completed:
                    raise
                _log().warning(f"while stopping, {type(hook).__name__} failed: {type(exc).__name__}: {exc}")
        try:
            self.tb.close()
        except Exception as exc:
            if self.completed:
                raise
            _log().warning(f"while stopping, TensorBoard failed: {type(exc).__name__}: {exc}")
        from reid.data import shutdown_loader

        shutdown_loader(self.loader)  # now, not whenever the garbage collector frees this trainer


def train(cfg: Config, info: Optional[du.DistInfo] = None) -> Optional[dict]:
    """Train (every split when ``split_id == 'all'``) and evaluate; returns rank 0's results."""
    info = info or du.init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    setup_logger(cfg.output_dir, info.rank)
    log = _log()
    if cfg.split_id != "all":
        result = Trainer(cfg, int(cfg.split_id), cfg.output_dir, info).run()
    else:
        num_splits = int(getattr(build_data(cfg, 0, info), "num_splits", 1) or 1)
        results = []
        for k in range(num_splits):
            if info.is_main:
                log.info(f"===== split {k + 1}/{num_splits} =====")
            split_cfg = dataclasses.replace(cfg, split_id=k, output_dir=os.path.join(cfg.output_dir, f"split{k}"))
            setup_logger(cfg.output_dir, info.rank)
            results.append(Trainer(split_cfg, k, split_cfg.output_dir, info).run())
        result = None
        if info.is_main:
            result = mean_over_splits(results)
            result["splits"] = results
            write_json(result, os.path.join(cfg.output_dir, RESULTS_NAME))
            log.info(format_results(result, title="Final evaluation"))
    if info.is_main:
        _report_skipped_frames(log)
    return result


def _report_skipped_frames(log: logging.Logger) -> None:
    try:
        from reid.data import skipped_frames
    except ImportError:
        return
    skipped = skipped_frames()
    if skipped:
        log.warning(f"{len(skipped)} corrupt or unreadable frames were skipped (first: {skipped[0]})")
