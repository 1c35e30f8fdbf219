"""The engine's event loop: uvloop when it is installed, asyncio's own when it is not."""

from __future__ import annotations

import asyncio
import sys

import pytest

from engine.event_loop import run


async def loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_the_engine_runs_on_uvloop_when_it_is_installed() -> None:
    pytest.importorskip("uvloop")
    assert run(loop_module()).startswith("uvloop")


def test_without_uvloop_the_engine_runs_on_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert run(loop_module()).startswith("asyncio")
