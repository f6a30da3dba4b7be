"""Specification of ``reid.models``: torchvision-compatible ResNets, inflation, the video models of
the AP3D paper (every one starts as C2D), the factory, the head contract and the summary table."""
import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ap3d_kernels import apm_forward_flops, available_backends
from ap3d_kernels.modules import NonLocalBlock3D, TemporalBlock
from reid.models import (
    ARCHITECTURES,
    MODEL_NAMES,
    VideoResNet,
    apm_modules,
    build_model,
    count_parameters,
    inflate_resnet,
    load_pretrained,
    parse_model_name,
    resnet18,
    resnet34,
    resnet50,
    set_apm_backend,
    temporal_blocks,
)
from reid.models.inflate import set_last_stride
from reid.models.summary import PAPER_RESNET50, count_flops, format_table, main, summarize

SMALL = (32, 32)  # clip height, width: layer3 maps of 2x2, the least the 1x2x2 non-local pooling takes


def torchvision_state_dict(depth: int, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """An ImageNet-like ResNet state dict in torchvision's format, written from torchvision's
    naming rules (not from our model), with non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    basic = depth in (18, 34)
    layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    sd = OrderedDict()

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (cin * k * k))

    def bn(name, c):
        sd[f"{name}.weight"] = torch.rand(c, generator=g) * 0.4 + 0.3
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip([64, 128, 256, 512], layers), start=1):
        out = planes if basic else planes * 4
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            if basic:
                conv(f"{p}.conv1", planes, inplanes, 3), bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            else:
                conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", out, planes, 1), bn(f"{p}.bn3", out)
            if b == 0 and (stage > 1 or inplanes != out):
                conv(f"{p}.downsample.0", out, inplanes, 1), bn(f"{p}.downsample.1", out)
            inplanes = out
    sd["fc.weight"] = torch.randn(1000, inplanes, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(1000)
    return sd


@pytest.fixture(scope="module")
def weights():
    return {d: torchvision_state_dict(d) for d in (18, 50)}


@pytest.fixture(scope="module")
def weight_files(weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    paths = {}
    for depth, sd in weights.items():
        paths[depth] = root / f"resnet{depth}.pth"
        torch.save(sd, paths[depth])
    return paths


def per_frame(model2d, clips):
    """The 2D network's layer4 map of every frame, spatially max-pooled: [B, T, D]."""
    B, _, T, H, W = clips.shape
    fmap = model2d.forward_features(clips.transpose(1, 2).reshape(B * T, 3, H, W))
    return fmap.amax(dim=(2, 3)).view(B, T, -1)


# ------------------------------------------------------------------------------------ 2D ResNet
@pytest.mark.parametrize("ctor, depth, count", [(resnet18, 18, 11_689_512), (resnet34, 34, 21_797_672), (resnet50, 50, 25_557_032)])
def test_resnets_have_torchvisions_names_shapes_and_sizes(ctor, depth, count):
    with torch.device("meta"):
        model = ctor()
        reference = torchvision_state_dict(depth) if depth != 34 else None
    assert sum(p.numel() for p in model.parameters()) == count
    if reference is not None:
        ours = model.state_dict()
        assert list(ours) == list(reference)
        assert all(ours[k].shape == v.shape for k, v in reference.items())


@pytest.mark.parametrize("depth", [18, 50])
def test_pretrained_weights_load_from_a_local_file(depth, weights, weight_files):
    model = {18: resnet18, 50: resnet50}[depth](pretrained=weight_files[depth], num_classes=10)
    state = model.state_dict()
    for key, value in weights[depth].items():
        if key.startswith("fc."):
            continue  # the ImageNet classifier is ignored
        assert torch.equal(state[key], value), key
    assert model.fc.out_features == 10


def test_pretrained_accepts_wrapped_and_data_parallel_checkpoints(weights):
    sd = weights[18]
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    model = load_pretrained(resnet18(), wrapped)
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])


