"""Ranked results for video re-ID: a query tracklet and its top-K gallery tracklets, as PNGs.

    python -m reid.visualize ranks --checkpoint runs/ap3d_synthetic/model_best.pth
    python -m reid.visualize ranks --checkpoint CKPT --num-queries 20 --topk 10 --grid --out ranks/

Like torchreid's ``visrank``, for tracklets. Each tracklet is a column of a few frames spread over
its length. The query comes first (blue frame), then the gallery in the evaluator's order
(cosine distance of the evaluator's features, ties in gallery order), each framed

* green: a true match (same identity, other camera),
* red: a wrong identity,
* grey: junk (same identity and same camera; the evaluator removes it before ranking, so its
  column is labelled ``junk`` and the ranks of the others are the evaluator's ranks).

The label above a column gives the rank and the distance, the label below the identity and
camera. One PNG per query (``query<index>_pid<pid>_c<cam>.png``), or with ``--grid`` one
``ranks.png`` with a row per query. The queries drawn are spread evenly over the query set, or
chosen with ``--queries``.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Tile", "COLOURS", "draw_ranked_list", "stack_rows", "match_kinds", "rank_tiles", "visualize_ranks", "main"]

COLOURS = {
    "query": (40, 90, 220),
    "match": (30, 170, 60),
    "wrong": (220, 40, 40),
    "junk": (150, 150, 150),
    "result": (60, 60, 60),  # a search result without identities
}
BORDER = 4
GAP = 4
TEXT_H = 30  # two lines of text above and below each column


@dataclass
class Tile:
    """One tracklet column: its frames, the text above and below, the frame colour."""

    paths: Sequence[str]
    top: str
    bottom: str
    colour: tuple


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _frames(paths: Sequence[str], count: int, width: int, height: int) -> list[Image.Image]:
    from reid.data import read_frame

    idx = np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int))
    out = []
    for i in idx:
        img = read_frame(paths[i])  # an unreadable frame is logged by read_frame and drawn blank
        out.append(img.resize((width, height), Image.BICUBIC) if img is not None else Image.new("RGB", (width, height)))
    return out


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """The text, shortened from the left with '..' until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(".." + text, font=font) > width:
        text = text[1:]
    return ".." + text


