"""iLIDS-VID (Wang et al., ECCV 2014): 300 identities, 2 cameras, 10 train/test splits."""
from __future__ import annotations

import os
import re

import numpy as np
from scipy.io import loadmat

from ..tracklet import Tracklet
from .base import DatasetLayoutError, VideoDataset, check_split_id, list_dirs, list_images, resolve_dataset_dir

__all__ = ["load_ilidsvid", "ILIDSVID_LAYOUT"]

ILIDSVID_LAYOUT = """\
<root>/iLIDS-VID/
  i-LIDS-VID/sequences/cam1/<person>/*.png        e.g. cam1/person001/cam1_person001_00317.png
  i-LIDS-VID/sequences/cam2/<person>/*.png
  train-test people splits/train_test_splits_ilidsvid.mat
      key ls_set: 10 x 300, row = one split; 1-based indices into the sorted person folders;
      the first half of each row are the test persons, the rest train
Query = cam1, gallery = cam2; report the mean over the 10 splits."""

_SEQ = os.path.join("i-LIDS-VID", "sequences")
_SPLITS = os.path.join("train-test people splits", "train_test_splits_ilidsvid.mat")


def _pid(name: str) -> int:
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else -1


def load_ilidsvid(root, split_id: int = 0, dense: bool = True) -> VideoDataset:
    base = resolve_dataset_dir("iLIDS-VID", root, "iLIDS-VID",
                               (os.path.join(_SEQ, "cam1"), os.path.join(_SEQ, "cam2"), _SPLITS),
                               ILIDSVID_LAYOUT)
    split_path = os.path.join(base, _SPLITS)
    try:
        mat = loadmat(split_path)
    except Exception as exc:
        raise DatasetLayoutError("iLIDS-VID", f"a readable MATLAB file at {split_path}", ILIDSVID_LAYOUT,
                                 f"{type(exc).__name__}: {exc}") from exc
    if "ls_set" not in mat:
        raise DatasetLayoutError("iLIDS-VID", f"key 'ls_set' in {split_path}", ILIDSVID_LAYOUT,
                                 f"found keys {sorted(k for k in mat if not k.startswith('__'))}")
    splits = np.asarray(mat["ls_set"]).astype(np.int64)
    if splits.ndim != 2:
        raise DatasetLayoutError("iLIDS-VID", f"ls_set in {split_path} to be a splits x persons matrix",
                                 ILIDSVID_LAYOUT, f"got shape {splits.shape}")
    split_id = check_split_id(split_id, splits.shape[0], "iLIDS-VID")

    # Sorted, unlike the release (os.listdir order made its splits filesystem-dependent).
    cam1_dir = os.path.join(base, _SEQ, "cam1")
    persons = list_dirs(cam1_dir)
    if len(persons) != splits.shape[1]:
        raise DatasetLayoutError("iLIDS-VID", f"{splits.shape[1]} person folders in {cam1_dir} "
                                 f"(one per ls_set column)", ILIDSVID_LAYOUT, f"found {len(persons)}")
    row = splits[split_id]
    if row.min() < 1 or row.max() > len(persons):
        raise DatasetLayoutError("iLIDS-VID", f"ls_set values in [1, {len(persons)}]", ILIDSVID_LAYOUT,
                                 f"split {split_id} has range [{row.min()}, {row.max()}]")
    half = int(round(len(row) * 0.5))
    test_persons = [persons[i - 1] for i in sorted(row[:half].tolist())]
    train_persons = [persons[i - 1] for i in sorted(row[half:].tolist())]

    def tracklets(names, cams):
        out = []
        for name in names:
            for cam in cams:
                frames = list_images(os.path.join(base, _SEQ, f"cam{cam}", name))
                out.append(Tracklet(tuple(frames), _pid(name), cam - 1))
        return out

    return VideoDataset.build(
        "iLIDS-VID", tracklets(train_persons, (1, 2)), tracklets(test_persons, (1,)),
        tracklets(test_persons, (2,)), dense=dense,
        protocol="iLIDS-VID: query cam1, gallery cam2, splits from ls_set over sorted person folders"
                 + ("; dense training (64-frame chunks, AP3D release)" if dense else ""),
        num_splits=splits.shape[0], split_id=split_id, root=base)
