"""Does APM register? Its matches against the synthetic set's ground-truth correspondence.

``python -m reid.analysis.registration --checkpoint RUN/model_best.pth [--init] [--dataset-option misalignment=1.0]``

For each test tracklet of the synthetic set the network runs on clips of consecutive frames;
forward hooks capture the input of every APM, and ``P = softmax(s q_t q_t'^T)`` is recomputed for
each (centre frame, neighbour) pair (``reid.analysis.apm_probe``). Each centre position whose
body point has a ground-truth counterpart in the neighbour (``reid.analysis.correspondence``) is
scored:

- **within 1 cell**: the argmax of its row of ``P`` lies within one feature cell (Chebyshev
  distance <= 1) of the cell that holds the true counterpart;
- **P mass within 1 cell**: the share of the row's weight on those cells (how much of the
  reconstruction ``y = P x_t'`` comes from the right place);
- **distance**: Euclidean distance, in feature cells, between ``P``'s expected position
  ``sum_j P_ij pos_j`` and the true (fractional) position.

Baselines for context: **identity** (each position matched to itself, which is what a plain 3D
convolution assumes; its distance is the true displacement), **uniform** (``P`` = 1/HW: the
expected position is the map's centre; its "within 1 cell" is the chance rate of a random match).
Every config flag of ``reid.train`` overrides the checkpoint's stored value (``--root``,
``--dataset-option``, ``--threads``, ...). Writes ``<out>.md`` and ``<out>.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ap3d_kernels import APM

from .apm_probe import capture_apm, neighbour_offsets, registration_weights, semantic_queries
from .correspondence import (FeatureGrid, correspondence, find_synthetic_root, synthetic_manifest,
                             tracklet_boxes)
from .loading import analysis_device, load_network

__all__ = ["RegistrationTally", "score_registration", "evaluate_registration", "format_table", "main"]


@dataclass
class RegistrationTally:
    """Sums over scored positions; ``summary()`` turns them into rates and means."""

    pairs: int = 0                  # (centre frame, neighbour frame) pairs
    positions: int = 0              # valid centre positions scored over all pairs
    apm_within: int = 0             # argmax of P within 1 cell of the truth
    apm_exact: int = 0              # argmax of P in the truth's cell
    apm_distance: float = 0.0       # sum of |E_P[pos] - truth| (cells)
    apm_mass: float = 0.0           # sum of P's mass within 1 cell of the truth
    identity_within: int = 0
    identity_exact: int = 0
    identity_distance: float = 0.0
    uniform_within: float = 0.0     # expected count for a match drawn uniformly at random
    uniform_distance: float = 0.0
    # The positions that matter most: the truth is > 1 cell away, so the identity (a plain 3D conv) misses.
    displaced: int = 0
    displaced_apm_within: int = 0
    displaced_uniform_within: float = 0.0

    def __iadd__(self, other: "RegistrationTally") -> "RegistrationTally":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def summary(self) -> dict:
        n = self.positions
        rate = (lambda v: v / n) if n else (lambda v: float("nan"))  # noqa: E731
        return {
            "pairs": self.pairs,
            "positions": n,
            "apm_within_1": rate(self.apm_within),
            "apm_exact": rate(self.apm_exact),
            "apm_distance": rate(self.apm_distance),
            "apm_mass_within_1": rate(self.apm_mass),
            "identity_within_1": rate(self.identity_within),
            "identity_exact": rate(self.identity_exact),
            "identity_distance": rate(self.identity_distance),
            "uniform_within_1": rate(self.uniform_within),
            "uniform_distance": rate(self.uniform_distance),
            "displaced_positions": self.displaced,
            "displaced_share": rate(self.displaced),
            "displaced_apm_within_1": self.displaced_apm_within / self.displaced if self.displaced else float("nan"),
            "displaced_uniform_within_1": (self.displaced_uniform_within / self.displaced if self.displaced
                                           else float("nan")),
        }


def score_registration(P: torch.Tensor, target, valid, grid_shape: Sequence[int]) -> RegistrationTally:
    """Score registration weights against the ground truth.

    Args:
        P: ``[n, HW, HW]`` weights of ``n`` frame pairs (row: centre position, column: neighbour
            position; positions row-major on the ``h x w`` grid).
        target: ``[n, h, w, 2]`` (or ``[n, HW, 2]``) fractional ``(row, col)`` of the true counterpart.
        valid: ``[n, h, w]`` (or ``[n, HW]``) bool: positions that have a counterpart.
        grid_shape: ``(h, w)``.
    """
    h, w = (int(v) for v in grid_shape)
    HW = h * w
    if P.dim() != 3 or P.shape[1:] != (HW, HW):
        raise ValueError(f"score_registration: P must be [n, {HW}, {HW}] for a {h}x{w} grid, got {tuple(P.shape)}")
    n = P.shape[0]
    target = torch.as_tensor(np.asarray(target), dtype=torch.float64).reshape(n, HW, 2)
    valid = torch.as_tensor(np.asarray(valid), dtype=torch.bool).reshape(n, HW)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([rows, cols], dim=-1).reshape(HW, 2).double()
    limit = torch.tensor([h - 1, w - 1], dtype=torch.float64)
    truth_cell = torch.minimum(torch.floor(target + 0.5).clamp(min=0), limit)

    def chebyshev(cells):
        return (cells - truth_cell).abs().amax(dim=-1)

    match = pos[P.argmax(dim=-1)]  # [n, HW, 2]
    near = (pos[None, None] - truth_cell[:, :, None]).abs().amax(dim=-1) <= 1  # [n, HW (centre), HW (neighbour)]
    expected = P.double() @ pos  # [n, HW, 2]
    # A uniformly random match lands in the truth cell's 3x3 block (clipped to the grid) with this chance.
    block = ((torch.minimum(truth_cell + 1, limit) - (truth_cell - 1).clamp(min=0) + 1)).prod(dim=-1) / HW
    v = valid
    apm_hit = chebyshev(match) <= 1
    moved = v & (chebyshev(pos.expand(n, HW, 2)) > 1)
    return RegistrationTally(
        pairs=n,
        positions=int(v.sum()),
        apm_within=int(apm_hit[v].sum()),
        apm_exact=int((chebyshev(match) == 0)[v].sum()),
        apm_distance=float((expected - target).norm(dim=-1)[v].sum()),
        apm_mass=float((P.double() * near).sum(dim=-1)[v].sum()),
        identity_within=int((chebyshev(pos.expand(n, HW, 2)) <= 1)[v].sum()),
        identity_exact=int((chebyshev(pos.expand(n, HW, 2)) == 0)[v].sum()),
        identity_distance=float((pos - target).norm(dim=-1)[v].sum()),
        uniform_within=float(block[v].sum()),
        uniform_distance=float((pos.mean(dim=0) - target).norm(dim=-1)[v].sum()),
        displaced=int(moved.sum()),
        displaced_apm_within=int(apm_hit[moved].sum()),
        displaced_uniform_within=float(block[moved].sum()),
    )


def _read_clip(paths: Sequence[str], transform):
    from reid.data import read_frame

    frames = [read_frame(p) for p in paths]
    if any(f is None for f in frames):  # a substituted frame would not match its box
        return None
    return transform(frames)


def _score_call(call, boxes: np.ndarray, input_hw) -> tuple[FeatureGrid, RegistrationTally]:
    """Score one captured APM call on one clip (batch of 1; ``boxes``: the clip's frames' boxes)."""
    x = call.input.float().cpu()
    grid = FeatureGrid.from_shapes(x.shape[-2:], input_hw)
    q = semantic_queries(x, call.module.semantic_mapping.weight.detach().float().cpu())
    tally = RegistrationTally()
    for offset in neighbour_offsets(call.module.time_dim):
        P, centres = registration_weights(q, offset, float(call.module.scale))
        if len(centres) == 0:  # a clip shorter than the offset
            continue
        truth = [correspondence(boxes[t], boxes[t + offset], grid) for t in centres.tolist()]
        tally += score_registration(P[0], np.stack([t for t, _ in truth]), np.stack([v for _, v in truth]), grid.shape)
    return grid, tally


@torch.no_grad()
def evaluate_registration(model: torch.nn.Module, tracklets, *, height: int, width: int, clip_len: int = 32,
                          max_frames: int = 32, device="cpu", progress: bool = False) -> dict:
    """Registration accuracy of every APM of ``model`` on synthetic ``tracklets``.

    Each tracklet contributes its first ``max_frames`` frames (0 = all) in clips of ``clip_len``
    consecutive frames (as at test time: APM's neighbours are the adjacent frames, and centre frames
    at a clip's ends lose the neighbour outside it). Returns ``{"blocks": {apm name: tally},
    "stages": {stage: tally}, "grids": {apm name: [h, w, stride]}, "tracklets": n, "skipped": [...]}``.
    """
    from reid.data import ClipTransform, clip_ranges

    transform = ClipTransform(height, width, train=False)
    was_training = model.training
    model.eval()
    blocks: dict[str, RegistrationTally] = {}
    stage_of, grids, skipped, used = {}, {}, [], 0
    items = tracklets
    if progress:
        from tqdm import tqdm

        items = tqdm(tracklets, desc="registration", unit="tracklet", dynamic_ncols=True)
    try:
        for tracklet in items:
            paths = list(tracklet.paths[: max_frames or None])
            boxes = tracklet_boxes(paths)
            if boxes is None:
                raise ValueError(f"tracklet {os.path.dirname(paths[0])} has no synthetic annotations: registration "
                                 f"accuracy needs the synthetic set's boxes (dataset 'synthetic')")
            used += 1
            for start, end in clip_ranges(len(paths), clip_len):
                clip = _read_clip(paths[start:end], transform)
                if clip is None:
                    skipped.append(os.path.dirname(paths[0]))
                    continue
                with capture_apm(model) as calls:
                    model(clip.unsqueeze(0).to(device))
                for call in calls:
                    grid, tally = _score_call(call, boxes[start:end], (height, width))
                    grids[call.name] = [grid.height, grid.width, grid.stride]
                    stage_of[call.name] = call.stage
                    blocks.setdefault(call.name, RegistrationTally()).__iadd__(tally)
    finally:
        model.train(was_training)
    stages: dict[int, RegistrationTally] = {}
    for name, tally in blocks.items():
        stages.setdefault(stage_of[name], RegistrationTally()).__iadd__(tally)
    return {"blocks": blocks, "stages": dict(sorted(stages.items(), key=lambda kv: (kv[0] is None, kv[0]))),
            "grids": grids, "tracklets": used, "skipped": skipped}


# ---------------------------------------------------------------------------------------------
# Command line


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table of result rows (one per model, weights, stage)."""
    def pct(*values):
        return " / ".join("n/a" if v != v else f"{100 * v:.1f}" for v in values)

    lines = [
        "| model | misalignment | weights | stage (grid) | positions "
        "| argmax within 1 cell (%): APM / identity / chance | P mass within 1 cell (%) "
        "| where identity misses (%): share / APM within 1 / chance "
        "| distance (cells): APM E[pos] / identity / uniform |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['misalignment']:g} | {r['weights']} | {r['stage']} ({r['grid']}) | {r['positions']} "
            f"| {pct(r['apm_within_1'], r['identity_within_1'], r['uniform_within_1'])} "
            f"| {pct(r['apm_mass_within_1'])} "
            f"| {pct(r['displaced_share'], r['displaced_apm_within_1'], r['displaced_uniform_within_1'])} "
            f"| {r['apm_distance']:.2f} / {r['identity_distance']:.2f} / {r['uniform_distance']:.2f} |")
    return "\n".join(lines)


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="PATH",
                        help="checkpoint(s) of AP-networks written by reid.train")
    parser.add_argument("--init", action="store_true",
                        help="also score each network at initialisation: the weights reid.train starts from "
                             "(same seed, same --pretrained 2D weights if the run used a file)")
    parser.add_argument("--num-tracklets", type=int, default=100, metavar="N",
                        help="test tracklets to use, spread evenly over query + gallery (0 = all) [default: 100]")
    parser.add_argument("--max-frames", type=int, default=32, metavar="N",
                        help="first N frames of each tracklet (0 = all) [default: 32]")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="score on the generated synthetic set in DIR (its test tracklets) instead of the set "
                             "the checkpoint's config names")
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="write PREFIX.md and PREFIX.json [default: registration next to the first checkpoint]")


