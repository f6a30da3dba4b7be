"""Robust frame reading, with a record of skipped frames that survives DataLoader worker processes.

A corrupt or unreadable frame must never end an epoch: it is logged with its path, recorded and
replaced by the nearest readable frame of the same tracklet. Workers are separate processes, so
the record is a directory of per-process append-only text files (one path per line) whose
location travels to the workers through an environment variable; the main process reads them
all back with `skipped_frames()`.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from typing import Optional, Sequence, TextIO

import numpy as np
from PIL import Image

try:  # libjpeg-turbo without Pillow's per-file Python: a 128x64 JPEG frame decodes in 40 us instead of 80
    import simplejpeg
except ImportError:  # optional: Pillow reads every format
    simplejpeg = None

__all__ = [
    "read_frame",
    "read_frame_pixels",
    "to_rgb8",
    "read_tracklet_frames",
    "skipped_frames",
    "unreadable_tracklets",
    "report_skipped_frames",
    "reset_skipped_frames",
    "IMAGE_EXTENSIONS",
]

logger = logging.getLogger("reid.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
_ENV = "AP3D_SKIPPED_FRAMES_DIR"
# Paths this process already found unreadable: retrying them every epoch would re-log and re-pay
# the failed decode.
_known_bad: set[str] = set()


def _report_dir() -> str:
    path = os.environ.get(_ENV)
    if path and os.path.isdir(path):
        return path
    path = tempfile.mkdtemp(prefix="ap3d-skipped-frames-")
    os.environ[_ENV] = path
    owner = os.getpid()

    def _cleanup() -> None:
        if os.getpid() == owner:  # forked children inherit atexit hooks; only the creator cleans up
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(_cleanup)
    return path


def prepare_skip_report() -> str:
    """Create the report directory now, before DataLoader workers start, so they inherit it."""
    return _report_dir()


def _record(path: str, reason: str) -> None:
    if path in _known_bad:
        return
    _known_bad.add(path)
    logger.warning("skipping unreadable frame %s (%s)", path, reason)
    report = os.path.join(_report_dir(), f"{os.getpid()}.txt")
    # One short O_APPEND write per line: lines from concurrent processes never interleave.
    with open(report, "a", encoding="utf-8") as fh:
        fh.write(path.replace("\n", " ") + "\n")


def to_rgb8(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `img`, scaling high-bit-depth modes instead of clipping them.

    Pillow's ``convert("RGB")`` clips integer modes to 0..255, so a 16-bit grayscale frame (mode
    ``I;16*``, e.g. a 16-bit PNG or TIFF) would come out almost all white. Those are scaled by
    255/65535. Mode ``I`` (32-bit integers: older Pillow's 16-bit PNGs, some TIFFs) is scaled the
    same way when it holds values above 255, and read as 8-bit values otherwise; mode ``F``
    (floats) is read as 0..1 when its maximum is <= 1. Palette, L, LA, RGBA, CMYK, ... go through
    ``convert("RGB")``: the palette colours, grey replicated, alpha ignored (as torchreid and
    OpenCV's colour read do). 16-bit RGB(A) PNGs are already reduced to 8 bits by Pillow's decoder.
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and values.size and np.nanmax(values) <= 1.0:
            values = values * 255.0
        elif img.mode.startswith("I;16") or (values.size and values.max() > 255):
            values = np.clip(values, 0, 65535) * (255.0 / 65535.0)
        gray = np.clip(np.nan_to_num(np.rint(values)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return img.convert("RGB")


def read_frame(path: str) -> Optional[Image.Image]:
    """The frame as an 8-bit RGB image (:func:`to_rgb8`), or None (logged and recorded) if it cannot be read."""
    if path in _known_bad:
        return None
    try:
        return _decode(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        _record(path, f"{type(exc).__name__}: {exc}")
        return None


def read_frame_pixels(path: str) -> Optional[np.ndarray]:
    """The frame as an ``[H, W, 3]`` uint8 RGB array, or None (logged and recorded) if it cannot
    be read: :func:`read_frame`'s pixels, decoded by simplejpeg where it is installed and the file
    is a JPEG it reads in full (anything else, a truncated file included, goes to Pillow)."""
    if simplejpeg is not None and path not in _known_bad and path.lower().endswith((".jpg", ".jpeg")):
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            # colour and grey JPEGs only: CMYK (Adobe's inverted kind included) is Pillow's to convert
            if simplejpeg.decode_jpeg_header(data)[2] in ("YCbCr", "Gray"):
                return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except (OSError, ValueError):
            pass  # Pillow decides, and records the frame if it cannot read it either
    img = read_frame(path)
    return None if img is None else np.asarray(img)


def _decode(path: str) -> Image.Image:
    img = Image.open(path)
    try:
        img.load()  # decode now: a truncated file fails here, not later inside a transform
    except BaseException:
        img.close()
        raise
    if img.mode == "RGB" and getattr(img, "fp", None) is None:
        return img  # decoded, and its file already closed by load(): no copy needed
    try:
        return to_rgb8(img)
    finally:
        img.close()


def read_tracklet_frames(paths: Sequence[str], indices: Sequence[int]) -> list[Optional[np.ndarray]]:
    """Read `paths[i]` for each i in `indices` as ``[H, W, 3]`` uint8 RGB arrays
    (:func:`read_frame_pixels`); an unreadable frame becomes the nearest readable one.

    Returns a list the length of `indices`. Entries are None only if no frame of the whole
    tracklet can be read (the caller then substitutes a blank clip).
    """
    cache: dict[int, Optional[np.ndarray]] = {}

    def get(i: int) -> Optional[np.ndarray]:
        if i not in cache:
            cache[i] = read_frame_pixels(paths[i])
        return cache[i]

    out: list[Optional[np.ndarray]] = []
    n = len(paths)
    for i in indices:
        img = get(i)
        if img is None:
            # Search outwards (i-1, i+1, i-2, ...) for the temporally closest readable frame.
            for d in range(1, n):
                for j in (i - d, i + d):
                    if 0 <= j < n:
                        img = get(j)
                        if img is not None:
                            break
                if img is not None:
                    break
        out.append(img)
    return out


def skipped_frames() -> list[str]:
    """Every frame path reported unreadable so far, by this process or its DataLoader workers."""
    path = os.environ.get(_ENV)
    if not path or not os.path.isdir(path):
        return sorted(_known_bad)
    seen: dict[str, None] = {}
    for name in sorted(os.listdir(path)):
        try:
            with open(os.path.join(path, name), encoding="utf-8") as fh:
                for line in fh:
                    line = line.rstrip("\n")
                    if line:
                        seen.setdefault(line, None)
        except OSError:
            continue
    for p in sorted(_known_bad):
        seen.setdefault(p, None)
    return list(seen)


def unreadable_tracklets(tracklets: Sequence) -> list[int]:
    """Indices of the tracklets none of whose frames could be read (so far, by this process or its
    DataLoader workers): their clips are blank, so they carry no appearance at all."""
    bad = set(skipped_frames())
    if not bad:
        return []
    return [i for i, t in enumerate(tracklets) if t.paths and all(p in bad for p in t.paths)]


def report_skipped_frames(file: TextIO = None, max_listed: int = 10) -> int:
    """Print how many frames were skipped (and the first few paths); returns the count."""
    file = sys.stdout if file is None else file
    paths = skipped_frames()
    if not paths:
        print("data: no unreadable frames were skipped", file=file)
        return 0
    print(f"data: {len(paths)} unreadable frame(s) were skipped (replaced by the nearest readable "
          f"frame of the same tracklet):", file=file)
    for p in paths[:max_listed]:
        print(f"  {p}", file=file)
    if len(paths) > max_listed:
        print(f"  ... and {len(paths) - max_listed} more", file=file)
    return len(paths)


def reset_skipped_frames() -> None:
    """Forget every recorded skip (e.g. between independent runs in one process)."""
    _known_bad.clear()
    path = os.environ.get(_ENV)
    if path and os.path.isdir(path):
        for name in os.listdir(path):
            try:
                os.remove(os.path.join(path, name))
            except OSError:
                pass
