"""Specification of Table 2's other baselines: CA-NL (``ContrastiveNonLocalBlock3D``), the
deformable 3D conv (``Deform3D``) and CNN+LSTM (``LSTMVideoResNet``), as modules and as models.

The generic block properties (built from 2D weights it is the 2D conv on every frame, frame count
kept, bad input named) are checked for ``Deform3D`` with every other block in test_modules.py.
"""
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import ap3d_kernels
from ap3d_kernels.modules import ContrastiveNonLocalBlock3D, Deform3D, I3D, NonLocalBlock3D, deformable_warp
from reid.models import (
    ARCHITECTURES,
    LSTMVideoResNet,
    MODEL_NAMES,
    build_model,
    count_parameters,
    parse_model_name,
    temporal_blocks,
)
from reid.models.summary import PAPER_RESNET50, count_flops

SMALL = (32, 32)  # clip height, width: layer3 maps of 2x2, the least the 1x2x2 non-local pooling takes
RESNET50_NL_CHANNELS = [512, 512, 1024, 1024, 1024]  # the five non-local blocks of Table 2
RESNET50_TEMPORAL_CHANNELS = [128, 128, 256, 256, 256]  # conv2 input of the five temporal blocks


# ----------------------------------------------------------------------------- deformable warp
def bilinear_by_hand(frame, dx, dy):
    """One frame ``[C, H, W]`` sampled at ``(y + dy[y, x], x + dx[y, x])`` with the textbook
    bilinear formula, reading zeros outside the map."""
    C, H, W = frame.shape
    out = torch.zeros_like(frame)
    for y in range(H):
        for x in range(W):
            sx, sy = x + float(dx[y, x]), y + float(dy[y, x])
            x0, y0 = math.floor(sx), math.floor(sy)
            for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                    if 0 <= yy < H and 0 <= xx < W:
                        out[:, y, x] += wy * wx * frame[:, yy, xx]
    return out


def test_warp_is_bilinear_sampling_at_the_offset_positions_with_zeros_outside():
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 2, 4, 5, dtype=torch.float64)
    offsets = torch.randn(2, 2, 2, 4, 5, dtype=torch.float64) * 2.5  # some land outside the map
    out = deformable_warp(frames, offsets)
    assert out.shape == frames.shape
    for b in range(2):
        for t in range(2):
            expected = bilinear_by_hand(frames[b, :, t], offsets[b, 0, t], offsets[b, 1, t])
            torch.testing.assert_close(out[b, :, t], expected)


def test_warp_with_zero_offsets_is_the_identity_and_integer_offsets_shift():
    torch.manual_seed(0)
    frames = torch.randn(1, 3, 2, 4, 5)
    zero = torch.zeros(1, 2, 2, 4, 5)
    torch.testing.assert_close(deformable_warp(frames, zero), frames, rtol=0, atol=1e-6)
    right = zero.clone()
    right[:, 0] = 1.0  # dx = +1: pixel x reads x + 1, the last column reads outside (zero)
    shifted = deformable_warp(frames, right)
    torch.testing.assert_close(shifted[..., :-1], frames[..., 1:], rtol=0, atol=1e-6)
    assert shifted[..., -1].abs().max() < 1e-6
    # a 1x1 map: grid_sample's align_corners=False convention keeps it well defined
    torch.testing.assert_close(deformable_warp(frames[..., :1, :1], zero[..., :1, :1]), frames[..., :1, :1])


# ------------------------------------------------------------------------------- Deform3D block
def randomised(block, scale=0.4):
    """Move every parameter off its initialisation (offsets of a fraction of a pixel and more)."""
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, scale)
    return block


def deform3d_by_hand(block, x):
    """``conv3d`` (stride N) over ``[warp(x_{t-r}) .. x_t .. warp(x_{t+r})]`` built frame by frame."""
    B, C, T, H, W = x.shape
    r = block.time_dim // 2
    offsets = block.offset_conv3d(x)
    stack = []
    for t in range(T):
        j = 0
        for d in range(-r, r + 1):
            if d == 0:
                stack.append(x[:, :, t])
                continue
            s = t + d
            if 0 <= s < T:
                warped = [bilinear_by_hand(x[b, :, s], offsets[b, 2 * j, t], offsets[b, 2 * j + 1, t]) for b in range(B)]
                stack.append(torch.stack(warped))
            else:
                stack.append(torch.zeros_like(x[:, :, t]))  # beyond the clip: zero frames
            j += 1
    return block.conv3d(torch.stack(stack, dim=2))


