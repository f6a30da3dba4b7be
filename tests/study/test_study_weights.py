"""The shared pretrained backbone (C2D -> torchvision 2D) and the temporal-weight norms."""
import os

import pytest
import torch

from reid.models import build_model, resnet18
from reid.study.pretrain import c2d_to_torchvision_2d, convert_checkpoint
from reid.study.temporal_norms import temporal_weight_norms, zero_temporal_weights


def test_c2d_converts_to_a_torchvision_resnet_that_inflates_back_to_the_same_backbone():
    torch.manual_seed(0)
    c2d = build_model("c2d_resnet18", num_classes=7).eval()
    state2d = c2d_to_torchvision_2d(c2d.state_dict())
    assert not any(k.startswith(("bn.", "classifier.")) for k in state2d)
    assert state2d["conv1.weight"].shape == (64, 3, 7, 7)
    net2d = resnet18(pretrained=state2d).eval()            # strict: refuses missing/extra keys
    assert net2d.layer1[0].conv1.weight.dim() == 4
    # inflating it again (what --pretrained does) gives back the same backbone, tensor for tensor
    inflated = build_model("c2d_resnet18", num_classes=7, pretrained=state2d).eval()
    for k, v in c2d.state_dict().items():
        if not k.startswith(("bn.", "classifier.")):
            assert torch.equal(inflated.state_dict()[k], v), k


def test_a_network_with_temporal_kernels_is_refused():
    with pytest.raises(ValueError, match="temporal extent 3"):
        c2d_to_torchvision_2d(build_model("i3d_resnet18", num_classes=3).state_dict())


def test_convert_checkpoint_refuses_another_arch(tmp_path):
    path = str(tmp_path / "ck.pth")
    torch.save({"format_version": 1, "model": build_model("p3d_c_resnet18", num_classes=3).state_dict(),
                "config": {"arch": "p3d_c_resnet18"}, "epoch": 1, "num_classes": 3}, path)
    with pytest.raises(ValueError, match="c2d"):
        convert_checkpoint(path, str(tmp_path / "out.pth"))


@pytest.mark.parametrize("arch,blocks", [("p3d_c_resnet18", 2), ("ap3d_resnet18", 2), ("i3d_resnet18", 2),
                                         ("ap_i3d_resnet18", 2)])
def test_temporal_weights_are_zero_at_initialisation(arch, blocks):
    norms = temporal_weight_norms(build_model(arch, num_classes=3).state_dict())
    assert norms["num_blocks"] == blocks            # ResNet-18 "half": block 0 of layer2 and of layer3
    assert norms["temporal_norm"] == 0.0 and norms["relative"] == 0.0
    assert norms["spatial_norm"] > 0


def test_c2d_has_no_temporal_blocks():
    norms = temporal_weight_norms(build_model("c2d_resnet18", num_classes=3).state_dict())
    assert norms["num_blocks"] == 0 and norms["relative"] == 0.0


def test_norms_of_known_weights():
    # P3D-style block: temporal kernel of 3s (norm 3*sqrt(n)), spatial of 4s
    t, s = torch.full((2, 2, 3, 1, 1), 3.0), torch.full((2, 2, 1, 3, 3), 4.0)
    # I3D-style block: centre tap 1s, the two other taps 2s
    w = torch.ones(1, 1, 3, 2, 2)
    w[:, :, 0] = 2.0
    w[:, :, 2] = 2.0
    norms = temporal_weight_norms({"a.temporal_conv3d.weight": t, "a.spatial_conv3d.weight": s, "b.conv3d.weight": w})
    assert norms["blocks"]["a"]["temporal"] == pytest.approx(3.0 * 12 ** 0.5)
    assert norms["blocks"]["a"]["spatial"] == pytest.approx(4.0 * 36 ** 0.5)
    assert norms["blocks"]["b"]["temporal"] == pytest.approx(2.0 * 8 ** 0.5)
    assert norms["blocks"]["b"]["spatial"] == pytest.approx(2.0)
    total_t = (9 * 12 + 4 * 8) ** 0.5
    total_s = (16 * 36 + 4) ** 0.5
    assert norms["relative"] == pytest.approx(total_t / total_s)


def test_a_pretraining_run_done_outside_the_runner_is_converted_before_any_cell(tmp_path):
    # e.g. run by a cluster scheduler from --print-commands: results.json + checkpoint, no backbone file yet
    from reid.study.grid import BUDGETS, build_study
    from reid.study.runner import _convert_if_needed

    s = build_study(str(tmp_path / "s"), BUDGETS["laptop"]())
    os.makedirs(s.pretrain.out_dir)
    c2d = build_model("c2d_resnet18", num_classes=5)
    torch.save({"format_version": 1, "model": c2d.state_dict(), "config": {"arch": "c2d_resnet18"}, "epoch": 1,
                "num_classes": 5}, os.path.join(s.pretrain.out_dir, "checkpoint_last.pth"))
    _convert_if_needed(s)
    assert not os.path.exists(s.pretrained_path)             # not finished (no results.json): nothing yet
    open(s.pretrain.results_path, "w").write("{}")
    _convert_if_needed(s)
    state = torch.load(s.pretrained_path, weights_only=True)
    assert torch.equal(state["layer1.0.conv1.weight"], c2d.state_dict()["layer1.0.conv1.weight"].squeeze(2))


@pytest.mark.parametrize("arch", ["p3d_c_resnet18", "i3d_resnet18", "ap3d_resnet18", "ap_i3d_resnet18"])
def test_zeroing_temporal_weights_leaves_the_spatial_ones(arch):
    torch.manual_seed(0)
    state = {k: v + torch.randn_like(v) if v.is_floating_point() else v
             for k, v in build_model(arch, num_classes=5).state_dict().items()}  # every weight non-zero
    before = temporal_weight_norms(state)
    zeroed, touched = zero_temporal_weights(state)
    after = temporal_weight_norms(zeroed)
    assert touched == before["num_blocks"] > 0
    assert before["temporal_norm"] > 0 and after["temporal_norm"] == 0
    assert after["spatial_norm"] == pytest.approx(before["spatial_norm"])
    changed = [k for k in state if not torch.equal(state[k], zeroed[k])]
    assert len(changed) == touched and all(k.endswith("conv3d.weight") for k in changed)
