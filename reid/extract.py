"""Features of your own tracklets with a trained network: one L2-normalised vector per tracklet folder.

    python -m reid.extract --checkpoint runs/ap3d_synthetic/model_best.pth --root /data/tracklets --out feats.npz

No identities are needed. A tracklet is any folder under ``--root`` (``--root`` itself included)
that directly holds image files; its frames are taken in natural name order. The features are
the evaluator's (``reid.engine.evaluator.extract_features``): every frame, in clips of up to
``test_clip_len`` frames, averaged frame-weighted, then L2-normalised, so they are exactly what
``reid.test`` ranks.

Large folders: tracklets are processed in shards of ``--shard-size``. Each finished shard is
written atomically to ``<out>.parts/``; an interrupted run started again with the same command
skips the shards already done. When all are done they are joined into ``--out`` and the parts
are removed. A parts folder started with another checkpoint, frame size or tracklet list is
never mixed in: the run stops and names what differs (``--restart`` discards it). A folder none
of whose frames can be read is left out (as the evaluator leaves such tracklets out), named in
a warning and in ``meta["unreadable"]``.

The output ``.npz`` holds ``features`` [N, D] float32, ``paths`` [N] (absolute tracklet
folders), ``num_frames`` [N] and ``meta`` (JSON: checkpoint, arch, frame size, clip length, ...).
Read it with :func:`load_features`; search it with ``python -m reid.search``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Sequence

import numpy as np

__all__ = ["FeatureSet", "find_tracklets", "extract_tracklet_features", "extract_folder", "save_features",
           "load_features", "main"]

FORMAT = "ap3d-kernels tracklet features v1"


@dataclasses.dataclass
class FeatureSet:
    features: np.ndarray  # [N, D] float32, L2-normalised rows
    paths: list  # [N] tracklet folders
    num_frames: np.ndarray  # [N]
    meta: dict

    def __len__(self) -> int:
        return len(self.paths)


def find_tracklets(root: str) -> list[tuple[str, tuple[str, ...]]]:
    """(folder, frame paths) of every folder under ``root`` that directly holds images, in natural order."""
    from reid.data.datasets.base import list_images, natural_key

    if not os.path.isdir(root):
        raise FileNotFoundError(f"--root: {root} is not a directory (expected a folder of tracklet folders)")
    root = os.path.abspath(root)
    found = []
    for directory, dirs, _files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not d.endswith(".parts")]
        frames = list_images(directory)
        if frames:
            found.append((directory, tuple(frames)))
    found.sort(key=lambda item: natural_key(os.path.relpath(item[0], root)))
    return found


def extract_tracklet_features(model, frame_lists: Sequence[Sequence[str]], cfg, device, progress: bool = True,
                              desc: str = "frames"):
    """[N, D] float32 features of tracklets given as frame-path lists (the evaluator's extraction)."""
    from reid.data import Tracklet
    from reid.engine.evaluator import extract_features

    tracklets = [Tracklet(tuple(paths), -1, -1) for paths in frame_lists]  # identities are not needed
    return extract_features(model, tracklets, cfg, device, desc=desc, progress=progress).numpy().astype(np.float32)


def _atomic_savez(path: str, **arrays) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_features(path: str, fs: FeatureSet) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_savez(path, features=fs.features.astype(np.float32), paths=np.array(fs.paths, dtype=str),
                  num_frames=np.asarray(fs.num_frames, dtype=np.int64), meta=np.array(json.dumps(fs.meta)))


def load_features(path: str) -> FeatureSet:
    """Read a features file written by ``reid.extract``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"features file {path} does not exist (write one with python -m reid.extract)")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            fs = FeatureSet(data["features"], [str(p) for p in data["paths"]], data["num_frames"], meta)
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a features file written by reid.extract ({exc})") from exc
    if meta.get("format") != FORMAT or fs.features.ndim != 2 or len(fs.features) != len(fs.paths):
        raise ValueError(f"{path} is not a features file written by reid.extract (format {meta.get('format')!r})")
    return fs


def _manifest(checkpoint: str, cfg, root: str, found, shard_size: int) -> dict:
    st = os.stat(checkpoint)
    digest = hashlib.sha1()
    for directory, frames in found:
        digest.update(f"{directory}\0{len(frames)}\n".encode())
    return {
        "format": FORMAT,
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_size": st.st_size,
        "checkpoint_mtime_ns": st.st_mtime_ns,
        "arch": cfg.arch,
        "height": cfg.height,
        "width": cfg.width,
        "test_clip_len": cfg.test_clip_len,
        "amp": cfg.amp,
        "root": root,
        "num_tracklets": len(found),
        "tracklets_sha1": digest.hexdigest(),
        "shard_size": shard_size,
    }


def _open_parts(parts: str, manifest: dict, restart: bool) -> None:
    path = os.path.join(parts, "manifest.json")
    if restart and os.path.isdir(parts):
        shutil.rmtree(parts)
    if os.path.isfile(path):
        with open(path) as fh:
            old = json.load(fh)
        differ = [f"{k}: {old.get(k)!r} then, {v!r} now" for k, v in manifest.items() if old.get(k) != v]
        if differ:
            raise ValueError(
                f"{parts} holds the shards of an extraction started with other settings ({'; '.join(differ)}); "
                "run the original command again to finish it, or pass --restart to discard those shards"
            )
        return
    os.makedirs(parts, exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(manifest, fh, indent=1)
    os.replace(path + ".tmp", path)


def extract_folder(loaded, root: str, out: str, shard_size: int = 1024, restart: bool = False,
                   progress: bool = True, device=None) -> FeatureSet:
    """Extract every tracklet folder under ``root`` into ``out`` (resumable; see the module docstring)."""
    from tqdm import tqdm

    from reid.data import Tracklet, unreadable_tracklets

    if shard_size < 1:
        raise ValueError(f"--shard-size: got {shard_size}, expected >= 1")
    found = find_tracklets(root)
    if not found:
        raise FileNotFoundError(f"--root: no tracklet folders (folders directly holding image files) under {root}")
    cfg = loaded.cfg
    device = device or next(loaded.model.parameters()).device
    manifest = _manifest(loaded.checkpoint, cfg, os.path.abspath(root), found, shard_size)
    parts = os.path.abspath(out) + ".parts"
    _open_parts(parts, manifest, restart)
    shards = [found[i:i + shard_size] for i in range(0, len(found), shard_size)]
    done = [os.path.isfile(os.path.join(parts, f"shard_{k:06d}.npz")) for k in range(len(shards))]
    bar = tqdm(total=len(found), initial=sum(len(s) for s, d in zip(shards, done) if d), unit="tracklet",
               desc="tracklets", dynamic_ncols=True, disable=None if progress else True)
    t0 = time.time()
    features, readable = [], []
    for k, shard in enumerate(shards):
        path = os.path.join(parts, f"shard_{k:06d}.npz")
        if done[k]:
            with np.load(path) as data:
                if [str(p) for p in data["paths"]] != [d for d, _ in shard]:
                    raise ValueError(f"{path} does not hold the tracklets of shard {k}; pass --restart to discard {parts}")
                features.append(data["features"])
                readable.append(data["readable"])
            continue
        frame_lists = [frames for _, frames in shard]
        feats = extract_tracklet_features(loaded.model, frame_lists, cfg, device,
                                          progress=progress, desc=f"shard {k + 1}/{len(shards)}")
        # a folder none of whose frames could be read gives a blank clip's feature: left out, as the evaluator does
        ok = np.ones(len(shard), dtype=bool)
        ok[unreadable_tracklets([Tracklet(tuple(f), -1, -1) for f in frame_lists])] = False
        _atomic_savez(path, features=feats, paths=np.array([d for d, _ in shard], dtype=str), readable=ok)
        features.append(feats)
        readable.append(ok)
        bar.update(len(shard))
    bar.close()
    keep = np.concatenate(readable)
    left_out = [d for (d, _), ok in zip(found, keep) if not ok]
    if left_out:
        print(f"warning: {len(left_out)} tracklet folder(s) with no readable frame left out (first: {left_out[0]})",
              file=sys.stderr)
    meta = {key: manifest[key] for key in ("format", "checkpoint", "arch", "height", "width", "test_clip_len", "amp", "root")}
    meta.update(epoch=loaded.epoch, feature_dim=int(features[0].shape[1]), distance="cosine",
                created=time.strftime("%Y-%m-%d %H:%M:%S"), unreadable=left_out)
    fs = FeatureSet(np.concatenate(features)[keep], [d for (d, _), ok in zip(found, keep) if ok],
                    np.array([len(f) for (_, f), ok in zip(found, keep) if ok]), meta)
    save_features(out, fs)
    shutil.rmtree(parts)  # the joined file is complete on disk (atomic write) before the parts go
    if progress:
        print(f"{len(fs)} tracklets ({int(fs.num_frames.sum())} frames) -> {out} "
              f"[{fs.features.shape[1]}-d, {time.time() - t0:.1f}s]")
    return fs


def main(argv=None) -> int:
    from reid.engine.allocator import configure_allocator
    from reid.engine.checkpoint import CheckpointError
    from reid.engine.config import ConfigError
    from reid.inference import add_checkpoint_arguments, inference_overrides, load_trained_model, resolve_device

    p = argparse.ArgumentParser(prog="python -m reid.extract", description=__doc__.splitlines()[0], allow_abbrev=False)
    add_checkpoint_arguments(p)
    p.add_argument("--root", required=True, metavar="DIR", help="folder of tracklet folders (each holding frames)")
    p.add_argument("--out", required=True, metavar="NPZ", help="features file to write")
    p.add_argument("--shard-size", type=int, default=1024, metavar="N", help="tracklets per resumable shard [1024]")
    p.add_argument("--restart", action="store_true", help="discard the shards of an earlier, different extraction")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        loaded = load_trained_model(args.checkpoint, device, overrides=inference_overrides(args))
        configure_allocator(loaded.cfg.malloc)
        extract_folder(loaded, args.root, args.out, shard_size=args.shard_size, restart=args.restart,
                       progress=not args.quiet, device=device)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
