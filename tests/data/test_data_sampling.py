"""Temporal sampling, clip transforms, the P x K sampler (incl. the DDP split) and the loaders."""
import io
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from data_fakes import make_folder, write_image
from reid.data.loaders import collate_clips
from reid.data import (ClipLengthBatchSampler, ClipTransform, TestClipDataset, IMAGENET_MEAN, IMAGENET_STD, RandomIdentityBatchSampler, Tracklet,
                       build_dataset, build_test_loader, build_train_loader, evenly_spaced,
                       report_skipped_frames, reset_skipped_frames, skipped_frames, temporal_random_crop,
                       clip_ranges, shutdown_loader)


# ---------------------------------------------------------------- temporal
def test_random_crop_of_a_long_tracklet_is_strided_from_a_random_start():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        idx = temporal_random_crop(40, 4, 8, rng)
        assert np.diff(idx).tolist() == [8, 8, 8] and 0 <= idx[0] and idx[-1] <= 39
        starts.add(idx[0])
    assert starts == set(range(0, 40 - 24))  # every start the release allows, and no other


def test_random_crop_of_shorter_tracklets_uses_distinct_then_repeated_sorted_frames():
    rng = np.random.default_rng(1)
    for _ in range(100):
        idx = temporal_random_crop(10, 4, 8, rng)  # 4 <= 10 < 32
        assert len(set(idx)) == 4 and idx == sorted(idx) and max(idx) < 10
        short = temporal_random_crop(2, 4, 8, rng)
        assert len(short) == 4 and short == sorted(short) and set(short) <= {0, 1}