def semantic_mapping_change(trained: torch.nn.Module, initial: torch.nn.Module) -> dict:
    """``|g_trained - g_init| / |g_init|`` (Frobenius) of each APM's semantic mapping, by module name."""
    init = {n: m.semantic_mapping.weight.detach().cpu() for n, m in initial.named_modules() if isinstance(m, APM)}
    return {n: float((m.semantic_mapping.weight.detach().cpu() - init[n]).norm() / init[n].norm())
            for n, m in trained.named_modules() if isinstance(m, APM)}


def _select(tracklets: list, n: int) -> list:
    if n <= 0 or n >= len(tracklets):
        return list(tracklets)
    return [tracklets[i] for i in np.unique(np.linspace(0, len(tracklets) - 1, n).round().astype(int))]


def _test_tracklets(cfg, data_dir: Optional[str], cache: dict) -> tuple[list, dict]:
    """Query + gallery tracklets of the set to score on, and the set's manifest (so the reported
    misalignment is the level of the data actually scored)."""
    from reid.data import build_dataset
    from reid.engine.trainer import build_data

    if data_dir is not None:
        key = os.path.abspath(data_dir)
        make = lambda: build_dataset("folder", root=key, verbose=False)  # noqa: E731
    else:
        if cfg.dataset != "synthetic":
            raise ValueError(f"dataset: got {cfg.dataset!r}; registration accuracy needs the ground truth of "
                             f"'synthetic' (or --data-dir with a generated synthetic set)")
        key = (cfg.root, json.dumps(cfg.dataset_options, sort_keys=True))
        make = lambda: build_data(cfg, int(cfg.split_id))  # noqa: E731
    if key not in cache:
        ds = make()
        tracklets = ds.query + ds.gallery
        root = find_synthetic_root(tracklets[0].paths[0]) if tracklets else None
        manifest = synthetic_manifest(root) if root else None
        if manifest is None:
            raise ValueError(f"{data_dir or cfg.dataset}: no synthetic manifest.json and annotations.json above the "
                             f"test tracklets; registration accuracy needs a set made by the synthetic generator")
        cache[key] = (tracklets, manifest)
    return cache[key]


