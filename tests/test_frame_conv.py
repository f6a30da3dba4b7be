"""FrameConv3d: an nn.Conv3d of temporal kernel 1 that runs as one conv2d on channels-last clips.

The specification is nn.Conv3d itself: the same output and the same gradients (fp64), for every
geometry a 2D conv has, on both layouts; on channels_last_3d input the 2D path is the one taken
and the output stays channels_last_3d."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ap3d_kernels.modules import FrameConv3d, is_frame_conv

CL3D = torch.channels_last_3d
# (in, out, kernel, stride, padding, dilation, groups, bias, N, T, H, W): odd sizes, strides, groups
GEOMETRIES = [
    (3, 5, (1, 3, 3), (1, 1, 1), (0, 1, 1), 1, 1, True, 2, 3, 7, 5),
    (4, 6, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, 2, False, 1, 5, 9, 6),
    (5, 7, (1, 1, 1), (1, 2, 1), 0, 1, 1, False, 3, 2, 5, 5),
    (6, 3, (1, 7, 5), (1, 2, 3), (0, 3, 2), (1, 2, 1), 3, True, 2, 1, 13, 11),
    (4, 4, (1, 3, 3), 1, "same", 1, 4, True, 1, 4, 6, 3),
]


def pair(geometry):
    cin, cout, k, s, p, d, g, bias, *_ = geometry
    torch.manual_seed(0)
    ref = nn.Conv3d(cin, cout, k, s, p, d, g, bias).double()
    frame = FrameConv3d(cin, cout, k, s, p, d, g, bias).double()
    frame.load_state_dict(ref.state_dict())
    return ref, frame


@pytest.mark.parametrize("layout", [CL3D, torch.contiguous_format])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_output_and_gradients_are_conv3d_s(geometry, layout):
    ref, frame = pair(geometry)
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
    if layout is CL3D:
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


def test_inflated_networks_and_spatial_convs_of_temporal_blocks_use_it():
    from ap3d_kernels.modules import APP3DC, C2D, I3D
    from reid.models import build_model

    from ap3d_kernels.modules import APM

    model = build_model("ap3d_resnet18", num_classes=4)
    apm_weights = {id(m) for apm in model.modules() if isinstance(apm, APM) for m in apm.modules()}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d) and id(m) not in apm_weights]  # APM reads weights only
    frame_wise = [m for m in convs if is_frame_conv(m)]
    assert frame_wise and all(type(m) is FrameConv3d for m in frame_wise)
    assert all(type(m) is nn.Conv3d for m in convs if not is_frame_conv(m))  # the temporal convs
    assert type(C2D(4, 4).conv3d) is FrameConv3d and type(APP3DC(16, 16).spatial_conv3d) is FrameConv3d
    assert type(I3D(4, 4).conv3d) is nn.Conv3d
