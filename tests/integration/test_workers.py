"""Server runs (`%%lip --server`) and engine-side tools, against a real `symphony serve` process.

The tests share one engine and run in file order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_process import engine_process

from engine import sandbox
from engine.wire.errors import (
    EngineError,
    NotAttached,
    PermissionDenied,
    ProcessFailed,
    ToolFailed,
)
from workbench import tools as wb_tools
from workbench.client import Client

PROMPT = [5, 17, 42, 9, 100, 3, 77, 8, 61, 12]
# A worker's pid as this machine sees it (in the sandbox, os.getpid() is its pid in a namespace):
# the first NSpid of /proc/self/status, read through this machine's /proc.
HOST_PID = "int(open('/proc/self/status').read().split('NSpid:')[1].split()[0])"


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("workers")
    with engine_process(tmp, "--num-pages", "512", "--page-size", "4") as engine:
        yield engine.conn
        engine.proc.terminate()
        assert engine.proc.wait(10) == 0, engine.log  # it survived every worker and tool


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


class Output:
    """An on_output that keeps what a server run printed."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, str]] = []

    def __call__(self, stream: str, text: str) -> None:
        self.chunks.append((stream, text))

    def text(self, stream: str = "stdout") -> str:
        return "".join(t for s, t in self.chunks if s == stream)

    async def os_pid(self) -> int:
        """The worker's OS pid, once it printed the whole line `os <pid>` (print may write it in
        pieces, each its own chunk)."""
        while (printed := re.search(r"os (\d+)\n", self.text())) is None:
            await asyncio.sleep(0.02)
        return int(printed.group(1))


async def os_pid_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False


FORWARDS = f"""
import sys
f = await kv.create()
d = await forward(f, {PROMPT})
for i in range(20):
    print("line", i)
print("first", d.ids)
d = await forward(f, [d.argmax()])
print("second", d.ids)
print("to stderr", file=sys.stderr)
try:
    key = open("/proc/self/environ", "rb").read().split(b"SYMPHONY_WORKER_KEY=")[1]
    await lip.client.call("worker.adopt", {{"key": key.split(b"\\0")[0].decode()}})
except FileNotFoundError:
    print("reused key refused")
except Exception as e:
    print("reused key refused" if type(e).__name__ == "PermissionDenied" else repr(e))
"""


def test_a_server_cell_streams_its_output_and_computes_as_a_client_lip(conn: Path) -> None:
    async def body() -> None:
        alice = await Client.connect(conn, user="alice")
        out = Output()
        pid = await alice.run(FORWARDS, name="server-cell", on_output=out)
        lines = out.text().splitlines()
        assert lines[:20] == [f"line {i}" for i in range(20)]
        assert out.text("stderr") == "to stderr\n"
        assert lines[-1] == "reused key refused"

        lip = await alice.attach("client-side")
        f = await lip.kv.create()
        d = await lip.forward(f, PROMPT)
        second = await lip.forward(f, [d.argmax()])
        assert lines[20:22] == [f"first {d.ids}", f"second {second.ids}"]
        await lip.exit()

        info = {p.pid: p for p in await alice.ps()}[pid]
        assert (info.name, info.owner, info.state, info.error) == (
            "server-cell", "alice", "exited", None,
        )  # fmt: skip
        assert info.calls == 2
        with pytest.raises(PermissionDenied):
            await alice.call("worker.adopt", {"key": "0" * 32})
        bob = await Client.connect(conn, user="bob")
        with pytest.raises(PermissionDenied):
            await bob.call("output", {"pid": pid, "after": 0})
        await bob.close()
        await alice.close()

    run(body())


def test_a_raising_cell_reports_its_traceback_and_the_engine_serves_on(conn: Path) -> None:
    async def body() -> None:
        alice = await Client.connect(conn, user="alice")
        out = Output()
        with pytest.raises(ProcessFailed) as err:
            await alice.run('x = 1\nraise ValueError("bad value")\n', on_output=out)
        assert "raised ValueError: bad value" in str(err.value)
        tb = err.value.traceback or ""
        assert 'File "<lip-cell>", line 2' in tb and 'raise ValueError("bad value")' in tb
        assert tb.rstrip().endswith("ValueError: bad value") and "worker.py" not in tb
        assert tb in out.text("stderr")
        with pytest.raises(ProcessFailed, match="raised NameError"):
            await alice.run("await forward(nothing, [1])", on_output=Output())
        with pytest.raises(ProcessFailed, match="ended: exit code 4$"):
            await alice.run("import os\nos._exit(4)", on_output=Output())
        again = Output()
        await alice.run("print(tokenize('abc') == lip.tokenize('abc'))", on_output=again)
        assert again.text() == "True\n"
        await alice.close()

    run(body())


