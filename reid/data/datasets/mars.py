"""MARS (Zheng et al., ECCV 2016): 1,261 identities, 6 cameras, ~20k tracklets."""
from __future__ import annotations

import os

import numpy as np
from scipy.io import loadmat

from ..tracklet import Tracklet, has_valid_match
from .base import DatasetLayoutError, VideoDataset, check_split_id, resolve_dataset_dir

__all__ = ["load_mars", "MARS_LAYOUT", "MARS_PROTOCOLS"]

MARS_LAYOUT = """\
<root>/MARS/
  bbox_train/<pid4>/<pid4>C<cam>T<tracklet4>F<frame3>.jpg   e.g. bbox_train/0001/0001C1T0001F001.jpg
  bbox_test/<pid4>/<image>.jpg                              (pid folders 00-1 = junk, 0000 = distractors)
  info/train_name.txt            one image name per line (the order the .mat indices refer to)
  info/test_name.txt
  info/tracks_train_info.mat     key track_train_info: rows [start, end, pid, camid], 1-based, inclusive
  info/tracks_test_info.mat      key track_test_info
  info/query_IDX.mat             key query_IDX: 1-based row numbers of the query tracks in track_test_info"""

MARS_PROTOCOLS = {
    "release": "MARS release protocol: query tracklets are appended to the gallery (AP3D and the "
               "MARS authors' code)",
    "skip_unmatched": "MARS torchreid protocol: gallery = test tracklets not used as queries; "
                      "queries without a match in another camera are skipped",
}

_MARKERS = ("bbox_train", "bbox_test", "info/train_name.txt", "info/test_name.txt",
            "info/tracks_train_info.mat", "info/tracks_test_info.mat", "info/query_IDX.mat")


def _read_names(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def _read_mat(path: str, key: str, ncols: int | None) -> np.ndarray:
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several unrelated types for a damaged file
        raise DatasetLayoutError("MARS", f"a readable MATLAB file at {path}", MARS_LAYOUT,
                                 f"{type(exc).__name__}: {exc}") from exc
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetLayoutError("MARS", f"key {key!r} in {path}", MARS_LAYOUT, f"found keys {found}")
    arr = np.asarray(mat[key])
    if ncols is not None and (arr.ndim != 2 or arr.shape[1] != ncols):
        raise DatasetLayoutError("MARS", f"{key} in {path} to be an N x {ncols} matrix", MARS_LAYOUT,
                                 f"got shape {arr.shape}")
    return arr.astype(np.int64)


def _tracklets(base: str, home: str, names: list[str], info: np.ndarray, where: str) -> list[Tracklet]:
    out = []
    for row, (start, end, pid, camid) in enumerate(info.tolist()):
        if pid == -1:  # junk boxes: dropped from every subset (release and torchreid agree)
            continue
        if not (1 <= start and end <= len(names)):
            raise DatasetLayoutError(
                "MARS", f"1-based frame indices within the {len(names)} names of {where}", MARS_LAYOUT,
                f"row {row + 1} spans [{start}, {end}]")
        frames = names[start - 1:end]  # an end < start row yields an empty tracklet, dropped later
        paths = tuple(os.path.join(base, home, n[:4], n) for n in frames)
        out.append(Tracklet(paths, int(pid), int(camid) - 1))
    return out


def load_mars(root, split_id: int = 0, protocol: str = "release", dense: bool = False) -> VideoDataset:
    if protocol not in MARS_PROTOCOLS:
        raise ValueError(f"protocol for mars must be one of {sorted(MARS_PROTOCOLS)}, got {protocol!r}")
    split_id = check_split_id(split_id, 1, "MARS")
    base = resolve_dataset_dir("MARS", root, "MARS", _MARKERS, MARS_LAYOUT)
    info = os.path.join(base, "info")
    train_names = _read_names(os.path.join(info, "train_name.txt"))
    test_names = _read_names(os.path.join(info, "test_name.txt"))
    track_train = _read_mat(os.path.join(info, "tracks_train_info.mat"), "track_train_info", 4)
    track_test = _read_mat(os.path.join(info, "tracks_test_info.mat"), "track_test_info", 4)
    query_idx = _read_mat(os.path.join(info, "query_IDX.mat"), "query_IDX", None).reshape(-1) - 1
    if query_idx.size and (query_idx.min() < 0 or query_idx.max() >= len(track_test)):
        raise DatasetLayoutError("MARS", f"query_IDX values in [1, {len(track_test)}]", MARS_LAYOUT,
                                 f"got range [{query_idx.min() + 1}, {query_idx.max() + 1}]")
    is_query = np.zeros(len(track_test), dtype=bool)
    is_query[query_idx] = True

    train = _tracklets(base, "bbox_train", train_names, track_train, "info/train_name.txt")
    # Keep the query_IDX order for queries (it is the order results are usually reported in).
    query = _tracklets(base, "bbox_test", test_names, track_test[query_idx], "info/test_name.txt")
    gallery = _tracklets(base, "bbox_test", test_names, track_test[~is_query], "info/test_name.txt")
    notes = []
    if protocol == "release":
        gallery = gallery + query
    else:
        matched_query = [q for q, ok in zip(query, has_valid_match(query, gallery)) if ok]
        if len(matched_query) != len(query):
            notes.append(f"{len(query) - len(matched_query)} queries without a match in another "
                         f"camera were skipped")
        query = matched_query
    return VideoDataset.build("MARS", train, query, gallery, dense=dense,
                              protocol=MARS_PROTOCOLS[protocol], num_splits=1, split_id=split_id,
                              root=base, notes=notes)
