"""Data-loader worker policy: what ``--num-workers auto`` (the default) picks.

Loader workers are processes that read and augment frames while the step computes. On a GPU run
that overlap is free, the step runs on the GPU. On a CPU run the step's intra-op threads already
keep every core busy: a worker runs only by taking a core from one of them, and one preempted
thread stalls the whole parallel region. Measured on the 2-core AMD EPYC (README "Speed"), the
default command took 106.7 s with 2 workers and 98.0 s reading frames in the training process
(identical losses and results). So ``auto`` reads in-process on a CPU run whose process has at
most ``IN_PROCESS_MAX_THREADS`` intra-op threads, and uses ``DEFAULT_WORKERS`` workers otherwise
(GPU runs; many-core CPUs, which this project has not measured).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["DEFAULT_WORKERS", "IN_PROCESS_MAX_THREADS", "check_num_workers", "describe_workers", "parse_num_workers",
           "resolve_num_workers"]

DEFAULT_WORKERS = 2
IN_PROCESS_MAX_THREADS = 4


def parse_num_workers(text: str) -> Union[str, int]:
    """A command line's ``--num-workers`` text: ``auto`` or an integer (checked later, with the config)."""
    return int(text) if text.lstrip("-").isdigit() else text


def check_num_workers(value) -> Union[str, int]:
    """``value`` if it is ``"auto"`` or a non-negative int; ValueError naming the option otherwise."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError(f"num_workers: got {value!r}, expected auto or a non-negative integer")


def resolve_num_workers(value, device, threads: Optional[int] = None) -> tuple[int, str]:
    """(worker processes, the reason in words) for ``--num-workers value`` on ``device``;
    ``threads``: this process's intra-op threads (default: torch's current setting)."""
    if check_num_workers(value) != "auto":
        return value, f"--num-workers {value}"
    device = torch.device(device)
    if device.type != "cpu":
        return DEFAULT_WORKERS, f"auto: the step runs on {device.type}, workers overlap with it"
    threads = torch.get_num_threads() if threads is None else threads
    if threads <= IN_PROCESS_MAX_THREADS:
        return 0, f"auto: in-process, the step's {threads} CPU thread(s) leave no core to a worker"
    return DEFAULT_WORKERS, f"auto: {threads} CPU threads, workers take a share of the cores"


def describe_workers(value, device, threads: Optional[int] = None) -> str:
    """One line for the run header, e.g. ``loader in-process (auto: ...)``."""
    n, why = resolve_num_workers(value, device, threads)
    return f"loader {'in-process' if n == 0 else f'{n} workers'} ({why})"
