"""Procedural video-ReID data with controllable temporal appearance misalignment (see generator.py)."""
from .generator import (GENERATOR_VERSION, MANIFEST, SyntheticConfig, default_cache_dir, ensure_synthetic,
                        generate_synthetic, read_manifest)

__all__ = ["SyntheticConfig", "generate_synthetic", "ensure_synthetic", "default_cache_dir", "read_manifest",
           "GENERATOR_VERSION", "MANIFEST"]