@pytest.mark.parametrize("time_dim", [3, 5])
def test_deform3d_convolves_the_warped_neighbours(time_dim):
    torch.manual_seed(0)
    block = randomised(Deform3D(3, 4, time_dim=time_dim, stride=2, bias=True)).double()
    x = torch.randn(2, 3, 3, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), deform3d_by_hand(block, x))
    assert block.offset_conv3d.out_channels == 2 * (time_dim - 1)
    assert block.offset_conv3d.kernel_size == (time_dim, 3, 3)


def test_deform3d_with_zero_offsets_is_i3d_with_the_same_kernel():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=False)
    deform, i3d = Deform3D.from_2d(conv), I3D.from_2d(conv)
    with torch.no_grad():
        i3d.conv3d.weight.normal_()  # every temporal tap in use
        deform.conv3d.weight.copy_(i3d.conv3d.weight)
    x = torch.randn(2, 6, 4, 7, 6)
    torch.testing.assert_close(deform(x), i3d(x), rtol=1e-5, atol=1e-5)


def test_deform3d_initialisation_parameters_and_names():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3, padding=1, bias=False)
    block = Deform3D.from_2d(conv)
    assert set(block.state_dict()) == {"conv3d.weight", "offset_conv3d.weight", "offset_conv3d.bias"}
    assert block.offset_conv3d.weight.abs().sum() == 0 and block.offset_conv3d.bias.abs().sum() == 0
    torch.testing.assert_close(block.conv3d.weight[:, :, 1], conv.weight.detach())
    assert block.conv3d.weight[:, :, [0, 2]].abs().sum() == 0
    assert block.conv3d.stride == (3, 1, 1) and block.conv3d.padding == (0, 1, 1)
    i3d_params = 48 * 32 * 27
    assert sum(p.numel() for p in block.parameters()) == i3d_params + 32 * 27 * 4 + 4


