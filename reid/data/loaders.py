"""Datasets of clips and the DataLoaders the training engine consumes."""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .images import prepare_skip_report, read_tracklet_frames
from .samplers import ClipLengthBatchSampler, RandomIdentityBatchSampler
from .temporal import TEMPORAL_SAMPLERS, evenly_spaced, temporal_random_crop, clip_ranges
from .tracklet import Tracklet
from .transforms import ClipTransform

__all__ = ["TrainClipDataset", "TestClipDataset", "build_train_loader", "build_test_loader", "sampling_notes"]

logger = logging.getLogger("reid.data")


def _check_tracklets(tracklets, what: str) -> list[Tracklet]:
    tracklets = list(tracklets)
    if not tracklets:
        raise ValueError(f"{what}: got an empty list of tracklets")
    for i, t in enumerate(tracklets):
        if not isinstance(t, tuple) or len(t) != 3:
            raise TypeError(f"{what}: item {i} must be a Tracklet(paths, pid, camid), got {type(t).__name__}")
        if len(t[0]) == 0:
            raise ValueError(f"{what}: tracklet {i} (pid {t[1]}, camid {t[2]}) has no frames")
    return [Tracklet(tuple(t[0]), int(t[1]), int(t[2])) for t in tracklets]


class TrainClipDataset(Dataset):
    """Indexed by (tracklet index, seed) pairs from RandomIdentityBatchSampler."""

    def __init__(self, tracklets: Sequence[Tracklet], seq_len: int, stride: int, transform: ClipTransform,
                 sampling: str = "random"):
        if sampling not in TEMPORAL_SAMPLERS:
            raise ValueError(f"sampling must be one of {TEMPORAL_SAMPLERS}, got {sampling!r}")
        for name, v in (("seq_len", seq_len), ("stride", stride)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.tracklets = _check_tracklets(tracklets, "train tracklets")
        self.seq_len, self.stride, self.transform, self.sampling = seq_len, stride, transform, sampling

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, item):
        # From RandomIdentityBatchSampler: (index, seed). A plain index (any other sampler) seeds
        # the clip's randomness with the index itself, which keeps it reproducible too.
        index, seed = item if isinstance(item, tuple) else (item, item)
        t = self.tracklets[index]
        rng = np.random.default_rng(seed)
        n = len(t.paths)
        if self.sampling == "random":
            idx = temporal_random_crop(n, self.seq_len, self.stride, rng)
        else:
            idx = evenly_spaced(n, self.seq_len)
        frames = read_tracklet_frames(t.paths, idx)
        return self.transform(frames, rng), t.pid, t.camid


class TestClipDataset(Dataset):
    """Every tracklet cut into clips of <= clip_len consecutive frames; items are (clip, tracklet index)."""

    def __init__(self, tracklets: Sequence[Tracklet], clip_len: int, transform: ClipTransform):
        self.tracklets = _check_tracklets(tracklets, "test tracklets")
        self.clips = [(i, s, e) for i, t in enumerate(self.tracklets) for s, e in clip_ranges(len(t.paths), clip_len)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, item):
        i, s, e = self.clips[item]
        frames = read_tracklet_frames(self.tracklets[i].paths, range(s, e))
        return self.transform(frames), i


# Loader workers run at the lowest CPU priority: the training process's intra-op threads then
# keep the cores whenever both want them (a worker that preempts one thread stalls the whole
# parallel region), and workers still get every idle moment, all of them while the trainer
# waits for data. Measured on 2 cores, default run: 118.0/118.6 s vs 124.0/120.1 s end to end.
WORKER_NICENESS = 19


def _worker_init(_):
    # Each worker decodes one clip at a time; letting every worker spawn a full set of intra-op
    # threads oversubscribes the CPU and slows the whole loader down.
    torch.set_num_threads(1)
    if hasattr(os, "nice"):
        os.nice(WORKER_NICENESS)


def collate_clips(batch):
    """``default_collate`` for (clip, ...) items, except that clips laid out frame-major with the
    colour innermost, as :class:`ClipTransform` makes them, are stacked in that layout: the batch
    is ``channels_last_3d``, the layout the models run in on CPU, so neither this stack nor the
    trainer has to transpose it (``torch.stack`` would make NCDHW, and the policy transpose back)."""
    clips, *rest = zip(*batch)
    if not all(isinstance(c, torch.Tensor) and c.dim() == 4 and c.permute(1, 2, 3, 0).is_contiguous() for c in clips):
        return default_collate(batch)
    stacked = torch.stack([c.permute(1, 2, 3, 0) for c in clips]).permute(0, 4, 1, 2, 3)
    return (stacked, *(default_collate(list(field)) for field in rest))


