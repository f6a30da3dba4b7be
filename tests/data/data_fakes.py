"""Miniature copies of the public datasets, written in each release's exact on-disk layout."""
from __future__ import annotations

import os
import random

import numpy as np
from PIL import Image
from scipy.io import savemat


def write_image(path: str, value: int = 0, size=(8, 16)) -> str:
    """A small real image whose red channel encodes `value` (0..255), green a second code."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[..., 0] = value % 256
    arr[..., 1] = (value // 256) % 256
    arr[..., 2] = 77
    Image.fromarray(arr).save(path)
    return path


def make_mars(root: str) -> dict:
    """MARS with train pids {1, 2, 5}; test pids {3, 4} + distractor 0 + junk -1.

    Test tracks (1-based rows): 1: pid3 c1, 2: pid3 c2, 3: pid3 c2, 4: pid4 c1, 5: pid4 c3,
    6: pid0 c2 (distractors), 7: pid-1 c1 (junk). query_IDX = [1, 4, 5]: pid 3 queried from c1
    (its c2 tracks stay in the gallery) and pid 4 queried from c1 and c3, leaving no pid-4 gallery
    track: in the torchreid protocol both pid-4 queries have no match.
    """
    base = os.path.join(root, "MARS")
    info = os.path.join(base, "info")
    os.makedirs(info)

    def tracks(home, spec):
        names, rows = [], []
        for t, (pid, cam, n) in enumerate(spec, start=1):
            start = len(names) + 1
            for f in range(1, n + 1):
                pid_dir = "00-1" if pid == -1 else f"{pid:04d}"
                name = f"{pid_dir}C{cam}T{t:04d}F{f:03d}.jpg"
                names.append(name)
                write_image(os.path.join(base, home, pid_dir, name), f)
            rows.append([start, len(names), pid, cam])
        return names, np.array(rows, dtype=np.int32)

    train_spec = [(1, 1, 3), (1, 2, 2), (2, 1, 4), (5, 3, 2), (5, 6, 3)]
    test_spec = [(3, 1, 2), (3, 2, 3), (3, 2, 2), (4, 1, 2), (4, 3, 2), (0, 2, 2), (-1, 1, 1)]
    train_names, train_info = tracks("bbox_train", train_spec)
    test_names, test_info = tracks("bbox_test", test_spec)
    for fname, names in (("train_name.txt", train_names), ("test_name.txt", test_names)):
        with open(os.path.join(info, fname), "w") as fh:
            fh.write("\n".join(names) + "\n")
    savemat(os.path.join(info, "tracks_train_info.mat"), {"track_train_info": train_info})
    savemat(os.path.join(info, "tracks_test_info.mat"), {"track_test_info": test_info})
    savemat(os.path.join(info, "query_IDX.mat"), {"query_IDX": np.array([[1, 4, 5]], dtype=np.int32)})
    return {"train_spec": train_spec, "test_spec": test_spec, "base": base}


def duke_frame(base, split, pid, tid, cam, frame, x=1) -> str:
    return os.path.join(base, split, f"{pid:04d}", f"{tid:04d}", f"{pid:04d}_C{cam}_F{frame:04d}_X{x:05d}.jpg")


def make_duke(root: str, long_tracklet: int = 150) -> str:
    """train: pid 7 (C1, `long_tracklet` frames; C2 3 frames), pid 9 (C3, 3 frames) and an empty
    tracklet folder; query: pid 11 C1; gallery: pid 11 C4, pid 0 C2 (distractor)."""
    base = os.path.join(root, "DukeMTMC-VideoReID")
    frames = list(range(1, long_tracklet + 1))
    random.Random(0).shuffle(frames)  # creation order must not matter
    for f in frames:
        write_image(duke_frame(base, "train", 7, 1, 1, f * 5), f % 256)
    for f in (3, 1, 2):
        write_image(duke_frame(base, "train", 7, 2, 2, f), f)
        write_image(duke_frame(base, "train", 9, 1, 3, f), f)
        write_image(duke_frame(base, "query", 11, 1, 1, f), f)
        write_image(duke_frame(base, "gallery", 11, 2, 4, f), f)
        write_image(duke_frame(base, "gallery", 0, 1, 2, f), f)
    os.makedirs(os.path.join(base, "train", "0009", "0002"))  # empty tracklet
    return base


def make_ilidsvid(root: str, num_persons: int = 6, frames=(3, 4)) -> tuple[str, np.ndarray]:
    base = os.path.join(root, "iLIDS-VID")
    names = [f"person{p:03d}" for p in (4, 1, 12, 2, 9, 30)[:num_persons]]
    for name in names:  # deliberately unsorted creation order
        for cam, n in zip((1, 2), frames):
            for f in range(n):
                write_image(os.path.join(base, "i-LIDS-VID", "sequences", f"cam{cam}", name,
                                         f"cam{cam}_{name}_{f:05d}.png"), f)
    rng = np.random.default_rng(0)
    ls_set = np.stack([rng.permutation(num_persons) + 1 for _ in range(10)]).astype(np.float64)
    split_dir = os.path.join(base, "train-test people splits")
    os.makedirs(split_dir)
    savemat(os.path.join(split_dir, "train_test_splits_ilidsvid.mat"), {"ls_set": ls_set})
    return base, ls_set


def make_prid(root: str) -> str:
    """Persons 1..8 in both cameras (person 3 has only 2 frames in cam_b), person 9 in cam_a
    only, person 201 in both cameras but outside the shared 1..200 range."""
    base = os.path.join(root, "prid_2011", "multi_shot")
    for p in list(range(1, 9)) + [201]:
        for cam in ("a", "b"):
            n = 2 if (p == 3 and cam == "b") else 5
            for f in range(1, n + 1):
                write_image(os.path.join(base, f"cam_{cam}", f"person_{p:04d}", f"{f:04d}.png"), f)
    write_image(os.path.join(base, "cam_a", "person_0009", "0001.png"), 1)
    return base


def make_folder(root: str, spec) -> str:
    """spec: {split: [(pid, tracklet_name, num_frames), ...]}; frame values = frame index."""
    for split, items in spec.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for pid, tname, n in items:
            tdir = os.path.join(root, split, str(pid), tname)
            os.makedirs(tdir, exist_ok=True)
            for f in range(n):
                write_image(os.path.join(tdir, f"{f}.png"), f)
    return root
