"""APM registration accuracy: the metric on constructed P with known answers, P itself against the
reference APM, the hooks, and the command line end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ap3d_kernels
from reid.analysis.apm_probe import (apm_stage, capture_apm, neighbour_offsets, registration_weights,
                                     semantic_queries)
from reid.analysis.registration import RegistrationTally, score_registration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def grid_positions(h, w):
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols], axis=-1).astype(float)  # [h, w, 2]


def shifted_identity(h, w, shift):
    """P mapping each centre cell (r, c) to neighbour cell (r + dr, c + dc), clipped to the grid;
    with the truth and validity of that shift (valid where the shifted cell is on the grid)."""
    pos = grid_positions(h, w)
    target = pos + np.asarray(shift, float)
    valid = (target[..., 0] >= 0) & (target[..., 0] < h) & (target[..., 1] >= 0) & (target[..., 1] < w)
    dest = np.clip(target, 0, [h - 1, w - 1]).astype(int)
    P = torch.zeros(h * w, h * w, dtype=torch.float64)
    P[torch.arange(h * w), torch.as_tensor(dest[..., 0] * w + dest[..., 1]).reshape(-1)] = 1.0
    return P[None], target[None], valid[None]


@pytest.mark.parametrize("shift", [(0, 0), (1, 0), (2, -1), (-3, 2)])
def test_a_p_that_follows_the_true_shift_scores_perfectly(shift):
    h, w = 8, 4
    P, target, valid = shifted_identity(h, w, shift)
    s = score_registration(P, target, valid, (h, w)).summary()
    assert s["positions"] == valid.sum() > 0 and s["pairs"] == 1
    assert s["apm_within_1"] == 1.0 and s["apm_exact"] == 1.0 and s["apm_mass_within_1"] == 1.0
    assert s["apm_distance"] == pytest.approx(0.0, abs=1e-12)
    # The identity baseline is wrong by exactly the shift.
    dr, dc = shift
    assert s["identity_distance"] == pytest.approx(np.hypot(dr, dc))
    assert s["identity_within_1"] == (1.0 if max(abs(dr), abs(dc)) <= 1 else 0.0)
    assert s["identity_exact"] == (1.0 if shift == (0, 0) else 0.0)
    # Where the identity misses (truth > 1 cell away) the shifted P still finds every position.
    if max(abs(dr), abs(dc)) > 1:
        assert s["displaced_positions"] == s["positions"] and s["displaced_apm_within_1"] == 1.0
    else:
        assert s["displaced_positions"] == 0 and np.isnan(s["displaced_apm_within_1"])


def test_identity_p_scores_like_the_identity_baseline():
    h, w = 6, 4
    _, target, valid = shifted_identity(h, w, (2, 0))
    P = torch.eye(h * w, dtype=torch.float64)[None]
    s = score_registration(P, target, valid, (h, w)).summary()
    assert s["apm_within_1"] == s["identity_within_1"] == 0.0
    assert s["apm_distance"] == pytest.approx(2.0) and s["identity_distance"] == pytest.approx(2.0)


def test_uniform_p_gives_the_chance_rate_and_the_map_centre():
    """A uniform P puts 9/HW of its mass on an interior truth cell's 3x3 block, 4/HW at a corner,
    and its expected position is the centre of the grid."""
    h, w = 5, 4
    target = np.array([[[2.0, 1.0], [0.0, 0.0], [4.2, 2.9]]])  # interior, corner, near the far corner
    valid = np.ones((1, 3), bool)
    P = torch.full((1, 3, h * w), 1.0 / (h * w), dtype=torch.float64)
    P = torch.cat([P, torch.full((1, h * w - 3, h * w), 1.0 / (h * w), dtype=torch.float64)], dim=1)
    target = np.concatenate([target, np.zeros((1, h * w - 3, 2))], axis=1)
    valid = np.concatenate([valid, np.zeros((1, h * w - 3), bool)], axis=1)
    t = score_registration(P, target, valid, (h, w))
    assert t.positions == 3
    assert t.uniform_within == pytest.approx((9 + 4 + 4) / (h * w))
    assert t.apm_mass == pytest.approx(t.uniform_within)
    centre = np.array([2.0, 1.5])
    expected = sum(np.hypot(*(centre - p)) for p in target[0, :3])
    assert t.apm_distance == pytest.approx(expected) and t.uniform_distance == pytest.approx(expected)


def test_tallies_add_up_and_report_rates():
    a = score_registration(*shifted_identity(4, 4, (1, 0)), (4, 4))
    b = score_registration(torch.eye(16, dtype=torch.float64)[None], *shifted_identity(4, 4, (3, 0))[1:], (4, 4))
    total = RegistrationTally()
    total += a
    total += b
    assert total.pairs == 2 and total.positions == a.positions + b.positions == 12 + 4
    assert total.summary()["apm_within_1"] == pytest.approx(12 / 16)  # b's identity P misses by 3 rows
    assert np.isnan(RegistrationTally().summary()["apm_within_1"])


def test_score_rejects_a_p_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"P must be \[n, 12, 12\] for a 4x3 grid"):
        score_registration(torch.zeros(1, 12, 10), np.zeros((1, 12, 2)), np.ones((1, 12), bool), (4, 3))


@pytest.mark.parametrize("time_dim", [3, 5])
def test_p_reconstructs_what_the_reference_apm_reconstructs(time_dim):
    """y = P x_t' for every real neighbour equals ap3d_kernels.apm_reference without the gate."""
    torch.manual_seed(0)
    B, C, T, h, w, ck = 2, 16, 4, 5, 3, 4
    x = torch.randn(B, C, T, h, w, dtype=torch.float64)
    g = torch.randn(ck, C, dtype=torch.float64)
    ref = ap3d_kernels.apm_reference(x, g, None, None, None, scale=4.0, time_dim=time_dim, contrastive=False)
    ref = ref.reshape(B, C, T, time_dim, h * w)
    q = semantic_queries(x, g.reshape(ck, C, 1, 1, 1))
    values = x.reshape(B, C, T, h * w)
    for k, offset in enumerate(neighbour_offsets(time_dim)):
        slot = k if offset < 0 else k + 1  # the centre frame sits between the neighbours
        P, centres = registration_weights(q, offset, 4.0)
        assert centres.tolist() == [t for t in range(T) if 0 <= t + offset < T]
        torch.testing.assert_close(P.sum(-1), torch.ones(P.shape[:-1], dtype=torch.float64))
        recon = torch.einsum("bnij,bcnj->bcni", P, values[:, :, centres + offset])
        torch.testing.assert_close(recon, ref[:, :, centres, slot])