def _loader_kwargs(num_workers, pin_memory):
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    prepare_skip_report()  # before workers start, so they inherit where to report skipped frames
    kw = dict(num_workers=num_workers, collate_fn=collate_clips,
              pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory))
    if num_workers > 0:
        kw.update(worker_init_fn=_worker_init, persistent_workers=True, prefetch_factor=2)
    return kw


def shutdown_loader(loader: DataLoader) -> None:
    """Stop a loader's persistent worker processes now (a no-op without workers). Left to the
    garbage collector, they are joined whenever it happens to run: a Trainer sits in a reference
    cycle with its hooks, and a collection that fired inside a later import (matplotlib's, for the
    run's plots) was seen blocking there for 10 s, the join's 5-s timeout once per worker, with both
    workers idle on their queues. Uses DataLoader's own shutdown (private; no public one exists)."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    loader._iterator = None


def sampling_notes(tracklets: Sequence[Tracklet], seq_len: int, stride: int, num_instances: int,
                   sampling: str = "random") -> list[tuple[int, str]]:
    """(logging level, message) for every way the data cannot give what the settings ask for.

    Nothing fails in these cases, by design (short tracklets are common in MARS), but what is done
    instead is said: a WARNING when it concerns every tracklet / identity (most likely a setting
    that does not fit the data), INFO when only some.
    """
    notes = []
    lengths = [len(t.paths) for t in tracklets]
    total = len(lengths)

    def level(count, of):
        return logging.WARNING if count == of else logging.INFO

    short = sum(n < seq_len for n in lengths)
    if short:
        how = ("frames drawn with replacement, in temporal order" if sampling == "random"
               else "evenly spaced positions rounded onto the same frames")
        notes.append((level(short, total), (
            f"seq_len={seq_len}: {short} of {total} train tracklets have fewer frames (longest: {max(lengths)}); "
            f"their clips repeat frames ({how})")))
    if sampling == "random":
        unstrided = sum(seq_len <= n < seq_len * stride for n in lengths)
        if unstrided:
            notes.append((level(unstrided + short, total), (
                f"seq_len={seq_len} x stride={stride}: {unstrided} of {total} train tracklets are shorter than "
                f"{seq_len * stride} frames; their clips take {seq_len} distinct random frames in temporal order "
                f"instead of frames {stride} apart")))
    per_identity = Counter(t.pid for t in tracklets)
    few = sum(c < num_instances for c in per_identity.values())
    if few:
        notes.append((level(few, len(per_identity)), (
            f"num_instances={num_instances}: {few} of {len(per_identity)} identities have fewer train tracklets "
            f"(most: {max(per_identity.values())}); their {num_instances} clips per batch reuse tracklets (sampled "
            f"with replacement), each clip with its own random frames")))
    return notes


def build_train_loader(tracklets: Sequence[Tracklet], seq_len: int = 4, stride: int = 8, height: int = 256,
                       width: int = 128, num_identities: int = 8, num_instances: int = 4, num_workers: int = 2,
                       seed: int = 0, rank: Optional[int] = 0, world_size: Optional[int] = 1,
                       random_erasing: bool = False, pin_memory: Optional[bool] = None,
                       sampling: str = "random", flip_prob: float = 0.5) -> DataLoader:
    """P x K identity-balanced clips: yields (clips [B,3,T,H,W], pids [B], camids [B]), B = P*K // world_size.

    `sampling`: "random" (protocol.md's temporal random crop) or "evenly" (seq_len frames spread
    over the whole tracklet). Call loader.batch_sampler.set_epoch(epoch) each epoch.
    """
    transform = ClipTransform(height, width, train=True, flip_prob=flip_prob, random_erasing=random_erasing)
    dataset = TrainClipDataset(tracklets, seq_len, stride, transform, sampling)
    sampler = RandomIdentityBatchSampler(dataset.tracklets, num_identities, num_instances, seed=seed,
                                         rank=rank, world_size=world_size)
    if sampler.rank == 0:  # said once, not once per process
        for lvl, msg in sampling_notes(dataset.tracklets, seq_len, stride, num_instances, sampling):
            logger.log(lvl, "%s", msg)
    return DataLoader(dataset, batch_sampler=sampler, **_loader_kwargs(num_workers, pin_memory))


def build_test_loader(tracklets: Sequence[Tracklet], clip_len: int = 32, height: int = 256, width: int = 128,
                      batch_size: int = 8, num_workers: int = 2, pin_memory: Optional[bool] = None) -> DataLoader:
    """Every frame once: yields (clips [n,3,L,H,W], tracklet_index [n]); clips in a batch share L."""
    dataset = TestClipDataset(tracklets, clip_len, ClipTransform(height, width, train=False))
    sampler = ClipLengthBatchSampler([e - s for _, s, e in dataset.clips], batch_size)
    return DataLoader(dataset, batch_sampler=sampler, **_loader_kwargs(num_workers, pin_memory))
