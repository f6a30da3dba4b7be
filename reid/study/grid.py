"""The misalignment study's plan: the data preset, the budgets, the cells and their commands.

Fairness is built in: every cell of a study trains on the same generated set for its
misalignment level, with the same budget (epochs, schedule, batch, frames, precision, threads),
from the same pretrained 2D backbone, with the same seeds. Only ``--arch`` differs between the
networks of one (level, seed). Every option that could change a result is written out
explicitly in each command, so changing a default later cannot make cells of one study differ.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

__all__ = ["STUDY_PRESET", "PRETRAIN_DATA", "Budget", "BUDGETS", "Cell", "Study", "build_study", "native_bf16",
           "format_level"]

# The study set (on top of the synthetic defaults): harder than the default, so that the aligned
# C2D baseline stays well below the ceiling and temporal modelling has room to matter.
#   palette=3           every clothing colour is one of 3 shared ones (black, white, grey): many
#                       look-alikes; identities differ by pattern, cut, hair, bags and build only;
#   occlusion_prob=0.6  at every level, 60% of tracklets have an occluder (a pole, a bench, a
#                       passer-by) for part of the tracklet. Held fixed, so the study's variable is
#                       the *spatial* misalignment APM addresses (box scale/shift jitter, pose);
#                       frames of one tracklet then differ even when aligned, as in real video;
#   64x32 frames        a quarter of the default's pixels: patterns and accessories are hard to see;
#   100 train ids       fewer identities to learn from;
#   600 test ids        a gallery of ~900 tracklets of look-alikes: many distractors per query;
#   4-8 frames          short tracklets (default 8-48): little evidence per tracklet.
# Pilots (C2D, misalignment 0, 20 epochs, the first preset's backbone) are in README: aligned
# without occluders the C2D reaches 93-95% mAP whatever the palette, resolution or gallery size.
# The misalignment level is the study's variable and is set per cell.
STUDY_PRESET = {"palette": 3, "occlusion_prob": 0.6, "height": 64, "width": 32, "num_train_ids": 100,
                "num_test_ids": 600, "min_frames": 4, "max_frames": 8}

# The pretraining set: the same kind of data drawn with another seed (a disjoint population of
# identities, as ImageNet is disjoint from MARS), at a middle misalignment level, with more
# identities and longer tracklets. Only its 2D backbone is kept; its small test split exists only
# to report that the pretraining worked.
PRETRAIN_DATA = {"seed": 1000, "misalignment": 0.5, "num_train_ids": 200, "num_test_ids": 30, "min_frames": 8,
                 "max_frames": 24}


def native_bf16() -> bool:
    """True if the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), else bf16 autocast is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Budget:
    """One shared training budget: every cell of a study runs with exactly these settings."""

    name: str
    backbone: str
    networks: tuple[str, ...]
    levels: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int
    milestones: tuple[int, ...]
    pretrain_epochs: int
    pretrain_milestones: tuple[int, ...]
    height: int                      # network input (the preset's frames are resized to it)
    width: int
    device: str
    amp: str
    threads: int
    num_workers: int
    iters_per_epoch: int = 0
    num_identities: int = 8
    num_instances: int = 4
    seq_len: int = 4
    stride: int = 8
    lr: float = 3e-4
    weight_decay: float = 5e-4
    dataset_options: dict = field(default_factory=dict)   # on top of STUDY_PRESET (tests use a tiny set)
    pretrain_options: dict = field(default_factory=dict)  # on top of STUDY_PRESET + PRETRAIN_DATA

    def replace(self, **changes) -> "Budget":
        return dataclasses.replace(self, **changes)


def _laptop() -> Budget:
    return Budget(name="laptop", backbone="resnet18", networks=("c2d", "i3d", "p3d_c", "ap_i3d", "ap3d"),
                  levels=(0.0, 0.5, 1.0), seeds=(0, 1, 2), epochs=20, milestones=(15,), pretrain_epochs=12,
                  pretrain_milestones=(9,), height=64, width=32, device="cpu",
                  amp="bf16" if native_bf16() else "none", threads=2, num_workers=1, num_instances=2)


def _full() -> Budget:
    # ResNet-50 on a GPU: the same preset, frames upsampled to the paper's 256x128 input.
    return Budget(name="full", backbone="resnet50", networks=("c2d", "i3d", "p3d_c", "ap_i3d", "ap3d"),
                  levels=(0.0, 0.5, 1.0), seeds=(0, 1, 2), epochs=60, milestones=(40,), pretrain_epochs=60,
                  pretrain_milestones=(40,), height=256, width=128, device="cuda", amp="bf16", threads=0,
                  num_workers=4)


BUDGETS = {"laptop": _laptop, "full": _full}


def format_level(level: float) -> str:
    return f"{float(level):g}"


