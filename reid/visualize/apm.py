"""``python -m reid.visualize apm --checkpoint RUN/model_best.pth [--tracklet INDEX_OR_DIR] [--out apm.png]``

The paper's Fig. 3 and Fig. 7 for a trained (or, with ``--init``, an initial) AP-network:

- **Fig. 3** (one row per marked position of the centre frame): the centre frame with the marked
  position, the neighbour frame, and APM's weights ``P = softmax(s q_t q_t'^T)`` of that position
  over the neighbour for several scales ``s`` (``--scales``, default 1 4 16). Each row shares one
  colour scale, so a flat map at small ``s`` looks flat.
- **Fig. 7** (last row): the feature maps (L2 norm over channels) of the centre frame, of the
  neighbour before APM, and of APM's output for that neighbour (the reconstruction in the
  centre's layout, contrastive gate included), each normalised to its own maximum.

On the synthetic set the ground truth is drawn too: where each marked body point really lies in
the neighbour (green circle; ``reid.analysis.correspondence``). Without ``--tracklet`` the test
tracklet and frame pair with the largest box change are shown.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ap3d_kernels import APM
from reid.analysis.apm_probe import capture_apm, semantic_queries
from reid.analysis.correspondence import (FeatureGrid, body_to_image, correspondence, find_synthetic_root,
                                          synthetic_manifest, tracklet_boxes)

__all__ = ["ApmPanels", "compute_panels", "largest_box_change", "marked_cells", "render", "main"]

# Body points marked by default on synthetic data (u, v in true-box units): head, chest, thigh.
BODY_POINTS = ((0.0, -0.36), (0.0, -0.12), (0.0, 0.18))
# Image points (a, b) marked on other data: where head, chest and legs usually are in a re-ID box.
IMAGE_POINTS = ((0.5, 0.15), (0.5, 0.38), (0.5, 0.7))


@dataclass
class ApmPanels:
    """What the figure shows, on the feature grid (cells ``(row, col)``)."""

    grid: FeatureGrid
    points: list                       # marked centre cells [(row, col)]
    scales: list                       # s of each similarity map
    similarity: np.ndarray             # [points, scales, h, w]: P's row of each point, per s (sums to 1)
    truth: Optional[np.ndarray]        # [points, 2] true (row, col) in the neighbour; NaN where none
    centre: np.ndarray                 # [h, w] feature norm of the centre frame
    neighbour: np.ndarray              # [h, w] of the neighbour before APM
    registered: np.ndarray             # [h, w] of APM's output for the neighbour (centre layout)


def compute_panels(x: torch.Tensor, z: torch.Tensor, g_weight: torch.Tensor, *, time_dim: int, centre: int,
                   offset: int, points: Sequence, scales: Sequence[float], input_hw: Sequence[int],
                   boxes: Optional[np.ndarray] = None) -> ApmPanels:
    """Panels for one APM call on one clip.

    Args:
        x: APM's input ``[C, T, h, w]``; z: its output ``[C, time_dim * T, h, w]``.
        g_weight: the APM's ``semantic_mapping.weight``.
        centre, offset: centre frame index in the clip and the neighbour's offset (``centre + offset``
            must be in the clip).
        points: marked centre cells ``(row, col)``. scales: the ``s`` values to show.
        input_hw: the network input's ``(H, W)`` (for the grid's geometry).
        boxes: ``[T, 4]`` synthetic boxes of the clip's frames, for the ground truth (optional).
    """
    C, T, h, w = x.shape
    half = time_dim // 2
    if not (0 <= centre < T and 0 <= centre + offset < T and offset != 0 and abs(offset) <= half):
        raise ValueError(f"compute_panels: centre {centre} with neighbour offset {offset} must both lie in the "
                         f"{T}-frame clip, with 0 < |offset| <= {half}")
    if z.shape != (C, time_dim * T, h, w):
        raise ValueError(f"compute_panels: z must be APM's output [{C}, {time_dim * T}, {h}, {w}], "
                         f"got {tuple(z.shape)}")
    grid = FeatureGrid.from_shapes((h, w), input_hw)
    q = semantic_queries(x.unsqueeze(0).float(), g_weight.float())[0]  # [T, HW, Ck]
    idx = torch.tensor([r * w + c for r, c in points], dtype=torch.long)
    cos = q[centre, idx] @ q[centre + offset].t()  # [points, HW]
    similarity = torch.stack([torch.softmax(float(s) * cos, dim=-1) for s in scales], dim=1)
    truth = None
    if boxes is not None:
        target, valid = correspondence(boxes[centre], boxes[centre + offset], grid)
        truth = np.array([target[r, c] if valid[r, c] else (np.nan, np.nan) for r, c in points])
    slot = centre * time_dim + half + offset  # APM's output order: [z(t-half) .. x_t .. z(t+half)]
    norm = lambda f: f.float().norm(dim=0).numpy()  # noqa: E731
    return ApmPanels(grid, [tuple(p) for p in points], [float(s) for s in scales],
                     similarity.reshape(len(points), len(scales), h, w).numpy(), truth,
                     norm(x[:, centre]), norm(x[:, centre + offset]), norm(z[:, slot]))


def largest_box_change(boxes: np.ndarray, offset: int) -> tuple[int, float]:
    """The frame ``t`` whose pair ``(t, t + offset)`` moves the body most in the image, and how much
    (mean absolute shift of the true box's corners, in true-box units)."""
    corners = np.array([[-0.5, -0.5], [0.5, 0.5]])
    best, amount = None, -1.0
    for t in range(max(0, -offset), min(len(boxes), len(boxes) - offset)):
        a = [np.stack(body_to_image(corners[:, 0], corners[:, 1], boxes[k]), -1) for k in (t, t + offset)]
        change = float(np.abs(a[0] - a[1]).mean())
        if change > amount:
            best, amount = t, change
    if best is None:
        raise ValueError(f"a tracklet of {len(boxes)} frames has no frame pair at offset {offset}")
    return best, amount


def marked_cells(grid: FeatureGrid, box: Optional[np.ndarray]) -> list:
    """Default marked centre cells: body points on synthetic data (where the centre box shows them),
    fixed image points otherwise."""
    if box is not None:
        pts = [body_to_image(u, v, box) for u, v in BODY_POINTS]
        pts = [(float(a), float(b)) for a, b in pts if 0 <= a <= 1 and 0 <= b <= 1] or list(IMAGE_POINTS)
    else:
        pts = list(IMAGE_POINTS)
    cells = []
    for a, b in pts:
        r, c = grid.to_cells(a, b)
        cell = (int(np.clip(np.floor(r + 0.5), 0, grid.height - 1)), int(np.clip(np.floor(c + 0.5), 0, grid.width - 1)))
        if cell not in cells:
            cells.append(cell)
    return cells


# ---------------------------------------------------------------------------------------------
# Drawing


def _cell_extent(grid: FeatureGrid):
    """imshow extent placing each cell on the input pixels it is centred on."""
    s, o = grid.stride, grid.offset
    return (o - s / 2, o + s * grid.width - s / 2, o + s * grid.height - s / 2, o - s / 2)


def _pixel(grid: FeatureGrid, rc):
    return grid.stride * rc[1] + grid.offset, grid.stride * rc[0] + grid.offset  # (x, y)


def render(panels: ApmPanels, centre_img: np.ndarray, neighbour_img: np.ndarray, out: str, title: str = "",
           frame_labels: Sequence[str] = ("centre frame t", "neighbour t+1"), dpi: int = 110) -> None:
    """Write the figure to ``out`` (PNG). Images are ``[H, W, 3]`` in [0, 1] at the network input size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g, n_pts, n_s = panels.grid, len(panels.points), len(panels.scales)
    cols = max(2 + n_s, 5)
    fig, axes = plt.subplots(n_pts + 1, cols, figsize=(1.7 * cols, 2.9 * (n_pts + 1)), squeeze=False)
    extent = _cell_extent(g)
    H, W = centre_img.shape[:2]
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlim(0, W), ax.set_ylim(H, 0)
    for i, rc in enumerate(panels.points):
        cx, cy = _pixel(g, rc)
        axes[i, 0].imshow(centre_img, extent=(0, W, H, 0))
        axes[i, 0].plot(cx, cy, "rx", ms=10, mew=2.5)
        axes[i, 1].imshow(neighbour_img, extent=(0, W, H, 0))
        axes[i, 1].plot(cx, cy, "rx", ms=10, mew=2.5)  # the same position: not necessarily the same body part
        has_truth = panels.truth is not None and np.all(np.isfinite(panels.truth[i]))
        vmax = float(panels.similarity[i].max())
        for k, s in enumerate(panels.scales):
            ax = axes[i, 2 + k]
            ax.imshow(neighbour_img, extent=(0, W, H, 0))
            ax.imshow(panels.similarity[i, k], extent=extent, cmap="jet", alpha=0.6, vmin=0.0, vmax=vmax,
                      interpolation="nearest")
            ax.set_title(f"s = {s:g} (max {panels.similarity[i, k].max():.2f})", fontsize=8)
        for ax in [axes[i, 1]] + [axes[i, 2 + k] for k in range(n_s)]:
            if has_truth:
                tx, ty = _pixel(g, panels.truth[i])
                ax.plot(tx, ty, "o", mfc="none", mec="lime", ms=12, mew=2)
        axes[i, 0].set_title(f"(a) {frame_labels[0]}\ncell {rc}", fontsize=8)
        axes[i, 1].set_title(f"(b) {frame_labels[1]}" + ("\ngreen: true position" if has_truth else ""), fontsize=8)
    row = axes[n_pts]
    maps = [(centre_img, panels.centre, "centre features"), (neighbour_img, panels.neighbour, "neighbour before APM"),
            (centre_img, panels.registered, "neighbour after APM")]
    row[0].imshow(centre_img, extent=(0, W, H, 0))
    row[0].set_title(f"{frame_labels[0]}", fontsize=8)
    row[1].imshow(neighbour_img, extent=(0, W, H, 0))
    row[1].set_title(f"{frame_labels[1]}", fontsize=8)
    for k, (img, fmap, label) in enumerate(maps):
        ax = row[2 + k]
        ax.imshow(img * 0.35, extent=(0, W, H, 0))
        ax.imshow(fmap / max(float(fmap.max()), 1e-12), extent=extent, cmap="jet", alpha=0.75, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(f"Fig. 7: {label}", fontsize=8)
    for ax in row[2 + len(maps):]:
        ax.axis("off")
    for ax in axes[:n_pts, 2 + n_s:].flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint of an AP-network (reid.train)")
    parser.add_argument("--init", action="store_true",
                        help="show the weights the run started from, not the trained ones")
    parser.add_argument("--tracklet", default=None, metavar="INDEX_OR_DIR",
                        help="index into the test tracklets (query then gallery) of the checkpoint's dataset, or a "
                             "folder of frames [default: the test tracklet with the largest box change]")
    parser.add_argument("--frame", type=int, default=None, metavar="T",
                        help="centre frame index [default: the largest box change, else the middle frame]")
    parser.add_argument("--offset", type=int, default=1, help="neighbour offset from the centre frame [default: 1]")
    parser.add_argument("--stage", type=int, default=2, help="ResNet stage of the APM shown [default: 2]")
    parser.add_argument("--block", type=int, default=0, help="which APM of that stage, in order [default: 0]")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0, 16.0], metavar="S",
                        help="similarity scales s of the Fig. 3 maps [default: 1 4 16]")
    parser.add_argument("--out", default="apm.png", help="PNG to write [default: apm.png]")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the PNG [default: 110]")


def _pick(args, cfg, offset: int):
    """(frame paths, boxes or None, centre frame, label) of the tracklet to show."""
    from reid.data.datasets.base import list_images
    from reid.engine.trainer import build_data

    spec = args.tracklet
    if spec is not None and not spec.lstrip("-").isdigit():
        paths = list_images(spec)
        if not paths:
            raise ValueError(f"--tracklet: got {spec!r}, expected a test-tracklet index or a folder of frames")
        label = spec
    else:
        ds = build_data(cfg, int(cfg.split_id))
        tracklets = ds.query + ds.gallery
        if spec is not None:
            index = int(spec)
            if not 0 <= index < len(tracklets):
                raise ValueError(f"--tracklet: got {index}, expected 0..{len(tracklets) - 1} (query + gallery)")
        else:
            candidates = [(i, tracklet_boxes(t.paths)) for i, t in enumerate(tracklets) if len(t.paths) > abs(offset)]
            scored = [(largest_box_change(b, offset)[1], i) for i, b in candidates if b is not None]
            index = max(scored)[1] if scored else 0
        paths = list(tracklets[index].paths)
        folder = os.path.dirname(paths[0])
        label = f"test tracklet {index} ({os.path.basename(os.path.dirname(folder))}/{os.path.basename(folder)})"
    boxes = tracklet_boxes(paths)
    if len(paths) <= abs(offset):
        raise ValueError(f"the tracklet has {len(paths)} frame(s): no neighbour at offset {offset}")
    if args.frame is not None:
        t = args.frame
        if not (0 <= t < len(paths) and 0 <= t + offset < len(paths)):
            raise ValueError(f"--frame: got {t}, expected a frame with a neighbour at offset {offset} "
                             f"(0..{len(paths) - 1} in a {len(paths)}-frame tracklet)")
    elif boxes is not None:
        t = largest_box_change(boxes, offset)[0]
    else:
        t = min(max(len(paths) // 2, -offset), len(paths) - 1 - offset)
    return paths, boxes, t, label


def _level(frame_path: str) -> str:
    manifest = synthetic_manifest(find_synthetic_root(frame_path) or "")
    return "?" if manifest is None else f"{manifest['options']['misalignment']:g}"


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m reid.visualize apm") -> int:
    from reid.analysis.loading import analysis_device, load_network
    from reid.data import IMAGENET_MEAN, IMAGENET_STD, ClipTransform, read_frame
    from reid.engine.checkpoint import CheckpointError
    from reid.engine.config import ConfigError, build_parser

    parser = build_parser("APM's similarity maps (Fig. 3) and feature registration (Fig. 7) as a PNG.",
                          extra=_extra, prog=prog)
    args = parser.parse_args(argv)
    if any(s <= 0 or not np.isfinite(s) for s in args.scales):
        parser.error(f"--scales: got {args.scales}, expected positive numbers")
    if args.dpi < 10:
        parser.error(f"--dpi: got {args.dpi}, expected at least 10")
    try:
        net = load_network(args.checkpoint, args, initial=args.init)
        cfg, model = net.cfg, net.model
        paths, boxes, t, label = _pick(args, cfg, args.offset)
        half = max(m.time_dim for m in model.modules() if isinstance(m, APM)) // 2  # the neighbours APM sees
        lo, hi = max(0, min(t, t + args.offset) - half), min(len(paths), max(t, t + args.offset) + half + 1)
        frames = [read_frame(p) for p in paths[lo:hi]]
        if any(f is None for f in frames):
            raise ValueError(f"unreadable frame(s) in {os.path.dirname(paths[0])} between {lo} and {hi - 1}")
        clip = ClipTransform(cfg.height, cfg.width, train=False)(frames)
        with torch.no_grad(), capture_apm(model, keep_output=True) as calls:
            model(clip.unsqueeze(0).to(analysis_device(cfg)))
        chosen = [c for c in calls if c.stage == args.stage]
        if not 0 <= args.block < len(chosen):
            stages = sorted({c.stage for c in calls})
            raise ValueError(f"--stage {args.stage} --block {args.block}: {cfg.arch} has {len(chosen)} APM(s) in "
                             f"stage {args.stage} (APMs are in stages {stages})")
        call = chosen[args.block]
        grid = FeatureGrid.from_shapes(call.input.shape[-2:], (cfg.height, cfg.width))
        clip_boxes = None if boxes is None else boxes[lo:hi]
        points = marked_cells(grid, None if clip_boxes is None else clip_boxes[t - lo])
        panels = compute_panels(call.input[0].cpu(), call.output[0].cpu(),
                                call.module.semantic_mapping.weight.detach().cpu(), time_dim=call.module.time_dim,
                                centre=t - lo, offset=args.offset, points=points, scales=args.scales,
                                input_hw=(cfg.height, cfg.width), boxes=clip_boxes)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images = [(clip[:, k] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() for k in (t - lo, t + args.offset - lo)]
    title = (f"{cfg.arch}, {net.weights}; {call.name} (stage {call.stage}, {grid.height}x{grid.width} cells)\n"
             f"{label}, frames {t} and {t + args.offset}"
             + (f"; synthetic, misalignment {_level(paths[0])}" if boxes is not None else ""))
    render(panels, images[0], images[1], args.out, title=title,
           frame_labels=(f"centre frame {t}", f"neighbour {t + args.offset}"), dpi=args.dpi)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
