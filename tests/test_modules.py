"""Specification of the module layer: APM, the temporal blocks and the non-local block.

A temporal block built from 2D weights computes that 2D conv on every frame (the release's
initialisations), keeps the frame count, and its temporal parameters learn from there.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ap3d_kernels
from ap3d_kernels import apm_reference
from ap3d_kernels.modules import (
    API3D,
    APM,
    APP3DA,
    APP3DB,
    APP3DC,
    C2D,
    I3D,
    P3DA,
    P3DB,
    P3DC,
    TEMPORAL_BLOCKS,
    ContrastiveNonLocalBlock3D,
    Deform3D,
    NonLocalBlock3D,
    TemporalBlock,
)

AP_BLOCKS = [API3D, APP3DA, APP3DB, APP3DC]
ALL_BLOCKS = [*TEMPORAL_BLOCKS.values(), Deform3D]  # Deform3D: tests/test_baselines.py specifies the rest


def per_frame_conv2d(x, weight, bias=None, stride=1, padding=1):
    B, C, T, H, W = x.shape
    y = F.conv2d(x.transpose(1, 2).reshape(B * T, C, H, W), weight, bias, stride=stride, padding=padding)
    return y.view(B, T, *y.shape[1:]).transpose(1, 2)


def make_block(cls, conv, **kwargs):
    if cls.uses_apm:
        kwargs.setdefault("backend", "reference")
    return cls.from_2d(conv, **kwargs)


# --------------------------------------------------------------------------------------------- APM
class TestAPM:
    def test_state_dict_uses_the_release_names(self):
        m = APM(64)
        assert set(m.state_dict()) == {
            "semantic_mapping.weight",
            "x_mapping.weight",
            "n_mapping.weight",
            "contrastive_att_net.0.weight",
        }
        assert m.semantic_mapping.weight.shape == (4, 64, 1, 1, 1)
        assert m.contrastive_att_net[0].weight.shape == (1, 4, 1, 1, 1)

    def test_without_contrastive_attention_only_the_semantic_mapping_exists(self):
        m = APM(64, contrastive=False)
        assert set(m.state_dict()) == {"semantic_mapping.weight"}

    @pytest.mark.parametrize("contrastive", [True, False])
    def test_forward_is_the_functional_op_with_the_module_weights(self, contrastive):
        torch.manual_seed(0)
        m = APM(32, reduction=8, scale=2.5, contrastive=contrastive, backend="reference")
        x = torch.randn(2, 32, 3, 4, 5)
        ck = 4
        expected = apm_reference(
            x,
            m.semantic_mapping.weight.view(ck, 32),
            m.x_mapping.weight.view(ck, 32) if contrastive else None,
            m.n_mapping.weight.view(ck, 32) if contrastive else None,
            m.contrastive_att_net[0].weight.view(ck) if contrastive else None,
            scale=2.5,
            time_dim=3,
            contrastive=contrastive,
        )
        out = m(x)
        assert out.shape == (2, 32, 9, 4, 5)
        torch.testing.assert_close(out, expected)
        # The centre frame of every triple is the untouched input.
        torch.testing.assert_close(out[:, :, 1::3], x)

    def test_backend_can_be_switched_and_is_validated(self):
        m = APM(32)
        m.backend = "reference"
        assert m.backend == "reference"
        with pytest.raises(ValueError, match="backend must be one of"):
            m.backend = "cuda"
        with pytest.raises(ValueError, match="backend"):
            APM(32, backend="fast")

    @pytest.mark.filterwarnings("ignore::RuntimeWarning")
    def test_auto_backend_matches_the_reference(self):
        torch.manual_seed(1)
        m = APM(32, backend="auto")
        x = torch.randn(1, 32, 4, 3, 3)
        out = m(x)
        m.backend = "reference"
        torch.testing.assert_close(out, m(x), rtol=1e-4, atol=1e-5)

    @pytest.mark.parametrize(
        "kwargs, error, words",
        [
            ({"time_dim": 4}, ValueError, ["time_dim", "odd", "4"]),
            ({"time_dim": 1}, ValueError, ["time_dim", ">= 3", "1"]),
            ({"time_dim": 3.0}, TypeError, ["time_dim"]),
            ({"scale": 0.0}, ValueError, ["scale"]),
            ({"reduction": 0}, ValueError, ["reduction", ">= 1"]),
            ({"reduction": 64}, ValueError, ["channels // reduction", "channels=32", "reduction=64"]),
            ({"contrastive": 1}, TypeError, ["contrastive", "bool"]),
        ],
    )
    def test_bad_constructor_arguments_are_named(self, kwargs, error, words):
        with pytest.raises(error) as info:
            APM(32, **kwargs)
        for word in words:
            assert word in str(info.value)


# ------------------------------------------------------------------------------- temporal blocks
@pytest.mark.parametrize("cls", ALL_BLOCKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_built_from_2d_weights_is_the_2d_conv_on_every_frame(cls, stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3, stride=stride, padding=1, bias=False)
    block = make_block(cls, conv)
    x = torch.randn(2, 32, 5, 9, 7)
    expected = per_frame_conv2d(x, conv.weight, stride=stride)
    out = block(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", ALL_BLOCKS, ids=lambda c: c.__name__)
def test_a_freshly_constructed_block_is_also_a_per_frame_2d_conv(cls):
    torch.manual_seed(0)
    kwargs = {"backend": "reference"} if cls.uses_apm else {}
    block = cls(32, 32, kernel_size=3, stride=1, bias=True, **kwargs)
    weight2d = block.spatial_conv.weight[:, :, block.spatial_conv.kernel_size[0] // 2]
    x = torch.randn(1, 32, 3, 6, 4)
    expected = per_frame_conv2d(x, weight2d, block.spatial_conv.bias)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", ALL_BLOCKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("frames", [1, 2, 6])
def test_blocks_keep_the_frame_count(cls, frames):
    block = make_block(cls, nn.Conv2d(32, 32, 3, padding=1, bias=False))
    assert block(torch.randn(1, 32, frames, 4, 4)).shape == (1, 32, frames, 4, 4)


def test_initialisations_follow_the_release():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    w = conv.weight.detach()
    i3d = I3D.from_2d(conv)
    assert i3d.conv3d.kernel_size == (3, 3, 3) and i3d.conv3d.padding == (1, 1, 1)
    torch.testing.assert_close(i3d.conv3d.weight[:, :, 1], w)
    assert i3d.conv3d.weight[:, :, [0, 2]].abs().sum() == 0

    api3d = API3D.from_2d(conv)
    assert api3d.conv3d.stride == (3, 1, 1) and api3d.conv3d.padding == (0, 1, 1)
    assert api3d.APM.channels == 32
    torch.testing.assert_close(api3d.conv3d.weight[:, :, 1], w)

    eye = torch.eye(32)
    for cls in (P3DA, APP3DA):
        block = cls.from_2d(conv)
        torch.testing.assert_close(block.temporal_conv3d.weight[:, :, 1, 0, 0], eye)
        assert block.temporal_conv3d.weight[:, :, [0, 2]].abs().sum() == 0
    for cls in (P3DB, P3DC, APP3DB, APP3DC):
        assert cls.from_2d(conv).temporal_conv3d.weight.abs().sum() == 0
    for cls in (P3DA, P3DB, P3DC, APP3DA, APP3DB, APP3DC):
        block = cls.from_2d(conv)
        assert block.spatial_conv3d.kernel_size == (1, 3, 3) and block.temporal_conv3d.bias is None
        torch.testing.assert_close(block.spatial_conv3d.weight[:, :, 0], w)
        ap = cls.uses_apm
        assert block.temporal_conv3d.stride[0] == (3 if ap else 1)
        assert block.temporal_conv3d.padding[0] == (0 if ap else 1)


def test_apm_channels_are_the_temporal_convs_input_channels():
    conv = nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False)
    assert API3D.from_2d(conv).APM.channels == 32
    assert APP3DA.from_2d(conv).APM.channels == 64
    assert APP3DB.from_2d(conv).APM.channels == 32
    assert APP3DC.from_2d(conv).APM.channels == 64
    # P3D-B's parallel temporal branch carries the spatial stride.
    assert P3DB.from_2d(conv).temporal_conv3d.stride == (1, 2, 2)
    assert APP3DB.from_2d(conv).temporal_conv3d.stride == (3, 2, 2)


def test_state_dict_names_follow_the_release():
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    assert set(C2D.from_2d(conv).state_dict()) == {"conv3d.weight"}
    assert set(I3D.from_2d(conv).state_dict()) == {"conv3d.weight"}
    assert set(P3DC.from_2d(conv).state_dict()) == {"spatial_conv3d.weight", "temporal_conv3d.weight"}
    assert {k for k in APP3DC.from_2d(conv).state_dict() if k.startswith("APM.")} == {
        "APM.semantic_mapping.weight",
        "APM.x_mapping.weight",
        "APM.n_mapping.weight",
        "APM.contrastive_att_net.0.weight",
    }


@pytest.mark.parametrize("cls", [I3D, API3D, P3DA, P3DB, P3DC, APP3DA, APP3DB, APP3DC], ids=lambda c: c.__name__)
def test_temporal_parameters_learn(cls):
    """At initialisation the temporal conv gets a gradient; once it has moved (one SGD step),
    so does APM, whose reconstructions only reach the output through the temporal taps."""
    torch.manual_seed(0)
    block = make_block(cls, nn.Conv2d(32, 32, 3, padding=1, bias=False))
    x = torch.randn(2, 32, 4, 5, 5)
    target = torch.randn(2, 32, 4, 5, 5)
    temporal = block.conv3d.weight if cls in (I3D, API3D) else block.temporal_conv3d.weight

    loss = F.mse_loss(block(x), target)
    loss.backward()
    grad = temporal.grad if cls not in (I3D, API3D) else temporal.grad[:, :, [0, 2]]
    assert grad.abs().sum() > 0, "temporal taps get no gradient at initialisation"

    torch.optim.SGD(block.parameters(), lr=0.5).step()
    block.zero_grad()
    F.mse_loss(block(x), target).backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{cls.__name__}.{name} gets no gradient"


def test_detached_gate_inputs_are_the_default_and_can_be_turned_off():
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    assert APP3DC.from_2d(conv).APM.detach_gate_inputs is True
    assert APP3DC.from_2d(conv, detach_gate_inputs=False).APM.detach_gate_inputs is False
    block = APP3DC.from_2d(conv, scale=2.0, contrastive=False, apm_reduction=8, time_dim=5)
    assert (block.APM.scale, block.APM.contrastive, block.APM.inter_channels, block.APM.time_dim) == (2.0, False, 4, 5)
    assert block.temporal_conv3d.kernel_size == (5, 1, 1) and block.temporal_conv3d.stride == (5, 1, 1)


def test_from_2d_accepts_an_inflated_conv3d_and_rejects_temporal_ones():
    conv3d = nn.Conv3d(32, 32, (1, 3, 3), padding=(0, 1, 1), bias=False)
    block = P3DC.from_2d(conv3d)
    torch.testing.assert_close(block.spatial_conv3d.weight, conv3d.weight)
    with pytest.raises(ValueError, match="temporal kernel 1"):
        P3DC.from_2d(nn.Conv3d(32, 32, 3, padding=1))
    with pytest.raises(ValueError, match="groups=4"):
        P3DC.from_2d(nn.Conv2d(32, 32, 3, padding=1, groups=4))
    with pytest.raises(TypeError, match="Linear"):
        P3DC.from_2d(nn.Linear(3, 3))


def test_from_2d_can_give_the_block_another_stride():
    """How a ResNet's last stride reaches a temporal block built from its 2D conv."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
    block = make_block(APP3DB, conv, stride=1)
    assert block.stride == (1, 1) and block.temporal_conv3d.stride == (3, 1, 1)
    x = torch.randn(1, 16, 3, 6, 4)
    torch.testing.assert_close(block(x), per_frame_conv2d(x, conv.weight, stride=1), rtol=1e-5, atol=1e-5)
    assert conv.stride == (2, 2)  # the source conv is not modified


