"""python -m reid.data --dataset synthetic [--root DIR] [...]: load (or generate) a dataset, print its summary.

Examples:
    python -m reid.data                                   # the synthetic default (generated on first use)
    python -m reid.data --dataset synthetic --misalignment 0 --contact-sheet aligned.png
    python -m reid.data --dataset mars --root /data --mars-protocol skip_unmatched
    python -m reid.data --dataset ilidsvid --root /data --split-id 3
    python -m reid.data --dataset folder --root /data/my_cameras --verify   # find corrupt frames up front
"""
from __future__ import annotations

import argparse
import sys
import time

from .cli import add_dataset_arguments, dataset_options
from .datasets import build_dataset


def main(argv=None) -> int:
    # allow_abbrev=False: a misspelt flag is an error, never a prefix match of another one
    p = argparse.ArgumentParser(prog="python -m reid.data", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__,
                                allow_abbrev=False)
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
