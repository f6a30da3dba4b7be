"""PRID2011 (Hirzer et al., SCIA 2011), multi-shot: persons 1..200 seen by both cameras."""
from __future__ import annotations

import os

import numpy as np

from ..tracklet import Tracklet
from .base import DatasetLayoutError, VideoDataset, check_split_id, list_images, resolve_dataset_dir

__all__ = ["load_prid", "PRID_LAYOUT", "prid_splits"]

PRID_LAYOUT = """\
<root>/prid_2011/multi_shot/
  cam_a/person_0001/0001.png ... person_0385/
  cam_b/person_0001/0001.png ... person_0749/
Persons 0001..0200 appear in both cameras; only they are used. 10 random 50/50 train/test
splits of them (seeded, identical on every machine); query = cam_a, gallery = cam_b."""

NUM_SPLITS = 10
NUM_SHARED = 200


def prid_splits(persons: list[int], num_splits: int = NUM_SPLITS, seed: int = 2011) -> list[tuple[list[int], list[int]]]:
    """(train, test) person lists; the first half of each seeded permutation is test."""
    persons = sorted(persons)
    half = len(persons) // 2
    out = []
    for i in range(num_splits):
        perm = np.random.default_rng([seed, i]).permutation(len(persons))
        test = sorted(persons[j] for j in perm[:half])
        train = sorted(persons[j] for j in perm[half:])
        out.append((train, test))
    return out


def load_prid(root, split_id: int = 0, min_seq_len: int = 27, dense: bool = False) -> VideoDataset:
    """`min_seq_len`: keep persons with at least this many frames in both cameras (27 -> the usual
    178 persons; 0 -> all 200)."""
    if isinstance(min_seq_len, bool) or not isinstance(min_seq_len, int) or min_seq_len < 0:
        raise ValueError(f"min_seq_len must be a non-negative int, got {min_seq_len!r}")
    split_id = check_split_id(split_id, NUM_SPLITS, "PRID2011")
    base = resolve_dataset_dir("PRID2011", root, os.path.join("prid_2011", "multi_shot"),
                               ("cam_a", "cam_b"), PRID_LAYOUT)
    frames = {}
    for pid in range(1, NUM_SHARED + 1):
        a = list_images(os.path.join(base, "cam_a", f"person_{pid:04d}"))
        b = list_images(os.path.join(base, "cam_b", f"person_{pid:04d}"))
        if a and b and min(len(a), len(b)) >= min_seq_len:
            frames[pid] = (tuple(a), tuple(b))
    if len(frames) < 2:
        raise DatasetLayoutError("PRID2011", f"person_0001..person_0200 folders with >= {min_seq_len} "
                                 f"frames in both {base}/cam_a and {base}/cam_b", PRID_LAYOUT,
                                 f"found {len(frames)} such person(s)")
    train_p, test_p = prid_splits(list(frames), NUM_SPLITS)[split_id]
    train = [Tracklet(frames[p][c], p, c) for p in train_p for c in (0, 1)]
    query = [Tracklet(frames[p][0], p, 0) for p in test_p]
    gallery = [Tracklet(frames[p][1], p, 1) for p in test_p]
    return VideoDataset.build(
        "PRID2011", train, query, gallery, dense=dense,
        protocol=f"PRID2011: {len(frames)} persons with >= {min_seq_len} frames in both cameras, "
                 f"seeded 50/50 splits; query cam_a, gallery cam_b",
        num_splits=NUM_SPLITS, split_id=split_id, root=base)
