"""Models that ship with the engine."""

from pathlib import Path

DEFAULT_MODEL: Path = Path(__file__).parent / "tiny"
