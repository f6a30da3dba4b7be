"""DukeMTMC-VideoReID (Wu et al., CVPR 2018): 702 train / 702 test identities (+408 distractors), 8 cameras."""
from __future__ import annotations

import os
import re

from ..tracklet import Tracklet
from .base import DatasetLayoutError, VideoDataset, check_split_id, list_dirs, list_images, resolve_dataset_dir

__all__ = ["load_duke", "DUKE_LAYOUT", "parse_duke_frame"]

DUKE_LAYOUT = """\
<root>/DukeMTMC-VideoReID/
  train/<pid4>/<tracklet4>/<pid4>_C<cam>_F<frame4>_X<n>.jpg   e.g. train/0001/0001/0001_C6_F0099_X30823.jpg
  query/<pid4>/<tracklet4>/*.jpg
  gallery/<pid4>/<tracklet4>/*.jpg"""

_FRAME = re.compile(r"_C(\d+)_F(\d+)", re.IGNORECASE)


def parse_duke_frame(path: str) -> tuple[int, int]:
    """(1-based camera, frame number) from a name like 0001_C6_F0099_X30823.jpg."""
    m = _FRAME.search(os.path.basename(path))
    if m is None:
        raise DatasetLayoutError("DukeMTMC-VideoReID", f"frame names like 0001_C6_F0099_X30823.jpg",
                                 DUKE_LAYOUT, f"got {path}")
    return int(m.group(1)), int(m.group(2))


def _read_split(split_dir: str) -> list[Tracklet]:
    out = []
    for pid_name in list_dirs(split_dir):
        try:
            pid = int(pid_name)
        except ValueError:
            raise DatasetLayoutError("DukeMTMC-VideoReID", f"numeric identity folders in {split_dir}",
                                     DUKE_LAYOUT, f"got {os.path.join(split_dir, pid_name)}") from None
        pid_dir = os.path.join(split_dir, pid_name)
        for tid in list_dirs(pid_dir):
            frames = list_images(os.path.join(pid_dir, tid))
            if not frames:
                out.append(Tracklet((), pid, -1))  # counted and dropped by VideoDataset.build
                continue
            parsed = [parse_duke_frame(p) for p in frames]
            cams = {c for c, _ in parsed}
            if len(cams) != 1:
                raise DatasetLayoutError("DukeMTMC-VideoReID", "one camera per tracklet", DUKE_LAYOUT,
                                         f"{os.path.join(pid_dir, tid)} mixes cameras {sorted(cams)}")
            # Order by the F frame number: names sort identically only while the padding holds.
            order = sorted(range(len(frames)), key=lambda i: parsed[i][1])
            out.append(Tracklet(tuple(frames[i] for i in order), pid, cams.pop() - 1))
    return out


def load_duke(root, split_id: int = 0, dense: bool = True) -> VideoDataset:
    split_id = check_split_id(split_id, 1, "DukeMTMC-VideoReID")
    base = resolve_dataset_dir("DukeMTMC-VideoReID", root, "DukeMTMC-VideoReID",
                               ("train", "query", "gallery"), DUKE_LAYOUT)
    train, query, gallery = (_read_split(os.path.join(base, s)) for s in ("train", "query", "gallery"))
    if not train and not query:
        raise DatasetLayoutError("DukeMTMC-VideoReID", f"tracklet folders under {base}/train and /query",
                                 DUKE_LAYOUT, "found no tracklets")
    return VideoDataset.build("DukeMTMC-VideoReID", train, query, gallery, dense=dense,
                              protocol="DukeMTMC-VideoReID fixed split" + (
                                  "; dense training (64-frame chunks, AP3D release)" if dense else ""),
                              num_splits=1, split_id=split_id, root=base)
