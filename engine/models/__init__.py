"""Models that ship with the engine."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL: Path = Path(__file__).resolve().parent / "tiny"
"""The demo model trained by `python -m engine.train_demo` (see its README.md)."""
