"""The LIP client: a notebook's connection to the shared engine. No torch, no engine internals.

    client = await Client.connect()                  # reads the engine's connection file
    lip = await client.attach("demo")                # a process in the engine's table
    f = await lip.kv.create()
    d = await lip.forward(f, lip.tokenize("The return value"))
    t = await lip.forward(f, [d.argmax()], returns=Sample(SamplingParams(temperature=0.8)))
    await lip.exit()

`LIP` has the methods of `engine.syscalls.Syscalls`, with the same names, arguments, results and
errors (rebuilt as their own types: `PermissionDenied`, `FileNotFound`, ...), so one set of docs
serves both. Differences: `tokenize`/`detokenize` run here, on the model's tokenizer.json; a
`Sample`'s generator is an int seed (or None for the process's own stream); `send` carries
msgpack values and records; `spawn` ships its function's source to an engine-side worker, so
it is awaited (`pid = await lip.spawn(main, *args)`).

Any number of asyncio tasks may call at once: requests carry ids and replies resolve futures, so
the calls are pipelined over the one connection. A thread sends heartbeats every 0.5 s, also
while a cell blocks the event loop; if this process dies, the engine detaches its processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tokenizers
import zmq

from engine import connection
from engine.errors import EngineError, EngineNotRunning, InvalidArgument, ProcessFailed
from engine.protocol import (
    PING,
    PONG,
    REPLY,
    REQUEST,
    SocketReader,
    Wire,
    handle_to_wire,
    rebuild_error,
    request_body,
    returns_to_wire,
)
from engine.records import (
    Distribution,
    Event,
    FileHandle,
    FileStat,
    Logits,
    LogProbs,
    Message,
    PageMap,
    ProcessInfo,
    Returns,
    Sample,
    SamplingParams,
    SpecialTokens,
    TopK,
)

HEARTBEAT_INTERVAL = 0.5
ENGINE_DEAD_AFTER = 10.0  # seconds without a pong: calls in flight fail
REPLY_LIMIT = 1 << 30
USER_ENV = "SYMPHONY_USER"  # who this client acts as (default: the login name)


class Client:
    """One connection to an engine; `attach` makes processes that call through it."""

    def __init__(self, info: connection.ConnectionInfo, user: str, name: str) -> None:
        self.info = info
        self.address = info.local_address  # the Unix socket when the engine is on this machine
        self.user, self.name = user, name
        self.session = uuid.uuid4().hex
        self.wire = Wire(info.token, REPLY_LIMIT)
        self.engine: dict[str, Any] = {}  # what hello said: model, vocab_size, page_size, ...
        self.tokenizer: tokenizers.Tokenizer | None = None
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTING_ID, f"{self.session}/calls".encode())
        self._sock.connect(self.address)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: SocketReader | None = None
        self._heartbeat: _Heartbeat | None = None
        self._children: set[asyncio.Task] = set()  # following spawned processes' output

    @classmethod
    async def connect(
        cls,
        connection_file: str | Path | connection.ConnectionInfo | None = None,
        user: str | None = None,
        name: str | None = None,
        timeout: float = 10.0,
    ) -> Client:
        """Connect to the running engine; EngineNotRunning when there is none.

        user: whose /home this client works in (default `$SYMPHONY_USER`, else the login name).
        """
        info = (
            connection_file
            if isinstance(connection_file, connection.ConnectionInfo)
            else connection.read(connection_file)
        )  # an engine-side worker is given the info itself
        user = user or os.environ.get(USER_ENV) or getpass.getuser()
        client = cls(info, user, name or f"client-{os.getpid()}")
        client._reader = SocketReader(client._sock, client._on_frames)
        loop = asyncio.get_running_loop()
        client._heartbeat = _Heartbeat(
            client.address,
            client.wire,
            client.session,
            lambda: loop.call_soon_threadsafe(
                client._fail_all,
                EngineNotRunning(f"the engine at {client.address} stopped answering"),
            ),
        )
        client._heartbeat.start()
        try:
            hello = {"user": client.user, "name": client.name}
            client.engine = await asyncio.wait_for(client.call("hello", hello), timeout)
        except asyncio.TimeoutError:
            await client.close()
            raise EngineNotRunning(
                f"no answer from the engine at {client.address} in {timeout:g}s"
            ) from None
        except BaseException:
            await client.close()
            raise
        if client.engine.get("tokenizer"):
            client.tokenizer = tokenizers.Tokenizer.from_str(client.engine["tokenizer"])
        return client

    async def close(self) -> None:
        """Close the connection; the engine detaches this client's processes."""
        if self.engine:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("goodbye"), 2.0)
        for task in self._children:
            task.cancel()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._reader is not None:
            self._reader.close()
        self._fail_all(EngineError("the client was closed"))
        self._sock.close(linger=0)
        self._ctx.destroy(linger=0)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests --------------------------------------------------------------------------------

    async def call(
        self, op: str, args: dict[str, Any] | None = None, pid: int | None = None
    ) -> Any:
        """Send one request and wait for its reply: the result, or the error raised here."""
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            header = {"kind": REQUEST, "session": self.session, "id": rid}
            try:
                frames = self.wire.frames(header, request_body(rid, op, args or {}, pid))
            except TypeError as e:
                raise InvalidArgument(f"{op}: {e}") from None
            await self._send(frames)
            return await future
        finally:
            self._pending.pop(rid, None)

    async def _send(self, frames: list[bytes]) -> None:
        while True:
            try:
                self._sock.send_multipart(frames, zmq.NOBLOCK)
                break
            except zmq.Again:  # the send queue is full: the engine is behind; wait a little
                await asyncio.sleep(0.001)
        if self._reader is not None:
            self._reader.drain()

    def _on_frames(self, frames: list[bytes]) -> None:
        rejected = Wire.rejection(frames)
        if rejected is not None:
            self._fail_all(rejected)
            return
        try:
            msg = self.wire.parse(frames)
        except EngineError:
            return  # not from our engine, or damaged: nobody waits for it
        body = msg.body
        if msg.header.get("kind") != REPLY or not isinstance(body, dict):
            return
        future = self._pending.get(body.get("id"))  # type: ignore[arg-type]
        if body.get("id") is None and not body.get("ok"):
            self._fail_all(rebuild_error(body.get("error")))
        elif future is not None and not future.done():
            if body.get("ok"):
                future.set_result(body.get("result"))
            else:
                future.set_exception(rebuild_error(body.get("error")))

    def _fail_all(self, error: BaseException) -> None:
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)

    # --- processes and the engine ----------------------------------------------------------------

    async def attach(self, name: str, priority: int = 0) -> LIP:
        """A new process (a LIP) whose code is the caller's; `await lip.exit()` ends it."""
        pid = await self.call("attach", {"name": name, "priority": priority})
        return LIP(self, pid, name)

    async def ps(self) -> list[ProcessInfo]:
        return await self.call("ps")

    async def kill(self, pid: int) -> None:
        await self.call("kill", {"pid": pid})

    async def wait(self, pid: int) -> Any:
        return await self.call("wait", {"pid": pid})

    async def listdir(self, path: str = "/") -> list[str]:
        return await self.call("kv.listdir", {"path": path})

    async def stat(self, path: str) -> FileStat:
        return await self.call("kv.stat", {"path": path})

    async def unlink(self, path: str) -> None:
        await self.call("kv.unlink", {"path": path})

    async def trace(
        self,
        since: float | None = None,
        until: float | None = None,
        pid: int | None = None,
        kinds: Sequence[str] | None = None,
        after_seq: int | None = None,
        limit: int = 50_000,
    ) -> list[Event]:
        """Trace events (earliest first, at most limit): page on with after_seq."""
        args = {"since": since, "until": until, "pid": pid, "after_seq": after_seq}
        args["kinds"] = list(kinds) if kinds is not None else None
        return await self.call("trace", {**args, "limit": limit})

    async def stat_engine(self) -> dict[str, Any]:
        """Pages free and used, batches run, model, device, processes, sessions."""
        return await self.call("stat_engine")

    async def sessions(self) -> list[dict[str, Any]]:
        """The engine's connected clients: each one's user, name and pids (live and ended)."""
        return await self.call("sessions")

    # --- views: what the widgets read (the same calls a user has) -------------------------------

    async def walk(self, path: str = "/") -> list[FileStat]:
        """The stat of every file under path this client may read (one per readable name)."""
        return await self.call("kv.walk", {"path": path})

    async def pages(self) -> PageMap:
        """The page pool: per page its reference count and the readable files holding it."""
        return await self.call("kv.pages")

    async def read(self, path: str, start: int = 0, stop: int | None = None) -> list[int]:
        """The token ids of a file this client may read, `tokens[start:stop]`."""
        return await self.call("kv.read", {"path": path, "start": start, "stop": stop})

    # --- server runs and tools -------------------------------------------------------------------

    async def run(
        self,
        code: str,
        name: str = "lip",
        priority: int = 0,
        timeout: float | None = None,
        memory_mb: int | None = None,
        on_output: Callable[[str, str], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> int:
        """Run a LIP cell's code in an engine-side worker (`%%lip --server`); its pid.

        on_start(pid) is called once the process exists; its output streams to
        on_output(stream, text) (default: this sys.stdout and stderr).
        timeout (seconds) and memory_mb (address space beyond the worker's own) default to the
        engine's (600 s, 4096 MB); `math.inf` seconds is no time limit. ProcessFailed (with the
        worker's traceback) when the code raised, ran too long or used too much memory.
        Cancelling the awaiting task kills the process.
        """
        args: dict[str, Any] = {"code": code, "name": name, "priority": priority}
        limits = {"timeout": timeout, "memory_mb": memory_mb}
        args.update({k: v for k, v in limits.items() if v is not None})
        pid = await self.call("run", args)
        if on_start is not None:
            on_start(pid)
        try:
            reply = await self._follow(pid, on_output or _write_output)
        except (asyncio.CancelledError, KeyboardInterrupt):
            with contextlib.suppress(Exception):
                await asyncio.shield(self.kill(pid))
            raise
        if reply["error"] is not None:
            raise ProcessFailed(
                f"process {pid} ({name}) ended: {reply['error']}", reply.get("traceback")
            )
        return pid

    async def _follow(self, pid: int, on_output: Callable[[str, str], None]) -> dict[str, Any]:
        """Long-poll a server run's output until it ended; the last reply."""
        after = dropped = 0
        while True:
            reply = await self.call("output", {"pid": pid, "after": after})
            if reply.get("dropped", 0) > dropped:
                on_output("stderr", f"[{reply['dropped'] - dropped} characters of output lost]\n")
                dropped = reply["dropped"]
            for seq, stream, text in reply["chunks"]:
                on_output(stream, text)
                after = seq
            if reply["done"]:
                return reply

    async def register_tool(
        self, fn: Callable[..., Any] | str, name: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Register a tool on the engine: a self-contained function, or its source.

        Any LIP may then call it (`await lip.tool(name, ...)`); it runs beside the engine, for
        at most timeout seconds (default 30). Returns its name, signature and docstring.
        """
        from workbench.tools import tool_source

        fn_name, source = tool_source(fn)
        args = {"name": name or fn_name, "source": source, "timeout": timeout}
        return await self.call("tool.register", args)

    async def tools(self) -> list[dict[str, Any]]:
        """The engine's tools: name, signature, docstring."""
        return await self.call("tool.list")


class KVCalls:
    """The KV file system calls (`lip.kv.*`), as in `engine.syscalls.KVCalls`."""

    def __init__(self, lip: LIP) -> None:
        self._lip = lip

    async def _handle(self, op: str, **args: Any) -> FileHandle:
        return FileHandle(**await self._lip._call(op, **args))

    async def create(self, path: str | None = None, mode: int | None = None) -> FileHandle:
        return await self._handle("kv.create", path=path, mode=mode)

    async def open(self, path: str, write: bool = False) -> FileHandle:
        return await self._handle("kv.open", path=path, write=write)

    async def close(self, handle: FileHandle) -> None:
        await self._lip._call("kv.close", handle=handle)

    async def fork(self, src: FileHandle | str, dst: str | None = None) -> FileHandle:
        return await self._handle("kv.fork", src=src, dst=dst)

    async def truncate(self, handle: FileHandle, n: int) -> None:
        await self._lip._call("kv.truncate", handle=handle, n=n)

    async def hide(self, handle: FileHandle, indices: Sequence[int]) -> None:
        await self._lip._call("kv.hide", handle=handle, indices=[int(i) for i in indices])

    async def unhide(self, handle: FileHandle, indices: Sequence[int]) -> None:
        await self._lip._call("kv.unhide", handle=handle, indices=[int(i) for i in indices])

    async def link(self, src: FileHandle | str, dst: str) -> None:
        await self._lip._call("kv.link", src=src, dst=dst)

    async def rename(self, src: str, dst: str) -> None:
        await self._lip._call("kv.rename", src=src, dst=dst)

    async def unlink(self, path: str) -> None:
        await self._lip._call("kv.unlink", path=path)

    async def stat(self, path: FileHandle | str) -> FileStat:
        return await self._lip._call("kv.stat", path=path)

    async def listdir(self, path: str = "/") -> list[str]:
        return await self._lip._call("kv.listdir", path=path)

    async def chmod(self, path: str, mode: int) -> None:
        await self._lip._call("kv.chmod", path=path, mode=mode)

    async def save(self, path: FileHandle | str, dest: str | Path) -> None:
        """Write the file to dest, a path on the engine's machine."""
        await self._lip._call("kv.save", path=path, dest=str(dest))

    async def load(self, src: str | Path, path: str | None = None) -> FileHandle:
        return await self._handle("kv.load", src=str(src), path=path)

    # --- views: what the widgets read (see Client.walk, .pages, .read) --------------------------

    async def walk(self, path: str = "/") -> list[FileStat]:
        return await self._lip._call("kv.walk", path=path)

    async def pages(self) -> PageMap:
        return await self._lip._call("kv.pages")

    async def read(
        self, path: FileHandle | str, start: int = 0, stop: int | None = None
    ) -> list[int]:
        return await self._lip._call("kv.read", path=path, start=start, stop=stop)


class LIP:
    """A process in the engine whose code runs here: the system calls of `Syscalls`."""

    def __init__(self, client: Client, pid: int, name: str) -> None:
        self.client = client
        self.pid = pid
        self.name = name
        self.kv = KVCalls(self)

    async def _call(self, op: str, **args: Any) -> Any:
        wire = {k: handle_to_wire(v) if isinstance(v, FileHandle) else v for k, v in args.items()}
        return await self.client.call(op, wire, pid=self.pid)

    async def __aenter__(self) -> LIP:
        return self

    async def __aexit__(self, kind: type | None, error: BaseException | None, tb: object) -> None:
        await self.exit(None if error is None else f"{type(error).__name__}: {error}")

    async def exit(self, error: str | None = None) -> None:
        """End this process: its /proc files and their pages are reclaimed."""
        await self.client.call("detach", {"pid": self.pid, "error": error})

    # --- text ------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InvalidArgument(f"tokenize takes a str, got {type(text).__name__}")
        return self._tokenizer().encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        vocab = self.client.engine["vocab_size"]
        if not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
            raise InvalidArgument(f"detokenize takes token ids in 0..{vocab - 1}")
        return self._tokenizer().decode(ids, skip_special_tokens=False)

    async def chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """The model's chat template applied to messages, as token ids (rendered in the engine)."""
        return await self._call(
            "chat_template", messages=messages, add_generation_prompt=add_generation_prompt
        )

    async def special_tokens(self) -> SpecialTokens:
        """The model's bos, eos, stop, pad and unk token ids."""
        return await self._call("special_tokens")

    async def vocab_size(self) -> int:
        """How many token ids the model has."""
        return await self._call("vocab_size")

    async def context_length(self) -> int:
        """How many positions the model has; past it forward refuses (ContextTooLong)."""
        return await self._call("context_length")

    def _tokenizer(self) -> tokenizers.Tokenizer:
        if self.client.tokenizer is None:
            raise EngineError("the engine's model has no tokenizer.json")
        return self.client.tokenizer

    # --- the model -------------------------------------------------------------------------------

    async def forward(
        self,
        file: FileHandle,
        tokens: Sequence[int],
        positions: Sequence[int] | None = None,
        mask: Any = None,
        outputs: Sequence[int] | None = None,
        returns: Returns | None = None,
    ) -> Any:
        """Append tokens to a KV file and compute (see `engine.syscalls.Syscalls.forward`).

        returns: `TopK(k)` (default k=20) -> Distribution; `Sample(SamplingParams(...))` ->
        token id; `LogProbs([[ids], ...])` -> log-probabilities; `Logits()` -> a list of floats.
        With `outputs` given, a list with one item per output index; otherwise the last token's.
        """
        if not isinstance(file, FileHandle):
            raise InvalidArgument("forward needs a KV file handle this process opened")
        return await self._call(
            "forward",
            file=file,
            tokens=_ints(tokens),
            positions=None if positions is None else _ints(positions),
            mask=_plain(mask),
            outputs=None if outputs is None else _ints(outputs),
            returns=returns_to_wire(returns),
        )

    # --- processes -------------------------------------------------------------------------------

    async def spawn(
        self,
        main: Callable[..., Any] | str,
        *args: Any,
        name: str | None = None,
        priority: int | None = None,
    ) -> int:
        """A child process running `await main(lip, *args)` in an engine-side worker; its pid.

        As `Syscalls.spawn`, but main is shipped as source (self-contained: imports inside it,
        args msgpack values), so it is awaited here. `wait(pid)` gives main's return value; the
        child's prints stream to this process's output.
        """
        from workbench.tools import tool_source

        fn, source = tool_source(main)
        call = f"__result__ = await {fn}(lip, *__import__('json').loads({json.dumps(args)!r}))"
        run = {"code": f"{source}\n{call}\n", "name": name or fn, "parent": self.pid}
        run["priority"] = priority if priority is not None else 0
        pid = await self.client.call("run", run)
        task = asyncio.create_task(self.client._follow(pid, _write_output))
        self.client._children.add(task)
        task.add_done_callback(self.client._children.discard)
        return pid

    async def wait(self, pid: int) -> Any:
        return await self._call("wait", pid=pid)

    async def kill(self, pid: int) -> None:
        await self._call("kill", pid=pid)

    async def ps(self) -> list[ProcessInfo]:
        return await self._call("ps")

    async def send(self, pid: int, data: Any) -> None:
        await self._call("send", pid=pid, data=data)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message sent to this process; TimeoutError after `timeout` seconds."""
        return await self._call("receive", timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await self._call("sleep", seconds=seconds)

    # --- tools -----------------------------------------------------------------------------------

    async def tool(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call a tool registered on the engine; it runs beside the engine (ToolFailed if not)."""
        return await self._call("tool", name=name, args=list(args), kwargs=kwargs)


def _write_output(stream: str, text: str) -> None:
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write(text)
    out.flush()


def _ints(xs: Sequence[int]) -> list[int]:
    return [int(x) for x in xs]


def _plain(value: Any) -> Any:
    """Arrays (numpy, torch) as nested lists."""
    return value.tolist() if hasattr(value, "tolist") else value


class _Heartbeat(threading.Thread):
    """Pings the engine every 0.5 s from its own socket, so a busy event loop does not matter."""

    def __init__(self, address: str, wire: Wire, session: str, on_dead: Any) -> None:
        super().__init__(name="symphony-heartbeat", daemon=True)
        self.address, self.wire, self.session = address, wire, session
        self.on_dead = on_dead
        self.last_pong = time.monotonic()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, f"{self.session}/heartbeat".encode())
        sock.connect(self.address)
        reported = False
        try:
            while not self._stop_event.is_set():
                sock.send_multipart(self.wire.frames({"kind": PING, "session": self.session}, {}))
                deadline = time.monotonic() + HEARTBEAT_INTERVAL
                while (left := deadline - time.monotonic()) > 0 and not self._stop_event.is_set():
                    if sock.poll(int(left * 1000) + 1):
                        self._on_frames(sock.recv_multipart())
                dead = time.monotonic() - self.last_pong > ENGINE_DEAD_AFTER
                if dead and not reported:
                    self.on_dead()
                reported = dead
        finally:
            sock.close(linger=0)
            ctx.term()

    def _on_frames(self, frames: list[bytes]) -> None:
        with contextlib.suppress(EngineError):
            if self.wire.parse(frames).header.get("kind") == PONG:
                self.last_pong = time.monotonic()


__all__ = [
    "KVCalls",
    "LIP",
    "Client",
    "Distribution",
    "FileHandle",
    "FileStat",
    "Logits",
    "LogProbs",
    "Message",
    "PageMap",
    "ProcessInfo",
    "Sample",
    "SamplingParams",
    "TopK",
]
