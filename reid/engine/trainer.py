"""The training loop: data, model, optimiser, schedule, AMP, DDP, checkpoints, evaluation.

Determinism and exact resume: at the start of every epoch the torch / numpy / Python RNGs are
re-seeded from (seed, epoch, rank) and the identity sampler is told the epoch. The random
stream of an epoch is therefore a function of those three numbers only, and a run resumed
from an end-of-epoch checkpoint replays exactly the steps an uninterrupted run would take
(on CPU: identical losses), whatever the number of data-loader workers. The RNG states are
stored in the checkpoint as well, for anything drawn outside an epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from typing import Optional

import numpy as np
import torch
import yaml

from ..losses import ReIDLoss
from . import distributed as du
from .checkpoint import (
    BEST_NAME,
    FORMAT_VERSION,
    LAST_NAME,
    CheckpointError,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from .config import Config, ConfigError
from .evaluator import evaluate, format_results, mean_over_splits, write_json
from .optim import WarmupMultiStepLR, build_optimizer
from .precision import resolve_policy
from .reporting import TensorBoard, setup_logger

__all__ = ["NonFiniteLossError", "train", "train_one_split", "build_data", "build_network", "seed_everything"]

STEP_LOG_NAME = "train_log.jsonl"
RESULTS_NAME = "results.json"
# config keys that must agree between a checkpoint and the run resuming it
RESUME_MUST_MATCH = ("dataset", "split_id", "arch", "stages", "num_blocks", "last_stride", "optimizer")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A well-mixed 32-bit seed for (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _log() -> logging.Logger:
    return logging.getLogger("reid")


def build_data(cfg: Config, split_id: int, info: Optional[du.DistInfo] = None):
    """The dataset. Under torchrun rank 0 builds it first (the synthetic default is generated
    and cached on first use), then the other nodes' first processes, then everyone else."""
    from reid.data import build_dataset

    options = dict(cfg.dataset_options)
    if cfg.dataset == "mars":
        options.setdefault("protocol", cfg.mars_protocol)

    def make():
        try:
            return build_dataset(cfg.dataset, root=cfg.root, split_id=split_id, verbose=False, **options)
        except TypeError as exc:  # an option the dataset does not take
            raise ConfigError(f"dataset_options: {exc}") from exc

    if info is None or not info.distributed:
        return make()
    return du.run_staged(make, info)


def build_network(cfg: Config, num_classes: int, pretrained: Optional[str] = None):
    from reid.models import build_model

    placement = {} if cfg.stages is None else {"stages": tuple(cfg.stages)}
    if cfg.num_blocks is not None:
        placement["num_blocks"] = cfg.num_blocks
    return build_model(
        cfg.arch,
        num_classes=num_classes,
        pretrained=pretrained,
        apm_scale=cfg.apm_scale,
        contrastive=cfg.contrastive,
        detach_gate_inputs=cfg.detach_gate_inputs,
        apm_backend=cfg.apm_backend,
        last_stride=cfg.last_stride,
        **placement,
    )


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _resolve_resume(cfg: Config, out_dir: str) -> Optional[str]:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        path = os.path.join(out_dir, LAST_NAME)
        return path if os.path.isfile(path) else None
    return cfg.resume


def _trim_step_log(path: str, start_epoch: int) -> None:
    """Drop step records of epochs >= start_epoch (left by an interrupted run), atomically."""
    if not os.path.isfile(path):
        return
    with open(path) as fh:
        keep = [line for line in fh if line.strip() and json.loads(line)["epoch"] < start_epoch]
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.writelines(keep)
    os.replace(tmp, path)


