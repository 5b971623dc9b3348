"""Deferrable triggers, sensors and AssetWatchers that watch data incrementally with durable watermarks."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