def test_capture_records_every_apm_call_with_its_stage():
    from reid.models import build_model

    model = build_model("ap3d_resnet18", num_classes=3).eval()
    with capture_apm(model, keep_output=True) as calls:
        model(torch.randn(1, 3, 3, 64, 32))
    assert [(c.name, c.stage) for c in calls] == [("layer2.0.conv2.APM", 2), ("layer3.0.conv2.APM", 3)]
    assert calls[0].input.shape == (1, 128, 3, 8, 4) and calls[1].input.shape == (1, 256, 3, 4, 2)
    assert calls[0].output.shape == (1, 128, 9, 8, 4) and not calls[0].input.requires_grad
    # Without a hook left behind: a second forward records nothing.
    model(torch.randn(1, 3, 3, 64, 32))
    assert len(calls) == 2
    with pytest.raises(ValueError, match="has no APM module"):
        capture_apm(build_model("c2d_resnet18", num_classes=3))
    assert apm_stage("layer3.4.conv2.APM") == 3 and apm_stage("head.APM") is None


# ---------------------------------------------------------------------------------------------
# The command line, as a user runs it

TINY = {"num_train_ids": 3, "num_test_ids": 3, "num_cameras": 2, "min_frames": 6, "max_frames": 8,
        "height": 64, "width": 32, "misalignment": 1.0}