def test_evenly_spaced_and_test_clips_cover_the_tracklet():
    assert evenly_spaced(10, 4) == [0, 3, 6, 9] and evenly_spaced(3, 5) == [0, 0, 1, 2, 2]
    assert clip_ranges(70, 32) == [(0, 32), (32, 64), (64, 70)]
    assert clip_ranges(32, 32) == [(0, 32)] and clip_ranges(5, 32) == [(0, 5)]
    for n in (1, 31, 33, 64, 65, 200):
        ranges = clip_ranges(n, 32)
        assert len(ranges) == -(-n // 32)
        assert [i for s, e in ranges for i in range(s, e)] == list(range(n))
        assert all(0 < e - s <= 32 for s, e in ranges)
    with pytest.raises(ValueError, match="clip_len must be >= 1, got 0"):
        clip_ranges(10, 0)


# ---------------------------------------------------------------- transforms
def _asymmetric_frames(n=4, h=8, w=6):
    frames = []
    for t in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[:, 0] = 255          # a bright left column marks the orientation
        a[0, :, 1] = 10 * t    # the frame index in the green channel of the top row
        frames.append(Image.fromarray(a))
    return frames


def _denorm(x):
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (x * std + mean) * 255


def test_one_flip_decision_per_clip_and_exact_normalisation():
    tf = ClipTransform(8, 6, train=True, flip_prob=0.5)
    rng = np.random.default_rng(0)
    flips = []
    for _ in range(40):
        x = tf(_asymmetric_frames(), rng)
        assert x.shape == (3, 4, 8, 6) and x.dtype == torch.float32
        red = _denorm(x)[0]
        left = red[:, :, 0].mean(dim=1) > 127   # per frame: is the bright column on the left?
        assert left.all() or (~left).all()     # never a mix of flipped and unflipped frames
        flips.append(bool(~left[0]))
        assert torch.allclose(_denorm(x)[1, :, 0, 2], torch.tensor([0.0, 10.0, 20.0, 30.0]), atol=1e-3)
    assert 10 < sum(flips) < 30


def test_test_transform_is_deterministic_and_resizes_bicubic():
    tf = ClipTransform(16, 12, train=False)
    frames = _asymmetric_frames()
    x = tf(frames)
    assert x.shape == (3, 4, 16, 12) and torch.equal(x, tf(frames))
    expected = np.asarray(frames[2].resize((12, 16), Image.BICUBIC), np.float32)
    assert torch.allclose(_denorm(x)[:, 2].permute(1, 2, 0), torch.from_numpy(expected), atol=1e-3)


def test_random_erasing_erases_the_same_rectangle_in_every_frame():
    tf = ClipTransform(32, 16, train=True, flip_prob=0.0, random_erasing=True, erasing_prob=1.0)
    frames = [Image.fromarray(np.full((32, 16, 3), 200, np.uint8)) for _ in range(3)]
    x = tf(frames, np.random.default_rng(4))
    erased = (x == 0).all(dim=0)  # [T, H, W]
    assert erased[0].any() and not erased[0].all()
    assert torch.equal(erased[0], erased[1]) and torch.equal(erased[0], erased[2])


# ---------------------------------------------------------------- P x K sampler
def _tracklets(counts):
    """counts[pid] tracklets for each pid; paths are dummies (the sampler only reads pids)."""
    return [Tracklet((f"{pid}_{i}",), pid, 0) for pid, n in enumerate(counts) for i in range(n)]


def test_batches_hold_P_identities_with_K_clips_each():
    counts = [1, 2, 4, 5, 9, 3, 6, 2, 7, 4]
    tracklets = _tracklets(counts)
    s = RandomIdentityBatchSampler(tracklets, num_identities=4, num_instances=3, seed=0)
    # max(1, n // K) groups per identity = 14 groups -> 14 // P = 3 batches, in every epoch
    assert len(s) == 3
    for epoch in range(5):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        for b in batches:
            assert len(b) == 12
            pids = [tracklets[i].pid for i, _ in b]
            assert sorted(Counter(pids).values()) == [3, 3, 3, 3]
            assert pids == sorted(pids, key=pids.index)  # identity-major: K consecutive rows per identity
            for pid in set(pids):  # an identity with >= K tracklets never repeats one inside a batch
                if counts[pid] >= 3:
                    assert len({i for i, _ in b if tracklets[i].pid == pid}) == 3


def test_epochs_reshuffle_deterministically_from_seed_and_epoch():
    tracklets = _tracklets([4] * 12)
    a = RandomIdentityBatchSampler(tracklets, 4, 4, seed=7)
    b = RandomIdentityBatchSampler(tracklets, 4, 4, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    a.set_epoch(4)
    e4 = list(a)
    a.set_epoch(3)
    assert list(a) != e4 and list(a) == list(b)
    c = RandomIdentityBatchSampler(tracklets, 4, 4, seed=8)
    c.set_epoch(3)
    assert list(c) != list(b)
    # without set_epoch, consecutive passes still differ (the epoch advances by itself)
    d = RandomIdentityBatchSampler(tracklets, 4, 4, seed=7)
    assert list(d) != list(d)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ddp_ranks_get_disjoint_whole_identity_shares_of_each_global_batch(world_size):
    tracklets = _tracklets([3, 5, 4, 8, 2, 6, 4, 4, 7, 5, 3, 4])
    full = RandomIdentityBatchSampler(tracklets, 8, 4, seed=1)
    full.set_epoch(2)
    ranks = [RandomIdentityBatchSampler(tracklets, 8, 4, seed=1, rank=r, world_size=world_size)
             for r in range(world_size)]
    for s in ranks:
        s.set_epoch(2)
    per_rank = [list(s) for s in ranks]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(full)
    for step, global_batch in enumerate(full):
        shares = [p[step] for p in per_rank]
        assert all(len(s) == 32 // world_size for s in shares)
        assert sum(shares, []) == global_batch  # disjoint and together exactly the global batch
        pid_sets = [{tracklets[i].pid for i, _ in s} for s in shares]
        assert all(len(ps) == 8 // world_size for ps in pid_sets)
        assert len(set().union(*pid_sets)) == 8  # no identity is split across ranks


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="must be divisible by world_size=3"):
        RandomIdentityBatchSampler(_tracklets([4] * 8), 8, 4, rank=0, world_size=3)
    with pytest.raises(ValueError, match="num_identities=8 .* only 5 identities"):
        RandomIdentityBatchSampler(_tracklets([4] * 5), 8, 4)
    with pytest.raises(ValueError, match="rank < world_size, got rank=2, world_size=2"):
        RandomIdentityBatchSampler(_tracklets([4] * 8), 8, 4, rank=2, world_size=2)


# ---------------------------------------------------------------- loaders
@pytest.fixture(scope="module")
def coded_tracklets(tmp_path_factory):
    """12 identities x 2 tracklets; frame images encode (tracklet number, frame index) in R/G."""
    root = str(tmp_path_factory.mktemp("coded"))
    tracklets = []
    lengths = [5, 40, 33, 7, 64, 1, 12, 3, 70, 9, 32, 2, 20, 8, 6, 35, 4, 11, 10, 18, 3, 50, 6, 9]
    for k, n in enumerate(lengths):
        pid, cam = k // 2, k % 2
        paths = tuple(write_image(os.path.join(root, f"{pid}", f"c{cam}", f"{f:03d}.png"), f + 256 * k)
                      for f in range(n))
        tracklets.append(Tracklet(paths, pid, cam))
    return tracklets


def _codes(clips):
    """[..., 3, T, H, W] normalised clips -> (tracklet number, frame index) per frame."""
    px = _denorm(clips)[..., 0, 0].round().long()  # [..., 3, T]
    return px[..., 1, :], px[..., 0, :]


def test_train_loader_batches_and_sampling(coded_tracklets):
    loader = build_train_loader(coded_tracklets, seq_len=4, stride=8, height=16, width=8, num_identities=4,
                                num_instances=2, num_workers=0, seed=0)
    loader.batch_sampler.set_epoch(0)
    n_batches = 0
    for clips, pids, camids in loader:
        n_batches += 1
        assert clips.shape == (8, 3, 4, 16, 8) and clips.dtype == torch.float32
        assert pids.dtype == torch.long and camids.dtype == torch.long
        tk, frame = _codes(clips)
        for row in range(8):
            k = int(tk[row, 0])
            t = coded_tracklets[k]
            assert (tk[row] == k).all() and pids[row] == t.pid and camids[row] == t.camid
            idx = frame[row].tolist()
            assert idx == sorted(idx) and max(idx) < len(t.paths)
            if len(t.paths) >= 32:
                assert np.diff(idx).tolist() == [8, 8, 8]
    assert n_batches == len(loader) > 0


def test_train_loader_is_reproducible_across_worker_counts(coded_tracklets):
    def epoch(workers):
        loader = build_train_loader(coded_tracklets, seq_len=4, stride=8, height=16, width=8, num_identities=4,
                                    num_instances=2, num_workers=workers, seed=3, random_erasing=True)
        loader.batch_sampler.set_epoch(1)
        return [c for c, _, _ in loader]

    a, b = epoch(0), epoch(2)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_shutdown_loader_stops_persistent_workers_left_mid_epoch(coded_tracklets):
    """A training epoch stops after steps_per_epoch batches, leaving persistent workers alive;
    shutdown_loader ends them at once instead of whenever the garbage collector runs."""
    loader = build_train_loader(coded_tracklets, seq_len=4, stride=8, height=16, width=8, num_identities=4,
                                num_instances=2, num_workers=2, seed=0)
    loader.batch_sampler.set_epoch(0)
    next(iter(loader))
    workers = list(loader._iterator._workers)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    shutdown_loader(loader)
    assert not any(w.is_alive() for w in workers)
    shutdown_loader(loader)  # twice, and on a loader without workers: no-ops
    shutdown_loader(build_test_loader(coded_tracklets, clip_len=8, height=16, width=8, num_workers=0))


def test_test_loader_yields_every_frame_exactly_once_in_same_length_batches(coded_tracklets):
    loader = build_test_loader(coded_tracklets, clip_len=32, height=16, width=8, batch_size=3, num_workers=0)
    longest = max(len(t.paths) for t in coded_tracklets)
    seen = Counter()
    for clips, index in loader:
        assert clips.ndim == 5 and clips.shape[0] == index.shape[0] and clips.shape[2] <= 32
        assert clips.shape[0] <= 3 or clips.shape[0] * clips.shape[2] <= 3 * min(longest, 32)
        tk, frame = _codes(clips)
        assert torch.equal(tk[:, 0], index)
        for row in range(clips.shape[0]):
            seen.update((int(index[row]), f) for f in frame[row].tolist())
    expected = Counter((k, f) for k, t in enumerate(coded_tracklets) for f in range(len(t.paths)))
    assert seen == expected


def test_loader_batches_are_channels_last_and_equal_the_plain_stack(coded_tracklets):
    for loader in (build_test_loader(coded_tracklets, clip_len=8, height=16, width=8, batch_size=3, num_workers=0),
                   build_train_loader(coded_tracklets, seq_len=3, stride=2, height=16, width=8, num_identities=4,
                                      num_instances=2, num_workers=0, seed=0)):
        dataset = loader.dataset
        batch_indices = next(iter(loader.batch_sampler))
        batch = next(iter(loader))
        assert batch[0].is_contiguous(memory_format=torch.channels_last_3d)  # what the CPU models run in
        if isinstance(dataset, TestClipDataset):  # deterministic items: the batch is their plain stack
            items = [dataset[i] for i in batch_indices]
            assert torch.equal(batch[0], torch.stack([clip for clip, _ in items]))
            assert torch.equal(batch[1], torch.tensor([i for _, i in items]))
    odd = collate_clips([(torch.zeros(3, 2, 4, 4), 1), (torch.ones(3, 2, 4, 4), 2)])  # NCDHW-ordered clips
    assert odd[0].is_contiguous() and odd[0].shape == (2, 3, 2, 4, 4) and odd[1].tolist() == [1, 2]


def test_test_batches_hold_batch_size_full_clips_or_as_many_frames_of_shorter_ones():
    lengths = [32] * 10 + [10] * 30 + [5] * 2 + [32]
    batches = ClipLengthBatchSampler(lengths, batch_size=8).batches
    assert [len(b) for b in batches] == [8, 3, 25, 5, 2]  # 8 x 32 = 256 frames: 25 clips of 10, 51 of 5
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [len(b) for b in ClipLengthBatchSampler([4] * 5, batch_size=2).batches] == [2, 2, 1]
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ClipLengthBatchSampler([4], batch_size=0)


def test_corrupt_frames_are_skipped_reported_and_counted_across_workers(tmp_path):
    reset_skipped_frames()
    root = make_folder(str(tmp_path), {"train": [(p, f"c{c}", 6) for p in range(4) for c in (0, 1)],
                                       "query": [(9, "c0", 3)], "gallery": [(9, "c1", 3)]})
    truncated = os.path.join(root, "train", "1", "c0", "2.png")
    with open(truncated, "rb") as fh:
        data = fh.read()
    with open(truncated, "wb") as fh:
        fh.write(data[: len(data) // 2])
    garbage = os.path.join(root, "train", "2", "c1", "0.png")
    with open(garbage, "wb") as fh:
        fh.write(b"not an image at all")
    ds = build_dataset("folder", root=root, verbose=False)
    loader = build_train_loader(ds.train, seq_len=6, stride=1, height=16, width=8, num_identities=4,
                                num_instances=2, num_workers=2, seed=0)
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 1 and batches[0][0].shape == (8, 3, 6, 16, 8)
        assert torch.isfinite(batches[0][0]).all()
    assert set(skipped_frames()) == {truncated, garbage}
    out = io.StringIO()
    assert report_skipped_frames(out) == 2
    assert "2 unreadable frame(s) were skipped" in out.getvalue() and truncated in out.getvalue()
    # the test loader keeps the clip shape: the bad frame's place is taken by its nearest neighbour
    test_loader = build_test_loader(ds.train, clip_len=32, height=16, width=8, batch_size=8, num_workers=0)
    clips, _ = next(iter(test_loader))
    assert clips.shape[2] == 6 and torch.isfinite(clips).all()
    reset_skipped_frames()
    assert skipped_frames() == []


def test_loader_argument_errors(coded_tracklets):
    with pytest.raises(ValueError, match="train tracklets: got an empty list"):
        build_train_loader([], num_workers=0)
    with pytest.raises(ValueError, match="tracklet 1 .*has no frames"):
        build_test_loader([coded_tracklets[0], Tracklet((), 3, 0)], num_workers=0)
    with pytest.raises(ValueError, match="sampling must be one of"):
        build_train_loader(coded_tracklets, sampling="dense", num_workers=0)
    with pytest.raises(ValueError, match="height must be a positive int"):
        build_test_loader(coded_tracklets, height=0, num_workers=0)


def test_rank_and_world_size_default_to_the_initialised_process_group(monkeypatch):
    import torch.distributed as dist
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    tracklets = _tracklets([4] * 8)
    auto = RandomIdentityBatchSampler(tracklets, 4, 4, seed=0, rank=None, world_size=None)
    explicit = RandomIdentityBatchSampler(tracklets, 4, 4, seed=0, rank=1, world_size=2)
    assert (auto.rank, auto.world_size, auto.batch_size) == (1, 2, 8)
    assert list(auto) == list(explicit)


def test_a_tracklet_with_no_readable_frame_yields_a_mean_coloured_clip(tmp_path):
    reset_skipped_frames()
    paths = []
    for f in range(3):
        p = tmp_path / f"{f}.jpg"
        p.write_bytes(b"\xff\xd8 truncated jpeg")
        paths.append(str(p))
    loader = build_test_loader([Tracklet(tuple(paths), 1, 0)], height=16, width=8, num_workers=0)
    (clips, index), = list(loader)
    assert clips.shape == (1, 3, 3, 16, 8) and torch.count_nonzero(clips) == 0 and index.tolist() == [0]
    assert sorted(skipped_frames()) == sorted(paths)
    reset_skipped_frames()
