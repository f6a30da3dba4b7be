"""A user's own video-ReID data in a plain folder layout (also what the synthetic set writes)."""
from __future__ import annotations

import os
import re

from ..tracklet import Tracklet
from .base import DatasetLayoutError, VideoDataset, check_split_id, list_dirs, list_images, resolve_dataset_dir

__all__ = ["load_folder", "read_folder_split", "FOLDER_LAYOUT", "parse_camera"]

FOLDER_LAYOUT = """\
<root>/
  train/<pid>/<tracklet>/<frames>     e.g. train/0007/c1_t002/000.jpg
  query/<pid>/<tracklet>/<frames>
  gallery/<pid>/<tracklet>/<frames>
<pid>: an integer folder name (-1 = junk, dropped). <tracklet>: a folder whose name carries the
camera as c<N> or cam<N> at its start or after '_' / '-' (c1_t002, cam3, seq5_c2); the number is
used as the camera id as written. Frames are sorted by name, numbers compared numerically."""

_CAM = re.compile(r"(?:^|[_\-])(?:c|cam)(\d+)(?=$|[_\-a-z])", re.IGNORECASE)


def parse_camera(tracklet_dir: str) -> int:
    m = _CAM.search(os.path.basename(tracklet_dir))
    if m is None:
        raise DatasetLayoutError("folder dataset", "a camera tag c<N> or cam<N> in the tracklet folder name",
                                 FOLDER_LAYOUT, f"got {tracklet_dir}")
    return int(m.group(1))


def _no_loose_frames(directory: str, level: str, dataset: str) -> None:
    """Frames must sit in tracklet folders: loose ones would otherwise be ignored without a word."""
    loose = list_images(directory)
    if loose:
        raise DatasetLayoutError(
            dataset, f"frames inside tracklet folders (<split>/<pid>/<tracklet>/<frames>), but {len(loose)} "
            f"frame(s) lie directly in the {level} folder {directory}", FOLDER_LAYOUT,
            f"e.g. {loose[0]}; move each tracklet's frames into a folder named with its camera, such as "
            f"{os.path.join(directory, *(['c1_t001'] if level == 'identity' else ['<pid>', 'c1_t001']))}")


def read_folder_split(split_dir: str, dataset: str = "folder dataset") -> list[Tracklet]:
    out = []
    _no_loose_frames(split_dir, "split", dataset)
    for pid_name in list_dirs(split_dir):
        try:
            pid = int(pid_name)
        except ValueError:
            raise DatasetLayoutError(dataset, f"integer identity folders in {split_dir}", FOLDER_LAYOUT,
                                     f"got {os.path.join(split_dir, pid_name)}") from None
        if pid == -1:
            continue
        pid_dir = os.path.join(split_dir, pid_name)
        _no_loose_frames(pid_dir, "identity", dataset)
        for tname in list_dirs(pid_dir):
            tdir = os.path.join(pid_dir, tname)
            out.append(Tracklet(tuple(list_images(tdir)), pid, parse_camera(tdir)))
    return out


def load_folder(root, split_id: int = 0, dense: bool = False, name: str = "folder",
                protocol: str = "") -> VideoDataset:
    split_id = check_split_id(split_id, 1, name)
    base = resolve_dataset_dir(name, root, "", ("train", "query", "gallery"), FOLDER_LAYOUT)
    subsets = [read_folder_split(os.path.join(base, s), name) for s in ("train", "query", "gallery")]
    if not any(subsets):
        raise DatasetLayoutError(name, f"tracklet folders under {base}/{{train,query,gallery}}",
                                 FOLDER_LAYOUT, "all three are empty")
    return VideoDataset.build(name, *subsets, dense=dense,
                              protocol=protocol or "folder layout: query/gallery as given on disk",
                              num_splits=1, split_id=split_id, root=base)
