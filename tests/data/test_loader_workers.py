"""Loader worker processes: one intra-op thread each, and the lowest CPU priority, so that the
training process keeps the cores when both want them (reid/data/loaders.py)."""
import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from reid.data import loaders


class WorkerState(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.tensor([os.nice(0), torch.get_num_threads()])


@pytest.mark.skipif(not hasattr(os, "nice"), reason="no process priorities on this platform")
def test_workers_run_single_threaded_at_the_lowest_priority():
    before = os.nice(0)
    loader = DataLoader(WorkerState(), batch_size=2, **loaders._loader_kwargs(1, pin_memory=False))
    try:
        niceness, threads = next(iter(loader))[0].tolist()
    finally:
        loaders.shutdown_loader(loader)
    assert niceness == min(19, before + loaders.WORKER_NICENESS)
    assert threads == 1
    assert os.nice(0) == before  # the trainer itself keeps its priority
