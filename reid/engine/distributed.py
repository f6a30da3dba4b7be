"""Process-group helpers: one code path for a single process and for ``torchrun``.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; when they are
present we join the group (nccl when the run is on CUDA, gloo on CPU), otherwise the helpers
behave as a world of one, so no caller needs an ``if distributed`` branch.
"""
from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup",
    "is_main",
    "rank",
    "world_size",
    "barrier",
    "all_reduce_sum",
    "all_gather_rows",
    "broadcast_object",
    "broadcast_module_state",
    "all_gather_object",
    "run_staged",
]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise RuntimeError(f"environment variable {name} must be an integer, got {value!r}") from exc


def init_distributed(device: str = "auto", timeout_minutes: int = 30) -> DistInfo:
    """Choose the device and, under torchrun, join the process group."""
    world = _env_int("WORLD_SIZE", 1)
    rank_ = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device: got 'cuda' but no CUDA device is available (use --device cpu or auto)")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible on this node"
            )
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    backend = "none"
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend,
                timeout=datetime.timedelta(minutes=timeout_minutes),
                **({"device_id": dev} if use_cuda else {}),
            )
    return DistInfo(rank=rank_, world_size=world, local_rank=local, device=dev, backend=backend)


def cleanup() -> None:
    """Leave the process group, after freeing what still uses it."""
    if dist.is_available() and dist.is_initialized():
        # A finished run's DistributedDataParallel can sit in a reference cycle (seen on rank 1),
        # keeping the gloo group alive past destroy_process_group() until interpreter shutdown,
        # where tearing it down aborted the process ("terminate called without an active
        # exception", SIGABRT) in a loaded CI run. Collect it now, while everything is alive.
        gc.collect()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum across ranks (no-op for a single process); returns ``t``."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the tensors of all ranks, which may differ in their row count.

    Sizes are exchanged first, every tensor is padded to the largest, gathered, then trimmed.
    """
    if not _active():
        return t
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    largest = max(sizes)
    padded = t.new_zeros((largest,) + tuple(t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def all_gather_object(obj) -> list:
    """Every rank's Python object, in rank order (``[obj]`` for a single process)."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def run_staged(make, info: "DistInfo"):
    """Call ``make()`` on every rank in three waves: global rank 0, then the first process of
    every other node, then the rest, so that a dataset generated or cached on first use is
    written by one process per filesystem before the others read it. An exception on any rank
    is re-raised on every rank (no rank is left waiting at a barrier)."""
    waves = (
        info.rank == 0,
        info.rank != 0 and info.local_rank == 0,
        info.local_rank != 0,
    )
    result = None
    for mine in waves:
        error = None
        if mine:
            try:
                result = make()
            except Exception as exc:  # reported to all ranks below
                error = (info.rank, exc)
        errors = [e for e in all_gather_object(None if error is None else (error[0], f"{type(error[1]).__name__}: {error[1]}")) if e]
        if error is not None:
            raise error[1]
        if errors:
            raise RuntimeError(f"rank {errors[0][0]} failed: {errors[0][1]}")
    return result


def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s.

    DDP keeps parameters in sync, but each rank's BatchNorm running statistics last saw its
    own share of the final batch; evaluating with diverging statistics would mix features
    computed by slightly different models.
    """
    if not _active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
