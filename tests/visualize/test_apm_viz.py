"""``python -m reid.visualize apm``: the panels it computes (Fig. 3 / Fig. 7) and the PNG it writes."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ap3d_kernels
from reid.analysis.correspondence import FeatureGrid
from reid.visualize.apm import compute_panels, largest_box_change, marked_cells, render

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shifted_clip(C=32, h=8, w=4, seed=0):
    """Two frames whose features are the same random vectors, the second moved down one row
    (a cyclic shift, so every position has its counterpart)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(C, h, w, generator=g)
    return torch.stack([centre, torch.roll(centre, shifts=1, dims=1)], dim=1)  # [C, 2, h, w]


@torch.no_grad()
def test_panels_locate_a_known_shift_and_sharpen_with_s():
    C = 32
    x = shifted_clip(C)
    apm = ap3d_kernels.APM(C, reduction=1, scale=60.0, contrastive=False, backend="reference")
    apm.semantic_mapping.weight.copy_(torch.eye(C).reshape(C, C, 1, 1, 1))  # q = the normalised features
    z = apm(x.unsqueeze(0))[0]
    # The neighbour's box sits 1/8 of the person's height higher, so the person appears one row
    # (of 8) lower: the ground truth is the same shift as the features'.
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, -0.125, 1.0, 1.0]])
    points = [(2, 1), (5, 3)]
    p = compute_panels(x, z, apm.semantic_mapping.weight, time_dim=3, centre=0, offset=1, points=points,
                       scales=[1, 4, 16], input_hw=(64, 32), boxes=boxes)
    assert p.similarity.shape == (2, 3, 8, 4) and p.grid == FeatureGrid(8, 4, 8, 64, 32)
    np.testing.assert_allclose(p.similarity.sum(axis=(2, 3)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p.truth, [[3, 1], [6, 3]], atol=1e-9)
    for i in range(2):
        peaks = p.similarity[i].reshape(3, -1).max(axis=1)
        assert peaks[0] < peaks[1] < peaks[2]  # a larger s concentrates P on the match
        assert np.unravel_index(p.similarity[i, 2].argmax(), (8, 4)) == tuple(p.truth[i].astype(int))
    np.testing.assert_allclose(p.centre, x[:, 0].norm(dim=0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(p.neighbour, x[:, 1].norm(dim=0).numpy(), rtol=1e-5)
    # After APM the neighbour is back in the centre's layout (s = 60 makes P a permutation).
    np.testing.assert_allclose(p.registered, p.centre, rtol=1e-3)
    assert not np.allclose(p.neighbour, p.centre, rtol=1e-3)


def test_panels_reject_a_neighbour_outside_the_clip_and_a_wrong_output():
    x = shifted_clip()
    z = torch.zeros(32, 6, 8, 4)
    with pytest.raises(ValueError, match="must both lie in the 2-frame clip"):
        compute_panels(x, z, torch.eye(32), time_dim=3, centre=1, offset=1, points=[(0, 0)], scales=[4],
                       input_hw=(64, 32))
    with pytest.raises(ValueError, match=r"z must be APM's output \[32, 6, 8, 4\]"):
        compute_panels(x, z[:, :3], torch.eye(32), time_dim=3, centre=0, offset=1, points=[(0, 0)], scales=[4],
                       input_hw=(64, 32))


def test_largest_box_change_and_default_marks():
    boxes = np.tile([0.0, 0.0, 1.0, 1.0], (6, 1))
    boxes[4] = [0.1, 0.2, 0.7, 0.7]  # a detector glitch at frame 4
    assert largest_box_change(boxes, 1)[0] == 3 and largest_box_change(boxes, -1)[0] == 4  # first of two equal pairs
    assert largest_box_change(np.tile([0.0, 0.0, 1.0, 1.0], (3, 1)), 1)[1] == 0.0
    grid = FeatureGrid(16, 8, 8, 128, 64)
    # The true box: head (v = -0.36), chest (-0.12) and thigh (0.18) on the middle column.
    assert marked_cells(grid, np.array([0.0, 0.0, 1.0, 1.0])) == [(2, 4), (6, 4), (11, 4)]
    assert marked_cells(grid, None) == [(2, 4), (6, 4), (11, 4)]


def test_render_writes_a_png_of_every_panel(tmp_path):
    x = shifted_clip()
    z = torch.cat([x[:, :1]] * 6, dim=1)
    p = compute_panels(x, z, torch.eye(32), time_dim=3, centre=0, offset=1, points=[(2, 1)], scales=[1, 4, 16],
                       input_hw=(64, 32))
    img = np.random.default_rng(0).random((64, 32, 3))
    render(p, img, img, str(tmp_path / "f.png"), title="t")
    with Image.open(tmp_path / "f.png") as png:
        assert png.format == "PNG" and png.size[0] > 300 and png.size[1] > 300


# ---------------------------------------------------------------------------------------------
# As a user runs it

TINY = {"num_train_ids": 2, "num_test_ids": 2, "num_cameras": 2, "min_frames": 5, "max_frames": 6,
        "height": 64, "width": 32, "misalignment": 1.0}


def _env():
    return dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


def test_cli_writes_the_figure_for_a_test_tracklet_and_for_a_folder(tmp_path):
    from reid.engine.checkpoint import FORMAT_VERSION, atomic_save
    from reid.engine.config import Config
    from reid.engine.trainer import build_network

    cfg = Config(dataset="synthetic", root=str(tmp_path / "data"), dataset_options=dict(TINY), height=64, width=32,
                 arch="ap3d_resnet18", threads=1)
    atomic_save({"format_version": FORMAT_VERSION, "model": build_network(cfg, 2).state_dict(), "epoch": 0,
                 "config": cfg.to_dict(), "num_classes": 2}, str(tmp_path / "ckpt.pth"))
    cmd = [sys.executable, "-m", "reid.visualize", "apm", "--checkpoint", str(tmp_path / "ckpt.pth")]
    proc = subprocess.run(cmd + ["--out", str(tmp_path / "a.png")], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    folder = os.path.join(tmp_path, "data", "query", "0003", os.listdir(tmp_path / "data" / "query" / "0003")[0])
    proc = subprocess.run(cmd + ["--tracklet", folder, "--stage", "3", "--frame", "0",
                                 "--out", str(tmp_path / "b.png")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("a.png", "b.png"):
        with Image.open(tmp_path / name) as png:
            assert png.format == "PNG" and os.path.getsize(tmp_path / name) > 10_000
    proc = subprocess.run(cmd + ["--stage", "4", "--out", str(tmp_path / "c.png")], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "has 0 APM(s) in stage 4 (APMs are in stages [2, 3])" in proc.stderr
    assert not (tmp_path / "c.png").exists()


def test_subcommands_are_listed_and_an_unknown_one_is_named():
    proc = subprocess.run([sys.executable, "-m", "reid.visualize", "--help"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "apm" in proc.stdout and "Fig. 3" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "reid.visualize", "nope"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown subcommand 'nope'" in proc.stderr
