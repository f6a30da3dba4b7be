"""Identity-balanced batches (P identities x K clips), split across torch.distributed ranks."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler

from .tracklet import Tracklet

__all__ = ["RandomIdentityBatchSampler", "ClipLengthBatchSampler", "resolve_rank"]


def resolve_rank(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    """rank/world_size as given, or from an initialised torch.distributed group when None."""
    if rank is None or world_size is None:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    for name, v in (("rank", rank), ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


class RandomIdentityBatchSampler(Sampler):
    """Yields batches of (tracklet index, sample seed) pairs.

    Each epoch, every identity's tracklets are shuffled (an identity with fewer than K is
    topped up by sampling with replacement) and cut into groups of K (a remainder < K is dropped);
    each batch takes one group from each of P distinct identities, drawn in proportion to the
    groups they have left. An epoch has a fixed number of batches, total groups // P, so that
    len(loader) is the same every epoch (identities that run out near the end of an epoch are
    refilled with a fresh group). Everything is a function of (seed, epoch): every rank computes
    the same global batches and keeps rows [rank*B, (rank+1)*B) of each, B = P*K // world_size,
    in identity-major order, so ranks get disjoint shares and, when world_size divides P, whole
    identities (every anchor keeps its K-1 positives on its own rank).

    The per-sample seed drives the clip's temporal crop, flip and erasing, which makes a batch
    reproducible regardless of the number of DataLoader workers.

    Call set_epoch(epoch) before each epoch (as with DistributedSampler); if you do not, each
    completed pass advances the epoch by one on its own, so batches never silently repeat.
    """

    def __init__(self, tracklets: Sequence[Tracklet], num_identities: int = 8, num_instances: int = 4,
                 seed: int = 0, rank: Optional[int] = 0, world_size: Optional[int] = 1):
        for name, v in (("num_identities", num_identities), ("num_instances", num_instances)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.rank, self.world_size = resolve_rank(rank, world_size)
        total = num_identities * num_instances
        if total % self.world_size:
            raise ValueError(f"the global batch num_identities*num_instances = {num_identities}*{num_instances} = "
                             f"{total} must be divisible by world_size={self.world_size}")
        self.index_by_pid: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(tracklets):
            self.index_by_pid[int(t.pid)].append(i)
        if len(self.index_by_pid) < num_identities:
            raise ValueError(f"num_identities={num_identities} identities per batch, but the training set has only "
                             f"{len(self.index_by_pid)} identities")
        self.pids = sorted(self.index_by_pid)
        self.P, self.K, self.seed = num_identities, num_instances, seed
        self.batch_size = total // self.world_size
        # Fixed for every epoch: each identity contributes max(1, n // K) groups of K clips.
        groups = sum(max(1, len(v) // num_instances) for v in self.index_by_pid.values())
        self.num_batches = max(1, groups // num_identities)
        self.epoch = 0
        self._cache: tuple[int, list] = (-1, [])

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def global_batches(self, epoch: Optional[int] = None) -> list[list[tuple[int, int]]]:
        """The full P*K batches of an epoch (what all ranks together consume)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        groups: dict[int, list[list[int]]] = {}
        for pid in self.pids:
            idxs = np.array(self.index_by_pid[pid])
            rng.shuffle(idxs)
            if len(idxs) < self.K:
                idxs = np.concatenate([idxs, rng.choice(idxs, size=self.K - len(idxs), replace=True)])
            usable = len(idxs) - len(idxs) % self.K
            groups[pid] = [idxs[i:i + self.K].tolist() for i in range(0, usable, self.K)]
        batches = []
        for _ in range(self.num_batches):
            available = [p for p in self.pids if groups[p]]
            if len(available) < self.P:
                # The last batches of an epoch: refill a few exhausted identities with a fresh
                # group so every batch still has P distinct identities.
                exhausted = [p for p in self.pids if not groups[p]]
                for j in rng.choice(len(exhausted), size=self.P - len(available), replace=False):
                    pid = exhausted[j]
                    groups[pid] = [rng.choice(self.index_by_pid[pid], size=self.K,
                                              replace=len(self.index_by_pid[pid]) < self.K).tolist()]
                available = [p for p in self.pids if groups[p]]
            # Identities with more groups left are drawn more often, so all run out together.
            weight = np.array([len(groups[p]) for p in available], dtype=np.float64)
            chosen = rng.choice(len(available), size=self.P, replace=False, p=weight / weight.sum())
            batch = []
            for j in chosen:
                batch.extend(groups[available[j]].pop())
            seeds = rng.integers(0, 2 ** 62, size=len(batch))
            batches.append([(int(i), int(s)) for i, s in zip(batch, seeds)])
        self._cache = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        lo = self.rank * self.batch_size
        for batch in self.global_batches(epoch):
            yield batch[lo:lo + self.batch_size]
        if self.epoch == epoch:  # no set_epoch() during the pass: move on by itself
            self.epoch = epoch + 1

    def __len__(self) -> int:
        return self.num_batches


class ClipLengthBatchSampler(Sampler):
    """Batches of test clips that all have the same length, so they stack into one tensor.

    A batch holds ``batch_size`` clips of the longest length, or as many shorter clips as fit in
    the same number of frames: a tracklet's short remainder clips would otherwise run in batches
    of a few frames, at 0.74x the frames/s of a full batch (AP3D-ResNet-18, 2-core CPU)."""

    def __init__(self, lengths: Sequence[int], batch_size: int):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, n in enumerate(lengths):
            by_len[int(n)].append(i)
        frames = batch_size * max(by_len, default=1)
        self.batches = [idx[i:i + size] for n in sorted(by_len, reverse=True)
                        for idx, size in ((by_len[n], max(batch_size, frames // n)),)
                        for i in range(0, len(idx), size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