def test_pretrained_errors_are_explicit(weights, tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth.*Nothing is downloaded"):
        resnet50(pretrained=missing)
    with pytest.raises(ValueError) as info:
        resnet50(pretrained=weights[18])  # ResNet-18 weights into a ResNet-50
    msg = str(info.value)
    assert "ResNet-50" in msg and "missing" in msg and "layer1.0.conv3.weight" in msg and "shape mismatches" in msg
    bad = dict(weights[18])
    bad["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError, match=r"conv1.weight: file \(64, 3, 3, 3\) vs model \(64, 3, 7, 7\)"):
        resnet18(pretrained=bad)
    with pytest.raises(TypeError, match="path or a state dict"):
        resnet18(pretrained=42)


def test_build_model_copies_pretrained_tensors_and_keeps_float32(weights):
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights[18].items()}
    model = build_model("c2d_resnet18", num_classes=3, pretrained=half)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    torch.testing.assert_close(model.layer1[0].conv1.weight[:, :, 0], half["layer1.0.conv1.weight"].float())
    with torch.no_grad():
        model.layer1[0].conv1.weight.zero_()
    assert half["layer1.0.conv1.weight"].abs().sum() > 0  # the caller's state dict is not aliased


# ------------------------------------------------------------------------------------ inflation
@pytest.mark.parametrize("depth", [18, 50])
def test_inflated_c2d_is_the_2d_resnet_applied_frame_by_frame(depth, weight_files):
    torch.manual_seed(0)
    model2d = {18: resnet18, 50: resnet50}[depth](pretrained=weight_files[depth]).eval()
    set_last_stride(model2d, 1)
    clips = torch.randn(2, 3, 3, *SMALL)
    expected = per_frame(model2d, clips)

    trunk = inflate_resnet(model2d, last_stride=1).eval()
    fmap = trunk(clips)
    assert fmap.shape == (2, model2d.feature_dim, 3, SMALL[0] // 16, SMALL[1] // 16)
    torch.testing.assert_close(fmap.amax(dim=(3, 4)).transpose(1, 2), expected, rtol=1e-4, atol=1e-4)


def test_c2d_model_is_the_2d_resnet_per_frame_followed_by_the_neck(weight_files):
    torch.manual_seed(0)
    model2d = resnet18(pretrained=weight_files[18]).eval()
    set_last_stride(model2d, 1)
    clips = torch.randn(2, 3, 3, *SMALL)
    expected = per_frame(model2d, clips)
    video = build_model("c2d_resnet18", num_classes=5, pretrained=weight_files[18]).eval()
    torch.testing.assert_close(video.pooled_features(clips), expected, rtol=1e-4, atol=1e-4)
    # eval output: the neck (an affine map in eval) applied to every frame
    bn = video.bn
    neck = (expected - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(video(clips), neck, rtol=1e-4, atol=1e-4)


def test_inflation_leaves_the_2d_model_untouched_and_sets_the_last_stride():
    model2d = resnet50()
    trunk = inflate_resnet(model2d, last_stride=1)
    assert model2d.layer4[0].conv2.stride == (2, 2) and model2d.layer4[0].downsample[0].stride == (2, 2)
    assert trunk.layer4[0].conv2.stride == (1, 1, 1) and trunk.layer4[0].downsample[0].stride == (1, 1, 1)
    assert trunk.layer3[0].conv2.stride == (1, 2, 2)
    basic = inflate_resnet(resnet18(), last_stride=1)
    assert basic.layer4[0].conv1.stride == (1, 1, 1)


# ------------------------------------------------------------------------- every model starts as C2D
@pytest.fixture(scope="module")
def c2d_reference(weights):
    torch.manual_seed(0)
    model = build_model("c2d_resnet50", num_classes=7, pretrained=weights[50])
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("bn.", "classifier."))}
    clips = torch.randn(2, 3, 4, *SMALL)
    with torch.no_grad():
        eval_out = model.eval()(clips)
        train_pooled = model.train().pooled_features(clips)  # (updates BatchNorm statistics: second)
    return head, clips, eval_out, train_pooled


def temporal_weights(model):
    """The weights that only matter through time: temporal convs and the non-centre taps."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, TemporalBlock):
            if hasattr(m, "temporal_conv3d"):
                out[f"{name}.temporal_conv3d"] = m.temporal_conv3d.weight.grad
            elif m.conv3d.kernel_size[0] > 1:
                out[f"{name}.conv3d[non-centre taps]"] = m.conv3d.weight.grad[:, :, [0, 2]]
        elif isinstance(m, NonLocalBlock3D):
            out[f"{name}.W.1.weight"] = m.W[1].weight.grad
            out[f"{name}.W.1.bias"] = m.W[1].bias.grad
    return out


# Every model that keeps C2D's head (CNN+LSTM replaces it: tests/test_baselines.py covers it).
VARIANTS = [a for a in ARCHITECTURES if a != "c2d" and ARCHITECTURES[a].head == "mean"]


@pytest.mark.parametrize("arch", VARIANTS)
def test_every_variant_built_from_2d_weights_starts_as_c2d(arch, weights, c2d_reference):
    head, clips, eval_out, train_pooled = c2d_reference
    torch.manual_seed(1)
    model = build_model(f"{arch}_resnet50", num_classes=7, pretrained=weights[50], apm_backend="reference")
    model.load_state_dict(head, strict=False)  # the same neck and classifier as the C2D model
    assert temporal_blocks(model) or ARCHITECTURES[arch].nonlocal_blocks
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(clips), eval_out, rtol=1e-4, atol=1e-4)
        # Train mode: BatchNorm with batch statistics. Compared before the neck, whose batch of
        # two clips turns rounding-level differences of near-equal channels into visible ones.
        torch.testing.assert_close(model.train().pooled_features(clips), train_pooled, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", VARIANTS)
def test_temporal_parameters_of_every_variant_learn(arch, weights):
    """At initialisation the temporal weights get gradients (temporal convs, non-centre taps, the
    non-local output BatchNorm). APM and the non-local projections reach the output only through
    those zero-initialised weights, so they get gradients once the weights have moved: after one
    optimiser step every temporal parameter does."""
    torch.manual_seed(0)
    model = build_model(f"{arch}_resnet18", num_classes=5, pretrained=weights[18], apm_backend="reference").train()
    clips = torch.randn(2, 3, 4, *SMALL)
    labels = torch.tensor([1, 4])

    def loss():
        logits, features = model(clips)
        return F.cross_entropy(logits, labels) + features.pow(2).mean()

    loss().backward()
    grads = temporal_weights(model)
    assert grads
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, f"{name} gets no gradient at initialisation"

    temporal_modules = [m for m in model.modules() if isinstance(m, (TemporalBlock, NonLocalBlock3D))]
    torch.optim.SGD([p for m in temporal_modules for p in m.parameters()], lr=0.1).step()
    model.zero_grad()
    loss().backward()
    for m in temporal_modules:
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{type(m).__name__}.{name} gets no gradient"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_auto_backend_gives_the_same_model_output(weights):
    torch.manual_seed(0)
    model = build_model("ap3d_resnet18", num_classes=3, pretrained=weights[18], apm_backend="auto")
    # move the temporal convs off their initialisation so that APM actually shapes the output
    with torch.no_grad():
        for block in temporal_blocks(model):
            block.temporal_conv3d.weight.normal_(0, 0.05)
    clips = torch.randn(2, 3, 4, *SMALL)
    model.eval()
    out_auto = model(clips)
    set_apm_backend(model, "reference")
    torch.testing.assert_close(model(clips), out_auto, rtol=1e-4, atol=1e-4)
    assert {m.backend for m in apm_modules(model)} == {"reference"}


# ------------------------------------------------------------------------ Tables 1/2 parameters
# Tables 1 and 2, millions of parameters. CA-NL (Table 2: 32.75) is not here: its layers are not
# in the paper, and the closest design gives 32.71 (tests/test_baselines.py says why).
TABLE_PARAMS = {
    "c2d": 23.51, "i3d": 27.64, "ap_i3d": 27.68,
    "p3d_a": 24.20, "p3d_b": 24.20, "p3d_c": 24.20,
    "ap_p3d_a": 24.24, "ap_p3d_b": 24.24, "ap_p3d_c": 24.24,
    "nl": 30.87, "nl_p3d_c": 31.56, "nl_ap3d": 31.60,
    "deform3d": 27.75, "cnn_lstm": 28.76,
}


@pytest.mark.parametrize("arch", list(TABLE_PARAMS))
def test_resnet50_parameter_counts_match_tables_1_and_2(arch):
    with torch.device("meta"):
        model = build_model(arch, num_classes=625)
    assert f"{count_parameters(model) / 1e6:.2f}" == f"{TABLE_PARAMS[arch]:.2f}"
    assert PAPER_RESNET50[arch][0] == TABLE_PARAMS[arch]  # the summary prints the same figure
    # the classifier is excluded from the paper's counts, the neck is not
    d = model.feature_dim
    assert count_parameters(model, exclude_classifier=False) == count_parameters(model) + d * 625 + 625


def test_state_dict_keys_follow_the_authors_release():
    """So the release's AP3D / NL-AP3D checkpoints load with ``model.load_state_dict``."""
    keys = set(meta_model("nl_ap3d").state_dict())
    for key in (
        "conv1.weight",
        "layer1.0.conv2.weight",
        "layer2.0.conv2.APM.semantic_mapping.weight",
        "layer2.0.conv2.APM.contrastive_att_net.0.weight",
        "layer2.0.conv2.spatial_conv3d.weight",
        "layer2.0.conv2.temporal_conv3d.weight",
        "layer2.2.g.0.weight",  # the non-local block after block 1
        "layer2.2.W.1.running_var",
        "layer2.3.conv2.APM.x_mapping.weight",  # residual block 2
        "layer4.0.downsample.1.running_mean",
        "bn.weight",
        "classifier.weight",
    ):
        assert key in keys, key


# ------------------------------------------------------------------------ factory and placements
def test_names_backbones_and_aliases():
    assert parse_model_name("ap3d") == ("ap_p3d_c", "resnet50")
    assert parse_model_name("ap3d_resnet18") == ("ap_p3d_c", "resnet18")
    assert parse_model_name("NL-AP3D_ResNet34") == ("nl_ap3d", "resnet34")
    assert parse_model_name("c2d_resnet50") == ("c2d", "resnet50")
    for name in ("c2d", "i3d", "ap_i3d", "p3d_a", "p3d_b", "p3d_c", "ap_p3d_a", "ap_p3d_b", "ap_p3d_c", "ap3d", "nl", "nl_p3d_c", "nl_ap3d"):
        for suffix in ("", "_resnet18", "_resnet34", "_resnet50"):
            assert name + suffix in MODEL_NAMES
    with pytest.raises(ValueError, match="unknown model name 'ap4d_resnet50'.*ap_p3d_c.*resnet18"):
        build_model("ap4d_resnet50", 10)
    with pytest.raises(ValueError, match="unknown model name 'ap3d_resnet101'"):
        build_model("ap3d_resnet101", 10)


def placement(model):
    """{stage: [indices of residual blocks whose conv2 is a TemporalBlock]} and NL positions."""
    temporal, nonlocal_ = {}, {}
    for stage in range(1, 5):
        block_index = -1
        for m in getattr(model, f"layer{stage}"):
            if isinstance(m, NonLocalBlock3D):
                nonlocal_.setdefault(stage, []).append(block_index)
                continue
            block_index += 1
            if isinstance(m.conv2, TemporalBlock):
                temporal.setdefault(stage, []).append(block_index)
    return temporal, nonlocal_


def meta_model(name, **options):
    with torch.device("meta"):
        return build_model(name, num_classes=4, **options)


@pytest.mark.parametrize(
    "name, block",
    [
        ("i3d", "I3D"), ("ap_i3d", "API3D"), ("p3d_a", "P3DA"), ("p3d_b", "P3DB"), ("p3d_c", "P3DC"),
        ("ap_p3d_a", "APP3DA"), ("ap_p3d_b", "APP3DB"), ("ap_p3d_c", "APP3DC"), ("ap3d", "APP3DC"),
        ("nl_p3d_c", "P3DC"), ("nl_ap3d", "APP3DC"),
    ],
)
def test_each_name_builds_its_block(name, block):
    assert {type(b).__name__ for b in temporal_blocks(meta_model(name))} == {block}


def test_default_placements_are_the_papers():
    assert placement(meta_model("ap3d")) == ({2: [0, 2], 3: [0, 2, 4]}, {})
    assert placement(meta_model("nl")) == ({}, {2: [1, 3], 3: [1, 3, 5]})
    assert placement(meta_model("nl_ap3d")) == ({2: [0, 2], 3: [0, 2, 4]}, {2: [1, 3], 3: [1, 3, 5]})
    assert placement(meta_model("c2d")) == ({}, {})
    # "half" of stages 2 and 3 of the shallow backbones (Table 4)
    assert placement(meta_model("ap3d_resnet18")) == ({2: [0], 3: [0]}, {})
    assert placement(meta_model("ap3d_resnet34")) == ({2: [0, 2], 3: [0, 2, 4]}, {})
    assert placement(meta_model("nl_resnet18")) == ({}, {2: [1], 3: [1]})
    # the release's state-dict layout: a non-local block takes the next index of its stage
    assert isinstance(meta_model("nl").layer2[2], NonLocalBlock3D)


@pytest.mark.parametrize(
    "stages, num_blocks, expected",
    [
        ((1,), 1, {1: [1]}),  # Table 3: the second-to-last block of the stage
        ((2,), 1, {2: [2]}),
        ((3,), 1, {3: [4]}),
        ((4,), 1, {4: [1]}),
        ((2, 3), 2, {2: [2], 3: [4]}),  # one per stage
        ((2, 3), 5, {2: [0, 2], 3: [0, 2, 4]}),
        ((2, 3), 10, {2: [0, 1, 2, 3], 3: [0, 1, 2, 3, 4, 5]}),
        ((2, 3), "all", {2: [0, 1, 2, 3], 3: [0, 1, 2, 3, 4, 5]}),
        ((3,), "half", {3: [0, 2, 4]}),
    ],
)
def test_table3_placements(stages, num_blocks, expected):
    assert placement(meta_model("ap3d", stages=stages, num_blocks=num_blocks))[0] == expected


def test_explicit_placements_and_their_errors():
    model = meta_model("ap_i3d", temporal_placement={3: [5]})
    assert placement(model)[0] == {3: [5]}
    assert placement(meta_model("nl_ap3d", nonlocal_placement={4: [0]}))[1] == {4: [0]}
    with pytest.raises(ValueError, match="num_blocks=3 is not available.*2 \\(one\\), 5 \\(half\\), 10 \\(all\\)"):
        meta_model("ap3d", num_blocks=3)
    with pytest.raises(ValueError, match="stages must be distinct integers in 1..4"):
        meta_model("ap3d", stages=(0, 2))
    with pytest.raises(ValueError, match="layer2 has 4 blocks"):
        meta_model("ap3d", temporal_placement={2: [4]})
    with pytest.raises(ValueError, match="'c2d' has no temporal blocks"):
        meta_model("c2d", stages=(2,))
    with pytest.raises(ValueError, match="no non-local blocks"):
        meta_model("ap3d", nonlocal_placement={2: [1]})
    with pytest.raises(ValueError, match="either temporal_placement or stages"):
        meta_model("ap3d", stages=(2,), temporal_placement={2: [0]})
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        meta_model("c2d") and build_model("c2d_resnet18", 0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'apm_temperature'"):
        build_model("ap3d_resnet18", 4, apm_temperature=4)


def test_apm_options_reach_every_apm():
    model = meta_model("ap3d", apm_scale=2.0, contrastive=False, detach_gate_inputs=False, apm_backend="reference", apm_reduction=8)
    apms = apm_modules(model)
    assert len(apms) == 5
    for m in apms:
        assert (m.scale, m.contrastive, m.detach_gate_inputs, m.backend, m.reduction) == (2.0, False, False, "reference", 8)
    # one configuration fits every model: APM options are accepted and unused without APM
    assert not apm_modules(meta_model("p3d_c", apm_scale=2.0, contrastive=False))
    five = meta_model("ap_i3d", time_dim=5)
    assert {b.conv3d.kernel_size[0] for b in temporal_blocks(five)} == {5}


# ------------------------------------------------------------------------------- head contract
@pytest.fixture(scope="module")
def ap3d18(weights):
    torch.manual_seed(0)
    return build_model("ap3d_resnet18", num_classes=150, pretrained=weights[18], apm_scale=4.0, contrastive=True, apm_backend="reference")


def test_train_returns_logits_and_post_bn_features(ap3d18):
    model = ap3d18.train()
    assert isinstance(model, VideoResNet) and model.model_name == "ap_p3d_c_resnet18"
    clips = torch.randn(3, 3, 4, *SMALL)
    logits, features = model(clips)
    assert logits.shape == (3, 150) and features.shape == (3, 512) == (3, model.feature_dim)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512
    pooled = model.pooled_features(clips).mean(dim=1)
    torch.testing.assert_close(features, F.batch_norm(pooled, None, None, model.bn.weight, model.bn.bias, training=True))
    torch.testing.assert_close(logits, model.classifier(features))
    assert model.bn.bias.requires_grad
    assert build_model("c2d", 10).feature_dim == 2048


@pytest.mark.parametrize("frames", [1, 3, 32])
def test_eval_returns_per_frame_features_whose_mean_is_the_clip_feature(ap3d18, frames):
    model = ap3d18.eval()
    clips = torch.randn(2, 3, frames, *SMALL)
    with torch.no_grad():
        out = model(clips)
        pooled = model.pooled_features(clips)
    assert out.shape == (2, frames, 512)
    torch.testing.assert_close(out.mean(dim=1), model.bn(pooled.mean(dim=1)), rtol=1e-4, atol=1e-5)


def test_pooled_features_are_the_spatial_max_per_frame_in_either_layout(ap3d18):
    model = copy.deepcopy(ap3d18).eval().double()
    clips = torch.randn(2, 3, 5, *SMALL, dtype=torch.float64)
    with torch.no_grad():
        fmap = model.forward_features(clips)
        expected = fmap.amax(dim=(3, 4)).transpose(1, 2)  # [B, T, D]
        torch.testing.assert_close(model.pooled_features(clips), expected, rtol=0, atol=0)
        model.to(memory_format=torch.channels_last_3d)
        cl = clips.contiguous(memory_format=torch.channels_last_3d)
        assert model.forward_features(cl).is_contiguous(memory_format=torch.channels_last_3d)  # the fast path's input
        torch.testing.assert_close(model.pooled_features(cl), expected, rtol=1e-12, atol=1e-12)


def test_clips_are_validated(ap3d18):
    with pytest.raises(ValueError, match="batch of >= 2.*model.eval"):
        ap3d18.train()(torch.randn(1, 3, 4, *SMALL))
    with pytest.raises(ValueError, match="clips must have rank 5.*got rank 4"):
        ap3d18(torch.randn(2, 3, 64, 32))
    with pytest.raises(ValueError, match="clips must have 3 channels.*got 1"):
        ap3d18(torch.randn(2, 1, 4, 64, 32))
    with pytest.raises(TypeError, match="clips must have a floating dtype.*torch.uint8"):
        ap3d18(torch.zeros(2, 3, 4, 64, 32, dtype=torch.uint8))


# ------------------------------------------------------------------------------------- summary
def test_flop_counter_sees_apm_and_counts_convs_exactly(weights):
    clip = torch.randn(1, 3, 4, *SMALL)
    with torch.device("meta"):
        p3d = build_model("p3d_c_resnet18", 2)
        ap3d = build_model("ap3d_resnet18", 2, apm_backend="reference")
        model2d = resnet18()
    set_last_stride(model2d, 1)
    clip = clip.to("meta")
    c2d_flops = count_flops(build_model("c2d_resnet18", 2).to("meta"), clip)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model2d.forward_features(torch.empty(4, 3, *SMALL, device="meta"))
    assert c2d_flops == counter.get_total_flops()  # C2D = the 2D network on each frame

    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape))) for m in apm_modules(ap3d)]
    ap3d_flops = count_flops(ap3d, clip)
    for h in hooks:
        h.remove()
    apm_flops = sum(
        apm_forward_flops(s[0], s[1], s[2], s[3] * s[4], m.inter_channels, m.time_dim, m.contrastive) for m, s in shapes
    )
    assert len(shapes) == 2 and apm_flops > 0
    # AP-P3D-C = P3D-C + APM (its strided temporal conv costs what P3D's padded one does)
    extra = ap3d_flops - count_flops(p3d, clip)
    assert extra >= apm_flops, "APM's FLOPs are missing from the counter"
    assert extra <= 1.5 * apm_flops  # the reference also multiplies the zero-padded neighbours


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the fused CPU kernels are not built")
def test_fused_apm_reports_exactly_its_formula_to_the_flop_counter():
    torch.manual_seed(0)
    p3d = build_model("p3d_c_resnet18", 2)
    ap3d = build_model("ap3d_resnet18", 2, apm_backend="auto")
    clip = torch.randn(1, 3, 4, *SMALL)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape))) for m in apm_modules(ap3d)]
    extra = count_flops(ap3d, clip) - count_flops(p3d, clip)
    for h in hooks:
        h.remove()
    assert extra == sum(
        apm_forward_flops(s[0], s[1], s[2], s[3] * s[4], m.inter_channels, m.time_dim, m.contrastive) for m, s in shapes
    )


