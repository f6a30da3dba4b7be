"""The synthetic misaligned-pedestrian generator: determinism, misalignment control, caching, speed."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from reid.data import SyntheticConfig, build_dataset, generate_synthetic
from reid.data.synthetic import default_cache_dir

TINY = dict(num_train_ids=4, num_test_ids=3, num_cameras=3, min_frames=6, max_frames=10, height=64, width=32)


def _digest(root):
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            if name == "manifest.json":
                continue
            h.update(os.path.relpath(os.path.join(dirpath, name), root).encode())
            with open(os.path.join(dirpath, name), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_same_seed_gives_identical_files_whatever_the_worker_count(tmp_path):
    cfg = SyntheticConfig(**TINY, seed=3)
    generate_synthetic(str(tmp_path / "a"), cfg, workers=1, verbose=False)
    generate_synthetic(str(tmp_path / "b"), cfg, workers=2, verbose=False)
    generate_synthetic(str(tmp_path / "c"), SyntheticConfig(**TINY, seed=4), workers=1, verbose=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_manifest_records_seed_options_and_counts(tmp_path):
    cfg = SyntheticConfig(**TINY, seed=5, misalignment=0.25)
    generate_synthetic(str(tmp_path / "s"), cfg, workers=1, verbose=False)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["options"] == cfg.to_dict()
    assert manifest["config_key"] == cfg.key()
    ds = build_dataset("synthetic", root=str(tmp_path / "s"), verbose=False, seed=5, misalignment=0.25, **TINY)
    n_frames = sum(len(t.paths) for t in ds.train + ds.query + ds.gallery)
    assert manifest["counts"] == {"identities": 7, "tracklets": len(ds.train) + len(ds.query) + len(ds.gallery),
                                  "frames": n_frames}


def test_layout_and_protocol_of_the_generated_set(tmp_path):
    ds = build_dataset("synthetic", root=str(tmp_path), verbose=False, tracklets_per_camera=2, **TINY)
    assert ds.num_train_pids == 4 and {t.pid for t in ds.train} == {0, 1, 2, 3}
    test_pids = {q.pid for q in ds.query}
    assert len(ds.query) == 3 and test_pids == {5, 6, 7}  # test identities follow the train ones
    assert {g.pid for g in ds.gallery} == test_pids and ds.num_unmatched_queries == 0
    for t in ds.train + ds.query + ds.gallery:
        assert 6 <= len(t.paths) <= 10 and 0 <= t.camid < 3
        assert os.path.basename(os.path.dirname(t.paths[0])).startswith(f"c{t.camid}_t")
    with Image.open(ds.train[0].paths[0]) as img:
        assert img.size == (32, 64) and img.format == "JPEG"
    # every identity is seen by at least two cameras
    cams = {}
    for t in ds.train:
        cams.setdefault(t.pid, set()).add(t.camid)
    assert all(len(c) >= 2 for c in cams.values())


def _boxes(root):
    ann = json.loads(open(os.path.join(root, "annotations.json")).read())
    return {k: np.array(v["boxes"]) for k, v in ann.items()}


def _consecutive_change(ds):
    """Mean absolute difference between consecutive frames in the central column of the box
    (where the body is), averaged over tracklets: low when every frame shows the body in place."""
    diffs = []
    for t in ds.train:
        arrs = [np.asarray(Image.open(p), dtype=np.float32)[8:56, 12:20] for p in t.paths]
        diffs.extend(np.abs(a - b).mean() for a, b in zip(arrs, arrs[1:]))
    return float(np.mean(diffs))


def test_misalignment_zero_is_aligned_and_high_misalignment_jitters_the_box(tmp_path):
    opts = dict(TINY, occlusion_prob=0.0)
    aligned = build_dataset("synthetic", root=str(tmp_path / "m0"), misalignment=0.0, verbose=False, **opts)
    shaky = build_dataset("synthetic", root=str(tmp_path / "m1"), misalignment=1.0, verbose=False, **opts)
    b0, b1 = _boxes(tmp_path / "m0"), _boxes(tmp_path / "m1")
    for boxes in b0.values():  # [dx, dy, sx, sy]: the ground-truth box in every frame
        assert np.array_equal(boxes, np.tile([0.0, 0.0, 1.0, 1.0], (len(boxes), 1)))
    scale = np.concatenate([b[:, 3] for b in b1.values()])
    shift = np.concatenate([b[:, :2] for b in b1.values()])
    assert scale.std() > 0.08 and scale.min() < 0.85 and scale.max() > 1.15
    assert np.abs(shift).mean() > 0.03
    # The effect is visible in the pixels, not only in the annotations.
    change0, change1 = _consecutive_change(aligned), _consecutive_change(shaky)
    assert change1 > 2.5 * change0, (change0, change1)


def test_occlusion_prob_controls_occluders(tmp_path):
    generate_synthetic(str(tmp_path / "o"), SyntheticConfig(**TINY, occlusion_prob=1.0), workers=1, verbose=False)
    generate_synthetic(str(tmp_path / "n"), SyntheticConfig(**TINY, occlusion_prob=0.0), workers=1, verbose=False)
    occ = [v["occluder"] for v in json.loads((tmp_path / "o" / "annotations.json").read_text()).values()]
    none = [v["occluder"] for v in json.loads((tmp_path / "n" / "annotations.json").read_text()).values()]
    assert all(k in ("pole", "low", "passer") for k in occ) and set(none) == {None}


def test_default_root_is_a_per_config_cache_generated_once(tmp_path, monkeypatch):
    monkeypatch.setenv("AP3D_CACHE_DIR", str(tmp_path / "cache"))
    ds = build_dataset("synthetic", verbose=False, **TINY)
    key = SyntheticConfig(**TINY).key()
    assert ds.root == os.path.join(default_cache_dir(), key) and default_cache_dir().startswith(str(tmp_path))
    manifest = os.path.join(ds.root, "manifest.json")
    stamp = os.stat(manifest).st_mtime_ns
    again = build_dataset("synthetic", verbose=False, **TINY)
    assert os.stat(manifest).st_mtime_ns == stamp and again.train == ds.train
    other = build_dataset("synthetic", verbose=False, **dict(TINY, seed=1))
    assert other.root != ds.root


def test_a_root_holding_a_different_set_or_foreign_files_is_never_overwritten(tmp_path):
    build_dataset("synthetic", root=str(tmp_path / "s"), verbose=False, **TINY)
    with pytest.raises(ValueError, match=r"different options.*'misalignment': \(0.5, 0.9\)"):
        build_dataset("synthetic", root=str(tmp_path / "s"), misalignment=0.9, verbose=False, **TINY)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty and has no manifest.json"):
        build_dataset("synthetic", root=str(tmp_path / "mine"), verbose=False, **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("options, message", [
    (dict(misalignment=1.5), r"misalignment must be a number in \[0, 1\], got 1.5"),
    (dict(num_cameras=1), "num_cameras must be an integer >= 2, got 1"),
    (dict(min_frames=9, max_frames=4), r"min_frames \(9\) must be <= max_frames \(4\)"),
    (dict(cameras=3), r"unknown option\(s\) \['cameras'\]"),
])
def test_bad_synthetic_options_are_rejected_before_generating(tmp_path, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build_dataset("synthetic", root=str(tmp_path / "x"), verbose=False, **options)
    assert not (tmp_path / "x").exists()


def test_small_config_generates_a_usable_set_in_one_process(tmp_path):
    # (speed is a benchmark's business, not a test's: ~2 ms per 128x64 frame on one core)
    cfg = SyntheticConfig(num_train_ids=10, num_test_ids=10, height=128, width=64, seed=9)
    manifest = generate_synthetic(str(tmp_path / "t"), cfg, workers=1, verbose=False)
    assert manifest["counts"]["frames"] > 500, manifest["counts"]
