"""Nearest tracklets in a gallery of features (from ``reid.extract``), with faiss.

    python -m reid.search --gallery feats.npz --query /data/new/person_17 --topk 10
    python -m reid.search --gallery feats.npz --query queries.npz --topk 5 --draw results.png --json results.json

``--query`` is a tracklet folder (or a folder of tracklet folders: each becomes a query), whose
features are extracted with the gallery's checkpoint (``--checkpoint`` to use another), or a
features file written by ``reid.extract`` (every entry is a query).

The search is exact: a faiss ``IndexFlatIP`` over the L2-normalised features, so the inner product
is the cosine similarity and the distance printed, ``1 - cos``, is the evaluator's. The order is
the evaluator's ranking (up to ties of equal distance). Memory is the gallery matrix itself
(N x D x 4 bytes: one million 512-d tracklets take 2 GB) and queries are searched in batches, so
galleries of millions of tracklets work on one machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import numpy as np

from .extract import FeatureSet, find_tracklets, load_features

__all__ = ["FlatIndex", "search", "draw_results", "main"]


class FlatIndex:
    """Exact cosine search: faiss inner-product index over L2-normalised float32 rows."""

    def __init__(self, features: np.ndarray):
        import faiss

        feats = self._normalised(features, "gallery features")
        self.index = faiss.IndexFlatIP(feats.shape[1])
        self.index.add(feats)
        self.dim = feats.shape[1]

    @staticmethod
    def _normalised(x: np.ndarray, what: str) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{what}: expected a non-empty [N, D] matrix, got shape {x.shape}")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(norms, 1e-12)  # the same normalisation as torch.nn.functional.normalize

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, topk: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(cosine distances [Q, k], gallery indices [Q, k]) of the ``topk`` nearest, nearest first."""
        q = self._normalised(queries, "query features")
        if q.shape[1] != self.dim:
            raise ValueError(f"query features are {q.shape[1]}-d but the gallery's are {self.dim}-d "
                             "(extract both with the same checkpoint)")
        if topk < 1:
            raise ValueError(f"--topk: got {topk}, expected >= 1")
        k = min(topk, len(self))
        sims, idx = zip(*(self.index.search(q[i:i + batch], k) for i in range(0, len(q), batch)))
        return 1.0 - np.concatenate(sims), np.concatenate(idx)


def search(gallery: FeatureSet, queries: FeatureSet, topk: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return FlatIndex(gallery.features).search(queries.features, topk)


def _query_features(query: str, gallery: FeatureSet, checkpoint: Optional[str], device: str,
                    progress: bool) -> FeatureSet:
    if os.path.isfile(query):
        return load_features(query)
    if not os.path.isdir(query):
        raise FileNotFoundError(f"--query: {query} is neither a tracklet folder nor a features file")
    from .data import Tracklet, unreadable_tracklets
    from .extract import extract_tracklet_features
    from .inference import load_trained_model, resolve_device

    checkpoint = checkpoint or gallery.meta.get("checkpoint")
    if not checkpoint or not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint: the gallery was extracted with {checkpoint!r}, which is not "
                                "here; give the same checkpoint with --checkpoint")
    found = find_tracklets(query)
    if not found:
        raise FileNotFoundError(f"--query: no image files in {query} or its sub-folders")
    dev = resolve_device(device)
    loaded = load_trained_model(checkpoint, dev)
    for key in ("height", "width", "test_clip_len"):
        if key in gallery.meta and gallery.meta[key] != getattr(loaded.cfg, key):
            raise ValueError(f"the gallery was extracted with {key}={gallery.meta[key]}, the checkpoint's is "
                             f"{getattr(loaded.cfg, key)}: features would not be comparable")
    feats = extract_tracklet_features(loaded.model, [frames for _, frames in found], loaded.cfg, dev, progress=progress)
    bad = unreadable_tracklets([Tracklet(frames, -1, -1) for _, frames in found])
    if bad:
        raise ValueError(f"--query: no frame of {found[bad[0]][0]} could be read, so it has no appearance to search with")
    return FeatureSet(feats, [d for d, _ in found], np.array([len(f) for _, f in found]), dict(gallery.meta))


def draw_results(queries: FeatureSet, gallery: FeatureSet, dist: np.ndarray, idx: np.ndarray, out: str,
                 frames: int = 4, tile_size: tuple[int, int] = (128, 64)) -> str:
    """One row per query: its tracklet, then the results with rank and distance (no identities known)."""
    from reid.data.datasets.base import list_images

    from .visualize.ranks import COLOURS, Tile, draw_ranked_list, stack_rows

    def tile(path: str, top: str, colour) -> Tile:
        frames_of = list_images(path)
        if not frames_of:
            raise FileNotFoundError(f"--draw: the tracklet folder {path} holds no images any more")
        parent, name = os.path.split(os.path.normpath(path))
        return Tile(frames_of, top, f"{os.path.basename(parent)}/\n{name}", colour)

    rows = []
    for qi in range(len(queries)):
        results = [tile(gallery.paths[g], f"#{r + 1}\nd={dist[qi, r]:.3f}", COLOURS["result"])
                   for r, g in enumerate(idx[qi])]
        rows.append(draw_ranked_list(tile(queries.paths[qi], "query", COLOURS["query"]), results, frames=frames,
                                     height=tile_size[0], width=tile_size[1]))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    stack_rows(rows).save(out)
    return out


def main(argv=None) -> int:
    from .engine.checkpoint import CheckpointError

    p = argparse.ArgumentParser(prog="python -m reid.search", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--gallery", required=True, metavar="NPZ", help="features file written by reid.extract")
    p.add_argument("--query", required=True, metavar="DIR_OR_NPZ", help="tracklet folder(s) or a features file")
    p.add_argument("--topk", type=int, default=10, metavar="K", help="results per query [10]")
    p.add_argument("--checkpoint", default=None, metavar="PTH",
                   help="network for a query folder [default: the one the gallery was extracted with]")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--draw", default=None, metavar="PNG", help="also draw the results (one row per query)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    try:
        gallery = load_features(args.gallery)
        queries = _query_features(args.query, gallery, args.checkpoint, args.device, progress=True)
        dist, idx = search(gallery, queries, args.topk)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    records = []
    for qi, qpath in enumerate(queries.paths):
        print(f"query {qpath}")
        hits = [{"rank": r + 1, "distance": float(dist[qi, r]), "path": gallery.paths[g], "index": int(g)}
                for r, g in enumerate(idx[qi])]
        for h in hits:
            print(f"  {h['rank']:>3}  {h['distance']:.4f}  {h['path']}")
        records.append({"query": qpath, "results": hits})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)
        print(f"written: {args.json}")
    if args.draw:
        try:
            print(f"written: {draw_results(queries, gallery, dist, idx, args.draw)}")
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
