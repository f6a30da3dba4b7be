"""Ground-truth correspondence between the feature maps of two frames of a synthetic tracklet.

The synthetic generator (``reid.data.synthetic.generator``) draws every frame of a tracklet on a
canvas that follows the person: the person's true box (bw x bh render pixels) is centred on the
canvas in every frame. A simulated detector then crops a box around it and resizes the crop to
the output frame. ``annotations.json`` stores that box per frame as ``[dx, dy, sx, sy]``: the
crop's centre offset from the true box's centre, in fractions of the true box's width and height,
and the crop's size relative to the true box.

So the person's body gives a frame of reference shared by all frames of a tracklet. With body
coordinates ``(u, v)`` = position relative to the true box's centre, in true-box widths and
heights (the true box spans ``[-0.5, 0.5]^2``), and normalised image coordinates ``(a, b)`` in
``[0, 1]^2`` (left/top edge of the frame to right/bottom edge), a frame with box
``(dx, dy, sx, sy)`` shows body point ``(u, v)`` at::

    u = dx + sx * (a - 0.5)        v = dy + sy * (b - 0.5)

which is exact for the crop-and-resize (and for any later resize of the whole frame). A feature
cell of the centre frame -> image point -> body point -> image point of the neighbour frame ->
feature cell of the neighbour gives where the same body point lies in the neighbour.

What the truth leaves out: the body is treated as rigid. With ``pose_amplitude > 0`` the limbs
swing and the hips bob by a few per cent of the body height, and the background scrolls behind
the person (the canvas follows them), so only the torso and head follow the mapping exactly.
Occluders are not annotated. Positions whose body point lies outside the person's true box, or
outside the neighbour's crop (cut off), have no correspondence and are marked invalid.

Everything here is numpy and pure, except the annotation lookup, which reads the set's JSON.
"""
from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "ANNOTATIONS_FILE",
    "image_to_body",
    "body_to_image",
    "FeatureGrid",
    "correspondence",
    "load_annotations",
    "find_synthetic_root",
    "synthetic_manifest",
    "tracklet_boxes",
]

ANNOTATIONS_FILE = "annotations.json"


def _box(box) -> tuple[float, float, float, float]:
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.all(np.isfinite(values)) or values[2] <= 0 or values[3] <= 0:
        raise ValueError(f"box must be [dx, dy, sx, sy] with finite values and sx, sy > 0, got {box!r}")
    return tuple(float(v) for v in values)


def image_to_body(a, b, box):
    """Normalised image coordinates ``(a, b)`` of a frame with ``box`` -> body coordinates ``(u, v)``."""
    dx, dy, sx, sy = _box(box)
    return dx + sx * (np.asarray(a, dtype=np.float64) - 0.5), dy + sy * (np.asarray(b, dtype=np.float64) - 0.5)


def body_to_image(u, v, box):
    """Body coordinates ``(u, v)`` -> normalised image coordinates ``(a, b)`` of a frame with ``box``."""
    dx, dy, sx, sy = _box(box)
    return (np.asarray(u, dtype=np.float64) - dx) / sx + 0.5, (np.asarray(v, dtype=np.float64) - dy) / sy + 0.5