@dataclass(frozen=True)
class Cell:
    """One ``reid.train`` run of the study (or the pretraining run)."""

    name: str            # e.g. "ap3d_resnet18/mis0.5/seed1", or "pretrain"
    out_dir: str
    argv: tuple[str, ...]  # arguments of ``python -m reid.train``
    network: Optional[str] = None
    level: Optional[float] = None
    seed: Optional[int] = None

    @property
    def results_path(self) -> str:
        return os.path.join(self.out_dir, "results.json")

    @property
    def done(self) -> bool:
        return os.path.isfile(self.results_path)

    @property
    def started(self) -> bool:
        return os.path.isfile(os.path.join(self.out_dir, "checkpoint_last.pth"))

    def command(self, python: str = sys.executable) -> list[str]:
        return [python, "-m", "reid.train", *self.argv]

    def shell_command(self, python: str = "python") -> str:
        return shlex.join(self.command(python))


def _common_argv(b: Budget) -> list[str]:
    """Every option that could change a result, pinned (identical for all cells of a study)."""
    return ["--dataset", "synthetic", "--height", str(b.height), "--width", str(b.width),
            "--seq-len", str(b.seq_len), "--stride", str(b.stride),
            "--num-identities", str(b.num_identities), "--num-instances", str(b.num_instances),
            "--random-erasing", "false", "--num-workers", str(b.num_workers),
            "--test-clip-len", "32", "--test-batch-size", "8",
            "--apm-scale", "4.0", "--contrastive", "true", "--apm-backend", "auto", "--detach-gate-inputs", "true",
            "--last-stride", "1", "--optimizer", "adam", "--lr", repr(b.lr), "--weight-decay", repr(b.weight_decay),
            "--gamma", "0.1", "--warmup-epochs", "0", "--iters-per-epoch", str(b.iters_per_epoch),
            "--ce-weight", "1.0", "--triplet-weight", "1.0", "--margin", "0.3", "--triplet-distance", "cosine",
            "--label-smoothing", "0.0", "--amp", b.amp, "--device", b.device, "--threads", str(b.threads),
            "--eval-every", "0", "--rerank", "false", "--resume", "auto"]


def _data_argv(options: dict) -> list[str]:
    out = []
    for k, v in sorted(options.items()):
        out += ["--dataset-option", f"{k}={v}"]
    return out


@dataclass(frozen=True)
class Study:
    out: str
    budget: Budget
    pretrain: Cell
    cells: tuple[Cell, ...]

    @property
    def pretrained_path(self) -> str:
        return os.path.join(self.pretrain.out_dir, "backbone2d.pth")

    def plan(self) -> dict:
        """What must stay the same for every cell of this study (saved next to the cells)."""
        return {"budget": dataclasses.asdict(self.budget), "preset": STUDY_PRESET, "pretrain_data": PRETRAIN_DATA,
                "pretrain_command": list(self.pretrain.argv),
                "cells": {c.name: list(c.argv) for c in self.cells}}


def build_study(out: str, budget: Budget) -> Study:
    out = os.path.abspath(out)
    if not budget.networks or not budget.levels or not budget.seeds:
        raise ValueError(f"the grid is empty: networks={budget.networks}, levels={budget.levels}, seeds={budget.seeds}")
    for level in budget.levels:
        if not 0.0 <= float(level) <= 1.0:
            raise ValueError(f"levels: misalignment must be in [0, 1], got {level!r}")
    pre_dir = os.path.join(out, "pretrain")
    pre_data = {**STUDY_PRESET, **budget.dataset_options, **PRETRAIN_DATA, **budget.pretrain_options}
    pre_argv = ("--arch", f"c2d_{budget.backbone}", *_common_argv(budget), *_data_argv(pre_data),
                "--epochs", str(budget.pretrain_epochs), "--milestones", *map(str, budget.pretrain_milestones),
                "--seed", "0", "--output-dir", pre_dir)
    pretrain = Cell("pretrain", pre_dir, pre_argv)
    pretrained = os.path.join(pre_dir, "backbone2d.pth")
    cells = []
    # Seed-major order: a study stopped early has whole seeds of the grid rather than whole networks.
    for seed in budget.seeds:
        for level in budget.levels:
            for net in budget.networks:
                arch = f"{net}_{budget.backbone}"
                name = f"{arch}/mis{format_level(level)}/seed{seed}"
                cell_dir = os.path.join(out, "cells", arch, f"mis{format_level(level)}", f"seed{seed}")
                data = {**STUDY_PRESET, **budget.dataset_options, "misalignment": float(level)}
                argv = ("--arch", arch, *_common_argv(budget), *_data_argv(data), "--epochs", str(budget.epochs),
                        "--milestones", *map(str, budget.milestones), "--pretrained", pretrained,
                        "--seed", str(seed), "--output-dir", cell_dir)
                cells.append(Cell(name, cell_dir, argv, network=arch, level=float(level), seed=int(seed)))
    return Study(out, budget, pretrain, tuple(cells))


def parse_networks(names: Sequence[str]) -> tuple[str, ...]:
    from reid.models import MODEL_NAMES

    known = {n for n in MODEL_NAMES if "_resnet" not in n}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"networks: unknown {bad}; expected names without the backbone suffix, from {sorted(known)}")
    return tuple(names)