def _rows(path: str, net, manifest: dict, result: dict, g_change: Optional[dict]) -> list[dict]:
    """One result row per stage (the per-block scores inside)."""
    grids = {}
    for name, g in result["grids"].items():
        grids.setdefault(name.split(".")[0], f"{g[0]}x{g[1]}, stride {g[2]}")
    rows = []
    for stage, tally in result["stages"].items():
        in_stage = lambda name: name.startswith(f"layer{stage}.")  # noqa: E731
        row = {"checkpoint": os.path.abspath(path), "model": net.cfg.arch,
               "misalignment": float(manifest["options"]["misalignment"]),
               "data": {"options": manifest["options"], "effective": manifest.get("effective_misalignment")},
               "weights": net.weights, "stage": stage, "grid": grids.get(f"layer{stage}", "?"),
               "tracklets": result["tracklets"], **tally.summary(),
               "blocks": {n: t.summary() for n, t in result["blocks"].items() if in_stage(n)}}
        if g_change is not None:  # how far training moved each APM's semantic mapping g from where it started
            row["semantic_mapping_change"] = {n: c for n, c in g_change.items() if in_stage(n)}
        rows.append(row)
    return rows


def run(args) -> dict:
    rows, datasets = [], {}
    for path in args.checkpoint:
        trained = None
        for initial in (False, True) if args.init else (False,):
            net = load_network(path, args, initial=initial)
            cfg = net.cfg
            if trained is None:
                trained = net.model
            tracklets, manifest = _test_tracklets(cfg, args.data_dir, datasets)
            tracklets = _select(tracklets, args.num_tracklets)
            device = analysis_device(cfg)
            t0 = time.perf_counter()
            result = evaluate_registration(net.model.to(device), tracklets, height=cfg.height, width=cfg.width,
                                           clip_len=cfg.test_clip_len, max_frames=args.max_frames, device=device,
                                           progress=sys.stderr.isatty())
            rows += _rows(path, net, manifest, result, semantic_mapping_change(trained, net.model) if initial else None)
            print(f"{path} [{net.weights}]: {result['tracklets']} tracklets in {time.perf_counter() - t0:.1f} s"
                  + (f", {len(result['skipped'])} clip(s) skipped (unreadable frames)" if result["skipped"] else ""),
                  file=sys.stderr)
    return {"rows": rows, "settings": {"num_tracklets": args.num_tracklets, "max_frames": args.max_frames,
                                       "data_dir": args.data_dir,
                                       "metric": "argmax within Chebyshev distance 1 of the truth cell; P's "
                                                 "mass there; the same on positions the identity misses; Euclidean "
                                                 "distance (cells) of P's expected position"}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from reid.engine.checkpoint import CheckpointError
    from reid.engine.config import ConfigError, build_parser

    parser = build_parser("APM registration accuracy against the synthetic set's ground-truth correspondence.",
                          extra=_extra, prog="python -m reid.analysis.registration")
    args = parser.parse_args(argv)
    for name in ("num_tracklets", "max_frames"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}: got {getattr(args, name)}, expected a non-negative integer")
    try:
        report = run(args)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = format_table(report["rows"])
    prefix = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint[0])), "registration")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".md", "w") as fh:
        fh.write(table + "\n")
    with open(prefix + ".json", "w") as fh:
        json.dump(report, fh, indent=2)
    print(table)
    print(f"written: {prefix}.md, {prefix}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
