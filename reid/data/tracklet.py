"""The unit every loader yields: one tracklet = the ordered frame paths of one person in one camera."""
from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

__all__ = ["Tracklet", "relabel", "split_dense", "count_unmatched_queries", "has_valid_match", "subset_stats"]


class Tracklet(NamedTuple):
    """Frame paths in temporal order, the person id and the 0-based camera id."""

    paths: tuple[str, ...]
    pid: int
    camid: int


def relabel(tracklets: Iterable[Tracklet]) -> tuple[list[Tracklet], dict[int, int]]:
    """Map the pids to 0..N-1 in ascending order of the original pid.

    Sorting (rather than first-seen order, as some releases do) makes the labels independent of
    the order in which the filesystem or an annotation file lists the tracklets.
    """
    tracklets = list(tracklets)
    mapping = {pid: label for label, pid in enumerate(sorted({t.pid for t in tracklets}))}
    return [t._replace(pid=mapping[t.pid]) for t in tracklets], mapping


def split_dense(tracklets: Iterable[Tracklet], chunk: int = 64) -> list[Tracklet]:
    """Cut every tracklet into consecutive `chunk`-frame pieces ("dense" training tracklets).

    As in the AP3D release, the remainder joins the last piece instead of forming a short one
    (a 150-frame tracklet becomes 64 + 86 frames), and a tracklet shorter than `chunk` is kept whole.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"dense chunk must be a positive integer number of frames, got {chunk!r}")
    out: list[Tracklet] = []
    for t in tracklets:
        pieces = len(t.paths) // chunk
        if pieces <= 1:
            out.append(t)
            continue
        for i in range(pieces):
            stop = (i + 1) * chunk if i < pieces - 1 else len(t.paths)
            out.append(t._replace(paths=t.paths[i * chunk:stop]))
    return out


def count_unmatched_queries(query: Sequence[Tracklet], gallery: Sequence[Tracklet]) -> int:
    """Queries whose identity never appears in the gallery under another camera.

    Same identity and same camera matches are junk in the standard protocol, so such a query has
    no valid match and the evaluator skips it.
    """
    return sum(1 for ok in has_valid_match(query, gallery) if not ok)


def has_valid_match(query: Sequence[Tracklet], gallery: Sequence[Tracklet]) -> list[bool]:
    """Per query: does the gallery hold its identity under a different camera?"""
    cams_of: dict[int, set[int]] = {}
    for g in gallery:
        cams_of.setdefault(g.pid, set()).add(g.camid)
    return [bool(cams_of.get(q.pid, set()) - {q.camid}) for q in query]


def subset_stats(tracklets: Sequence[Tracklet]) -> dict[str, int]:
    lengths = [len(t.paths) for t in tracklets]
    return {
        "ids": len({t.pid for t in tracklets}),
        "tracklets": len(tracklets),
        "frames": sum(lengths),
        "min": min(lengths, default=0),
        "max": max(lengths, default=0),
        "cams": len({t.camid for t in tracklets}),
    }