def test_a_hanging_cell_is_ended_at_its_time_limit_and_its_pages_reclaimed(conn: Path) -> None:
    async def body() -> None:
        alice = await Client.connect(conn, user="alice")
        before = (await alice.stat_engine())["pages_used"]
        out = Output()
        cell = f"f = await kv.create()\nawait forward(f, {PROMPT * 4})\nprint('os', {HOST_PID})\n"
        start = time.monotonic()
        with pytest.raises(ProcessFailed, match="exceeded its time limit of 2s"):
            await alice.run(
                "import os\n" + cell + "while True:\n    pass\n", timeout=2, on_output=out
            )
        assert time.monotonic() - start < 6
        assert await os_pid_gone(await out.os_pid())
        assert (await alice.stat_engine())["pages_used"] == before
        await alice.close()

    run(body())


def test_a_cell_over_its_memory_limit_is_ended(conn: Path) -> None:
    async def body() -> None:
        alice = await Client.connect(conn, user="alice")
        with pytest.raises(ProcessFailed, match="exceeded its memory limit of 200 MB") as err:
            await alice.run("big = bytearray(4 * 2**30)", memory_mb=200, on_output=Output())
        assert "MemoryError" in (err.value.traceback or "")
        await alice.run("small = bytearray(50 * 2**20)", memory_mb=200, on_output=Output())
        await alice.close()

    run(body())


SLEEPER = f"print('os', {HOST_PID})\nwhile True:\n    await sleep(0.05)\n"


def test_killing_or_cancelling_a_server_run_ends_its_worker(conn: Path) -> None:
    async def body() -> None:
        alice = await Client.connect(conn, user="alice")
        out = Output()
        task = asyncio.create_task(alice.run(SLEEPER, name="to-kill", on_output=out))
        os_pid = await out.os_pid()
        pid = next(p.pid for p in await alice.ps() if p.name == "to-kill" and p.state != "exited")
        await alice.kill(pid)
        with pytest.raises(ProcessFailed, match="killed"):
            await task
        assert await os_pid_gone(os_pid)

        out = Output()
        task = asyncio.create_task(alice.run(SLEEPER, name="to-cancel", on_output=out))
        os_pid = await out.os_pid()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await os_pid_gone(os_pid)
        info = next(p for p in await alice.ps() if p.name == "to-cancel")
        assert (info.state, info.error) == ("exited", "killed")

        out = Output()
        task = asyncio.create_task(alice.run(SLEEPER, name="to-orphan", on_output=out))
        os_pid = await out.os_pid()
        await alice.close()  # the session that ran it goes: so does its worker
        with pytest.raises(EngineError):
            await task
        assert await os_pid_gone(os_pid)

    run(body())


def add(a: int, b: int = 0) -> int:
    """a + b, beside the engine."""
    return a + b


def divide(a: float, b: float) -> float:
    return a / b


def die() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@wb_tools.tool(timeout=1)
def hang() -> None:
    import time

    time.sleep(60)


def test_tools_are_callable_from_every_lip_and_fail_cleanly(conn: Path) -> None:
    async def body() -> None:
        alice = await Client.connect(conn, user="alice")
        bob = await Client.connect(conn, user="bob")
        info = await alice.register_tool(add)
        assert info == {"name": "add", "signature": "(a: int, b: int = 0) -> int",
                        "doc": "a + b, beside the engine.", "owner": "alice"}  # fmt: skip
        await bob.register_tool(divide, name="div")
        assert await wb_tools.register_pending(alice) == ["hang"] and not wb_tools.PENDING
        assert [t["name"] for t in await bob.tools()] == ["add", "div", "hang"]

        a, b = await alice.attach("a"), await bob.attach("b")
        assert await a.tool("add", 1, 2) == 3 and await b.tool("add", 40, b=2) == 42
        out = Output()
        await bob.run("print(await tool('div', 1, 4))", on_output=out)
        assert out.text() == "0.25\n"
        with pytest.raises(ToolFailed, match="'div' raised ZeroDivisionError") as err:
            await a.tool("div", 1, 0)
        assert "return a / b" in (err.value.traceback or "")
        start = time.monotonic()
        with pytest.raises(ToolFailed, match="'hang' exceeded its time limit of 1s"):
            await b.tool("hang")
        assert time.monotonic() - start < 4
        assert await a.tool("add", 2) == 2  # a new host, with the tools registered again
        await alice.register_tool(die)
        with pytest.raises(ToolFailed, match="the tool host died"):
            await a.tool("die")
        assert await b.tool("add", 5) == 5
        await a.exit()
        await b.exit()
        await alice.close()
        await bob.close()

    run(body())


