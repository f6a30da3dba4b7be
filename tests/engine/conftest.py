"""Shared tiny set-up for the engine's end-to-end tests: a few synthetic identities, 32x16 frames."""
import dataclasses

import pytest

from reid.engine.config import Config

TINY_DATA = {
    "num_train_ids": 8,
    "num_test_ids": 6,
    "min_frames": 8,
    "max_frames": 16,
    "height": 32,
    "width": 16,
    "tracklets_per_camera": 2,
}


@pytest.fixture(scope="session")
def tiny_data():
    return dict(TINY_DATA)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Synthetic data generated once per session (the data package caches it under this root)."""
    from reid.data import build_dataset

    root = str(tmp_path_factory.mktemp("synthetic"))
    build_dataset("synthetic", root=root, verbose=False, **TINY_DATA)
    return root


@pytest.fixture(scope="session")
def tiny_config(tiny_root):
    """``tiny_config(output_dir, **overrides)`` -> a validated Config for a run of a few seconds."""
    return lambda output_dir, **overrides: _tiny_config(tiny_root, output_dir, **overrides)


def _tiny_config(root, output_dir, **overrides) -> Config:
    cfg = Config(
        dataset="synthetic",
        root=root,
        dataset_options=dict(TINY_DATA),
        height=32,
        width=16,
        seq_len=4,
        stride=2,
        num_identities=4,
        num_instances=2,
        num_workers=0,
        epochs=2,
        milestones=[10],
        arch="ap3d_resnet18",
        test_batch_size=4,
        output_dir=str(output_dir),
        log_every=1,
        threads=1,
    )
    return dataclasses.replace(cfg, **overrides).validate()
