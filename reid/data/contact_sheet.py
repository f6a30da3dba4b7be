"""Save a PNG grid of a few tracklets (one row each) so a person can look at the data.

    python -m reid.data.contact_sheet --dataset synthetic --out sheet.png [--rows 8 --frames 12]
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .images import read_frame
from .tracklet import Tracklet

__all__ = ["contact_sheet", "main"]


def contact_sheet(tracklets: Sequence[Tracklet], out: str, frames: int = 12, height: int = 128,
                  width: int = 64, label: bool = True) -> str:
    """One row per tracklet: `frames` evenly spaced frames, resized to height x width."""
    if not tracklets:
        raise ValueError("contact_sheet needs at least one tracklet, got an empty list")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    label_w = 70 if label else 0
    sheet = Image.new("RGB", (label_w + frames * (width + 2), len(tracklets) * (height + 2)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for r, t in enumerate(tracklets):
        n = len(t.paths)
        idx = np.unique(np.linspace(0, n - 1, min(frames, n)).round().astype(int))
        y = r * (height + 2)
        if label:
            d.text((4, y + 4), f"pid {t.pid}\ncam {t.camid}\n{n} fr", fill=(0, 0, 0))
        for c, i in enumerate(idx):
            img = read_frame(t.paths[i])
            if img is None:
                continue
            sheet.paste(img.resize((width, height), Image.BICUBIC), (label_w + c * (width + 2), y))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    sheet.save(out)
    return out


def main(argv=None) -> int:
    from .cli import add_dataset_arguments, dataset_options
    from .datasets import build_dataset

    p = argparse.ArgumentParser(prog="python -m reid.data.contact_sheet", description=__doc__.splitlines()[0],
                                allow_abbrev=False)  # a misspelt flag is an error, never a prefix match
    add_dataset_arguments(p)
    p.add_argument("--out", default="contact_sheet.png", help="PNG file to write")
    p.add_argument("--subset", choices=("train", "query", "gallery"), default="train")
    p.add_argument("--rows", type=int, default=8, help="tracklets to show")
    p.add_argument("--frames", type=int, default=12, help="frames per tracklet")
    args = p.parse_args(argv)
    ds = build_dataset(args.dataset, root=args.root, split_id=args.split_id, verbose=False, **dataset_options(args))
    items = getattr(ds, args.subset)
    step = max(1, len(items) // max(1, args.rows))
    print(contact_sheet(items[::step][: args.rows], args.out, frames=args.frames))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
