"""Chat keeps its KV file across turns; a ReAct agent's tool wait lets other processes run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_library import run

from engine.kernel import Kernel
from engine.loader import load_model
from engine.models import TINY_MODEL
from engine.syscalls import Syscalls
from engine.wire import events as ev
from engine.wire.records import OwnTrace, Sample
from workbench.lib import AgentRun, Chat, Turn, generate, react
from workbench.lib.agent import parse_step

SYSTEM = "You are terse."


def test_chat_turn_two_reuses_turn_ones_pages_and_computes_only_whats_new(tiny_loaded) -> None:  # noqa: ANN001
    async def program(sys: Syscalls) -> tuple:
        chat = await Chat.start(sys, system=SYSTEM)
        first = await chat.say("Name a prime.", max_tokens=10)
        pages_1 = (await sys.kv.stat(chat.file)).page_table
        prompt_1 = await sys.chat_template(chat.messages[:2])
        second = await chat.say("And another?", max_tokens=6)
        pages_2 = (await sys.kv.stat(chat.file)).page_table
        prompt_2 = await sys.chat_template(chat.messages[:-1])  # turn 2's conversation
        fresh = await generate(sys, await sys.kv.create(), prompt_2, 6)
        return first, second, pages_1, pages_2, prompt_1, prompt_2, fresh, chat.messages

    (first, second, pages_1, pages_2, prompt_1, prompt_2, fresh, messages), kernel = run(
        tiny_loaded, program
    )
    assert isinstance(first, Turn) and first.reused == 0 and first.forwarded == len(prompt_1)
    assert second.reused >= len(prompt_1)  # at least the system prompt and turn 1's question
    assert second.forwarded == len(prompt_2) - second.reused < len(prompt_2)
    full = second.reused // 4  # (page size 4): turn 1's full pages begin turn 2's page table
    assert full >= len(prompt_1) // 4 and pages_2[:full] == pages_1[:full]
    # the trace: turn 2's first forward computed only what was new
    sizes = [e.data["tokens"] for e in kernel.trace.query(kinds=[ev.CALL_SUBMITTED])]
    assert second.forwarded in sizes and len(prompt_2) not in sizes[: sizes.index(second.forwarded)]
    assert second.tokens == fresh.tokens[: len(second.tokens)]  # as if computed from scratch
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]


SLOW = """
def slow(text):
    import time
    time.sleep(0.3)
    return len(text)
"""


async def busy(sys: Syscalls, done: asyncio.Event) -> int:
    """Decode until done is set (a bounded file: truncated back every 32 tokens)."""
    f = await sys.kv.create()
    prompt = [5, 17, 3, 99]
    t = await sys.forward(f, prompt, returns=Sample())
    steps = 0
    while not done.is_set() and steps < 100_000:
        t = await sys.forward(f, [t], returns=Sample())
        steps += 1
        if steps % 32 == 0:
            await sys.kv.truncate(f, len(prompt))
    return steps


async def agent(sys: Syscalls) -> tuple[AgentRun, OwnTrace]:
    tools = {"slow": "waits a while, then counts the characters of its argument"}
    run_ = await react(sys, "How long is 'banana'?", tools, max_steps=2, min_tool_calls=2)
    return run_, await sys.own_trace()


@pytest.fixture(scope="module")
def demo() -> Any:
    """The bundled demo model: its tokenizer is one llguidance builds a grammar's matcher for."""
    return load_model(TINY_MODEL, dtype="float32", show_progress=False)


def test_an_agents_tool_wait_lets_other_processes_run(demo: Any) -> None:
    async def main() -> tuple[AgentRun, OwnTrace, int, int, list[Any]]:
        async with Kernel(demo, num_pages=256, page_size=4) as kernel:
            await kernel.tools.register("slow", SLOW)
            done = asyncio.Event()
            other = kernel.spawn(busy, done)
            pid = kernel.spawn(agent)
            result, seen = await kernel.wait(pid)
            done.set()
            await kernel.wait(other)
            return result, seen, pid, other, kernel.trace.query()

    result, seen, pid, other, events = asyncio.run(main())
    assert [s.tool for s in result.steps] == ["slow", "slow"]  # the grammar made it act twice
    for step in result.steps:
        assert step.argument is not None and step.observation == str(len(step.argument))
        assert parse_step(step.text)[:2] == (step.tool, step.argument)
    assert result.forwarded[1] < result.forwarded[0]  # step 2 forwarded the observation only
    tool_waits = [w for w in seen.waits if w.tool == "slow"]
    assert len(tool_waits) == 2 and all(w.end is not None for w in tool_waits)
    starts = [e.t for e in events if e.kind == ev.TOOL_STARTED and e.pid == pid]
    ends = [e.t for e in events if e.kind == ev.TOOL_FINISHED and e.pid == pid]
    for start, end in zip(starts, ends, strict=True):
        during = [ev.record_of(e) for e in events if e.kind == ev.BATCH and start < e.t < end]
        assert during, "no forward ran while the tool ran"
        assert all(other in b.pids and pid not in b.pids for b in during)  # type: ignore[union-attr]