def test_deform3d_gradcheck_float64():
    """Every input of the block (clip, offset conv, main conv) in float64 with offsets off the
    integer grid, where bilinear sampling is differentiable."""
    torch.manual_seed(0)
    block = randomised(Deform3D(2, 2, bias=True)).double()
    names = [n for n, _ in block.named_parameters()]
    x = torch.randn(1, 2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in block.parameters()]

    def f(x, *ps):
        return functional_call(block, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


def test_deform3d_offsets_learn_once_the_temporal_taps_have():
    """At initialisation the non-centre taps get a gradient; the offsets reach the output only
    through those taps, so they get one after a step (as APM's weights do)."""
    torch.manual_seed(0)
    block = Deform3D.from_2d(nn.Conv2d(8, 8, 3, padding=1, bias=False))
    x, target = torch.randn(2, 8, 4, 5, 5), torch.randn(2, 8, 4, 5, 5)
    F.mse_loss(block(x), target).backward()
    assert block.conv3d.weight.grad[:, :, [0, 2]].abs().sum() > 0
    torch.optim.SGD(block.parameters(), lr=0.5).step()
    block.zero_grad()
    F.mse_loss(block(x), target).backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_deform3d_needs_same_padding_for_its_offsets():
    with pytest.raises(ValueError, match="Deform3D.*odd kernel_size.*padding = kernel_size // 2"):
        Deform3D(8, 8, kernel_size=3, padding=0)


def test_deform3d_compiles_without_graph_breaks():
    torch.manual_seed(0)
    block = randomised(Deform3D(4, 4), 0.2)
    x = torch.randn(1, 4, 3, 5, 4)
    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(x), block(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------- CA-NL
def ca_nl_by_hand(block, x, detach=True):
    """``x + BN(W(a * y))``: ``y = softmax(theta(x) phi(x)^T) g(x)`` (keys/values pooled 1x2x2) and
    APM's gate ``a = sigmoid(w^T (theta'(g(x)) * phi'(y)))``, with explicit matrices."""
    B, C, T, H, W = x.shape
    ci = block.inter_channels
    theta = block.theta(x).flatten(2).transpose(1, 2)
    phi = F.max_pool3d(F.conv3d(x, block.phi[0].weight, block.phi[0].bias), (1, 2, 2)).flatten(2)
    g_full = F.conv3d(x, block.g[0].weight, block.g[0].bias)
    g = F.max_pool3d(g_full, (1, 2, 2)).flatten(2).transpose(1, 2)
    y = (torch.softmax(theta @ phi, dim=-1) @ g).transpose(1, 2).reshape(B, ci, T, H, W)
    c_in, y_in = (g_full.detach(), y.detach()) if detach else (g_full, y)
    mapped = F.conv3d(c_in, block.x_mapping.weight) * F.conv3d(y_in, block.n_mapping.weight)
    gate = torch.sigmoid(F.conv3d(mapped, block.contrastive_att_net[0].weight))
    return x + block.W(gate * y)


def randomised_ca_nl(channels=16, dtype=torch.float32, **kwargs):
    block = ContrastiveNonLocalBlock3D(channels, **kwargs).to(dtype).eval()
    with torch.no_grad():
        bn = block.W[1]
        bn.weight.normal_(), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
        for conv in (block.theta, block.phi[0], block.g[0], block.W[0]):
            conv.bias.normal_()
    return block


def test_ca_nl_is_the_identity_at_initialisation():
    block = ContrastiveNonLocalBlock3D(32)
    x = torch.randn(2, 32, 3, 4, 4)
    torch.testing.assert_close(block.train()(x), x)
    torch.testing.assert_close(block.eval()(x), x)


@pytest.mark.parametrize("detach", [True, False])
def test_ca_nl_matches_the_explicit_formula_forward_and_backward(detach):
    torch.manual_seed(0)
    block = randomised_ca_nl(detach_gate_inputs=detach)
    x = torch.randn(2, 16, 3, 6, 5, requires_grad=True)  # odd width: the pooling floors
    out, expected = block(x), ca_nl_by_hand(block, x, detach)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *block.parameters()], g)
    want = torch.autograd.grad(expected, [x, *block.parameters()], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


GATE = ("x_mapping.weight", "n_mapping.weight", "contrastive_att_net.0.weight")


@pytest.mark.parametrize("detach", [False, True])
def test_ca_nl_gradcheck_float64(detach):
    """Without detaching, every input is checked. With the release's detached gate inputs the
    gradient of x and of the non-local layers is deliberately not the true derivative (the
    previous test pins it to the formula), and the gate's own weights are checked."""
    torch.manual_seed(0)
    block = randomised_ca_nl(8, torch.float64, detach_gate_inputs=detach)
    checked = [n for n, _ in block.named_parameters() if not detach or n in GATE]
    fixed = {n: p.detach() for n, p in block.named_parameters() if n not in checked}
    x = torch.randn(1, 8, 2, 4, 2, dtype=torch.float64, requires_grad=not detach)
    params = [block.get_parameter(n).detach().clone().requires_grad_() for n in checked]

    def f(x, *ps):
        return functional_call(block, {**fixed, **dict(zip(checked, ps))}, (x,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


def test_ca_nl_structure_names_and_parameter_count():
    block = ContrastiveNonLocalBlock3D(512)
    c, ci = 512, 256
    nl = sum(p.numel() for p in NonLocalBlock3D(512).parameters())
    assert block.gate_channels == ci
    assert sum(p.numel() for p in block.parameters()) == nl + 2 * ci * ci + ci
    assert {k for k in block.state_dict() if not k.startswith(("g.", "theta.", "phi.", "W."))} == {
        "x_mapping.weight",
        "n_mapping.weight",
        "contrastive_att_net.0.weight",
    }
    narrow = ContrastiveNonLocalBlock3D(512, gate_channels=c // 16)
    assert sum(p.numel() for p in narrow.parameters()) == nl + 2 * ci * (c // 16) + c // 16
    assert block.detach_gate_inputs is True
    with pytest.raises(ValueError, match="gate_channels must be an integer >= 1, got 0"):
        ContrastiveNonLocalBlock3D(32, gate_channels=0)


def test_ca_nl_learns_after_one_step():
    torch.manual_seed(0)
    block = ContrastiveNonLocalBlock3D(32)
    x, target = torch.randn(2, 32, 3, 4, 4), torch.randn(2, 32, 3, 4, 4)
    F.mse_loss(block(x), target).backward()
    assert block.W[1].weight.grad.abs().sum() > 0
    torch.optim.SGD(block.parameters(), lr=0.5).step()
    block.zero_grad()
    F.mse_loss(block(x), target).backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_package_exports_the_new_modules():
    for name in ("ContrastiveNonLocalBlock3D", "Deform3D"):
        assert getattr(ap3d_kernels, name) is getattr(ap3d_kernels.modules, name)
        assert name in ap3d_kernels.__all__


# --------------------------------------------------------------------------------------- models
def meta_model(name, **options):
    with torch.device("meta"):
        return build_model(name, num_classes=625, **options)


def test_names_aliases_and_what_each_builds():
    for arch in ("ca_nl", "deform3d", "d3d", "cnn_lstm"):
        for suffix in ("", "_resnet18", "_resnet34", "_resnet50"):
            assert arch + suffix in MODEL_NAMES
    assert parse_model_name("d3d_resnet18") == ("deform3d", "resnet18")
    assert parse_model_name("CNN-LSTM") == ("cnn_lstm", "resnet50")

    d3d = meta_model("deform3d")
    assert {type(b) for b in temporal_blocks(d3d)} == {Deform3D} and len(temporal_blocks(d3d)) == 5
    assert [m.in_channels for m in temporal_blocks(d3d)] == RESNET50_TEMPORAL_CHANNELS

    ca_nl = meta_model("ca_nl")
    assert not temporal_blocks(ca_nl)
    blocks = [m for m in ca_nl.modules() if isinstance(m, NonLocalBlock3D)]
    assert [type(m) for m in blocks] == [ContrastiveNonLocalBlock3D] * 5
    assert [m.in_channels for m in blocks] == RESNET50_NL_CHANNELS
    assert isinstance(ca_nl.layer2[2], ContrastiveNonLocalBlock3D)  # NL's positions and state-dict layout
    assert isinstance(meta_model("ca_nl", nonlocal_placement={4: [0]}).layer4[1], ContrastiveNonLocalBlock3D)

    lstm = meta_model("cnn_lstm")
    assert isinstance(lstm, LSTMVideoResNet) and not temporal_blocks(lstm)
    assert (lstm.feature_dim, lstm.backbone_dim, lstm.lstm.input_size, lstm.lstm.hidden_size) == (512, 2048, 2048, 512)
    assert lstm.bn.num_features == 512 and lstm.classifier.in_features == 512
    assert meta_model("cnn_lstm_resnet18", lstm_hidden_size=256).feature_dim == 256


def test_models_without_temporal_blocks_reject_placement_options():
    for name in ("ca_nl", "cnn_lstm"):
        with pytest.raises(ValueError, match="has no temporal blocks"):
            meta_model(name, stages=(2,))
    with pytest.raises(ValueError, match="no non-local blocks; nonlocal_placement applies to nl, nl_p3d_c, nl_ap3d, ca_nl"):
        meta_model("cnn_lstm", nonlocal_placement={2: [1]})


def test_resnet50_parameter_counts_against_table_2():
    """Deformable 3D and CNN+LSTM give Table 2's counts (the test in test_models.py checks them
    with the others); here, what makes up each, and the one that cannot be matched."""
    c2d, i3d, nl = (count_parameters(meta_model(a)) for a in ("c2d", "i3d", "nl"))
    # Deformable 3D: I3D plus a 3x3x3 offset conv C_in -> 2 x 2 offsets (with bias) per block
    offsets = sum(c * 27 * 4 + 4 for c in RESNET50_TEMPORAL_CHANNELS)
    assert count_parameters(meta_model("deform3d")) == i3d + offsets
    # CNN+LSTM: C2D with its 2048-wide neck replaced by the LSTM 2048 -> 512 and a 512-wide neck
    lstm = 4 * (2048 * 512 + 512 * 512 + 2 * 512)
    assert count_parameters(meta_model("cnn_lstm")) == c2d - 2 * 2048 + lstm + 2 * 512
    # CA-NL: the paper gives no layers. Table 2's +1.88M over NL is about C^2 / 2 per block; the
    # gate of two C/2 -> C/2 maps (and w) gives C^2 / 2 + C / 2: 32.71M, not 32.75M. No gate of
    # 1x1 convs gives both that count and Table 2's small +0.18 GFLOPs, so 32.71 stands
    # (ap3d_kernels/modules/contrastive_nonlocal.py; README, "Model family vs the paper's Tables 1/2").
    gate = sum(c * c // 2 + c // 2 for c in RESNET50_NL_CHANNELS)
    ours = count_parameters(meta_model("ca_nl"))
    assert ours == nl + gate and f"{ours / 1e6:.2f}" == "32.71"
    assert PAPER_RESNET50["ca_nl"][0] == 32.75 and abs(ours / 1e6 - 32.75) < 0.05


def test_flops_of_the_new_parts_are_counted():
    clip = torch.randn(1, 3, 4, *SMALL)
    i3d, d3d = build_model("i3d_resnet18", 2), build_model("deform3d_resnet18", 2)
    blocks = temporal_blocks(d3d)
    sizes = []
    hooks = [b.offset_conv3d.register_forward_hook(lambda m, i, o: sizes.append(o.numel())) for b in blocks]
    extra = count_flops(d3d, clip) - count_flops(i3d, clip)
    for h in hooks:
        h.remove()
    fan_in = [b.in_channels * 27 for b in blocks]
    assert extra == sum(2 * n * k for n, k in zip(sizes, fan_in))  # the offset convs; sampling is not a matmul

    c2d, lstm = build_model("c2d_resnet18", 2), build_model("cnn_lstm_resnet18", 2)
    expected = 2 * 4 * 4 * (512 * 512 + 512 * 512)  # 4 steps x 4 gates x (input + recurrent) products
    assert count_flops(lstm, clip) - count_flops(c2d, clip) == expected  # CPU's fused LSTM kernel
    assert count_flops(lstm.to("meta"), clip.to("meta")) - count_flops(c2d.to("meta"), clip.to("meta")) == expected


# ----------------------------------------------------------------------------------- CNN+LSTM head
@pytest.fixture(scope="module")
def lstm18():
    torch.manual_seed(0)
    return build_model("cnn_lstm_resnet18", num_classes=6)


def test_cnn_lstm_trunk_is_c2d():
    torch.manual_seed(0)
    c2d = build_model("c2d_resnet18", 6)
    lstm = build_model("cnn_lstm_resnet18", 6)
    trunk = {k: v for k, v in c2d.state_dict().items() if not k.startswith(("bn.", "classifier."))}
    assert not set(lstm.load_state_dict(trunk, strict=False).unexpected_keys)  # the head differs in width
    clips = torch.randn(2, 3, 3, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(lstm.eval().pooled_features(clips), c2d.eval().pooled_features(clips))


def test_cnn_lstm_train_returns_logits_and_the_neck_of_the_mean_lstm_output(lstm18):
    model = lstm18.train()
    clips = torch.randn(3, 3, 4, *SMALL)
    logits, features = model(clips)
    assert logits.shape == (3, 6) and features.shape == (3, 512)
    with torch.no_grad():
        h = model.lstm(model.pooled_features(clips))[0]
    expected = F.batch_norm(h.mean(1), None, None, model.bn.weight, model.bn.bias, training=True)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, model.classifier(features))


@pytest.mark.parametrize("frames", [1, 4, 32])
def test_cnn_lstm_eval_frames_average_to_the_clip_feature(lstm18, frames):
    """The evaluator's frame-weighted mean of a clip's outputs is that clip's training feature."""
    model = lstm18.eval()
    clips = torch.randn(2, 3, frames, *SMALL)
    with torch.no_grad():
        out = model(clips)
        h = model.lstm(model.pooled_features(clips))[0]
    assert out.shape == (2, frames, 512)
    torch.testing.assert_close(out.mean(1), model.bn(h.mean(1)), rtol=1e-4, atol=1e-5)


def test_cnn_lstm_frame_outputs_only_see_earlier_frames(lstm18):
    model = lstm18.eval()
    clips = torch.randn(1, 3, 5, *SMALL)
    changed = clips.clone()
    changed[:, :, 3:] = torch.randn_like(changed[:, :, 3:])
    with torch.no_grad():
        a, b = model(clips), model(changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["ca_nl", "deform3d", "cnn_lstm"])
def test_one_training_step_gives_a_finite_loss_and_moves_the_temporal_parts(arch):
    from reid.losses import ReIDLoss

    torch.manual_seed(0)
    model = build_model(f"{arch}_resnet18", num_classes=4).train()
    clips, labels = torch.randn(4, 3, 4, *SMALL), torch.tensor([0, 0, 1, 1])
    criterion = ReIDLoss(4)
    temporal = {
        "ca_nl": lambda: [m.W[1].weight for m in model.modules() if isinstance(m, ContrastiveNonLocalBlock3D)],
        "deform3d": lambda: [b.conv3d.weight[:, :, [0, 2]] for b in temporal_blocks(model)],
        "cnn_lstm": lambda: [model.lstm.weight_ih_l0, model.lstm.weight_hh_l0],
    }[arch]
    before = [t.detach().clone() for t in temporal()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, _ = criterion(*model(clips), labels)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert all((a - b).abs().sum() > 0 for a, b in zip(temporal(), before))


def test_command_line_lists_the_new_baselines():
    """``python -m reid.models`` in a fresh process, as a user runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "reid.models", "--device", "meta", "--no-flops", "--markdown", "--models", "ca_nl", "deform3d", "cnn_lstm"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| ca_nl_resnet50 | CA-NL | 32.71 | 32.75 |" in out
    assert "| deform3d_resnet50 | Deformable 3D Conv | 27.75 | 27.75 |" in out
    assert "| cnn_lstm_resnet50 | CNN+LSTM | 28.76 | 28.76 |" in out
    assert set(ARCHITECTURES) >= {"ca_nl", "deform3d", "cnn_lstm"}
