"""Typed errors the engine raises. Every one names what was wrong."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for every error the engine reports to a caller."""


class ModelLoadError(EngineError):
    """A checkpoint could not be loaded: names the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class OutOfPages(EngineError):
    """The page pool has fewer free pages than a request needs. Nothing was allocated."""

    def __init__(self, needed: int, free: int) -> None:
        super().__init__(f"out of KV pages: needed {needed}, {free} free")
        self.needed = needed
        self.free = free


class InvalidArgument(EngineError, ValueError):
    """A call's argument is out of range or of the wrong kind."""
