"""python -m reid.data --dataset synthetic [--root DIR] [...]: load (or generate) a dataset, print its summary.

Examples:
    python -m reid.data                                   # the synthetic default (generated on first use)
    python -m reid.data --dataset synthetic --misalignment 0 --contact-sheet aligned.png
    python -m reid.data --dataset mars --root /data --protocol skip_unmatched
    python -m reid.data --dataset ilidsvid --root /data --split-id 3
    python -m reid.data --dataset folder --root /data/my_cameras --verify   # find corrupt frames up front
"""
from __future__ import annotations

import argparse
import sys
import time

from .datasets import DATASETS, build_dataset

_SYNTHETIC_FLAGS = (("num_train_ids", int), ("num_test_ids", int), ("num_cameras", int), ("min_frames", int),
                    ("max_frames", int), ("height", int), ("width", int), ("misalignment", float), ("seed", int),
                    ("occlusion_prob", float), ("pose_amplitude", float), ("palette", int))


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthetic", choices=sorted(DATASETS), help="dataset name (default synthetic)")
    p.add_argument("--root", default=None, help="dataset root (synthetic: default is the per-user cache)")
    p.add_argument("--split-id", type=int, default=0, help="split for iLIDS-VID / PRID2011 (0..9)")
    p.add_argument("--protocol", choices=("release", "skip_unmatched"), default=None, help="MARS protocol")
    p.add_argument("--dense", action=argparse.BooleanOptionalAction, default=None,
                   help="cut training tracklets into 64-frame chunks (default: on for duke/ilidsvid)")
    p.add_argument("--workers", type=int, default=None, help="synthetic generation processes")
    g = p.add_argument_group("synthetic options")
    for name, typ in _SYNTHETIC_FLAGS:
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None)


def dataset_options(args: argparse.Namespace) -> dict:
    opts = {}
    if args.protocol is not None:
        opts["protocol"] = args.protocol
    if args.dense is not None:
        opts["dense"] = args.dense
    if args.dataset == "synthetic":
        if args.workers is not None:
            opts["workers"] = args.workers
        opts.update({n: getattr(args, n) for n, _ in _SYNTHETIC_FLAGS if getattr(args, n) is not None})
    else:
        given = [n for n, _ in _SYNTHETIC_FLAGS if getattr(args, n) is not None]
        if given:
            raise SystemExit(f"options {given} apply to --dataset synthetic only")
    return opts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reid.data", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_dataset_arguments(p)
    p.add_argument("--contact-sheet", metavar="PNG", default=None, help="also save a PNG of a few train tracklets")
    p.add_argument("--verify", action="store_true",
                   help="decode every frame once and list the unreadable ones (training would skip them)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        ds = build_dataset(args.dataset, root=args.root, split_id=args.split_id, **dataset_options(args))
    except (OSError, ValueError, TypeError) as exc:  # bad root / layout / option: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"(loaded in {time.perf_counter() - t0:.1f} s)")
    if args.verify:
        from .images import read_frame, report_skipped_frames
        paths = sorted({p for t in ds.train + ds.query + ds.gallery for p in t.paths})
        t1 = time.perf_counter()
        for path in paths:
            read_frame(path)
        print(f"verified {len(paths)} frames in {time.perf_counter() - t1:.1f} s")
        if report_skipped_frames():
            return 1
    if args.contact_sheet:
        from .contact_sheet import contact_sheet
        step = max(1, len(ds.train) // 8)
        print("contact sheet:", contact_sheet(ds.train[::step][:8], args.contact_sheet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