def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def train_one_split(cfg: Config, split_id: int, out_dir: str, info: du.DistInfo) -> Optional[dict]:
    """Train on one split and evaluate; returns the final evaluation (rank 0) or None."""
    log = _log()
    main = info.is_main
    device = info.device
    policy = resolve_policy(cfg.amp, cfg.memory_format, device)
    if main:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.yaml"), "w") as fh:
            yaml.safe_dump({**cfg.to_dict(), "split_id": split_id}, fh, sort_keys=False)

    seed_everything(cfg.seed)
    ds = build_data(cfg, split_id, info)
    if main:
        log.info(ds.summary() if hasattr(ds, "summary") else f"dataset {cfg.dataset}")
    from reid.data import build_train_loader

    if cfg.num_identities % info.world_size:
        raise ValueError(
            f"num_identities: got {cfg.num_identities}, which does not split evenly across "
            f"{info.world_size} processes (each rank takes num_identities/world_size identities)"
        )
    loader = build_train_loader(
        ds.train,
        seq_len=cfg.seq_len,
        stride=cfg.stride,
        height=cfg.height,
        width=cfg.width,
        num_identities=cfg.num_identities,
        num_instances=cfg.num_instances,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        random_erasing=cfg.random_erasing,
    )
    steps_per_epoch = len(loader)
    if cfg.iters_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.iters_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set ({len(ds.train)} tracklets, {ds.num_train_pids} identities) cannot fill one batch "
            f"of num_identities={cfg.num_identities} x num_instances={cfg.num_instances}"
        )

    seed_everything(cfg.seed)  # same initial weights on every rank and in every run
    model = policy.prepare_model(build_network(cfg, ds.num_train_pids, cfg.pretrained).to(device))
    criterion = ReIDLoss(
        ds.num_train_pids,
        ce_weight=cfg.ce_weight,
        triplet_weight=cfg.triplet_weight,
        margin=cfg.margin,
        label_smoothing=cfg.label_smoothing,
        triplet_distance=cfg.triplet_distance,
    )
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    scheduler = WarmupMultiStepLR(optimizer, cfg.milestones, cfg.gamma, cfg.warmup_epochs, cfg.warmup_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=policy.amp == "fp16")

    start_epoch, global_step = 0, 0
    best = {"mAP": -1.0, "epoch": None}
    resume_path = _resolve_resume(cfg, out_dir)
    if resume_path:
        ckpt = load_checkpoint(resume_path, for_resume=True)
        saved = ckpt["config"]
        clash = [
            f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}"
            for k, v in {**cfg.to_dict(), "split_id": split_id}.items()
            if k in RESUME_MUST_MATCH and saved.get(k) != v
        ]
        if clash or ckpt["num_classes"] != ds.num_train_pids:
            raise CheckpointError(
                f"cannot resume from {resume_path}: it was trained with a different set-up ("
                + "; ".join(clash or [f"num_classes: checkpoint {ckpt['num_classes']} vs now {ds.num_train_pids}"])
                + ")"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        best = dict(ckpt.get("best", best))
        if main:
            log.info(f"resumed from {resume_path} at epoch {start_epoch} (step {global_step})")
            _trim_step_log(os.path.join(out_dir, STEP_LOG_NAME), start_epoch)

    train_model = model
    if info.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    tb = TensorBoard(out_dir, enabled=main)
    step_log = open(os.path.join(out_dir, STEP_LOG_NAME), "a") if main else None
    if main:
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        log.info(
            f"{cfg.arch} ({n_params:.2f}M parameters) | {info.world_size} process(es) on {device} ({info.backend}) | "
            f"batch {cfg.num_identities}x{cfg.num_instances} clips of {cfg.seq_len}x{cfg.height}x{cfg.width} | "
            f"{steps_per_epoch} steps/epoch | epochs {start_epoch}->{cfg.epochs}"
        )
        log.info(policy.describe())

    def make_checkpoint(epoch_done: int, with_state: bool) -> dict:
        ck = {
            "format_version": FORMAT_VERSION,
            "model": _unwrap(model).state_dict(),
            "epoch": epoch_done,
            "global_step": global_step,
            "config": {**cfg.to_dict(), "split_id": split_id},
            "num_classes": ds.num_train_pids,
            "feature_dim": int(_unwrap(model).feature_dim),
            "best": dict(best),
        }
        if with_state:
            ck.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler.is_enabled() else {},
                rng=capture_rng_state(),
            )
        return ck

    last_path, best_path = os.path.join(out_dir, LAST_NAME), os.path.join(out_dir, BEST_NAME)
    bar = None
    if main:
        from tqdm import tqdm

        bar = tqdm(
            total=(cfg.epochs - start_epoch) * steps_per_epoch, unit="step", dynamic_ncols=True, disable=None
        )
    t_start = time.time()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            seed_everything(epoch_seed(cfg.seed, epoch, info.rank))
            loader.batch_sampler.set_epoch(epoch)
            train_model.train()
            sums = torch.zeros(4, dtype=torch.float64)
            t_epoch = time.time()
            t_step = t_ready = time.time()
            data_wait = 0.0  # time spent blocked on the loader, reported as a share of the epoch
            lr = optimizer.param_groups[0]["lr"]
            if bar is not None:
                bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            for step, (clips, pids, _camids) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                data_wait += time.time() - t_ready
                clips = policy.prepare_batch(clips.to(device, non_blocking=True))
                pids = torch.as_tensor(pids).long().to(device, non_blocking=True)
                with policy.autocast(device):
                    logits, feats = train_model(clips)
                loss, parts = criterion(logits.float(), feats.float(), pids)
                acc = (logits.argmax(1) == pids).float().mean()
                stats = torch.stack(
                    [loss.detach().float(), parts["ce"].float(), parts["triplet"].float(), acc.detach()]
                ).cpu()
                stats = torch.cat([stats, (~torch.isfinite(stats[:3])).any().float().reshape(1)])
                if info.distributed:  # one reduction gives the mean losses AND a shared stop decision
                    stats = du.all_reduce_sum(stats.to(device)).cpu()
                    stats[:4] /= info.world_size
                if stats[4] > 0:
                    raise NonFiniteLossError(
                        f"non-finite loss at epoch {epoch + 1}, step {step + 1} (global step {global_step + 1}): "
                        f"loss={stats[0].item()}, ce={stats[1].item()}, triplet={stats[2].item()}; lr={lr:.2e}. "
                        f"Training stopped; the last good checkpoint is {last_path if os.path.isfile(last_path) else 'none (no epoch completed)'}. "
                        "Try a lower --lr, --warmup-epochs, or --amp none."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                global_step += 1
                sums += torch.cat([stats[:4].double()])
                now = time.time()
                clips_per_s = clips.shape[0] * info.world_size / max(now - t_step, 1e-9)
                t_step = now
                if main:
                    rec = {
                        "epoch": epoch,
                        "step": global_step,
                        "loss": stats[0].item(),
                        "ce": stats[1].item(),
                        "triplet": stats[2].item(),
                        "acc": stats[3].item(),
                        "lr": lr,
                    }
                    step_log.write(json.dumps(rec) + "\n")
                    tb.scalars(
                        global_step,
                        **{"train/loss": rec["loss"], "train/ce": rec["ce"], "train/triplet": rec["triplet"],
                           "train/acc": rec["acc"], "train/lr": lr, "train/clips_per_s": clips_per_s},
                    )
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{100 * rec['acc']:.0f}%", clips_s=f"{clips_per_s:.1f}")
                    if bar.disable and (step + 1) % cfg.log_every == 0:
                        log.info(
                            f"epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{steps_per_epoch} | loss {rec['loss']:.4f} "
                            f"(ce {rec['ce']:.4f}, triplet {rec['triplet']:.4f}) | {clips_per_s:.1f} clips/s"
                        )
                t_ready = time.time()
            scheduler.step()
            epoch_done = epoch + 1
            n = max(min(steps_per_epoch, step + 1), 1)
            mean = (sums / n).tolist()
            elapsed = time.time() - t_start
            eta = elapsed / (epoch_done - start_epoch) * (cfg.epochs - epoch_done)
            epoch_time = time.time() - t_epoch
            if main:
                step_log.flush()
                log.info(
                    f"epoch {epoch_done}/{cfg.epochs} | loss {mean[0]:.4f} (ce {mean[1]:.4f}, triplet {mean[2]:.4f}) | "
                    f"acc {100 * mean[3]:.1f}% | lr {lr:.2e} | "
                    f"{steps_per_epoch * cfg.num_identities * cfg.num_instances / epoch_time:.1f} clips/s | "
                    f"data wait {100 * data_wait / epoch_time:.1f}% | {_format_duration(epoch_time)} | ETA {_format_duration(eta)}"
                )
                tb.scalars(epoch_done, **{"epoch/loss": mean[0], "epoch/acc": mean[3], "epoch/lr": lr,
                                          "epoch/data_wait_share": data_wait / epoch_time})
            improved = False
            if cfg.eval_every and epoch_done % cfg.eval_every == 0 and epoch_done < cfg.epochs:
                du.broadcast_module_state(_unwrap(model))
                result = evaluate(_unwrap(model), ds, cfg, device)
                if main:
                    log.info(format_results(result, title=f"Evaluation after epoch {epoch_done}"))
                    tb.scalars(epoch_done, **{f"eval/{k}": v for k, v in result["metrics"].items() if k in ("rank1", "mAP", "mINP")})
                    if result["metrics"]["mAP"] > best["mAP"]:
                        best = {"mAP": result["metrics"]["mAP"], "epoch": epoch_done}
                        improved = True
            if main:
                atomic_save(make_checkpoint(epoch_done, with_state=True), last_path)
                if improved:
                    atomic_save(make_checkpoint(epoch_done, with_state=False), best_path)
    finally:
        if bar is not None:
            bar.close()
        if step_log is not None:
            step_log.close()

    train_time = time.time() - t_start
    du.broadcast_module_state(_unwrap(model))
    result = evaluate(_unwrap(model), ds, cfg, device)
    if main:
        if result["metrics"]["mAP"] >= best["mAP"]:
            best = {"mAP": result["metrics"]["mAP"], "epoch": cfg.epochs}
            atomic_save(make_checkpoint(cfg.epochs, with_state=False), best_path)
        result.update(
            checkpoint=os.path.abspath(last_path),
            best_checkpoint=os.path.abspath(best_path),
            best=best,
            epochs=cfg.epochs,
            train_time_s=round(train_time, 1),
            arch=cfg.arch,
            precision=policy.as_dict(),
        )
        write_json(result, os.path.join(out_dir, RESULTS_NAME))
        tb.scalars(cfg.epochs, **{f"test/{k}": v for k, v in result["metrics"].items() if k in ("rank1", "rank5", "mAP", "mINP")})
        tb.close()
        log.info(format_results(result, title=f"Final evaluation (epoch {cfg.epochs})"))
        log.info(f"training time {_format_duration(train_time)}; outputs in {os.path.abspath(out_dir)}")
    du.barrier()
    return result


def train(cfg: Config, info: Optional[du.DistInfo] = None) -> Optional[dict]:
    """Train (every split when ``split_id == 'all'``) and evaluate; returns rank 0's results."""
    info = info or du.init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    setup_logger(cfg.output_dir, info.rank)
    log = _log()
    if cfg.split_id != "all":
        result = train_one_split(cfg, int(cfg.split_id), cfg.output_dir, info)
    else:
        num_splits = int(getattr(build_data(cfg, 0, info), "num_splits", 1) or 1)
        results = []
        for k in range(num_splits):
            if info.is_main:
                log.info(f"===== split {k + 1}/{num_splits} =====")
            split_cfg = dataclasses.replace(cfg, split_id=k, output_dir=os.path.join(cfg.output_dir, f"split{k}"))
            setup_logger(cfg.output_dir, info.rank)
            results.append(train_one_split(split_cfg, k, split_cfg.output_dir, info))
        result = None
        if info.is_main:
            result = mean_over_splits(results)
            result["splits"] = results
            write_json(result, os.path.join(cfg.output_dir, RESULTS_NAME))
            log.info(format_results(result, title="Final evaluation"))
    if info.is_main:
        try:
            from reid.data import skipped_frames

            skipped = skipped_frames()
            if skipped:
                log.warning(f"{len(skipped)} corrupt or unreadable frames were skipped (first: {skipped[0]})")
        except ImportError:
            pass
    return result