def test_syscalls_tool_in_process(tiny_loaded) -> None:  # noqa: ANN001
    from engine.kernel import Kernel

    async def main(sys: Any) -> Any:
        return await sys.tool("mul", 6, b=7)

    async def parent(sys: Any) -> Any:
        child = sys.spawn(main, name="child")
        with contextlib.suppress(ToolFailed):
            await sys.tool("mul", "six")  # fails in the tool: the trace says so
        return child, await sys.wait(child)

    async def body() -> None:
        async with Kernel(tiny_loaded, num_pages=16) as kernel:
            await kernel.tools.register("mul", "def mul(a, b):\n    return a * b\n")
            pid = kernel.spawn(parent)
            child, result = await kernel.wait(pid)
            assert result == 42
            host = kernel.tools.hosts["mul"]
            created = kernel.trace.query(pid=child, kinds=["process"])[0]
            assert created.data["old"] is None and created.data["parent"] == pid
            waits = kernel.trace.query(kinds=["tool.started", "tool.finished"])
            by_call: dict[int, list[Any]] = {}
            for e in waits:
                by_call.setdefault(e.data["call"], []).append(e)
            assert sorted((e[0].pid, [x.kind for x in e]) for e in by_call.values()) == [
                (pid, ["tool.started", "tool.finished"]),
                (child, ["tool.started", "tool.finished"]),
            ]
            errors = {e[1].pid: e[1].data["error"] for e in by_call.values()}
            assert errors[child] is None and "ToolFailed" in errors[pid]
        assert host.proc is not None and host.proc.returncode is not None  # ended with the kernel

    run(body())


async def _child(lip: Any, prompt: list[int], n: int) -> list[int]:
    """A spawned process's main, as in-process `Syscalls.spawn` takes it."""
    f = await lip.kv.create()
    d = await lip.forward(f, prompt)
    out = [d.argmax()]
    for _ in range(n - 1):
        out.append((await lip.forward(f, [out[-1]])).argmax())
    print("child done", flush=True)
    return out


def test_spawn_over_the_wire_runs_a_child_and_wait_gives_its_result(conn: Path) -> None:
    async def body() -> None:
        async with await Client.connect(conn, user="alice") as client:
            lip = await client.attach("parent")
            here = await _child(lip, PROMPT, 6)  # the same calls made by the parent itself
            pid = await lip.spawn(_child, PROMPT, 6, name="child")
            assert await lip.wait(pid) == here
            info = {p.pid: p for p in await client.ps()}[pid]
            assert info.parent == lip.pid and info.name == "child" and info.state == "exited"

            async def broken(lip: Any) -> None:
                raise ValueError("child failed")

            bad = await lip.spawn(broken)
            with pytest.raises(ProcessFailed, match="ValueError: child failed"):
                await lip.wait(bad)
            with pytest.raises(NotAttached):  # a parent must be one of this client's processes
                await client.call("run", {"code": "pass", "parent": 10_000})
            await lip.exit()

    run(body())