def draw_ranked_list(query: Tile, results: Sequence[Tile], frames: int = 4, width: int = 64,
                     height: int = 128) -> Image.Image:
    """The query column, a wider gap, then one column per result; frames resized to width x height."""
    if frames < 1 or width < 8 or height < 8:
        raise ValueError(f"frames, width, height: got {frames}, {width}, {height}; expected >= 1, >= 8, >= 8")
    col_w = width + 2 * BORDER
    col_h = frames * height + (frames - 1) * GAP + 2 * BORDER
    sep = 4 * GAP
    canvas = Image.new("RGB", (col_w * (1 + len(results)) + GAP * len(results) + sep, col_h + 2 * TEXT_H),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    x = 0
    for i, tile in enumerate([query, *results]):
        draw.rectangle([x, TEXT_H, x + col_w - 1, TEXT_H + col_h - 1], fill=tile.colour)
        for j, img in enumerate(_frames(tile.paths, frames, width, height)):
            canvas.paste(img, (x + BORDER, TEXT_H + BORDER + j * (height + GAP)))
        for k, line in enumerate(tile.top.split("\n")[:2]):
            draw.text((x + 1, 1 + 14 * k), _fit(draw, line, font, col_w - 2), fill=(0, 0, 0), font=font)
        for k, line in enumerate(tile.bottom.split("\n")[:2]):
            draw.text((x + 1, TEXT_H + col_h + 2 + 14 * k), _fit(draw, line, font, col_w - 2), fill=(0, 0, 0),
                      font=font)
        x += col_w + (sep if i == 0 else GAP)
    return canvas


def stack_rows(rows: Sequence[Image.Image], gap: int = 12) -> Image.Image:
    """Images one under the other (left-aligned) on a white canvas."""
    width = max(r.width for r in rows)
    out = Image.new("RGB", (width, sum(r.height for r in rows) + gap * (len(rows) - 1)), (255, 255, 255))
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + gap
    return out


def match_kinds(q_pid: int, q_cam: int, g_pids: np.ndarray, g_cams: np.ndarray) -> np.ndarray:
    """Per gallery item: "match", "wrong" or "junk" (same identity AND same camera), the evaluator's rule."""
    same = g_pids == q_pid
    return np.where(same & (g_cams == q_cam), "junk", np.where(same, "match", "wrong"))


def rank_tiles(order: np.ndarray, dist: np.ndarray, kinds: np.ndarray, gallery, topk: int) -> list[Tile]:
    """Tiles of the first ``topk`` non-junk gallery items, with the junk ranked among them shown too."""
    tiles, rank = [], 0
    for g in order:
        if rank >= topk:
            break
        kind = str(kinds[g])
        if kind != "junk":
            rank += 1
        t = gallery[g]
        head = "junk" if kind == "junk" else f"#{rank}"
        tiles.append(Tile(t.paths, f"{head}\nd={dist[g]:.3f}", f"pid {t.pid}\ncam {t.camid}", COLOURS[kind]))
    return tiles


def _pick_queries(num_queries: int, total: int, explicit: Optional[Sequence[int]]) -> list[int]:
    if total == 0:
        raise ValueError("the dataset has no query tracklets to draw")
    if explicit:
        bad = [i for i in explicit if not 0 <= i < total]
        if bad:
            raise ValueError(f"--queries: got {bad}, expected indices in 0..{total - 1}")
        return list(explicit)
    if num_queries < 1:
        raise ValueError(f"--num-queries: got {num_queries}, expected >= 1")
    return sorted(set(np.linspace(0, total - 1, min(num_queries, total)).round().astype(int).tolist()))


def visualize_ranks(model, dataset, cfg, device, out_dir: str, num_queries: int = 10, topk: int = 10,
                    frames: int = 4, grid: bool = False, queries: Optional[Sequence[int]] = None,
                    tile_size: tuple[int, int] = (128, 64), progress: bool = True) -> list[str]:
    """Rank the gallery for some queries with the evaluator's features and ranking; write the PNGs."""
    from reid.engine.evaluator import extract_features
    from reid.metrics import feature_distance, rank_gallery

    if topk < 1:
        raise ValueError(f"--topk: got {topk}, expected >= 1")
    picked = _pick_queries(num_queries, len(dataset.query), queries)
    # features of the chosen queries only; the gallery's all (each feature depends on its tracklet alone)
    qf = extract_features(model, [dataset.query[i] for i in picked], cfg, device, desc="query features",
                          progress=progress)
    gf = extract_features(model, dataset.gallery, cfg, device, desc="gallery features", progress=progress)
    dist = feature_distance(qf, gf)
    order = rank_gallery(dist).numpy()
    dist = dist.numpy()
    g_pids = np.array([t.pid for t in dataset.gallery])
    g_cams = np.array([t.camid for t in dataset.gallery])
    os.makedirs(out_dir, exist_ok=True)
    rows, written = [], []
    for row, qi in enumerate(picked):
        q = dataset.query[qi]
        tiles = rank_tiles(order[row], dist[row], match_kinds(q.pid, q.camid, g_pids, g_cams), dataset.gallery, topk)
        image = draw_ranked_list(Tile(q.paths, f"query {qi}\n{len(q.paths)} frames", f"pid {q.pid}\ncam {q.camid}",
                                      COLOURS["query"]), tiles, frames=frames, height=tile_size[0], width=tile_size[1])
        if grid:
            rows.append(image)
        else:
            path = os.path.join(out_dir, f"query{qi}_pid{q.pid}_c{q.camid}.png")
            image.save(path)
            written.append(path)
    if grid:
        path = os.path.join(out_dir, "ranks.png")
        stack_rows(rows).save(path)
        written.append(path)
    return written


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PTH", help="checkpoint written by reid.train")
    parser.add_argument("--out", default=None, metavar="DIR", help="output directory [default: <checkpoint dir>/ranks]")
    parser.add_argument("--num-queries", type=int, default=10, metavar="N", help="queries, spread over the query set [10]")
    parser.add_argument("--queries", type=int, nargs="+", default=None, metavar="INDEX", help="these query indices instead")
    parser.add_argument("--topk", type=int, default=10, metavar="K", help="gallery tracklets per query [10]")
    parser.add_argument("--frames", type=int, default=4, metavar="F", help="frames shown per tracklet [4]")
    parser.add_argument("--grid", action="store_true", help="one ranks.png with a row per query instead of one PNG each")
    parser.add_argument("--tile-size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"),
                        help="size each frame is drawn at (not the network's input size) [128 64]")


def main(argv=None, prog: str = "python -m reid.visualize ranks") -> int:
    from reid.engine.checkpoint import CheckpointError
    from reid.engine.config import ConfigError, build_parser
    from reid.engine.builders import build_data
    from reid.inference import load_trained_model, resolve_device

    parser = build_parser("Draw ranked gallery tracklets of some queries (any config flag overrides the checkpoint's).",
                          extra=_extra, prog=prog)
    args = parser.parse_args(argv)
    try:
        loaded = load_trained_model(args.checkpoint, args=args)
        cfg = loaded.cfg
        device = resolve_device(cfg.device)
        model = loaded.model.to(device)
        dataset = build_data(cfg, int(cfg.split_id) if cfg.split_id != "all" else 0)
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "ranks")
        written = visualize_ranks(model, dataset, cfg, device, out, num_queries=args.num_queries, topk=args.topk,
                                  frames=args.frames, grid=args.grid, queries=args.queries,
                                  tile_size=tuple(args.tile_size))
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(written)} image(s) written to {os.path.dirname(written[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
