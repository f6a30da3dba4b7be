"""Shared dataset machinery: the container every loader returns, layout errors, directory scans."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from ..images import IMAGE_EXTENSIONS
from ..tracklet import Tracklet, count_unmatched_queries, relabel, split_dense, subset_stats

__all__ = [
    "VideoDataset",
    "DatasetLayoutError",
    "EmptySplitError",
    "resolve_dataset_dir",
    "list_images",
    "natural_key",
    "check_split_id",
]

logger = logging.getLogger("reid.data")


class DatasetLayoutError(FileNotFoundError):
    """A dataset root is missing or does not have the layout of the dataset's public release."""

    def __init__(self, dataset: str, expected: str, layout: str, detail: str = ""):
        self.dataset, self.expected, self.layout = dataset, expected, layout
        msg = f"{dataset}: expected {expected}"
        if detail:
            msg += f" ({detail})"
        msg += f"\nexpected layout of {dataset}:\n{layout.rstrip()}"
        super().__init__(msg)


class EmptySplitError(ValueError):
    """The query or gallery split of a dataset holds no tracklet, so nothing could be evaluated."""


def natural_key(text: str) -> list:
    """Sort key that orders 'f2' before 'f10' (frame numbers are not always zero-padded)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def list_images(directory: str) -> list[str]:
    """Image files directly inside `directory`, in natural order, as full paths."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    names = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    names.sort(key=natural_key)
    return [os.path.join(directory, n) for n in names]


def list_dirs(directory: str) -> list[str]:
    try:
        names = [n for n in os.listdir(directory) if not n.startswith(".")]
    except OSError:
        return []
    return sorted((n for n in names if os.path.isdir(os.path.join(directory, n))), key=natural_key)


def resolve_dataset_dir(dataset: str, root, dirname: str, markers: Sequence[str], layout: str) -> str:
    """Find the dataset folder: `<root>/<dirname>`, or `root` itself if it already is that folder.

    `markers` are paths (relative to the dataset folder) that must all exist.
    """
    if root is None:
        raise DatasetLayoutError(
            dataset, f"a root directory holding {dirname}/ (pass root=... or --root)", layout,
            "no root was given; public datasets are never downloaded, point root at your own copy")
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike), got {type(root).__name__}")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    candidates = [os.path.normpath(os.path.join(root, dirname)), root]
    for cand in candidates:
        if all(os.path.exists(os.path.join(cand, m)) for m in markers):
            return cand
    base = candidates[0] if os.path.isdir(candidates[0]) else (root if os.path.isdir(root) else candidates[0])
    missing = [os.path.join(base, m) for m in markers if not os.path.exists(os.path.join(base, m))]
    if not os.path.isdir(root):
        detail = f"the root directory {root} does not exist"
        expected = os.path.join(root, dirname)
    else:
        detail = "missing: " + ", ".join(missing)
        expected = missing[0]
    raise DatasetLayoutError(dataset, expected, layout, detail)


def check_split_id(split_id, num_splits: int, dataset: str = "this dataset") -> int:
    """`split_id` if it names one of the dataset's splits; one-split datasets accept only 0."""
    if isinstance(split_id, bool) or not isinstance(split_id, int):
        raise TypeError(f"split_id must be an int in [0, {num_splits - 1}], got {split_id!r}")
    if not 0 <= split_id < num_splits:
        raise ValueError(f"split_id must be in [0, {num_splits - 1}] for {dataset} "
                         f"({num_splits} split{'s' if num_splits != 1 else ''}), got {split_id}")
    return split_id


@dataclass
class VideoDataset:
    """Train / query / gallery tracklets of one dataset (and one split of it).

    Train pids are relabelled to 0..num_train_pids-1; query and gallery keep the original pids so
    that query-gallery matching by pid stays meaningful.
    """

    name: str
    train: list[Tracklet]
    query: list[Tracklet]
    gallery: list[Tracklet]
    protocol: str = ""
    num_splits: int = 1
    split_id: int = 0
    root: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    train_pid_map: dict[int, int] = field(default_factory=dict)

    @classmethod
    def build(cls, name: str, train: Iterable[Tracklet], query: Iterable[Tracklet],
              gallery: Iterable[Tracklet], *, dense: bool = False, dense_chunk: int = 64,
              **kwargs) -> "VideoDataset":
        """Drop empty tracklets (with a note), optionally cut train into dense chunks, relabel."""
        notes = list(kwargs.pop("notes", []))
        subsets = {}
        for subset, items in (("train", train), ("query", query), ("gallery", gallery)):
            items = list(items)
            kept = [t for t in items if len(t.paths) > 0]
            if len(kept) != len(items):
                msg = f"{len(items) - len(kept)} empty {subset} tracklet(s) (no frames) were dropped"
                logger.warning("%s: %s", name, msg)
                notes.append(msg)
            subsets[subset] = kept
        for subset in ("query", "gallery"):  # found now, not after a whole training run
            if not subsets[subset]:
                where = f" under {kwargs['root']}" if kwargs.get("root") else ""
                raise EmptySplitError(
                    f"{name}: the {subset} split{where} has no tracklet with frames; evaluation needs at least one "
                    f"query and one gallery tracklet"
                )
        train_list = subsets["train"]
        if dense:
            before = len(train_list)
            train_list = split_dense(train_list, dense_chunk)
            notes.append(f"dense training: {before} train tracklets cut into {len(train_list)} "
                         f"chunks of {dense_chunk} frames")
        train_list, mapping = relabel(train_list)
        return cls(name=name, train=train_list, query=subsets["query"], gallery=subsets["gallery"],
                   notes=notes, train_pid_map=mapping, **kwargs)

    @property
    def num_train_pids(self) -> int:
        return len({t.pid for t in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({t.camid for t in self.train})

    @property
    def num_unmatched_queries(self) -> int:
        return count_unmatched_queries(self.query, self.gallery)

    def summary(self) -> str:
        header = f"=> {self.name}"
        if self.num_splits > 1:
            header += f" (split {self.split_id} of {self.num_splits})"
        lines = [header]
        if self.protocol:
            lines.append(f"   protocol: {self.protocol}")
        if self.root:
            lines.append(f"   root: {self.root}")
        cols = ("subset", "ids", "tracklets", "frames", "frames/tracklet min/avg/max", "cams")
        rows = []
        for subset, items in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            s = subset_stats(items)
            avg = s["frames"] / s["tracklets"] if s["tracklets"] else 0.0
            rows.append((subset, str(s["ids"]), str(s["tracklets"]), str(s["frames"]),
                         f"{s['min']}/{avg:.1f}/{s['max']}", str(s["cams"])))
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        fmt = lambda r: "  " + " | ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                           for i, (v, w) in enumerate(zip(r, widths)))
        lines.append(fmt(cols))
        lines.append("  " + "-+-".join("-" * w for w in widths))
        lines.extend(fmt(r) for r in rows)
        unmatched = self.num_unmatched_queries
        if unmatched:
            lines.append(f"   {unmatched} quer{'y has' if unmatched == 1 else 'ies have'} no gallery "
                         f"match in another camera (skipped by the evaluator)")
        lines.extend(f"   note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"VideoDataset(name={self.name!r}, train={len(self.train)}, query={len(self.query)}, "
                f"gallery={len(self.gallery)}, num_train_pids={self.num_train_pids}, "
                f"split_id={self.split_id}/{self.num_splits})")
