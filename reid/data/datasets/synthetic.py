"""The built-in synthetic dataset, read back through the generic folder loader like real data."""
from __future__ import annotations

from typing import Optional

from ..synthetic import SyntheticConfig, ensure_synthetic, read_manifest
from .base import VideoDataset, check_split_id
from .folder import load_folder

__all__ = ["load_synthetic"]


def load_synthetic(root=None, split_id: int = 0, dense: bool = False, workers: Optional[int] = None,
                   verbose: bool = True, **options) -> VideoDataset:
    """Generate (first use only) and load the synthetic set; `options` are SyntheticConfig fields."""
    check_split_id(split_id, 1, "synthetic")  # before generating anything
    config = SyntheticConfig.from_options(**options)
    directory = ensure_synthetic(root, config, workers=workers, verbose=verbose)
    manifest = read_manifest(directory) or {}
    eff = manifest.get("effective_misalignment", config.effective)
    protocol = (f"synthetic (seed {config.seed}, misalignment {config.misalignment:g}: box scale jitter "
                f"{eff['scale_jitter']:.3f}, shift jitter {eff['shift_jitter']:.3f}, pose amplitude "
                f"{eff['pose_amplitude']:.2f}, occlusion prob {eff['occlusion_prob']:.2f}); one query per test identity")
    ds = load_folder(directory, split_id=split_id, dense=dense, name="synthetic", protocol=protocol)
    return ds
