"""The synthetic misaligned-pedestrian dataset: planning, per-frame detection error, writing, caching.

Every tracklet is rendered from a scene in which the person walks past the camera; a simulated
detector then crops a box around the person. The box is the ground truth (tight, aspect 1:2)
distorted by the tracklet's misalignment: scale errors (too small: body parts cut off, Fig. 1a
of the AP3D paper; too large: the person shrinks inside the frame, Fig. 1b), position jitter,
walking pose changes (Fig. 1c) and occluders passing in front. misalignment=0 gives the same
tight box on a still pose in every frame.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from .appearance import PALETTE, garment_texture, sample_appearance
from .render import SCENES, SUPERSAMPLE, Camera, Occluder, draw_occluder, draw_person, make_camera

__all__ = ["SyntheticConfig", "generate_synthetic", "ensure_synthetic", "default_cache_dir",
           "GENERATOR_VERSION", "MANIFEST"]

GENERATOR_VERSION = 3
MANIFEST = "manifest.json"
ANNOTATIONS = "annotations.json"
_SPLIT_CODE = {"train": 1, "test": 2}
_LATER_OPTIONS = {"palette": 0}   # option -> the value that reproduces the sets made before it existed


@dataclass(frozen=True)
class SyntheticConfig:
    """What the synthetic set contains. Every field changes the images (and the cache key)."""

    num_train_ids: int = 150
    num_test_ids: int = 150
    num_cameras: int = 3
    min_cameras: int = 2            # cameras per identity: uniform in [min_cameras, num_cameras]
    min_frames: int = 8
    max_frames: int = 48
    height: int = 128
    width: int = 64
    misalignment: float = 0.5       # 0 = perfectly aligned boxes and a still pose; 1 = severe
    seed: int = 0
    tracklets_per_camera: int = 1
    # Fine controls; None derives them from `misalignment`.
    scale_jitter: Optional[float] = None     # std of the log box scale
    shift_jitter: Optional[float] = None     # std of the box centre offset, fraction of box size
    pose_amplitude: Optional[float] = None   # walking motion, 0 (still) .. 1 (full stride)
    occlusion_prob: Optional[float] = None   # share of tracklets with an occluder
    # Look-alikes: 0 = continuous clothing colours; K = every colour from K shared ones (appearance.PALETTE).
    palette: int = 0

    def __post_init__(self):
        ints = {"num_train_ids": 0, "num_test_ids": 0, "num_cameras": 2, "min_cameras": 2, "min_frames": 1,
                "max_frames": 1, "height": 16, "width": 8, "seed": 0, "tracklets_per_camera": 1,
                "palette": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"synthetic option {name} must be an integer >= {low}, got {v!r}")
        if self.palette > len(PALETTE):
            raise ValueError(f"synthetic option palette must be an integer in [0, {len(PALETTE)}] "
                             f"(0 = continuous colours), got {self.palette!r}")
        if self.min_cameras > self.num_cameras:
            raise ValueError(f"synthetic option min_cameras ({self.min_cameras}) must be <= num_cameras "
                             f"({self.num_cameras})")
        if self.min_frames > self.max_frames:
            raise ValueError(f"synthetic option min_frames ({self.min_frames}) must be <= max_frames "
                             f"({self.max_frames})")
        if self.num_train_ids + self.num_test_ids == 0:
            raise ValueError("synthetic options num_train_ids and num_test_ids are both 0: nothing to generate")
        for name in ("misalignment", "scale_jitter", "shift_jitter", "pose_amplitude", "occlusion_prob"):
            v = getattr(self, name)
            if v is None and name != "misalignment":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
                raise ValueError(f"synthetic option {name} must be a number in [0, 1], got {v!r}")

    @classmethod
    def from_options(cls, **options) -> "SyntheticConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown synthetic option(s) {unknown}; accepted: {sorted(known)}")
        return cls(**options)

    # Effective misalignment controls.
    @property
    def effective(self) -> dict[str, float]:
        m = float(self.misalignment)
        pick = lambda v, d: float(d if v is None else v)  # noqa: E731
        return {"scale_jitter": pick(self.scale_jitter, 0.16 * m), "shift_jitter": pick(self.shift_jitter, 0.07 * m),
                "pose_amplitude": pick(self.pose_amplitude, min(1.0, 1.5 * m)),
                "occlusion_prob": pick(self.occlusion_prob, 0.6 * m)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        # Options added after a version leave the key of a set that does not use them unchanged,
        # so existing caches stay valid.
        options = {k: v for k, v in self.to_dict().items() if not (k in _LATER_OPTIONS and v == _LATER_OPTIONS[k])}
        blob = json.dumps({"version": GENERATOR_VERSION, **options}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def default_cache_dir() -> str:
    base = os.environ.get("AP3D_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "ap3d-kernels")
    return os.path.join(base, "synthetic")


# --------------------------------------------------------------------------------------------
# Geometry of one render canvas. The ground-truth box is bw x bh render pixels, centred; the
# canvas is large enough for the largest, most displaced detection box the clips below allow.
_MAX_LOG_SCALE = math.log(1.45)
_MIN_LOG_SCALE = math.log(0.62)
_MAX_SHIFT = (0.3, 0.25)


def _geometry(cfg: SyntheticConfig):
    bw, bh = cfg.width * SUPERSAMPLE, cfg.height * SUPERSAMPLE
    cw = int(math.ceil(bw * (math.exp(_MAX_LOG_SCALE) * 1.12 + 2 * _MAX_SHIFT[0]))) + 4
    ch = int(math.ceil(bh * (math.exp(_MAX_LOG_SCALE) + 2 * _MAX_SHIFT[1]))) + 4
    return bw, bh, cw, ch


_camera_cache: dict = {}


def _camera(cfg: SyntheticConfig, camid: int) -> Camera:
    key = (cfg.seed, camid, cfg.width, cfg.height, cfg.max_frames)
    if key not in _camera_cache:
        bw, bh, cw, ch = _geometry(cfg)
        width = cw * 3 + 8 * SUPERSAMPLE * cfg.max_frames
        # Consecutive cameras cycle through the scene kinds, so any 2-3 cameras look clearly different.
        kind = SCENES[(camid + int(np.random.default_rng([cfg.seed, 8]).integers(len(SCENES)))) % len(SCENES)]
        _camera_cache[key] = make_camera(camid, np.random.default_rng([cfg.seed, 7, camid]), width, ch, kind)
    return _camera_cache[key]


def _ar1(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """A stationary unit-variance AR(1) sequence: detector errors are correlated over frames."""
    z = np.empty(n)
    z[0] = rng.normal()
    for t in range(1, n):
        z[t] = rho * z[t - 1] + math.sqrt(1 - rho * rho) * rng.normal()
    return z


def detection_boxes(rng: np.random.Generator, n: int, scale_jitter: float, shift_jitter: float) -> np.ndarray:
    """Per frame [dx, dy, sx, sy]: box centre offset (fractions of the true box width and height)
    and scale relative to the true box. All zeros / ones when both jitters are 0."""
    log_s = scale_jitter * _ar1(rng, n, 0.6)
    glitch = rng.random(n) < 0.08   # occasional detector failures: a much larger error
    log_s = log_s + glitch * rng.normal(0.0, 2.0 * scale_jitter, n)
    log_s = np.clip(log_s, _MIN_LOG_SCALE, _MAX_LOG_SCALE)
    s = np.exp(log_s)
    sx = s * np.exp(np.clip(0.3 * scale_jitter * rng.normal(size=n), -0.1, 0.1))
    dx = shift_jitter * _ar1(rng, n, 0.5)
    # A too-small box is usually anchored on one part of the body: the head or the feet get cut.
    side = np.where(rng.random() < 0.5, 1.0, -1.0) * np.where(rng.random(n) < 0.85, 1.0, -1.0)
    dy = 0.8 * shift_jitter * _ar1(rng, n, 0.5) + side * np.maximum(0.0, 1.0 - s) * 0.5
    dx = np.clip(dx, -_MAX_SHIFT[0], _MAX_SHIFT[0])
    dy = np.clip(dy, -_MAX_SHIFT[1], _MAX_SHIFT[1])
    return np.stack([dx, dy, sx, s], axis=1)


def _occluder(rng: np.random.Generator, x_at, person_velocity: float, n: int, bw: float, bh: float) -> Occluder:
    t0 = rng.uniform(0.2, 0.8) * (n - 1)
    kind = str(rng.choice(["pole", "low", "passer"]))
    if kind == "pole":
        return Occluder(kind, x_at(t0) + rng.uniform(-0.3, 0.3) * bw, 0.0, rng.uniform(0.12, 0.3) * bw, bh,
                        tuple(int(v) for v in rng.integers(40, 140, 3)))
    if kind == "low":
        return Occluder(kind, x_at(t0), 0.0, rng.uniform(0.6, 1.6) * bw, rng.uniform(0.2, 0.4) * bh,
                        tuple(int(v) for v in rng.integers(30, 200, 3)))
    # A passer-by crosses quickly relative to the person, so it hides them for a few frames only.
    v = person_velocity + rng.choice([-1, 1]) * rng.uniform(0.15, 0.3) * bw
    return Occluder(kind, x_at(t0) - v * t0, v, rng.uniform(0.5, 0.8) * bw, 1.1 * bh,
                    tuple(int(c) for c in rng.integers(20, 230, 3)))


def render_tracklet(cfg: SyntheticConfig, app, textures, camid: int, rng: np.random.Generator, n: int):
    """Render n frames of one person in one camera; returns (frames, annotation)."""
    eff = cfg.effective
    cam = _camera(cfg, camid)
    bw, bh, cw, ch = _geometry(cfg)
    boxes = detection_boxes(rng, n, eff["scale_jitter"], eff["shift_jitter"])
    back_view = bool(rng.random() < cam.p_back_view)
    facing = cam.direction if rng.random() < 0.8 else -cam.direction
    speed = rng.uniform(3.0, 7.0) * SUPERSAMPLE
    travel = speed * n
    pano_w = cam.background.size[0]
    x0 = rng.uniform(cw / 2 + (travel if facing < 0 else 0), pano_w - cw / 2 - (travel if facing > 0 else 0))
    x_at = lambda t: x0 + facing * speed * t  # noqa: E731 - the person's scene x at frame t
    occ = _occluder(rng, x_at, facing * speed, n, bw, bh) if rng.random() < eff["occlusion_prob"] else None
    phase0 = rng.uniform(0, 2 * math.pi)
    amplitude = eff["pose_amplitude"]
    pw = int(bw * 1.6)
    gt_top = ch / 2 - bh / 2
    frames = []
    for t in range(n):
        scene_left = int(round(x_at(t) - cw / 2))
        canvas = cam.background.crop((scene_left, 0, scene_left + cw, ch))
        rx, ry = int(cw / 2 - pw / 2), int(gt_top)
        region = canvas.crop((rx, ry, rx + pw, ry + bh))
        draw_person(region, app, textures, box_h=bh, phase=phase0 + 2 * math.pi * t / app.cadence,
                    amplitude=amplitude, facing=facing, back_view=back_view)
        canvas.paste(region, (rx, ry))
        if occ is not None:
            draw_occluder(canvas, occ, t, scene_left, gt_top + bh * 0.975)
        dx, dy, sx, sy = boxes[t]
        cx, cy = cw / 2 + dx * bw, ch / 2 + dy * bh
        box = (cx - sx * bw / 2, cy - sy * bh / 2, cx + sx * bw / 2, cy + sy * bh / 2)
        img = canvas.resize((cfg.width, cfg.height), Image.BILINEAR, box=box)
        arr = np.asarray(img, dtype=np.float32)
        flicker = 1.0 + rng.normal(0.0, 0.02)
        arr = (arr - 128.0) * cam.contrast + 128.0
        arr = arr * cam.gain * (cam.brightness * flicker)
        arr += rng.standard_normal(size=arr.shape, dtype=np.float32) * np.float32(cam.noise)
        frames.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    ann = {"boxes": np.round(boxes, 4).tolist(), "back_view": back_view, "facing": int(facing),
           "occluder": occ.kind if occ is not None else None}
    return frames, ann


def _identity_textures(cfg: SyntheticConfig, app, rng: np.random.Generator) -> dict:
    bw, bh, _, _ = _geometry(cfg)
    pw = int(bw * 1.6)
    ph = bh * app.height
    top = bh * 0.975 - ph
    sh_y = top + ph * app.head + ph * 0.015
    hip_y = top + ph * (1 - app.legs)
    up = garment_texture(app.upper, pw, bh, int((sh_y + hip_y) / 2), (int(pw / 2), int(sh_y + ph * 0.09)), rng)
    lo = garment_texture(app.lower, pw, bh, int(hip_y + ph * app.legs / 2), (int(pw / 2), int(hip_y)), rng)
    dark = lambda a: Image.fromarray((a.astype(np.float32) * 0.78).astype(np.uint8))  # noqa: E731
    return {"upper": Image.fromarray(up), "upper_dark": dark(up), "lower": Image.fromarray(lo), "lower_dark": dark(lo)}


def _plan_identity(cfg: SyntheticConfig, split: str, pid: int):
    """Cameras and tracklet lengths of one identity (cheap; decides the query/gallery split too)."""
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[split], pid, 1])
    k = int(rng.integers(cfg.min_cameras, cfg.num_cameras + 1))
    cams = sorted(int(c) for c in rng.choice(cfg.num_cameras, size=k, replace=False))
    plan = []
    for cam in cams:
        for j in range(cfg.tracklets_per_camera):
            plan.append((cam, j, int(rng.integers(cfg.min_frames, cfg.max_frames + 1))))
    query_cam = int(rng.choice(cams))
    return plan, query_cam


def _render_identity(args):
    cfg_dict, split, pid, out_dir = args
    cfg = SyntheticConfig(**cfg_dict)
    app = sample_appearance(np.random.default_rng([cfg.seed, _SPLIT_CODE[split], pid, 0]), cfg.palette)
    textures = _identity_textures(cfg, app, np.random.default_rng([cfg.seed, _SPLIT_CODE[split], pid, 2]))
    plan, query_cam = _plan_identity(cfg, split, pid)
    anns, frames_written = {}, 0
    for cam, j, n in plan:
        rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[split], pid, 3, cam, j])
        frames, ann = render_tracklet(cfg, app, textures, cam, rng, n)
        if split == "train":
            subset = "train"
        else:  # one query tracklet per test identity; the rest (other cameras, extra tracklets) is gallery
            subset = "query" if (cam == query_cam and j == 0) else "gallery"
        rel = os.path.join(subset, f"{pid:04d}", f"c{cam}_t{j:02d}")
        tdir = os.path.join(out_dir, rel)
        os.makedirs(tdir, exist_ok=True)
        quality = _camera(cfg, cam).jpeg_quality
        for t, img in enumerate(frames):
            img.save(os.path.join(tdir, f"{t:03d}.jpg"), quality=quality)
        frames_written += len(frames)
        anns[rel.replace(os.sep, "/")] = {**ann, "pid": pid, "camid": cam, "frames": n,
                                          "appearance": {"upper": app.upper.pattern, "lower": app.lower_kind,
                                                         "hair": app.hair_style, "accessory": app.accessory}}
    return anns, frames_written


def _say(verbose: bool, message: str) -> None:
    # Generation takes a while, so it is always announced: printed when verbose, else logged.
    if verbose:
        print(message, flush=True)
    else:
        logging.getLogger("reid.data").info(message)


def generate_synthetic(out_dir: str, config: SyntheticConfig = SyntheticConfig(), workers: Optional[int] = None,
                       verbose: bool = True) -> dict:
    """Render the whole set into `out_dir` (which must not exist or be empty); returns the manifest.

    The output appears atomically: it is written next to `out_dir` and renamed into place when
    complete, so an interrupted run or a concurrent one (e.g. several DDP ranks) never leaves a
    half-written set behind a manifest.
    """
    out_dir = os.path.abspath(out_dir)
    _say(verbose, f"synthetic: generating {config.num_train_ids} + {config.num_test_ids} identities "
                  f"(seed {config.seed}, misalignment {config.misalignment:g}) into {out_dir} (first use only)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    t0 = time.perf_counter()
    try:
        ids = ([("train", p) for p in range(1, config.num_train_ids + 1)]
               + [("test", config.num_train_ids + p) for p in range(1, config.num_test_ids + 1)])
        tasks = [(config.to_dict(), split, pid, tmp) for split, pid in ids]
        if workers is None:
            workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        anns: dict = {}
        total = 0
        if multiprocessing.current_process().daemon:
            workers = 1  # daemonic processes (e.g. DataLoader workers) may not start a pool
        if workers == 1 or len(tasks) < 4:
            results = map(_render_identity, tasks)
            pool = None
        else:
            ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = ctx.Pool(workers)
            results = pool.imap_unordered(_render_identity, tasks, chunksize=max(1, len(tasks) // (workers * 8)))
        try:
            for a, n in results:
                anns.update(a)
                total += n
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        for sub in ("train", "query", "gallery"):
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        elapsed = time.perf_counter() - t0
        manifest = {
            "format": "ap3d-kernels synthetic video-ReID set",
            "generator_version": GENERATOR_VERSION,
            "config_key": config.key(),
            "seed": config.seed,
            "options": config.to_dict(),
            "effective_misalignment": config.effective,
            "counts": {"identities": len(ids), "tracklets": len(anns), "frames": total},
            "generation_seconds": round(elapsed, 2),
            "workers": workers,
        }
        with open(os.path.join(tmp, ANNOTATIONS), "w") as fh:
            json.dump(dict(sorted(anns.items())), fh, separators=(",", ":"))
        # The manifest is written last: its presence marks a complete set.
        with open(os.path.join(tmp, MANIFEST), "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)
        if os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not os.path.exists(os.path.join(out_dir, MANIFEST)):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run finished first; keep its copy
            return read_manifest(out_dir)
        _say(verbose, f"synthetic: generated {len(anns)} tracklets / {total} frames of {len(ids)} identities in "
                      f"{elapsed:.1f} s with {workers} worker(s) -> {out_dir}")
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(directory: str) -> Optional[dict]:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def ensure_synthetic(root: Optional[str], config: SyntheticConfig, workers: Optional[int] = None,
                     verbose: bool = True) -> str:
    """The directory of the set for `config`, generating it on first use.

    root=None uses the per-user cache keyed by the config. An explicit root is generated into if
    it is missing or empty; if it already holds a set, that set must have been made with the same
    options (a different one raises instead of being overwritten).
    """
    directory = os.path.join(default_cache_dir(), config.key()) if root is None else \
        os.path.abspath(os.path.expanduser(os.fspath(root)))
    manifest = read_manifest(directory)
    if manifest is None:
        if os.path.isdir(directory) and os.listdir(directory):
            raise FileExistsError(
                f"synthetic root {directory} exists, is not empty and has no {MANIFEST}: refusing to "
                f"generate into it (pass an empty or new directory, or root=None for the cache)")
        generate_synthetic(directory, config, workers=workers, verbose=verbose)
        return directory
    if manifest.get("config_key") != config.key():
        theirs = manifest.get("options", {})
        diff = {k: (theirs.get(k), v) for k, v in config.to_dict().items() if theirs.get(k) != v}
        raise ValueError(
            f"synthetic root {directory} holds a set generated with different options "
            f"(option: (on disk, requested)) {diff or '(generator version ' + str(manifest.get('generator_version')) + ')'}; "
            f"use another root, or root=None for the per-config cache")
    return directory
