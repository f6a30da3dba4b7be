"""FrameConv3d (temporal kernel 1) and FrameGroupConv3d (kernel = stride = (N, 1, 1)): nn.Conv3d
layers that run as one conv2d on channels-last clips.

The specification is nn.Conv3d itself: the same output and the same gradients (fp64), for every
geometry they take, on both layouts; on channels_last_3d input the 2D path is the one taken and
the output stays channels_last_3d."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ap3d_kernels.modules import FrameConv3d, FrameGroupConv3d, is_frame_conv, is_frame_group_conv

CL3D = torch.channels_last_3d
# (in, out, kernel, stride, padding, dilation, groups, bias, N, T, H, W): odd sizes, strides, groups
GEOMETRIES = [
    (3, 5, (1, 3, 3), (1, 1, 1), (0, 1, 1), 1, 1, True, 2, 3, 7, 5),
    (4, 6, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, 2, False, 1, 5, 9, 6),
    (5, 7, (1, 1, 1), (1, 2, 1), 0, 1, 1, False, 3, 2, 5, 5),
    (6, 3, (1, 7, 5), (1, 2, 3), (0, 3, 2), (1, 2, 1), 3, True, 2, 1, 13, 11),
    (4, 4, (1, 3, 3), 1, "same", 1, 4, True, 1, 4, 6, 3),
]


# (in, out, N, bias, batch, frames, H, W); frames not a multiple of N take the 3D path
GROUP_GEOMETRIES = [(5, 7, 3, False, 2, 6, 5, 3), (4, 3, 5, True, 1, 10, 3, 4), (3, 3, 3, True, 2, 7, 2, 5),
                    (2, 4, 1, True, 3, 2, 3, 3)]


def pair(geometry, cls=FrameConv3d):
    if cls is FrameGroupConv3d:
        cin, cout, n, bias = geometry[:4]
        args = (cin, cout, (n, 1, 1), (n, 1, 1), 0, 1, 1, bias)
    else:
        args = geometry[:8]
    torch.manual_seed(0)
    ref = nn.Conv3d(*args).double()
    frame = cls(*args).double()
    frame.load_state_dict(ref.state_dict())
    return ref, frame


@pytest.mark.parametrize("layout", [CL3D, torch.contiguous_format])
@pytest.mark.parametrize("geometry,cls", [(g, FrameConv3d) for g in GEOMETRIES]
                         + [(g, FrameGroupConv3d) for g in GROUP_GEOMETRIES])
def test_output_and_gradients_are_conv3d_s(geometry, cls, layout):
    ref, frame = pair(geometry, cls)
    n, t, h, w = geometry[-4:]
    x = torch.randn(n, geometry[0], t, h, w, dtype=torch.float64).contiguous(memory_format=layout)
    grads = []
    for conv in (ref, frame):
        xi = x.clone().requires_grad_()
        y = conv(xi)
        dy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
        (y * dy).sum().backward()
        grads.append((y.detach(), xi.grad, *(p.grad for p in conv.parameters())))
        conv.zero_grad()
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    if layout is CL3D and (cls is FrameConv3d or t % geometry[2] == 0):  # the 2D path
        assert grads[1][0].is_contiguous(memory_format=CL3D)


def test_channels_last_input_takes_the_2d_path_and_other_layouts_the_3d_one(monkeypatch):
    calls = []
    conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(a[0].shape) or conv2d(*a, **k))
    conv = FrameConv3d(3, 4, (1, 3, 3), padding=(0, 1, 1))
    x = torch.randn(2, 3, 5, 8, 6)
    conv(x)
    assert calls == []
    conv(x.contiguous(memory_format=CL3D))
    assert calls == [(10, 3, 8, 6)]  # the 2 x 5 frames as one batch of images
    group = FrameGroupConv3d(3, 4, (3, 1, 1), (3, 1, 1))
    group(torch.randn(2, 3, 6, 8, 6))
    group(torch.randn(2, 3, 7, 8, 6).contiguous(memory_format=CL3D))  # 7 frames: not whole groups
    assert len(calls) == 1
    assert group(torch.randn(2, 3, 6, 8, 6).contiguous(memory_format=CL3D)).is_contiguous(memory_format=CL3D)
    assert calls[1] == (4, 3, 3, 48)  # 2 clips x 2 groups, each a [C, 3 frames, H*W] image


def test_the_gradcheck_of_the_2d_path():
    conv = FrameConv3d(2, 3, (1, 3, 3), stride=(1, 2, 1), padding=(0, 1, 1)).double()
    x = torch.randn(1, 2, 3, 5, 4, dtype=torch.float64).contiguous(memory_format=CL3D).requires_grad_()
    assert torch.autograd.gradcheck(conv, (x,))  # and the parameters' gradients below, against nn.Conv3d


@pytest.mark.parametrize("kwargs", [dict(kernel_size=(3, 1, 1)), dict(kernel_size=1, stride=(2, 1, 1)),
                                    dict(kernel_size=(1, 3, 3), padding=(1, 1, 1))])
def test_a_conv_that_mixes_frames_is_refused(kwargs):
    assert not is_frame_conv(nn.Conv3d(2, 2, **kwargs))
    with pytest.raises(ValueError, match="FrameConv3d: needs temporal kernel 1, stride 1 and padding 0, got"):
        FrameConv3d(2, 2, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=(3, 1, 1)), dict(kernel_size=(3, 1, 1), stride=(3, 2, 1)),
                                    dict(kernel_size=(3, 3, 3), stride=(3, 1, 1)),
                                    dict(kernel_size=(3, 1, 1), stride=(3, 1, 1), padding=(1, 0, 0))])
def test_a_conv_whose_groups_overlap_or_that_mixes_positions_is_refused(kwargs):
    assert not is_frame_group_conv(nn.Conv3d(2, 2, **kwargs))
    with pytest.raises(ValueError, match=r"FrameGroupConv3d: needs kernel \(N, 1, 1\), stride \(N, 1, 1\)"):
        FrameGroupConv3d(2, 2, **kwargs)


def test_inflated_networks_and_spatial_convs_of_temporal_blocks_use_it():
    from ap3d_kernels.modules import APP3DB, APP3DC, C2D, I3D, P3DC
    from reid.models import build_model

    from ap3d_kernels.modules import APM

    model = build_model("ap3d_resnet18", num_classes=4)
    apm_weights = {id(m) for apm in model.modules() if isinstance(apm, APM) for m in apm.modules()}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d) and id(m) not in apm_weights]  # APM reads weights only
    frame_wise = [m for m in convs if is_frame_conv(m)]
    assert frame_wise and all(type(m) is FrameConv3d for m in frame_wise)
    temporal = [m for m in convs if not is_frame_conv(m)]  # the convs after APM
    assert temporal and all(type(m) is FrameGroupConv3d for m in temporal)
    assert type(C2D(4, 4).conv3d) is FrameConv3d and type(APP3DC(16, 16).spatial_conv3d) is FrameConv3d
    assert type(APP3DC(16, 16, time_dim=5).temporal_conv3d) is FrameGroupConv3d
    assert type(APP3DB(16, 16, stride=2).temporal_conv3d) is nn.Conv3d  # spatially strided: not grouped
    assert type(P3DC(4, 4).temporal_conv3d) is nn.Conv3d and type(I3D(4, 4).conv3d) is nn.Conv3d