def _env():
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _untrained_checkpoint(path, root, arch="ap3d_resnet18"):
    """What reid.train would save before any step: the initial weights (seeded as reid.train seeds)."""
    from reid.engine.checkpoint import FORMAT_VERSION, atomic_save
    from reid.engine.config import Config
    from reid.engine.trainer import build_network, seed_everything

    cfg = Config(dataset="synthetic", root=str(root), dataset_options=dict(TINY), height=64, width=32,
                 arch=arch, threads=1, num_workers=0)
    seed_everything(cfg.seed)
    model = build_network(cfg, TINY["num_train_ids"])
    atomic_save({"format_version": FORMAT_VERSION, "model": model.state_dict(), "epoch": 0,
                 "config": cfg.to_dict(), "num_classes": TINY["num_train_ids"]}, str(path))


def test_cli_scores_trained_and_initial_weights_per_stage(tmp_path):
    ckpt = tmp_path / "run" / "model_best.pth"
    _untrained_checkpoint(ckpt, tmp_path / "data")
    out = tmp_path / "report" / "reg"
    proc = subprocess.run([sys.executable, "-m", "reid.analysis.registration", "--checkpoint", str(ckpt), "--init",
                           "--num-tracklets", "3", "--max-frames", "6", "--out", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report" / "reg.json").read_text())
    rows = report["rows"]
    assert [(r["weights"], r["stage"], r["grid"]) for r in rows] == [
        ("trained (epoch 0)", 2, "8x4, stride 8"), ("trained (epoch 0)", 3, "4x2, stride 16"),
        ("init", 2, "8x4, stride 8"), ("init", 3, "4x2, stride 16")]
    for r in rows:
        assert r["tracklets"] == 3 and r["misalignment"] == 1.0 and r["model"] == "ap3d_resnet18"
        assert r["pairs"] == 3 * 5 * 2  # 6 frames: 5 adjacent pairs, both directions, one block per stage
        assert 0 < r["positions"] <= r["pairs"] * (32 if r["stage"] == 2 else 8)
        for key in ("apm_within_1", "apm_mass_within_1", "identity_within_1", "uniform_within_1"):
            assert 0.0 <= r[key] <= 1.0
        assert r["identity_distance"] > 0  # misalignment 1.0: the boxes really move
    # The checkpoint holds the initial weights, and --init rebuilds exactly them (reid.train's seeding).
    for trained, init in zip(rows[:2], rows[2:]):
        assert init.pop("semantic_mapping_change") == {f"layer{init['stage']}.0.conv2.APM": 0.0}
        assert {k: v for k, v in trained.items() if k != "weights"} == {k: v for k, v in init.items() if k != "weights"}
    table = (tmp_path / "report" / "reg.md").read_text()
    assert table.startswith("| model | misalignment |") and table.count("\n| ap3d_resnet18 |") == 4
    assert "argmax within 1 cell (%): APM / identity / chance" in proc.stdout
    # The same set named by its directory (--data-dir, read as a plain folder) gives the same scores.
    proc = subprocess.run([sys.executable, "-m", "reid.analysis.registration", "--checkpoint", str(ckpt),
                           "--data-dir", str(tmp_path / "data"), "--num-tracklets", "3", "--max-frames", "6",
                           "--out", str(tmp_path / "again")], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "again.json").read_text())["rows"] == rows[:2]


def test_cli_explains_a_network_without_apm(tmp_path):
    ckpt = tmp_path / "c2d.pth"
    _untrained_checkpoint(ckpt, tmp_path / "data", arch="c2d_resnet18")
    proc = subprocess.run([sys.executable, "-m", "reid.analysis.registration", "--checkpoint", str(ckpt),
                           "--num-tracklets", "1", "--max-frames", "3", "--out", str(tmp_path / "r")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "has no APM module" in proc.stderr and "Traceback" not in proc.stderr
