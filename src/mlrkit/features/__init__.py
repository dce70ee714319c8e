"""Cached outputs of frozen encoders (computed once, memory-mapped, resumable)."""

from mlrkit.features.store import FeatureStore, default_cache_dir

__all__ = ["FeatureStore", "default_cache_dir"]
