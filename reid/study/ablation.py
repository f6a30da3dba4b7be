"""Do the temporal parts matter? Each finished cell of a temporal network is evaluated again with
its temporal weights set to zero (P3D/AP3D: the temporal convs; I3D/AP-I3D: the non-centre taps).
That turns the trained network into C2D with its own spatial weights (AP3D's APM then feeds
nothing), so the drop in mAP is what its temporal parts contribute. No drop means a network that is
C2D in all but name, whatever its weight norms say.

The result goes to ``temporal_ablation.json`` beside the cell's ``results.json``; cells that have
one are not evaluated again, so the step is resumable like the grid.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

import torch

from .grid import Cell, Study
from .runner import cell_record
from .temporal_norms import zero_temporal_weights

__all__ = ["ABLATION_NAME", "ablate_cell", "ablate_study", "ablation_record"]

ABLATION_NAME = "temporal_ablation.json"


def ablation_record(cell: Cell) -> Optional[dict]:
    path = os.path.join(cell.out_dir, ABLATION_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def ablate_cell(cell: Cell) -> dict:
    """Evaluate the cell's final checkpoint with its temporal weights zeroed; writes and returns the record."""
    from reid.engine import distributed as du
    from reid.engine.builders import build_data, build_network
    from reid.engine.checkpoint import load_checkpoint, load_model_weights
    from reid.engine.config import config_from_dict
    from reid.engine.evaluator import evaluate
    from reid.engine.fileio import atomic_write_json

    path = os.path.join(cell.out_dir, "checkpoint_last.pth")
    ckpt = load_checkpoint(path)
    cfg = dataclasses.replace(config_from_dict(ckpt["config"], source=path), pretrained=None, resume=None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = du.init_distributed(cfg.device)
    dataset = build_data(cfg, int(cfg.split_id), info)
    model = build_network(cfg, int(ckpt["num_classes"]), pretrained=None)
    state, touched = zero_temporal_weights(ckpt["model"])
    if touched == 0:
        raise ValueError(f"{cell.name}: {cfg.arch} has no temporal weights to zero")
    load_model_weights(model, state, f"checkpoint {path}", cfg.arch)
    result = evaluate(model.to(info.device), dataset, cfg, info.device, progress=False)
    with open(cell.results_path) as fh:
        full = json.load(fh)["metrics"]
    record = {"cell": cell.name, "checkpoint": path, "epoch": int(ckpt["epoch"]), "zeroed_tensors": touched,
              "full": {k: full[k] for k in ("rank1", "mAP")},
              "temporal_zeroed": {k: result["metrics"][k] for k in ("rank1", "mAP")}}
    atomic_write_json(os.path.join(cell.out_dir, ABLATION_NAME), record)
    return record


def ablate_study(study: Study, log: Callable[[str], None] = print) -> int:
    """Ablate every finished temporal cell that has no record yet; returns how many were evaluated."""
    todo = [c for c in study.cells if c.done and ablation_record(c) is None
            and ((cell_record(c) or {}).get("temporal_weights") or {}).get("num_blocks")]
    for i, cell in enumerate(todo):
        rec = ablate_cell(cell)
        log(f"[ablation {i + 1}/{len(todo)}] {cell.name}: mAP {100 * rec['full']['mAP']:.2f} -> "
            f"{100 * rec['temporal_zeroed']['mAP']:.2f} with temporal weights zeroed")
    return len(todo)
