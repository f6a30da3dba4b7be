"""Ground-truth correspondence between frames of a synthetic tracklet (reid.analysis.correspondence)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import map_coordinates

from ap3d_kernels import APM
from reid.analysis.apm_probe import apm_stage
from reid.analysis.correspondence import (FeatureGrid, body_to_image, correspondence, image_to_body,
                                          tracklet_boxes)
from reid.data import build_dataset

IDENTITY_BOX = [0.0, 0.0, 1.0, 1.0]


def test_hand_computed_pair_of_boxes():
    """Centre frame: the true box. Neighbour: a box half the size, shifted right by 1/8 and up by
    1/4 of the true box. Stage 2 of a 128x64 input: 16x8 cells, stride 8, cell (i, j) centred
    on input pixel (8i + 0.5, 8j + 0.5).

    Cell (i, j): a = (8j + 0.5) / 64, b = (8i + 0.5) / 128 -> body (a - 0.5, b - 0.5) -> neighbour
    image (2a - 0.75, 2b) -> neighbour cell (row, col) = (2i + 1/16, 2j - 95/16). It is inside
    the neighbour frame for 0 <= 2a - 0.75 <= 1 and 2b <= 1: columns 3..6, rows 0..7.
    """
    grid = FeatureGrid.from_shapes((16, 8), (128, 64))
    assert (grid.stride, grid.shape) == (8, (16, 8))
    target, valid = correspondence(IDENTITY_BOX, [0.125, -0.25, 0.5, 0.5], grid)
    assert target.shape == (16, 8, 2) and valid.shape == (16, 8)
    np.testing.assert_allclose(target[2, 4], [4.0625, 2.0625])
    np.testing.assert_allclose(target[0, 3], [0.0625, 0.0625])
    np.testing.assert_allclose(target[7, 6], [14.0625, 6.0625])
    rows, cols = np.meshgrid(np.arange(16), np.arange(8), indexing="ij")
    np.testing.assert_allclose(target[..., 0], 2 * rows + 1 / 16)
    np.testing.assert_allclose(target[..., 1], 2 * cols - 95 / 16)
    expected_valid = np.zeros((16, 8), bool)
    expected_valid[0:8, 3:7] = True
    np.testing.assert_array_equal(valid, expected_valid)


def test_same_box_maps_every_cell_onto_itself():
    grid = FeatureGrid.from_shapes((8, 4), (128, 64))
    box = [0.05, -0.1, 1.2, 1.3]
    target, valid = correspondence(box, box, grid)
    rows, cols = np.meshgrid(np.arange(8), np.arange(4), indexing="ij")
    np.testing.assert_allclose(target, np.stack([rows, cols], -1), atol=1e-12)
    # A box larger than the person: the cells outside the true box have no body point to follow.
    u, v = image_to_body(*grid.cell_centres(), box)
    np.testing.assert_array_equal(valid, (np.abs(u) <= 0.5) & (np.abs(v) <= 0.5))
    assert 0 < valid.sum() < valid.size


def test_image_and_body_coordinates_are_inverse_maps():
    rng = np.random.default_rng(0)
    a, b = rng.random(50), rng.random(50)
    box = [-0.07, 0.12, 0.8, 1.3]
    u, v = image_to_body(a, b, box)
    a2, b2 = body_to_image(u, v, box)
    np.testing.assert_allclose(a2, a)
    np.testing.assert_allclose(b2, b)
    np.testing.assert_allclose(image_to_body(0.5, 0.5, box), (-0.07, 0.12))  # the crop's centre
    with pytest.raises(ValueError, match=r"box must be \[dx, dy, sx, sy\]"):
        image_to_body(a, b, [0, 0, 0, 1])


def test_grid_shapes_must_share_one_stride():
    with pytest.raises(ValueError, match="one integer stride"):
        FeatureGrid.from_shapes((16, 8), (128, 60))
    with pytest.raises(ValueError, match="one integer stride"):
        FeatureGrid.from_shapes((16, 4), (128, 64))


def _warp_error(frame, neighbour, box, neighbour_box):
    """Mean |frame - neighbour resampled through the body-coordinate mapping| on the torso/head."""
    H, W = frame.shape[:2]
    ys, xs = np.mgrid[0:H, 0:W]
    u, v = image_to_body((xs + 0.5) / W, (ys + 0.5) / H, box)
    a2, b2 = body_to_image(u, v, neighbour_box)
    inside = (np.abs(u) <= 0.25) & (np.abs(v) <= 0.45) & (a2 >= 0) & (a2 <= 1) & (b2 >= 0) & (b2 <= 1)
    warped = np.stack([map_coordinates(neighbour[..., c], [b2 * H - 0.5, a2 * W - 0.5], order=1, mode="nearest")
                       for c in range(3)], axis=-1)
    return np.abs(warped - frame).mean(axis=-1)[inside].mean()


def test_the_mapping_registers_the_rendered_pixels(tmp_path):
    """On frames the generator rendered with strong box errors (still pose, no occluders), the
    mapping built from the annotated boxes aligns the neighbour's pixels with the centre frame's:
    far better than no mapping, and better than the mapping of slightly wrong boxes."""
    ds = build_dataset("synthetic", root=str(tmp_path), verbose=False, num_train_ids=0, num_test_ids=2,
                       num_cameras=2, min_frames=12, max_frames=12, misalignment=1.0, pose_amplitude=0.0,
                       occlusion_prob=0.0)
    for tracklet in ds.query + ds.gallery:
        boxes = tracklet_boxes(tracklet.paths)
        t, t2 = int(np.argmin(boxes[:, 3])), int(np.argmax(boxes[:, 3]))  # the smallest and largest box
        frame, neighbour = (np.asarray(Image.open(tracklet.paths[k]), np.float64) for k in (t, t2))
        true = _warp_error(frame, neighbour, boxes[t], boxes[t2])
        assert true < 0.5 * np.abs(frame - neighbour).mean()
        for delta in ([0.03, 0, 0, 0], [-0.03, 0, 0, 0], [0, 0.03, 0, 0], [0, -0.03, 0, 0],
                      [0, 0, 0.05, 0.05], [0, 0, -0.05, -0.05]):
            assert true < _warp_error(frame, neighbour, boxes[t], boxes[t2] + np.array(delta)), delta


def test_tracklet_boxes_reads_each_frames_annotated_box(tmp_path):
    ds = build_dataset("synthetic", root=str(tmp_path / "set"), verbose=False, num_train_ids=1, num_test_ids=1,
                       num_cameras=2, min_frames=5, max_frames=5, height=32, width=16, misalignment=0.8)
    tracklet = ds.query[0]
    with open(tmp_path / "set" / "annotations.json") as fh:
        ann = json.load(fh)
    key = os.path.relpath(os.path.dirname(tracklet.paths[0]), tmp_path / "set")
    expected = np.asarray(ann[key]["boxes"])
    np.testing.assert_array_equal(tracklet_boxes(tracklet.paths), expected)
    picked = [tracklet.paths[4], tracklet.paths[1]]
    np.testing.assert_array_equal(tracklet_boxes(picked), expected[[4, 1]])
    with pytest.raises(ValueError, match="frames of one tracklet"):
        tracklet_boxes([tracklet.paths[0], ds.gallery[0].paths[0]])
    # Frames outside a synthetic set have no boxes.
    plain = tmp_path / "plain" / "0001" / "c0_t00"
    plain.mkdir(parents=True)
    Image.new("RGB", (16, 32)).save(plain / "000.jpg")
    assert tracklet_boxes([str(plain / "000.jpg")]) is None


def test_grid_cell_centres_are_the_networks_receptive_field_centres():
    """With constant positive conv weights, the input gradient of a stage-2/3 cell of the real
    network is centred on the cell centre FeatureGrid assumes (within half a pixel), not on
    ``stride * (i + 0.5)`` (3.5 pixels away at stride 8)."""
    from reid.models import build_model

    torch.manual_seed(0)
    model = build_model("ap3d_resnet18", num_classes=2).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
    H, W = 128, 64
    clips = (torch.rand(1, 3, 3, H, W) + 1).requires_grad_()
    first_stage2 = next(m for n, m in model.named_modules() if isinstance(m, APM) and apm_stage(n) == 2)
    feats = {}
    handle = first_stage2.register_forward_pre_hook(lambda m, args: feats.setdefault("x", args[0]))
    model.pooled_features(clips)
    handle.remove()
    grid = FeatureGrid.from_shapes(feats["x"].shape[-2:], (H, W))
    assert grid.stride == 8
    i, j = grid.height // 2, grid.width // 2
    (g,) = torch.autograd.grad(feats["x"][0, :, 1, i, j].sum(), clips)
    g = g[0].abs().sum(dim=(0, 1))
    cy = float((g.sum(1) * (torch.arange(H) + 0.5)).sum() / g.sum())
    cx = float((g.sum(0) * (torch.arange(W) + 0.5)).sum() / g.sum())
    a, b = grid.cell_centres()
    assert abs(cy - b[i, j] * H) < 0.5 and abs(cx - a[i, j] * W) < 0.5