def test_a_new_block_is_a_plain_subclass():
    """The base class validates the geometry; a subclass sets its own options, creates its
    layers and calls reset_parameters(), like a torch.nn layer: no hook runs before it is ready."""

    class ScaledC2D(TemporalBlock):
        def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, bias=False, *,
                     time_dim=3, gain=2.0):
            super().__init__(in_channels, out_channels, kernel_size, stride, padding, time_dim=time_dim)
            self.gain = gain
            self.conv3d = self._spatial_conv3d(bias)
            self.reset_parameters()

        @property
        def spatial_conv(self):
            return self.conv3d

        def forward(self, x):
            return self.gain * self.conv3d(x)

    conv = nn.Conv2d(8, 4, 3, padding=1, bias=True)
    block = ScaledC2D.from_2d(conv, gain=3.0)
    x = torch.randn(2, 8, 3, 5, 5)
    torch.testing.assert_close(block(x), 3.0 * per_frame_conv2d(x, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)


def test_parallel_branches_need_same_padding():
    with pytest.raises(ValueError, match="padding = kernel_size // 2"):
        P3DB(32, 32, kernel_size=3, padding=0)


def test_load_2d_checks_the_kernel_shape():
    block = P3DA(32, 16)
    with pytest.raises(ValueError, match=r"\[16, 32, 3, 3\]"):
        block.load_2d(torch.randn(16, 32, 5, 5))
    with pytest.raises(ValueError, match="bias must be None"):
        block.load_2d(torch.randn(16, 32, 3, 3), torch.randn(16))


def test_temporal_block_is_abstract():
    with pytest.raises(TypeError):
        TemporalBlock(8, 8)


# ------------------------------------------------------------------------------- bad input
BAD_INPUT_MODULES = {
    "APM": lambda: APM(32, backend="reference"),
    "I3D": lambda: I3D(32, 32),
    "APP3DC": lambda: APP3DC(32, 32, backend="reference"),
    "NonLocalBlock3D": lambda: NonLocalBlock3D(32),
    "ContrastiveNonLocalBlock3D": lambda: ContrastiveNonLocalBlock3D(32),
    "Deform3D": lambda: Deform3D(32, 32),
}


@pytest.mark.parametrize("name", BAD_INPUT_MODULES)
class TestBadInput:
    def test_wrong_rank(self, name):
        with pytest.raises(ValueError) as info:
            BAD_INPUT_MODULES[name]()(torch.randn(2, 32, 4, 4))
        msg = str(info.value)
        assert name in msg and "x" in msg and "rank 5" in msg and "(2, 32, 4, 4)" in msg

    def test_channel_mismatch(self, name):
        with pytest.raises(ValueError) as info:
            BAD_INPUT_MODULES[name]()(torch.randn(1, 16, 3, 4, 4))
        msg = str(info.value)
        assert "32 channels" in msg and "got 16" in msg and "(1, 16, 3, 4, 4)" in msg

    def test_integer_dtype(self, name):
        with pytest.raises(TypeError) as info:
            BAD_INPUT_MODULES[name]()(torch.ones(1, 32, 3, 4, 4, dtype=torch.int64))
        assert "floating dtype" in str(info.value) and "torch.int64" in str(info.value)

    def test_mixed_devices(self, name):
        with pytest.raises(ValueError) as info:
            BAD_INPUT_MODULES[name]()(torch.empty(1, 32, 3, 4, 4, device="meta"))
        assert "meta" in str(info.value) and "cpu" in str(info.value)

    def test_not_a_tensor(self, name):
        with pytest.raises(TypeError, match="must be a torch.Tensor"):
            BAD_INPUT_MODULES[name]()([[1.0]])


@pytest.mark.parametrize("cls", ALL_BLOCKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("time_dim, error", [(2, ValueError), (1, ValueError), (0, ValueError), ("3", TypeError)])
def test_blocks_reject_even_or_small_time_dim(cls, time_dim, error):
    with pytest.raises(error, match="time_dim"):
        cls(32, 32, time_dim=time_dim)


@pytest.mark.parametrize("kwargs, word", [({"in_channels": 0}, "in_channels"), ({"out_channels": 2.0}, "out_channels"), ({"stride": 0}, "stride")])
def test_blocks_reject_bad_geometry(kwargs, word):
    args = {"in_channels": 32, "out_channels": 32, **kwargs}
    with pytest.raises((ValueError, TypeError), match=word):
        I3D(**args)


# ------------------------------------------------------------------------------- non-local
def nonlocal_by_hand(block, x):
    """The embedded-Gaussian formula written with explicit matrices (as in the release)."""
    B, C, T, H, W = x.shape
    theta = block.theta(x).flatten(2).transpose(1, 2)
    phi = F.max_pool3d(F.conv3d(x, block.phi[0].weight, block.phi[0].bias), (1, 2, 2)).flatten(2)
    g = F.max_pool3d(F.conv3d(x, block.g[0].weight, block.g[0].bias), (1, 2, 2)).flatten(2).transpose(1, 2)
    y = torch.softmax(theta @ phi, dim=-1) @ g
    return x + block.W(y.transpose(1, 2).reshape(B, block.inter_channels, T, H, W))


class TestNonLocal:
    def test_identity_at_initialisation_in_train_and_eval(self):
        block = NonLocalBlock3D(64)
        x = torch.randn(2, 64, 4, 6, 4)
        torch.testing.assert_close(block.train()(x), x)
        torch.testing.assert_close(block.eval()(x), x)

    def test_matches_the_explicit_formula(self):
        torch.manual_seed(0)
        block = NonLocalBlock3D(64).eval()
        with torch.no_grad():
            block.W[1].weight.normal_()
            block.W[1].bias.normal_()
            for conv in (block.theta, block.phi[0], block.g[0], block.W[0]):
                conv.bias.normal_()
        x = torch.randn(2, 64, 3, 6, 5)  # odd width: the 1x2x2 pooling floors, like the release
        torch.testing.assert_close(block(x), nonlocal_by_hand(block, x), rtol=1e-4, atol=1e-5)

    def test_structure_and_parameter_count(self):
        block = NonLocalBlock3D(512)
        assert block.inter_channels == 256
        assert set(block.state_dict()) >= {"g.0.weight", "g.0.bias", "theta.weight", "phi.0.weight", "W.0.weight", "W.1.weight"}
        c, ci = 512, 256
        assert sum(p.numel() for p in block.parameters()) == 3 * (c * ci + ci) + (ci * c + c) + 2 * c
        assert block.W[1].weight.abs().sum() == 0 and block.W[1].bias.abs().sum() == 0

    def test_learns_after_one_step(self):
        torch.manual_seed(0)
        block = NonLocalBlock3D(32)
        x, target = torch.randn(2, 32, 3, 4, 4), torch.randn(2, 32, 3, 4, 4)
        F.mse_loss(block(x), target).backward()
        assert block.W[1].weight.grad.abs().sum() > 0 and block.W[1].bias.grad.abs().sum() > 0
        torch.optim.SGD(block.parameters(), lr=0.5).step()
        block.zero_grad()
        F.mse_loss(block(x), target).backward()
        for name, p in block.named_parameters():
            assert p.grad.abs().sum() > 0, name

    def test_subsampling_needs_two_pixels(self):
        with pytest.raises(ValueError, match="H >= 2 and W >= 2"):
            NonLocalBlock3D(32)(torch.randn(1, 32, 2, 1, 4))
        assert NonLocalBlock3D(32, sub_sample=False)(torch.randn(1, 32, 2, 1, 1)).shape == (1, 32, 2, 1, 1)


def test_package_exports_the_modules():
    for name in ("APM", "C2D", "I3D", "API3D", "P3DA", "P3DB", "P3DC", "APP3DA", "APP3DB", "APP3DC", "NonLocalBlock3D"):
        assert getattr(ap3d_kernels, name) is getattr(ap3d_kernels.modules, name)
        assert name in ap3d_kernels.__all__
