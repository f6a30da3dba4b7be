"""Video-ReID data layer: datasets, clip sampling, transforms, identity-balanced loaders.

    from reid.data import Tracklet, build_dataset, build_train_loader, build_test_loader, DATASETS
    ds = build_dataset("synthetic")                      # or "mars", "duke", "ilidsvid", "prid", "folder"
    train_loader = build_train_loader(ds.train, seq_len=4, stride=8)
    test_loader = build_test_loader(ds.query + ds.gallery, clip_len=32)
"""
from .datasets import ALIASES, DATASETS, LAYOUTS, DatasetLayoutError, EmptySplitError, VideoDataset, build_dataset
from .images import read_frame, report_skipped_frames, reset_skipped_frames, skipped_frames, unreadable_tracklets
from .loaders import TestClipDataset, TrainClipDataset, build_test_loader, build_train_loader, shutdown_loader
from .samplers import ClipLengthBatchSampler, RandomIdentityBatchSampler
from .synthetic import SyntheticConfig, generate_synthetic
from .temporal import evenly_spaced, temporal_random_crop, clip_ranges
from .tracklet import Tracklet
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ClipTransform

__all__ = [
    "Tracklet", "build_dataset", "build_train_loader", "build_test_loader", "shutdown_loader", "DATASETS", "ALIASES", "LAYOUTS",
    "VideoDataset", "DatasetLayoutError", "EmptySplitError", "skipped_frames", "report_skipped_frames",
    "reset_skipped_frames", "unreadable_tracklets", "read_frame", "TrainClipDataset", "TestClipDataset", "RandomIdentityBatchSampler", "ClipLengthBatchSampler",
    "SyntheticConfig", "generate_synthetic", "temporal_random_crop", "evenly_spaced", "clip_ranges",
    "ClipTransform", "IMAGENET_MEAN", "IMAGENET_STD",
]
