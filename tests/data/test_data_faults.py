"""Data that does not fit the settings or the expected format: never silently accepted.

Frames of every common pixel format read as what they show; a split index, a folder layout or an
empty query/gallery split that cannot work is an error when the dataset is built; sampling
settings the data cannot honour are said in a log line stating what is done instead.
"""
import logging
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data_fakes import make_duke, make_folder, make_mars, write_image
from reid.data import DatasetLayoutError, EmptySplitError, Tracklet, build_dataset, build_train_loader, read_frame
from reid.data.images import read_frame_pixels, reset_skipped_frames, skipped_frames


# ---------------------------------------------------------------- pixel formats
def _png(path, arr: np.ndarray, color_type: int) -> str:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): 0 = grey, 2 = RGB, 4 = grey+alpha."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return str(path)


def _expected_8bit(values16: np.ndarray) -> np.ndarray:
    return np.rint(values16.astype(np.float64) * 255 / 65535).astype(np.uint8)


def test_16_bit_grayscale_frames_are_scaled_not_saturated(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 16).reshape(32, 16).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    got = np.asarray(read_frame(str(path)))
    assert got.shape == (32, 16, 3) and got.dtype == np.uint8
    assert (got == 255).mean() < 0.01  # Pillow's convert("RGB") makes 99% of these pixels 255
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], _expected_8bit(ramp))
    # the same through a hand-written PNG (colour type 0) and a 16-bit TIFF
    np.testing.assert_array_equal(np.asarray(read_frame(_png(tmp_path / "g.png", ramp, 0)))[..., 0], _expected_8bit(ramp))
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    np.testing.assert_array_equal(np.asarray(read_frame(str(tmp_path / "g16.tif")))[..., 1], _expected_8bit(ramp))


def test_32_bit_integer_and_float_frames(tmp_path):
    ramp = np.linspace(0, 65535, 64).reshape(8, 8)
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "i.tif")  # mode I holding 16-bit values
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(np.asarray(read_frame(str(tmp_path / "i.tif")))[..., 0], _expected_8bit(ramp))
    small = np.arange(64).reshape(8, 8).astype(np.int32) * 4  # mode I holding 8-bit values
    Image.fromarray(small).save(tmp_path / "i8.tif")
    np.testing.assert_array_equal(np.asarray(read_frame(str(tmp_path / "i8.tif")))[..., 2], small.astype(np.uint8))
    unit = (ramp / 65535).astype(np.float32)  # mode F in [0, 1]
    Image.fromarray(unit).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(np.asarray(read_frame(str(tmp_path / "f.tif")))[..., 0],
                                  np.rint(unit.astype(np.float64) * 255).astype(np.uint8))


