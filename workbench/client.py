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

from engine.wire import connection
from engine.wire.arguments import int_list
from engine.wire.errors import (
    ClientClosed,
    EngineError,
    EngineNotRunning,
    InvalidArgument,
    MessageTooLarge,
    ProcessFailed,
    SessionEnded,
)
from engine.wire.protocol import (
    HEARTBEAT_INTERVAL,
    PING,
    PONG,
    REPLY,
    REQUEST,
    SocketReader,
    Wire,
    check_size,
    handle_to_wire,
    rebuild_error,
    request_body,
    returns_to_wire,
)
from engine.wire.records import (
    Distribution,
    Event,
    FileHandle,
    FileStat,
    Generation,
    Grammar,
    Identity,
    Logits,
    LogProbs,
    Message,
    OwnTrace,
    PageMap,
    PolicyInfo,
    PrefixReport,
    ProcessInfo,
    Returns,
    Sample,
    SamplingParams,
    SpecialTokens,
    Spliced,
    TopK,
)

ENGINE_DEAD_AFTER = 10.0  # seconds without a pong: calls in flight fail
REPLY_LIMIT = 1 << 30
USER_ENV = "SYMPHONY_USER"  # who this client acts as (default: the login name)


class Client:
    """One connection to an engine; `attach` makes processes that call through it.

    Once the engine has stopped answering (no pong for 10 s) or has ended this client's session,
    every call fails at once with that reason (`EngineNotRunning`, `SessionEnded`) rather than
    wait: `await client.reconnect()` starts a new session, on a restarted engine too.
    """

    def __init__(
        self, info: connection.ConnectionInfo, user: str, name: str, source: Path | None = None
    ) -> None:
        self.info = info
        self.source = source  # the connection file, re-read on reconnect (None: info was given)
        self.user, self.name = user, name
        self.engine: dict[str, Any] = {}  # what hello said: model, vocab_size, page_size, ...
        self.tokenizer: tokenizers.Tokenizer | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._outbox: list[dict[str, Any]] = []  # requests made in this loop turn, not yet sent
        self._children: set[asyncio.Task] = set()  # following spawned processes' output
        self._broken: EngineError | None = None  # why every call now fails at once
        self._open_sockets()

    def _open_sockets(self) -> None:
        """A new session: its id, the calls socket and the heartbeat thread."""
        self.address = self.info.local_address  # the Unix socket when the engine is here
        self.session = uuid.uuid4().hex
        self.wire = Wire(self.info.token, REPLY_LIMIT, self.info.user)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTING_ID, f"{self.session}/calls".encode())
        self._sock.connect(self.address)
        self._reader: SocketReader | None = None
        self._heartbeat: _Heartbeat | None = None
        self._broken = None

    @classmethod
    async def connect(
        cls,
        connection_file: str | Path | connection.ConnectionInfo | None = None,
        user: str | None = None,
        name: str | None = None,
        timeout: float = 10.0,
    ) -> Client:
        """Connect to the running engine; EngineNotRunning when there is none.

        user: whose /home this client works in (default: the user of a user's connection file,
        else `$SYMPHONY_USER`, else the login name).
        """
        if isinstance(connection_file, connection.ConnectionInfo):
            info, source = connection_file, None  # an engine-side worker is given the info itself
        else:
            source = Path(connection_file) if connection_file else connection.default_path()
            info = connection.read(source)
        user = user or info.user or os.environ.get(USER_ENV) or getpass.getuser()
        client = cls(info, user, name or f"client-{os.getpid()}", source)
        await client._hello(timeout)
        return client

    async def _hello(self, timeout: float) -> None:
        """Start reading, start the heartbeat, and say hello: the session begins."""
        loop, session = asyncio.get_running_loop(), self.session

        def news(error: EngineError | None) -> None:  # from the heartbeat's thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(self._break, session, error)

        self._reader = SocketReader(self._sock, self._on_frames)
        self._heartbeat = _Heartbeat(self.address, self.wire, self.session, news)
        self._heartbeat.start()
        try:
            hello = {"user": self.user, "name": self.name}
            self.engine = await asyncio.wait_for(self.call("hello", hello), timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise EngineNotRunning(
                f"no answer from the engine at {self.address} in {timeout:g}s"
            ) from None
        except BaseException:
            await self.close()
            raise
        tokenizer = self.engine.get("tokenizer")
        self.tokenizer = tokenizers.Tokenizer.from_str(tokenizer) if tokenizer else None

    async def reconnect(self, timeout: float = 10.0) -> None:
        """A new session, with the engine that now owns the connection file (a restarted one
        too). The old session's processes are gone: attach new ones."""
        await self.close()
        if self.source is not None:
            self.info = connection.read(self.source)
        self._open_sockets()
        await self._hello(timeout)

    def _break(self, session: str, error: EngineError | None) -> None:
        """The heartbeat's news: the engine stopped answering, or ended this session (every call
        fails at once from now on), or (None) it answers again after a long busy spell."""
        if session != self.session:
            return  # news about a session this client has left
        if error is None:
            if isinstance(self._broken, EngineNotRunning):
                self._broken = None
            return
        if not isinstance(self._broken, SessionEnded):
            self._broken = error
        self._fail_all(error)

    async def close(self) -> None:
        """Close the connection; the engine detaches this client's processes."""
        if self.engine and self._broken is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("goodbye"), 2.0)
        for task in self._children:
            task.cancel()
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._fail_all(ClientClosed("the client was closed"))
        self._outbox.clear()  # never sent, and their callers were told: not for a new session
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
        if self._broken is not None:
            raise type(self._broken)(str(self._broken))
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            body = request_body(rid, op, args or {}, pid)
            self._outbox.append(body)
            try:
                await asyncio.sleep(0)  # one loop turn: the calls made at once go out together
            except asyncio.CancelledError:
                if body in self._outbox:  # never sent: the engine never hears of it
                    self._outbox.remove(body)
                raise
            if self._outbox:
                await self._send_requests()
            return await future
        finally:
            self._pending.pop(rid, None)

    async def _send_requests(self) -> None:
        """Send every request in the outbox: one message whose body lists them, so that the
        engine starts them all before its next forward (asyncio.gather of 8 forwards batches
        as in process); one by one where together they are over the engine's size limit."""
        bodies, self._outbox = self._outbox, []
        header = {"kind": REQUEST, "session": self.session, "id": bodies[0]["id"]}
        try:
            if len(bodies) > 1:
                with contextlib.suppress(TypeError, MessageTooLarge):  # then each fails alone
                    await self._send(self.wire.frames(header, bodies))
                    return
            for body in bodies:
                try:
                    await self._send(self.wire.frames({**header, "id": body["id"]}, body))
                except TypeError as e:  # a value msgpack cannot carry
                    self._fail(body["id"], InvalidArgument(f"{body['op']}: {e}"))
                except MessageTooLarge as e:
                    self._fail(body["id"], e)
        except Exception as e:  # the socket failed: every caller hears why
            for body in bodies:
                self._fail(body["id"], e)

    async def _send(self, frames: list[bytes]) -> None:
        if isinstance(limit := self.engine.get("max_message"), int):
            check_size(frames, limit)  # the engine would drop it unread
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
        except EngineError as e:  # not from our engine, or damaged: nobody waits for it, ...
            if getattr(e, "session", None) == self.session:  # ... or a reply this side refuses
                self._fail(getattr(e, "request_id", None), e)
            return
        if msg.header.get("kind") != REPLY or msg.header.get("session") != self.session:
            return  # a reply that is not this session's (a replay, say)
        # the replies the engine made in one loop turn come in one message, a list of them
        # (the calls of one batch): every task waiting on them resumes in this loop turn, so
        # their next calls go out together (see call) and batch as in process
        for body in msg.body if isinstance(msg.body, list) else [msg.body]:
            if isinstance(body, dict):
                self._on_reply(body)

    def _on_reply(self, body: dict[str, Any]) -> None:
        future = self._pending.get(body.get("id"))  # type: ignore[arg-type]
        if body.get("id") is None and not body.get("ok"):
            self._fail_all(rebuild_error(body.get("error")))
        elif future is not None and not future.done():
            if body.get("ok"):
                future.set_result(body.get("result"))
            else:
                error = rebuild_error(body.get("error"))
                if isinstance(error, SessionEnded):
                    self._broken = error
                future.set_exception(error)

    def _fail(self, rid: int | None, error: BaseException) -> None:
        future = self._pending.get(rid) if rid is not None else None
        if future is not None and not future.done():
            future.set_exception(error)

    def _fail_all(self, error: BaseException) -> None:
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(error)

    # --- processes and the engine ----------------------------------------------------------------

    async def attach(self, name: str = "lip", priority: int = 0) -> LIP:
        """A new process (a LIP) whose code is the caller's; `await lip.exit()` ends it."""
        pid = await self.call("attach", {"name": name, "priority": priority})
        return LIP(self, pid, name)

    async def ps(self) -> list[ProcessInfo]:
        return await self.call("ps")

    async def kill(self, pid: int) -> None:
        await self.call("kill", {"pid": pid})

    async def wait(self, pid: int) -> Any:
        return await self.call("wait", {"pid": pid})

    async def link(self, src: FileHandle | str, dst: str) -> None:
        await self.call("kv.link", _wire({"src": src, "dst": dst}))

    async def rename(self, src: str, dst: str) -> None:
        await self.call("kv.rename", {"src": src, "dst": dst})

    async def policy(self) -> PolicyInfo:
        """The engine's batch policy: its name and settings."""
        return await self.call("policy")

    async def set_policy(self, name: str, settings: dict[str, Any] | None = None) -> PolicyInfo:
        """Set the engine's batch policy by name (`eager`, `adaptive`, `wait-for-k`,
        `wait-for-t`) and settings (`{"k": 8, "max_wait": 0.05}`); the engine's owner only
        (PermissionDenied for a user's credential). The policy now in force."""
        return await self.call("set_policy", {"name": name, "settings": settings})

    async def drop_caches(self) -> int:
        """Evict every page the prefix cache keeps (the engine's owner only); how many."""
        return await self.call("drop_caches")

    async def explain(self, path: FileHandle | str) -> PrefixReport:
        """How automatic prefix sharing went for a file (see engine.prefix_cache)."""
        return await self.call("kv.explain", _wire({"path": path}))

    async def unlink(self, path: str) -> None:
        await self.call("kv.unlink", {"path": path})

    async def stat(self, path: FileHandle | str) -> FileStat:
        return await self.call("kv.stat", _wire({"path": path}))

    async def listdir(self, path: str = "/") -> list[str]:
        return await self.call("kv.listdir", {"path": path})

    async def chmod(self, path: str, mode: int) -> None:
        await self.call("kv.chmod", {"path": path, "mode": mode})

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
        args: dict[str, Any] = {"since": since, "until": until, "pid": pid}
        args.update(after_seq=after_seq, kinds=list(kinds) if kinds is not None else None)
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

    async def read(
        self, path: FileHandle | str, start: int = 0, stop: int | None = None
    ) -> list[int]:
        """The token ids of a file this client may read, `tokens[start:stop]`."""
        return await self.call("kv.read", _wire({"path": path, "start": start, "stop": stop}))

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
            why = reply["error"]
            raise ProcessFailed(f"process {pid} ({name}) ended: {why}", reply.get("traceback"), why)
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

    async def splice(
        self, handle: FileHandle, src: FileHandle | str, start: int = 0, stop: int | None = None
    ) -> Spliced:
        """Append tokens [start, stop) of src to a file, sharing its pages (nothing computed),
        as `engine.syscalls.KVCalls.splice`."""
        return await self._lip._call("kv.splice", handle=handle, src=src, start=start, stop=stop)

    async def drop(self, handle: FileHandle, start: int, stop: int) -> None:
        """Remove tokens [start, stop) of a file and free their pages, as
        `engine.syscalls.KVCalls.drop`."""
        await self._lip._call("kv.drop", handle=handle, start=start, stop=stop)

    async def constrain(
        self, handle: FileHandle, grammar: Grammar | None, start: int | None = None
    ) -> None:
        """Attach a grammar to a file (None detaches it), as `engine.syscalls.KVCalls.constrain`:
        the engine masks and checks every token from index `start` on; no mask crosses the wire."""
        await self._lip._call("kv.constrain", handle=handle, grammar=grammar, start=start)

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

    async def explain(self, path: FileHandle | str) -> PrefixReport:
        """How automatic prefix sharing went for a file (see engine.prefix_cache)."""
        return await self._lip._call("kv.explain", path=path)

    async def share(self, handle: FileHandle, on: bool) -> None:
        """Switch automatic prefix sharing for one file (on by default)."""
        await self._lip._call("kv.share", handle=handle, on=on)

    async def chmod(self, path: str, mode: int) -> None:
        await self._lip._call("kv.chmod", path=path, mode=mode)

    async def save(self, path: FileHandle | str, dest: str) -> None:
        """Save the file under the name dest among this user's saved files, kept by the engine
        (a name such as "prompt-v1", not a host path; see engine.saved)."""
        await self._lip._call("kv.save", path=path, dest=dest)

    async def load(self, src: str, path: str | None = None) -> FileHandle:
        """A new file from the saved file named src ("name", or "user/name" for another user's
        that others may read)."""
        return await self._handle("kv.load", src=src, path=path)

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
        return await self.client.call(op, _wire(args), pid=self.pid)

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
            tokens=int_list("tokens", tokens),
            positions=None if positions is None else int_list("positions", positions),
            mask=_plain(mask),
            outputs=None if outputs is None else int_list("outputs", outputs),
            returns=returns_to_wire(returns),
        )

    async def sample_loop(
        self,
        file: FileHandle,
        tokens: Sequence[int],
        max_tokens: int = 64,
        returns: Sample | None = None,
        stop_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        before: Sequence[int] = (),
    ) -> Generation:
        """Append tokens, then sample up to max_tokens in the engine, in one round trip (see
        `engine.syscalls.Syscalls.sample_loop`): ends at a stop token or a stop string."""
        if not isinstance(file, FileHandle):
            raise InvalidArgument("sample_loop needs a KV file handle this process opened")
        if returns is not None and not isinstance(returns, Sample):
            raise InvalidArgument(f"sample_loop: returns must be a Sample, not {returns!r:.40}")
        return await self._call(
            "sample_loop",
            file=file,
            tokens=int_list("tokens", tokens),
            max_tokens=max_tokens,
            returns=returns_to_wire(returns),
            stop_ids=int_list("stop_ids", stop_ids),
            stop=list(stop),
            before=int_list("before", before),
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

    async def whoami(self) -> Identity:
        """Who this process is: its pid and name, its user and that user's home directory."""
        return await self._call("whoami")

    async def own_trace(self, after_seq: int | None = None) -> OwnTrace:
        """This process's trace: the batches its calls were in, the spans it waited."""
        return await self._call("own_trace", after_seq=after_seq)

    # --- tools -----------------------------------------------------------------------------------

    async def tool(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call a tool registered on the engine; it runs beside the engine (ToolFailed if not)."""
        return await self._call("tool", name=name, args=list(args), kwargs=kwargs)


def _write_output(stream: str, text: str) -> None:
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write(text)
    out.flush()


def _wire(args: dict[str, Any]) -> dict[str, Any]:
    """Arguments as the wire carries them: a KV file handle as its map."""
    return {k: handle_to_wire(v) if isinstance(v, FileHandle) else v for k, v in args.items()}


def _plain(value: Any) -> Any:
    """Arrays (numpy, torch) as nested lists."""
    return value.tolist() if hasattr(value, "tolist") else value


class _Heartbeat(threading.Thread):
    """Pings the engine every 0.5 s from its own socket, so a busy event loop does not matter.

    on_news(error) is called when the engine stops answering (EngineNotRunning), when its pong
    says this session has ended (SessionEnded), and with None when pongs come back.
    """

    def __init__(
        self, address: str, wire: Wire, session: str, on_news: Callable[[Any], None]
    ) -> None:
        super().__init__(name="symphony-heartbeat", daemon=True)
        self.address, self.wire, self.session = address, wire, session
        self.on_news = on_news
        self.last_pong = time.monotonic()
        self.ended: str | None = None  # why the engine ended this session, once a pong says so
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        if self is not threading.current_thread():
            self.join(timeout=2)

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, f"{self.session}/heartbeat".encode())
        sock.connect(self.address)
        dead = False
        try:
            while not self._stop_event.is_set() and self.ended is None:
                sock.send_multipart(self.wire.frames({"kind": PING, "session": self.session}, {}))
                deadline = time.monotonic() + HEARTBEAT_INTERVAL
                while (left := deadline - time.monotonic()) > 0 and not self._stop_event.is_set():
                    if sock.poll(int(left * 1000) + 1):
                        self._on_frames(sock.recv_multipart())
                if self.ended is not None:
                    self.on_news(SessionEnded(f"the engine ended this session: {self.ended}"))
                elif (time.monotonic() - self.last_pong > ENGINE_DEAD_AFTER) != dead:
                    dead = not dead
                    why = f"the engine at {self.address} stopped answering"
                    self.on_news(
                        EngineNotRunning(f"{why} (no answer for {ENGINE_DEAD_AFTER:g} s)")
                        if dead
                        else None
                    )
        finally:
            sock.close(linger=0)
            ctx.term()

    def _on_frames(self, frames: list[bytes]) -> None:
        with contextlib.suppress(EngineError):
            msg = self.wire.parse(frames)
            if msg.header.get("kind") == PONG:
                self.last_pong = time.monotonic()
                if isinstance(msg.body, dict) and isinstance(msg.body.get("ended"), str):
                    self.ended = msg.body["ended"]


__all__ = [
    "KVCalls",
    "LIP",
    "Client",
    "Distribution",
    "FileHandle",
    "FileStat",
    "Logits",
    "Grammar",
    "LogProbs",
    "Message",
    "PageMap",
    "ProcessInfo",
    "Sample",
    "SamplingParams",
    "TopK",
]
