"""Tools: Python functions registered on the engine, callable from any LIP, run beside the engine.

    kernel.tools.register("add", "def add(a, b):\\n    return a + b\\n")
    await sys.tool("add", 1, 2)                          # in a LIP: 3

Each tool runs in a tool host subprocess of its own (`engine.tool_host`, no torch), in the
sandbox of `engine.sandbox` where the machine allows it, never in the engine process. Arguments
and results are msgpack values. A tool is registered by its source, which must be
self-contained (imports inside it); its owner (who registered it first) may register it again to
replace it. Who holds the engine's token may register code, as with a Jupyter kernel.

Failures are the caller's, never the engine's: a tool that raises fails that call with
`ToolFailed` (its traceback attached); a call past its time limit (30 s unless registered with
another) kills that tool's host and fails that tool's calls then in flight, and its next call
starts a new host; a host that dies (over its memory limit, say) is reported the same way. Other
tools, in hosts of their own, never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from engine import sandbox
from engine.tool_host import HEADER, MAX_FRAME, MEMORY_ENV, frame
from engine.wire.errors import BadMessage, InvalidArgument, PermissionDenied, ToolFailed
from engine.wire.protocol import unpackb

TOOL_HOST_COMMAND = (sys.executable, "-u", "-m", "engine.tool_host")
DEFAULT_TIMEOUT = 30.0  # seconds a tool call may take
MEMORY_MB = 4096  # address space the host may add to its own
REGISTER_TIMEOUT = 30.0


@dataclass
class Tool:
    name: str
    source: str
    timeout: float
    owner: str | None = None  # the user who registered it (None: the engine's own)
    signature: str = "(...)"
    doc: str = ""

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "signature": self.signature,
            "doc": self.doc,
            "owner": self.owner,
        }


class ToolHost:
    """One tool's host subprocess: requests out on its stdin, replies matched by id."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self.in_sandbox = False
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self.ended: str | None = None  # why it is gone, once it is

    async def start(self) -> ToolHost:
        env = {**os.environ, MEMORY_ENV: str(self.memory_mb)}
        command, self.in_sandbox = sandbox.sandboxed(TOOL_HOST_COMMAND)
        self.proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read_loop(), name="symphony-tool-host")
        return self

    @property
    def alive(self) -> bool:
        return self.ended is None and self.proc is not None and self.proc.returncode is None

    async def request(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send msg and wait for its reply; TimeoutError after timeout seconds."""
        assert self.proc is not None and self.proc.stdin is not None
        if not self.alive:
            raise ToolFailed(f"the tool host is gone: {self.ended}")
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self.proc.stdin.write(frame({**msg, "id": rid}))
            await self.proc.stdin.drain()
            return await asyncio.wait_for(future, timeout)
        except (BrokenPipeError, ConnectionResetError):
            raise ToolFailed(f"the tool host is gone: {self.ended or 'its pipe closed'}") from None
        finally:
            self._pending.pop(rid, None)

    async def _read_loop(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        try:
            while True:
                (n,) = HEADER.unpack(await out.readexactly(HEADER.size))
                if n > MAX_FRAME:
                    raise ValueError(f"a reply of {n} bytes")
                self._resolve(unpackb(await out.readexactly(n)))
        except (asyncio.IncompleteReadError, ValueError, BadMessage):
            pass
        code = await self.proc.wait()
        how = _exit_text(code, self.in_sandbox, self.memory_mb)
        self._fail_all(self.ended or f"the tool host died ({how})")

    def _resolve(self, reply: Any) -> None:
        rid = reply.get("id") if isinstance(reply, dict) else None
        future = self._pending.get(rid) if isinstance(rid, int) else None
        if future is not None and not future.done():
            future.set_result(reply)

    def _fail_all(self, why: str) -> None:
        self.ended = self.ended or why
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ToolFailed(why))

    async def kill(self, why: str) -> None:
        """End the host now; the calls in flight fail with why."""
        self.ended = self.ended or why
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._fail_all(why)


class Tools:
    """The registry of tools (`kernel.tools`) and the hosts that run them, one per tool."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = MEMORY_MB) -> None:
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.tools: dict[str, Tool] = {}
        self.hosts: dict[str, ToolHost] = {}  # by tool name
        self._locks: dict[str, asyncio.Lock] = {}
        self.restarts = 0  # hosts ended because a call hung or the host died

    def infos(self) -> list[dict[str, Any]]:
        """Each tool's name, signature and docstring."""
        return [t.info() for t in self.tools.values()]

    async def register(
        self, name: str, source: str, timeout: float | None = None, owner: str | None = None
    ) -> dict[str, Any]:
        """Define a tool from its source (see `engine.tool_host.define`); returns its info.

        A tool's name belongs to whoever registered it first: its owner may replace it, nobody
        else may (every user's processes call it).
        """
        _check_name(name)
        held = self.tools.get(name)
        if held is not None and held.owner is not None and held.owner != owner:
            raise PermissionDenied(f"tool {name!r}", f"was registered by {held.owner}")
        if not isinstance(source, str):
            raise InvalidArgument("a tool's source is a str")
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or not timeout > 0
        ):  # NaN
            raise InvalidArgument(f"a tool's time limit is a number of seconds > 0, not {timeout}")
        tool = Tool(name, source, float(timeout or self.timeout), owner)
        old = self.hosts.pop(name, None)
        if old is not None:  # replaced: its calls in flight fail, saying so
            await old.kill(f"tool {name!r} was replaced while this call ran")
        await self._ready_host(tool)  # defines it: a source that fails to define is refused
        self.tools[name] = tool
        return tool.info()

    async def call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run tool name with msgpack-able args; ToolFailed when it raises, hangs or dies."""
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            raise InvalidArgument(f"no tool named {name!r} (registered: {known})")
        host = await self._ready_host(tool)
        msg = {"op": "call", "name": name, "args": list(args), "kwargs": dict(kwargs)}
        try:
            reply = await host.request(msg, tool.timeout)
        except asyncio.TimeoutError:
            why = f"tool {name!r} exceeded its time limit of {tool.timeout:g}s"
            await self._restart(name, host, f"{why}; its host was restarted")
            raise ToolFailed(f"{why}; its host was restarted") from None
        if not reply.get("ok"):
            raise _failure(f"tool {name!r}", reply)
        return reply.get("result")

    async def stop(self) -> None:
        hosts, self.hosts = list(self.hosts.values()), {}
        for host in hosts:
            await host.kill("the engine stopped")

    # --- the hosts --------------------------------------------------------------------------------

    async def _ready_host(self, tool: Tool) -> ToolHost:
        """The tool's running host, starting one (and defining the tool) when there is none."""
        lock = self._locks.setdefault(tool.name, asyncio.Lock())
        async with lock:
            host = self.hosts.get(tool.name)
            if host is not None and host.alive:
                return host
            if host is not None:
                self.restarts += 1
            host = await ToolHost(self.memory_mb).start()
            try:
                await self._define(host, tool)
            except BaseException:
                await host.kill("its tool could not be defined")
                raise
            self.hosts[tool.name] = host
            return host

    async def _define(self, host: ToolHost, tool: Tool) -> None:
        msg = {"op": "register", "name": tool.name, "source": tool.source}
        try:
            reply = await host.request(msg, REGISTER_TIMEOUT)
        except asyncio.TimeoutError:
            raise ToolFailed(
                f"defining tool {tool.name!r} took over {REGISTER_TIMEOUT:g}s"
            ) from None
        if not reply.get("ok"):
            raise _failure(f"registering tool {tool.name!r}", reply)
        tool.signature = str(reply["result"].get("signature", "(...)"))
        tool.doc = str(reply["result"].get("doc", ""))

    async def _restart(self, name: str, host: ToolHost, why: str) -> None:
        await host.kill(why)
        if self.hosts.get(name) is host:
            del self.hosts[name]
            self.restarts += 1


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidArgument(f"a tool's name is a Python identifier, not {name!r}")


def _failure(what: str, reply: dict[str, Any]) -> ToolFailed:
    error = reply["error"] if isinstance(reply.get("error"), dict) else {}
    kind, message = error.get("type", "Error"), error.get("message", "")
    text = f"{what} raised {kind}: {message}" if message else f"{what} raised {kind}"
    return ToolFailed(text, error.get("traceback") or None)


def _exit_text(code: int | None, in_sandbox: bool, memory_mb: int) -> str:
    sig = sandbox.end_signal(code, in_sandbox)
    if sig is not None:
        return f"killed by {sandbox.signal_name(sig)}; its memory limit is {memory_mb} MB"
    return f"exit code {code}"