@dataclass(frozen=True)
class FeatureGrid:
    """Where the cells of a ``height x width`` feature map sit on the ``input_height x input_width``
    network input.

    Cell ``(i, j)`` is centred on input pixel ``(stride * i, stride * j)``, i.e. at continuous
    coordinate ``stride * i + offset`` with ``offset = 0.5`` (pixel ``p`` spans ``[p, p + 1]``).
    That is the receptive-field centre of a ResNet, whose downsampling layers are odd kernels
    with ``padding = kernel // 2`` and stride 2 (a test measures it on the model: the input
    gradient of a stage-2 cell is centred there, not at ``stride * (i + 0.5)``).
    """

    height: int
    width: int
    stride: int
    input_height: int
    input_width: int
    offset: float = 0.5

    def __post_init__(self):
        for name in ("height", "width", "stride", "input_height", "input_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"FeatureGrid: {name} must be a positive integer, got {v!r}")

    @classmethod
    def from_shapes(cls, feature_hw: Sequence[int], input_hw: Sequence[int]) -> "FeatureGrid":
        """The grid of a feature map of size ``feature_hw`` computed from an input of ``input_hw``."""
        (h, w), (H, W) = (int(v) for v in feature_hw), (int(v) for v in input_hw)
        if h < 1 or w < 1 or H % h or W % w or H // h != W // w:
            raise ValueError(
                f"FeatureGrid.from_shapes: feature map {h}x{w} is not the input {H}x{W} divided by one "
                f"integer stride in both directions")
        return cls(h, w, H // h, H, W)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image coordinates ``(a, b)`` of every cell centre, each ``[height, width]``."""
        rows, cols = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        return ((self.stride * cols + self.offset) / self.input_width,
                (self.stride * rows + self.offset) / self.input_height)

    def to_cells(self, a, b) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image coordinates -> fractional cell coordinates ``(row, col)``."""
        return ((np.asarray(b) * self.input_height - self.offset) / self.stride,
                (np.asarray(a) * self.input_width - self.offset) / self.stride)


def correspondence(centre_box, neighbour_box, grid: FeatureGrid) -> tuple[np.ndarray, np.ndarray]:
    """Where each cell of the centre frame's feature map lies on the neighbour's feature map.

    Args:
        centre_box, neighbour_box: ``[dx, dy, sx, sy]`` of the two frames (``annotations.json``).
        grid: the feature map's geometry (both frames share it).

    Returns:
        ``target``: ``[height, width, 2]`` fractional ``(row, col)`` on the neighbour's grid of the
        body point under each centre cell; ``valid``: ``[height, width]`` bool, True where that body
        point lies inside the person's true box and inside the neighbour frame.
    """
    a, b = grid.cell_centres()
    u, v = image_to_body(a, b, centre_box)
    a2, b2 = body_to_image(u, v, neighbour_box)
    row, col = grid.to_cells(a2, b2)
    on_person = (np.abs(u) <= 0.5) & (np.abs(v) <= 0.5)
    in_frame = (a2 >= 0.0) & (a2 <= 1.0) & (b2 >= 0.0) & (b2 <= 1.0)
    return np.stack([row, col], axis=-1), on_person & in_frame


# ---------------------------------------------------------------------------------------------
# Reading the boxes of a tracklet


@functools.lru_cache(maxsize=8)
def load_annotations(root: str) -> dict:
    """The ``annotations.json`` of a synthetic set (``{tracklet dir relative to root: {...}}``)."""
    path = os.path.join(root, ANNOTATIONS_FILE)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read synthetic annotations {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of tracklet directories to annotations")
    return data


def find_synthetic_root(path: str, max_levels: int = 5) -> Optional[str]:
    """The synthetic set a frame or tracklet folder belongs to (the directory holding
    ``annotations.json`` a few levels above it), or None."""
    directory = os.path.abspath(path)
    for _ in range(max_levels):
        directory = os.path.dirname(directory)
        if os.path.isfile(os.path.join(directory, ANNOTATIONS_FILE)):
            return directory
    return None


def synthetic_manifest(root: str) -> Optional[dict]:
    """The generator's ``manifest.json`` of a synthetic set (its options and seed), or None."""
    try:
        with open(os.path.join(root, "manifest.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def tracklet_boxes(paths: Sequence[str]) -> Optional[np.ndarray]:
    """``[len(paths), 4]`` boxes of a synthetic tracklet's frames, or None if the frames do not
    come from a synthetic set (no ``annotations.json`` above them, or no entry for them).

    Frames are ``<set>/<subset>/<pid>/<tracklet>/<frame index>.jpg``; the frame index in the file
    name selects the box, so any subset of a tracklet's frames, in any order, works.
    """
    if not paths:
        return None
    tracklet_dir = os.path.dirname(os.path.abspath(paths[0]))
    root = find_synthetic_root(paths[0])
    if root is None:
        return None
    entry = load_annotations(root).get(os.path.relpath(tracklet_dir, root).replace(os.sep, "/"))
    if entry is None:
        return None
    boxes = np.asarray(entry["boxes"], dtype=np.float64)
    out = np.empty((len(paths), 4))
    for k, path in enumerate(paths):
        if os.path.dirname(os.path.abspath(path)) != tracklet_dir:
            raise ValueError(f"tracklet_boxes: frames of one tracklet expected, got {paths[0]} and {path}")
        m = re.fullmatch(r"(\d+)", os.path.splitext(os.path.basename(path))[0])
        if m is None or int(m.group(1)) >= len(boxes):
            raise ValueError(f"tracklet_boxes: {path} is not a frame of the annotated tracklet "
                             f"({len(boxes)} frames named 000.jpg ...)")
        out[k] = boxes[int(m.group(1))]
    return out
