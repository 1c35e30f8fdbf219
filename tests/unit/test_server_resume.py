"""Requests are served at once; those that wait go on as tasks (engine.server.continue_in_task)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.server import continue_in_task


def started(coro: Any) -> tuple[Any, Any]:
    """Run coro up to its first await, as the server does outside any task."""
    try:
        return coro, coro.send(None)
    except StopIteration:
        pytest.fail("the coroutine did not wait")


def test_a_resumed_coroutine_gets_the_result_errors_and_bare_yields() -> None:
    async def main() -> list[Any]:
        seen: list[Any] = []
        ok, bad = (
            asyncio.get_running_loop().create_future(),
            asyncio.get_running_loop().create_future(),
        )

        async def request() -> None:
            seen.append(await ok)
            await asyncio.sleep(0)  # a bare yield
            try:
                await bad
            except KeyError as e:
                seen.append(f"raised {e}")
            await asyncio.sleep(0.01)
            seen.append("done")

        task = continue_in_task(*started(request()))
        ok.set_result(7)
        await asyncio.sleep(0)
        bad.set_exception(KeyError("x"))
        await task
        return seen

    assert asyncio.run(main()) == [7, "raised 'x'", "done"]


@pytest.mark.parametrize("first_step", [True, False], ids=["after-first-step", "before-it-ran"])
def test_cancelling_the_task_ends_the_request_and_cancels_what_it_awaits(first_step: bool) -> None:
    """before-it-ran: a kill read in the same burst as the request it ends (no `except` in the
    request could see that cancel unless the task hands it on): the request must still finish."""

    async def main() -> tuple[list[str], bool]:
        seen: list[str] = []
        pending = asyncio.get_running_loop().create_future()

        async def request() -> None:
            try:
                await pending
            except asyncio.CancelledError:
                seen.append("cancelled")  # the server replies "process exited" here
                raise

        task = continue_in_task(*started(request()))
        if first_step:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen, pending.cancelled()

    assert asyncio.run(main()) == (["cancelled"], True)


def test_a_cancel_after_the_future_finished_is_thrown_into_the_request() -> None:
    async def main() -> list[str]:
        seen: list[str] = []
        fut = asyncio.get_running_loop().create_future()

        async def request() -> None:
            try:
                await fut
                seen.append("resumed")
            except asyncio.CancelledError:
                seen.append("cancelled")

        task = continue_in_task(*started(request()))
        await asyncio.sleep(0)  # the task now awaits fut
        fut.set_result(1)
        task.cancel()  # before the task saw fut finish
        await task
        return seen

    assert asyncio.run(main()) == ["cancelled"]