def test_16_bit_rgb_and_grey_alpha_pngs_keep_their_colours(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    got = np.asarray(read_frame(_png(tmp_path / "rgb16.png", rgb, 2)))
    assert np.abs(got.astype(int) - _expected_8bit(rgb).astype(int)).max() <= 1  # Pillow keeps the high byte
    la = rng.integers(0, 65536, (6, 5, 2)).astype(np.uint16)
    got = np.asarray(read_frame(_png(tmp_path / "la16.png", la, 4)))
    for c in range(3):
        assert np.abs(got[..., c].astype(int) - _expected_8bit(la[..., 0]).astype(int)).max() <= 1


def test_palette_grey_alpha_and_rgba_frames_read_as_their_colours(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (12, 6, 3)).astype(np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (12, 6, 1)).astype(np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(np.asarray(read_frame(str(tmp_path / "rgba.png"))), rgb)  # alpha ignored
    grey = rgb[..., 0]
    Image.fromarray(np.stack([grey, rgb[..., 1]], axis=2), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(np.asarray(read_frame(str(tmp_path / "la.png"))), np.stack([grey] * 3, axis=2))
    palette_img = Image.fromarray(rgb).quantize(colors=16)
    palette_img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(np.asarray(read_frame(str(tmp_path / "p.png"))), np.asarray(palette_img.convert("RGB")))


def test_rgb_frames_are_returned_decoded_with_their_file_closed(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (10, 7, 3)).astype(np.uint8)
    for name in ("f.png", "f.jpg"):
        Image.fromarray(rgb).save(tmp_path / name)
        img = read_frame(str(tmp_path / name))
        assert img.mode == "RGB" and getattr(img, "fp", None) is None  # no file handle left open
        with Image.open(tmp_path / name) as ref:
            np.testing.assert_array_equal(np.asarray(img), np.asarray(ref.convert("RGB")))
    frames = Image.fromarray(rgb)  # a multi-frame file keeps its handle after load(): converted and closed
    frames.save(tmp_path / "two.gif", save_all=True, append_images=[Image.fromarray(255 - rgb)])
    img = read_frame(str(tmp_path / "two.gif"))
    assert img.mode == "RGB" and getattr(img, "fp", None) is None and img.size == (7, 10)


def test_frame_pixels_are_read_frames_pixels_for_every_kind_of_file(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 23, 3)).astype(np.uint8)
    files = {"q.jpg": dict(quality=90), "sub.jpeg": dict(quality=75, subsampling=2), "p.png": {}}
    for name, options in files.items():
        Image.fromarray(rgb).save(tmp_path / name, **options)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")  # simplejpeg refuses CMYK: Pillow reads it
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.jpg")
    for name in [*files, "cmyk.jpg", "grey.jpg"]:
        path = str(tmp_path / name)
        pixels = read_frame_pixels(path)
        assert pixels.dtype == np.uint8 and pixels.shape == (37, 23, 3), name
        np.testing.assert_array_equal(pixels, np.asarray(read_frame(path)), err_msg=name)


def test_without_simplejpeg_pillow_reads_every_frame(tmp_path, monkeypatch):
    import reid.data.images as images

    rgb = np.random.default_rng(4).integers(0, 256, (9, 5, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "f.jpg", quality=90)
    with_it = read_frame_pixels(str(tmp_path / "f.jpg"))
    monkeypatch.setattr(images, "simplejpeg", None)  # the dependency is optional at run time
    np.testing.assert_array_equal(read_frame_pixels(str(tmp_path / "f.jpg")), with_it)


def test_a_truncated_jpeg_is_recorded_as_unreadable_not_half_decoded(tmp_path):
    reset_skipped_frames()
    Image.fromarray(np.full((32, 16, 3), 200, np.uint8)).save(tmp_path / "t.jpg", quality=95)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    assert read_frame_pixels(str(tmp_path / "t.jpg")) is None
    assert skipped_frames() == [str(tmp_path / "t.jpg")]


# ---------------------------------------------------------------- split index
def test_a_split_index_a_one_split_dataset_does_not_have_is_refused(tmp_path):
    root = make_folder(str(tmp_path / "f"), {"train": [(1, "c0", 2)], "query": [(2, "c0", 2)], "gallery": [(2, "c1", 2)]})
    assert build_dataset("folder", root=root, split_id=0, verbose=False).split_id == 0
    with pytest.raises(ValueError, match=r"split_id must be in \[0, 0\] for folder \(1 split\), got 5"):
        build_dataset("folder", root=root, split_id=5, verbose=False)
    make_mars(str(tmp_path / "m"))
    with pytest.raises(ValueError, match=r"for MARS \(1 split\), got 1"):
        build_dataset("mars", root=str(tmp_path / "m"), split_id=1, verbose=False)
    make_duke(str(tmp_path / "d"), long_tracklet=2)
    with pytest.raises(ValueError, match=r"for DukeMTMC-VideoReID \(1 split\), got 2"):
        build_dataset("duke", root=str(tmp_path / "d"), split_id=2, verbose=False)
    # the synthetic set refuses before generating anything
    cache = tmp_path / "syn"
    with pytest.raises(ValueError, match=r"for synthetic \(1 split\), got 5"):
        build_dataset("synthetic", root=str(cache), split_id=5, verbose=False)
    assert not cache.exists() or not any(cache.iterdir())


# ---------------------------------------------------------------- folder layout
@pytest.mark.parametrize("where", ["identity", "split"])
def test_frames_outside_tracklet_folders_are_a_layout_error(tmp_path, where):
    root = make_folder(str(tmp_path), {"train": [(1, "c0", 2), (2, "c1", 2)], "query": [(3, "c0", 2)],
                                       "gallery": [(3, "c1", 2)]})
    loose = os.path.join(root, "gallery", "4", "0.jpg") if where == "identity" else os.path.join(root, "query", "0.jpg")
    write_image(loose)
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("folder", root=root, verbose=False)
    msg = str(err.value)
    assert f"lie directly in the {where} folder {os.path.dirname(loose)}" in msg and loose in msg
    assert "expected layout of folder" in msg and "<pid>/<tracklet>/<frames>" in msg


# ---------------------------------------------------------------- empty query / gallery
def test_an_empty_query_or_gallery_split_is_an_error_when_the_dataset_is_built(tmp_path):
    root = make_folder(str(tmp_path / "a"), {"train": [(1, "c0", 2), (2, "c1", 2)], "query": [],
                                             "gallery": [(3, "c1", 2)]})
    with pytest.raises(EmptySplitError, match=rf"folder: the query split under {root} has no tracklet with frames"):
        build_dataset("folder", root=root, verbose=False)
    # tracklet folders without any frame are dropped first, which can leave the gallery empty
    root = make_folder(str(tmp_path / "b"), {"train": [(1, "c0", 2)], "query": [(3, "c0", 2)],
                                             "gallery": [(3, "c1", 0), (4, "c2", 0)]})
    with pytest.raises(EmptySplitError, match="the gallery split .* has no tracklet with frames"):
        build_dataset("folder", root=root, verbose=False)


# ---------------------------------------------------------------- sampling settings the data cannot honour
@pytest.fixture
def data_log():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("reid.data")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def _tracklets(tmp_path, lengths_by_pid):
    out = []
    for pid, lengths in lengths_by_pid.items():
        for k, n in enumerate(lengths):
            paths = tuple(write_image(str(tmp_path / f"{pid}_{k}" / f"{f}.png"), f) for f in range(n))
            out.append(Tracklet(paths, pid, k))
    return out


def test_clips_longer_than_every_tracklet_and_too_few_tracklets_per_identity_are_said(tmp_path, data_log):
    tracklets = _tracklets(tmp_path, {0: [3, 5], 1: [4], 2: [2]})
    loader = build_train_loader(tracklets, seq_len=8, stride=1, height=16, width=8, num_identities=2,
                                num_instances=3, num_workers=0)
    clips, _, _ = next(iter(loader))
    assert clips.shape[2] == 8  # the run goes on: short clips repeat frames, identities reuse tracklets
    warnings = {r.getMessage() for r in data_log if r.levelno == logging.WARNING}
    assert ("seq_len=8: 4 of 4 train tracklets have fewer frames (longest: 5); their clips repeat frames "
            "(frames drawn with replacement, in temporal order)") in warnings
    assert ("num_instances=3: 3 of 3 identities have fewer train tracklets (most: 2); their 3 clips per batch "
            "reuse tracklets (sampled with replacement), each clip with its own random frames") in warnings


def test_when_only_some_tracklets_are_short_it_is_an_info_line(tmp_path, data_log):
    tracklets = _tracklets(tmp_path, {0: [2, 9], 1: [6, 9]})
    build_train_loader(tracklets, seq_len=4, stride=2, height=16, width=8, num_identities=2, num_instances=2,
                       num_workers=0)
    assert {r.levelno for r in data_log} == {logging.INFO}
    assert [r.getMessage() for r in data_log] == [
        "seq_len=4: 1 of 4 train tracklets have fewer frames (longest: 9); their clips repeat frames "
        "(frames drawn with replacement, in temporal order)",
        "seq_len=4 x stride=2: 1 of 4 train tracklets are shorter than 8 frames; their clips take 4 distinct "
        "random frames in temporal order instead of frames 2 apart",
    ]
    data_log.clear()
    build_train_loader(tracklets, seq_len=4, stride=2, height=16, width=8, num_identities=2, num_instances=2,
                       num_workers=0, rank=1, world_size=2)
    assert data_log == []  # said once, by rank 0