def test_one_user_cannot_reach_into_anothers_processes_tools_or_files(conn: Path) -> None:
    """Between users: no wait on another's process (a spawned child's result included), no
    message to it, no replacing another's tool, and another's file named only under /shared.
    A user's own processes message each other, the receiver seeing who sent each message."""

    async def body() -> None:
        alice = await Client.connect(conn, user="alice", name="alice")
        mallory = await Client.connect(conn, user="mallory", name="mallory")
        a, m = await alice.attach("a"), await mallory.attach("m")
        child = await a.spawn(child_result, 7)
        assert await a.wait(child) == 7  # her own child's
        for wait in (m.wait, mallory.wait):
            with pytest.raises(PermissionDenied, match="belongs to alice"):
                await wait(child)
        with pytest.raises(PermissionDenied, match="belongs to alice"):
            await m.send(a.pid, "hello from mallory")  # as kill and wait: owners only
        a2 = await alice.attach("a2")
        await a2.send(a.pid, "hello from a2")
        msg = await a.receive(timeout=5)
        sender = {p.pid: p for p in await a.ps()}[msg.sender]
        assert (msg.data, msg.sender, sender.owner) == ("hello from a2", a2.pid, "alice")
        with pytest.raises(asyncio.TimeoutError):  # nothing of mallory's got through
            await a.receive(timeout=0.2)
        await alice.register_tool(add, name="search")
        with pytest.raises(PermissionDenied, match="registered by alice"):
            await mallory.register_tool(divide, name="search")
        await alice.register_tool(divide, name="search")  # her own: replaced
        assert await m.tool("search", 6, 3) == 2

        f = await a.kv.create("/shared/alice-open", mode=0o666)  # anyone may read and write it
        await a.forward(f, PROMPT)
        with pytest.raises(PermissionDenied, match="only under /shared"):
            await m.kv.rename("/shared/alice-open", "/home/mallory/mine")
        with pytest.raises(PermissionDenied, match="only under /shared"):
            await m.kv.link("/shared/alice-open", f"/proc/{m.pid}/mine")
        await m.kv.rename("/shared/alice-open", "/shared/moved")  # stays in everyone's sight
        assert (await alice.stat("/shared/moved")).owner == "alice"
        for c in (alice, mallory):
            await c.close()

    run(body())


async def child_result(lip: Any, n: int) -> int:
    return n


needs_sandbox = pytest.mark.skipif(
    not sandbox.namespaces_work(), reason="this machine allows no user and PID namespaces"
)

ASSASSIN = """
import json, os, signal
engine_pid = json.loads(os.environ["SYMPHONY_WORKER_ENGINE"])["pid"]
for target in (os.getppid(), engine_pid):
    try:
        os.kill(target, signal.SIGKILL)
        print("sent to", target)
    except OSError as e:
        print("refused", target, type(e).__name__)
"""

ESCAPEE = """
import subprocess
subprocess.Popen(["sleep", "3071.25"], start_new_session=True)  # its own session: outlives us?
"""


def _escapees() -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if d.name.isdigit() and (d / "cmdline").read_bytes() == b"sleep\x003071.25\x00":
                found.append(int(d.name))
    return found


@needs_sandbox
def test_a_worker_cannot_signal_the_engine_and_takes_everything_it_started_with_it(
    conn: Path,
) -> None:
    async def body() -> None:
        alice = await Client.connect(conn, user="alice")
        engine_pid = alice.engine["engine_pid"]
        out = Output()
        await alice.run(ASSASSIN, name="assassin", on_output=out)
        assert f"refused {engine_pid} ProcessLookupError" in out.text(), out.text()
        os.kill(engine_pid, 0)  # alive
        assert (await alice.stat_engine())["pages_used"] >= 0  # and serving
        await alice.run(ESCAPEE, name="escapee")
        deadline = time.monotonic() + 5
        while _escapees():
            assert time.monotonic() < deadline, "a setsid child outlived its worker"
            await asyncio.sleep(0.05)
        await alice.close()

    run(body())


def test_a_workers_end_is_reported_as_it_happened(conn: Path) -> None:
    async def body() -> None:
        alice = await Client.connect(conn, user="alice")
        ends = {
            "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n": "killed by SIGTERM",
            "import os\nos._exit(0)\n": "ended without reporting how its cell ended",
            "import os\nos._exit(3)\n": "exit code 3",
        }
        for code, why in ends.items():
            with pytest.raises(ProcessFailed, match=why):
                await alice.run(code, name="ends")
        await alice.close()

    run(body())


def slow_add(a: int, b: int) -> int:
    import time

    time.sleep(1.5)
    return a + b


def test_a_hung_tool_fails_only_its_own_calls(conn: Path) -> None:
    async def body() -> None:
        alice = await Client.connect(conn, user="alice")
        await alice.register_tool(hang)
        await alice.register_tool(slow_add, timeout=10)
        lip = await alice.attach("tools")
        hung = asyncio.create_task(lip.tool("hang"))
        assert await lip.tool("slow_add", 2, 3) == 5  # in flight when hang's host is killed
        with pytest.raises(ToolFailed, match="'hang' exceeded its time limit"):
            await hung
        assert await lip.tool("slow_add", 4, 5) == 9
        await lip.exit()
        await alice.close()

    run(body())