def test_summary_table_lists_every_architecture():
    rows = summarize(device="meta", height=64, width=32)
    assert [r.architecture for r in rows] == [f"{a}_resnet50" for a in ARCHITECTURES]
    for r in rows:
        if r.architecture != "ca_nl_resnet50":  # 32.71 vs 32.75: tests/test_baselines.py
            assert f"{r.params_m:.2f}" == f"{r.paper_params:.2f}"
        assert r.flops > 0 and r.gmacs == pytest.approx(r.flops / 2e9)
        block = ARCHITECTURES[r.architecture[: -len("_resnet50")]].block
        assert r.apm_backend == ("reference" if block is not None and block.uses_apm else "-")  # meta: no fused kernel
    by_name = {r.architecture: r for r in rows}
    assert by_name["ap_p3d_c_resnet50"].flops > by_name["p3d_c_resnet50"].flops > by_name["c2d_resnet50"].flops
    assert by_name["nl_resnet50"].flops > by_name["c2d_resnet50"].flops
    table = format_table(rows, markdown=True)
    assert table.count("\n") == len(rows) + 1 and "| ap_p3d_c_resnet50 | AP-P3D-C (AP3D) | 24.24 | 24.24 |" in table


def test_command_line_prints_the_table(capsys):
    assert main(["--device", "meta", "--models", "c2d", "ap3d", "--backbone", "all", "--markdown"]) == 0
    out = capsys.readouterr().out
    for name in ("c2d_resnet18", "ap_p3d_c_resnet34", "c2d_resnet50"):
        assert f"| {name} |" in out
    assert "| c2d_resnet50 | C2D | 23.51 | 23.51 |" in out
