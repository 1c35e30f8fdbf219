"""The engine as a shared service: a ZeroMQ ROUTER in the kernel's event loop.

The wire is `engine.wire.protocol`; the ops are the calls declared in `engine.wire.calls`, each
one's arguments checked against its declaration and decoded by their declared types (a KV file
handle, forward's returns=) before its handler runs (`EngineServer._op_table`). A handler gets
them as its op's record (`engine.wire.arguments.arguments_of`: `detach`'s is `DetachArgs(pid,
error)`), every argument not given at its declared default.

A client says `hello` (name, user) and gets a session; `attach` makes a process (a LIP whose code
runs in the client) and every system call is then an op of the same name, acting as that process
(`pid` in the request): `forward`, `kv.create`, ..., `ps`, `kill`, `send`, `receive`, `sleep`.
Without a pid the client acts as itself (`ps`, `kill`, `wait`, and the KV calls on paths:
`kv.listdir`, `kv.stat`, `kv.unlink`, `kv.link`, `kv.rename`, `kv.chmod`). Beside them: `detach`,
`trace`, `stat_engine`, `sessions`, `noop`, `goodbye` and `shutdown`.

Views, for the workbench's widgets (with or without a pid; each sees what its caller may read):
`kv.walk` (the stat of every readable file under a path), `kv.pages` (the page pool: reference
counts and the readable files behind each page) and `kv.read` (a readable file's token ids).

Server runs (`%%lip --server`, see engine.workers): `run` starts a worker subprocess for some code
and returns its pid at once; `output` long-polls what it prints; the worker itself says
`worker.adopt` (its one-time key) and `worker.exit`. Tools (engine.tools): `tool.register`,
`tool.list`, and `tool` (a process calls one).

A call declared never to wait is served at once by a plain function; one that may wait (a
forward, a sleep) goes on as its own task, so the calls of one client's many tasks are pipelined.
Handles are looked up per session: a client may only use the descriptors its own processes opened.

Heartbeats: a client pings every 0.5 s (from a thread of its own). A session silent for 5 s has
its processes detached with the error "client vanished"; when a connection drops (a client killed
with -9), sessions that have not spoken since are reaped once two heartbeats are overdue.
Silence is judged on what was received: messages waiting in the socket are read before anyone is
judged, and time the engine spent busy (a long forward holding the loop) is nobody's silence.
A call or ping from an ended session is answered with `SessionEnded`, saying why it ended.
Who holds the token may act as any user: users separate clients' files against mistakes, the
token keeps everyone else out (as with a Jupyter kernel).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import inspect
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from engine.credentials import Credentials
from engine.kernel import Kernel
from engine.kvfs import Caller, Handle
from engine.process import SUSPENDED
from engine.scheduler import make_policy, policy_settings
from engine.syscalls import PLAIN, KVCalls, Plain, Syscalls
from engine.wire import connection
from engine.wire import events as ev
from engine.wire.arguments import arguments_of, members
from engine.wire.calls import OPS, POSITIONAL_ONLY, VAR_KEYWORD, VAR_POSITIONAL, By, Call
from engine.wire.errors import (
    AuthenticationFailed,
    BadMessage,
    HandleNotOpen,
    InvalidArgument,
    NeedsProcess,
    NotAttached,
    PermissionDenied,
    ProcessExited,
    ProtocolError,
    SessionEnded,
    UnknownOperation,
    UnknownSession,
)
from engine.wire.protocol import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    MAX_MESSAGE,
    PING,
    PONG,
    REPLY,
    REQUEST,
    VERSION,
    Dropped,
    Gate,
    Request,
    SocketReader,
    Wire,
    error_reply,
    handle_to_wire,
    is_wire_handle,
    new_token,
    ok_reply,
    parse_request,
    returns_from_wire,
)
from engine.wire.records import FileHandle, PolicyInfo, Sample, TopK
from engine.workers import Workers

log = logging.getLogger("symphony.server")

DISCONNECT_GRACE = 2 * HEARTBEAT_INTERVAL  # after a dropped connection: two heartbeats overdue
REAP_INTERVAL = 0.1
# A client killed with -9 has its processes ended within this long: the grace and one reap
# interval after the engine sees the connection drop, the rest being room for the event to come
# and for a busy loop (tests/integration/test_rpc.py holds the engine to it).
REAPED_WITHIN = 2.0
assert DISCONNECT_GRACE + REAP_INTERVAL < REAPED_WITHIN
ENDED_SESSIONS = 4096  # ended sessions remembered, to tell their clients why


# A request's arguments as its op's record (engine.wire.arguments.record_type: a NamedTuple with
# a field per declared parameter), made from the call's declaration.
Args = Any
Handler = Callable[["Session", Request, Args], Any]  # (session, request, arguments)


class Op(NamedTuple):
    """One entry of the server's op table: a declared call and what serves it."""

    call: Call
    now: Handler | None  # a plain function serving it at once (a call that never waits)
    serve: Callable[[Session, Request, Args], Awaitable[Any]] | None  # else, a task's
    decoders: dict[str, Callable[[Session, Any], Any]]  # wire values decoded, by declared type
    plain: Plain | None  # a process's call that never waits: the Syscalls function doing it


@dataclass
class Session:
    id: str
    user: str
    name: str
    cred: str  # the credential that signs its messages ("": the engine's owner's)
    last_seen: float  # when a message from it last came in
    excused: float = 0.0  # seconds since then that the engine itself was busy
    pids: set[int] = field(default_factory=set)  # its live attached processes
    ended: set[int] = field(default_factory=set)  # those that have exited
    tasks: dict[int | None, set[asyncio.Task]] = field(default_factory=dict)


class EngineServer:
    def __init__(
        self,
        kernel: Kernel,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        max_message: int = MAX_MESSAGE,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        idle_exit: float | None = None,
    ) -> None:
        self.kernel = kernel
        self.idle_exit = idle_exit  # stop after this long with no clients and no processes
        self._idle_since = time.monotonic()
        self.host, self.port = host, port
        self.ipc = ""  # the Unix socket endpoint, once started (POSIX)
        self._ipc_dir: str | None = None
        self.token = token or new_token()
        self.wire = Wire(self.token, max_message)
        self.credentials = Credentials(self.token, kernel.data_dir / "users.json")
        self._wires = {"": self.wire}  # what signs the replies to each credential's clients
        # size, signature (by the credential a message names), replay: see engine.wire.protocol
        self.gate = Gate(self.wire, keys=self.credentials.key)
        self.heartbeat_timeout = heartbeat_timeout
        self.sessions: dict[str, Session] = {}
        self.ended: collections.OrderedDict[str, str] = collections.OrderedDict()  # id -> why
        self.syscalls: dict[int, Syscalls] = {}
        self.dropped = 0  # messages ignored (unsigned, malformed framing)
        self.stopped = asyncio.Event()
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._reader: SocketReader | None = None
        self._tasks: list[asyncio.Task] = []
        self._suspect_since: float | None = None  # a connection dropped at this time
        self._stopping: asyncio.Task | None = None
        self._last_reap = time.monotonic()
        self._inflight: set[asyncio.Task] = set()  # requests being served
        # replies made in this loop turn, per connection (identity, session, credential): they
        # leave together at the turn's end (see _reply)
        self._replies: dict[tuple[bytes, str, str], list[tuple[int | None, dict[str, Any]]]] = {}
        self.workers = Workers(kernel, on_exit=self._cancel_dead_tasks)
        self._ops = self._op_table()

    def _op_table(self) -> dict[str, Op]:
        """Every declared op (engine.wire.calls) and its handler: a session op's own method (a
        plain one for a call that never waits), else a system call, served by the process's
        `Syscalls` (or for the client itself)."""
        session_ops: dict[str, Handler] = {
            "hello": self._hello,
            "attach": self._attach,
            "detach": self._detach,
            "trace": self._trace,
            "stat_engine": self._stat_engine,
            "sessions": self._sessions,
            "noop": self._noop,
            "drop_caches": self._drop_caches,
            "policy": self._policy,
            "set_policy": self._set_policy,
            "shutdown": self._shutdown,
            "goodbye": self._goodbye,
            "run": self._run_worker,
            "output": self._output,
            "worker.adopt": self._adopt,
            "worker.exit": self._worker_exit,
            "user.add": self._user_add,
            "user.remove": self._user_remove,
            "tool.register": self._tool_register,
            "tool.list": self._tool_list,
        }
        ops = {}
        for call in OPS.values():
            decoders = self._decoders(call)
            if call.by is By.CLIENT:
                handler = session_ops.pop(call.name)  # (KeyError: a declared op, no handler)
                assert inspect.iscoroutinefunction(handler) == call.waits, call.name
                now, serve = (None, handler) if call.waits else (handler, None)
                ops[call.name] = Op(call, now, serve, decoders, None)
                continue
            side = KVCalls if call.name.startswith("kv.") else Syscalls
            plain = PLAIN.get(getattr(side, call.method))
            assert (plain is None) == call.waits, f"{call.name}: declared waits={call.waits}"
            now = None if call.waits else self._syscall_now
            ops[call.name] = Op(call, now, self._syscall, decoders, plain)
        assert not session_ops, f"handlers of undeclared ops: {sorted(session_ops)}"
        return ops

    def _decoders(self, call: Call) -> dict[str, Callable[[Session, Any], Any]]:
        """How each parameter's wire value becomes the engine's, by its declared type: a KV
        file handle (a map) the engine's handle of this session, forward's returns= a record."""
        decoders: dict[str, Callable[[Session, Any], Any]] = {}
        for p in call.params:
            types = members(p.type)
            if FileHandle in types:
                decoders[p.name] = self._handle
            elif TopK in types or Sample in types:  # Returns; sample_loop's Sample
                decoders[p.name] = lambda session, value: returns_from_wire(value)
        return decoders

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> EngineServer:
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self.wire.max_message)  # per frame: no valid one is more
        if self.port:
            sock.bind(f"tcp://{self.host}:{self.port}")
        else:
            self.port = sock.bind_to_random_port(f"tcp://{self.host}")
        if os.name == "posix":  # same-machine clients: a Unix socket in a private directory
            self._ipc_dir = tempfile.mkdtemp(prefix="symphony-")
            self.ipc = f"ipc://{self._ipc_dir}/engine.sock"
            sock.bind(self.ipc)
        self._sock = sock
        self._reader = SocketReader(sock, self._on_frames)
        monitor = zmq.asyncio.Socket.from_socket(sock.get_monitor_socket(zmq.EVENT_DISCONNECTED))
        self._tasks = [
            asyncio.create_task(self._reap_loop(), name="symphony-reaper"),
            asyncio.create_task(self._monitor_loop(monitor), name="symphony-monitor"),
        ]
        return self

    async def stop(self) -> None:
        for s in list(self.sessions.values()):
            self._end_session(s, "engine stopped")
        await self.workers.stop()
        current = asyncio.current_task()
        tasks = [t for t in [*self._tasks, *self._inflight] if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self._send_replies()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
        self._sock = self._ctx = None
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None
        self.stopped.set()

    def connection_info(self) -> connection.ConnectionInfo:
        loaded = self.kernel.loaded
        return connection.ConnectionInfo(
            "tcp",
            self.host,
            self.port,
            self.token,
            os.getpid(),
            str(loaded.path),
            str(loaded.model.device),
            self.ipc,
        )

    # --- the wire --------------------------------------------------------------------------------

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.dropped += 1
            return
        try:
            self._on_message(frames[0], frames[1:])
        except Exception:  # a bug here must not stop the engine serving everyone else
            log.exception("failed to handle a message")

    def _on_message(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            msg = self.gate.admit(identity, frames)
        except Dropped:
            self.dropped += 1
            return
        except AuthenticationFailed as e:
            self._send(identity, Wire.unsigned({"kind": REPLY, "id": None}, error_reply(None, e)))
            return
        except ProtocolError as e:
            rid = getattr(e, "request_id", None)
            sid, cred = getattr(e, "session", ""), getattr(e, "cred", "")
            self._reply(identity, sid, rid, error_reply(rid, e), cred)
            return
        header = msg.header
        session = self.sessions.get(str(header.get("session")))
        if session is not None:
            session.last_seen, session.excused = time.monotonic(), 0.0
        if header["kind"] == PING:
            sid = header.get("session")
            why = self.ended.get(str(sid)) if session is None else None
            body = {} if why is None else {"ended": why}  # the client learns its session ended
            pong = self._wire_for(header.get("cred", "")).frames(
                {"kind": PONG, "session": sid}, body
            )
            self._send(identity, pong)
        elif header["kind"] == REQUEST and self._requests(msg.body):  # calls made at once
            for body in msg.body:  # all started before the step loop runs: they batch
                self._start(identity, {**header, "id": None}, body)
        elif header["kind"] == REQUEST:
            self._start(identity, header, msg.body)
        else:
            rid = header.get("id")
            err = BadMessage(f"an engine takes requests and pings, not {header['kind']}s")
            sid, cred = str(header.get("session", "")), header.get("cred", "")
            self._reply(identity, sid, rid, error_reply(rid, err), cred)

    @staticmethod
    def _requests(body: Any) -> bool:
        """Whether a request's body lists several requests (else it is one, checked as one)."""
        return isinstance(body, list) and len(body) > 0 and all(type(b) is dict for b in body)

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.send_multipart([identity, *frames], zmq.NOBLOCK)
            if self._reader is not None:
                self._reader.drain()

    def _reply(
        self, identity: bytes, session: str, rid: int | None, body: dict[str, Any], cred: str = ""
    ) -> None:
        """Reply at the end of this loop turn, in one message with the other replies to the same
        connection made in the turn. The calls of one batch finish in one turn, so a client's
        tasks waiting on them resume together and send their next calls together (one
        message): the calls of a remote LIP's independent tasks batch as in process, where
        the step loop lets every process whose call finished submit its next before it plans
        again (engine.kernel)."""
        if not self._replies:
            asyncio.get_running_loop().call_soon(self._send_replies)
        self._replies.setdefault((identity, session, cred), []).append((rid, body))

    def _send_replies(self) -> None:
        """Send the replies of this loop turn: one message per connection whose body lists
        them (a single reply is its own body); one by one where together they are over the
        message size limit."""
        replies, self._replies = self._replies, {}
        for (identity, session, cred), bodies in replies.items():
            wire = self._wire_for(cred)
            if len(bodies) > 1:
                header = {"kind": REPLY, "session": session, "id": bodies[0][0]}
                with contextlib.suppress(Exception):  # then each is sent (or fails) alone
                    frames = wire.frames(header, [body for _, body in bodies])
                    if sum(map(len, frames)) <= wire.max_message:
                        self._send(identity, frames)
                        continue
            for rid, body in bodies:
                self._send_reply(identity, session, rid, body, cred)

    def _send_reply(
        self, identity: bytes, session: str, rid: int | None, body: dict[str, Any], cred: str
    ) -> None:
        header = {"kind": REPLY, "session": session, "id": rid}
        wire = self._wire_for(cred)
        try:
            frames = wire.frames(header, body)
        except Exception as e:  # a result msgpack cannot carry
            frames = wire.frames(header, error_reply(rid, InvalidArgument(str(e))))
        self._send(identity, frames)

    @staticmethod
    def _track(session: Session, pid: int | None, task: asyncio.Task) -> None:
        session.tasks.setdefault(pid, set()).add(task)
        task.add_done_callback(lambda t: session.tasks.get(pid, set()).discard(t))

    # --- serving one request ---------------------------------------------------------------------

    def _start(self, identity: bytes, header: dict[str, Any], body: Any) -> None:
        """Serve a request: a call that never waits at once, by a plain function; one that may
        wait (a forward, a sleep, a suspended process's files coming back) as a task of its own,
        so that the calls of one client's many tasks are pipelined."""
        sid, cred = str(header.get("session", "")), str(header.get("cred", ""))
        rid = header.get("id")
        try:
            req = parse_request(body)
            rid = req.id
            op, session, args = self._route(sid, req, cred)
            if op.now is None or self._files_away(op, req):
                self._serve_in_task(identity, sid, cred, op, session, req, args)
                return
            reply = ok_reply(rid, op.now(session, req, args))
        except Exception as e:  # every error becomes a reply naming it; the engine keeps serving
            rid = getattr(e, "request_id", rid)
            reply = error_reply(rid, e)
        self._reply(identity, sid, rid, reply, cred)
        if reply["ok"] and req.op == "shutdown":  # let the reply leave before the socket closes
            asyncio.get_running_loop().call_later(0.05, self.request_stop)

    def _files_away(self, op: Op, req: Request) -> bool:
        """Whether a call that never waits is on the files of a suspended process: then it
        waits for them to come back, in a task."""
        if op.plain is None or not op.plain.resident or req.pid is None:
            return False
        return self.syscalls[req.pid].process.state is SUSPENDED

    def _serve_in_task(
        self,
        identity: bytes,
        sid: str,
        cred: str,
        op: Op,
        session: Session,
        req: Request,
        args: Args,
    ) -> None:
        """Serve a call that may wait as a task; its reply goes when it is done."""
        serve = op.serve
        assert serve is not None

        async def serving() -> None:
            try:
                reply = ok_reply(req.id, await serve(session, req, args))
            except asyncio.CancelledError:
                if self._sock is None or self.stopped.is_set():
                    raise
                reply = error_reply(req.id, ProcessExited("the process exited during this call"))
            except Exception as e:  # every error becomes a reply naming it
                reply = error_reply(getattr(e, "request_id", req.id), e)
            self._reply(identity, sid, req.id, reply, cred)

        task = asyncio.get_running_loop().create_task(serving())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        self._track(session, req.pid, task)

    def request_stop(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.stop())

    def _wire_for(self, cred: Any) -> Wire:
        """The Wire that signs messages to clients of credential cred (the owner's by default)."""
        wire = self._wires.get(cred) if isinstance(cred, str) else None
        if wire is None:
            token = self.credentials.tokens.get(cred) if isinstance(cred, str) else None
            if token is None:
                return self.wire
            wire = self._wires[cred] = Wire(token, self.wire.max_message, cred)
        return wire

    def _route(self, sid: str, req: Request, cred: str) -> tuple[Op, Session, Args]:
        """A request's op, its session (begun by hello) and its checked arguments; the error
        that refuses it otherwise."""
        op = self._ops.get(req.op)
        if op is None:
            raise UnknownOperation(f"unknown op {req.op!r}")
        if req.op == "hello":
            args = self._arguments(None, op, req)
            return op, self._hello_session(sid, args, cred), args
        session = self.sessions.get(sid)
        if session is None:
            if sid in self.ended:
                raise SessionEnded(
                    f"{req.op}: the engine ended this client's session ({self.ended[sid]}) and"
                    " detached its processes; reconnect to start a new one"
                )
            raise UnknownSession(f"{req.op}: say hello first (unknown session {sid[:16]!r})")
        if session.cred != cred:
            raise PermissionDenied(f"session {sid[:16]!r}", "began with another credential")
        if op.call.by is not By.CLIENT:
            if req.pid is not None:
                self._check_attached(session, req.pid)
            elif op.call.by is By.PROCESS:
                raise NeedsProcess(f"{req.op} needs an attached process (pid)")
        return op, session, self._arguments(session, op, req)

    def _arguments(self, session: Session | None, op: Op, req: Request) -> Args:
        """A request's arguments as its op's record: checked against its call's declaration
        (names and types, before anything runs), then decoded by their declared types."""
        args = arguments_of(op.call, req.args)
        if op.decoders and session is not None:
            given = [name for name in op.decoders if name in req.args]
            decoded = {name: op.decoders[name](session, getattr(args, name)) for name in given}
            args = args._replace(**decoded)
        return args

    # --- session ops -----------------------------------------------------------------------------

    def _hello_session(self, sid: str, args: Args, cred: str) -> Session:
        """The session a hello begins (or greets again)."""
        if not sid:
            raise BadMessage("hello needs a session id in the header")
        user = args.user
        if not user or "/" in user:
            raise InvalidArgument("hello needs a user name (no '/') and a client name")
        if sid in self.ended:
            raise SessionEnded(f"hello: session {sid[:16]!r} has ended; start a new one")
        if cred and user != cred:  # a user's credential acts as that user only
            raise PermissionDenied(f"user {user!r}", f"this credential is {cred!r}'s")
        if sid not in self.sessions:
            self.sessions[sid] = Session(sid, user, args.name, cred, time.monotonic())
        elif self.sessions[sid].cred != cred:
            raise PermissionDenied(f"session {sid[:16]!r}", "began with another credential")
        return self.sessions[sid]

    def _hello(self, session: Session, req: Request, args: Args) -> dict[str, Any]:
        k = self.kernel
        loaded = k.loaded
        return {
            "protocol": VERSION,
            "session": session.id,
            "user": session.user,
            "engine_pid": os.getpid(),
            "model": loaded.name,
            "model_id": k.kvfs.model_id,
            "device": str(loaded.model.device),
            "vocab_size": k.tokenizer.vocab_size,
            "tokenizer": k.tokenizer.backend.to_str(),  # the client tokenizes locally
            "tokenizer_config": k.tokenizer.config,
            "page_size": k.pool.page_size,
            "num_pages": k.pool.num_pages,
            "max_message": self.wire.max_message,
        }

    def _attach(self, session: Session, req: Request, args: Args) -> int:
        pid = self.kernel.attach(args.name, owner=session.user, priority=args.priority)
        session.pids.add(pid)
        self.syscalls[pid] = Syscalls(self.kernel, self.kernel.procs[pid])
        return pid

    def _detach(self, session: Session, req: Request, args: Args) -> None:
        pid, error = args.pid, args.error
        if pid in session.ended:
            return  # already ended (killed, say): detaching again is harmless
        if pid not in session.pids:
            raise NotAttached(pid)
        self._end_process(session, pid, error)

    def _trace(self, session: Session, req: Request, args: Args) -> list[Any]:
        events = self.kernel.trace.query(
            args.since, args.until, args.pid, args.kinds, args.after_seq
        )
        return events[: args.limit] if args.limit >= 0 else events

    def _stat_engine(self, session: Session, req: Request, args: Args) -> dict[str, Any]:
        k = self.kernel
        pool = k.pool
        batch = k.trace.last(ev.BATCH)
        return {
            "model": k.loaded.name,
            "device": str(k.loaded.model.device),
            "dtype": str(k.loaded.model.dtype).removeprefix("torch."),
            "dtype_reason": k.loaded.dtype_reason,
            "attention": k.runner.backend.name,
            "page_size": pool.page_size,
            "pages_total": pool.num_pages,
            "pages_free": pool.num_free - pool.num_cached,  # held by nobody, kept by nobody
            "pages_used": pool.num_pages - pool.num_free,  # held by files
            "pages_swapped": k.memory.num_swapped_pages(),
            "pages_cached": pool.num_cached,  # held by nobody, kept for prefix sharing
            "prefix_sharing": pool.index is not None,
            "prefix_hits": 0 if pool.index is None else pool.index.hits,  # full pages
            "prefix_misses": 0 if pool.index is None else pool.index.misses,
            "batches": batch.data["batch"] if batch is not None else 0,
            "processes": len(k.live),
            "sessions": len(self.sessions),
            "policy": k.scheduler.policy.name,
            "uptime": round(k.trace.now(), 3),
        }

    def _sessions(self, session: Session, req: Request, args: Args) -> list[dict[str, Any]]:
        """The connected clients: user, client name, and the pids of their processes."""
        return [
            {"user": s.user, "name": s.name, "pids": sorted(s.pids | s.ended)}
            for s in self.sessions.values()
        ]

    def _noop(self, session: Session, req: Request, args: Args) -> None:
        return None

    def _shutdown(self, session: Session, req: Request, args: Args) -> None:
        return None  # the engine stops once this reply is sent

    def _goodbye(self, session: Session, req: Request, args: Args) -> None:
        """The client is closing: detach its processes now rather than at its heartbeat's end."""
        self._end_session(session, "client closed")

    # --- system calls ----------------------------------------------------------------------------

    def _syscall_now(self, session: Session, req: Request, args: Args) -> Any:
        """A system call that never waits, served at once: by a process of this session
        (req.pid) through its Syscalls' plain function, or by the client itself."""
        op = self._ops[req.op]
        call = op.call
        if req.pid is None:
            return self._client_call(session, call, args)
        sys_ = self.syscalls[req.pid]
        assert op.plain is not None
        if op.plain.resident:
            sys_.check_live()
        positional, keywords = bind(call, args)
        target = sys_.kv if call.name.startswith("kv.") else sys_
        result = op.plain.fn(target, *positional, **keywords)
        if call.name == "kill":
            self._cancel_dead_tasks()
        return handle_to_wire(result) if isinstance(result, Handle) else result

    async def _syscall(self, session: Session, req: Request, args: Args) -> Any:
        """A system call that may wait, served as a task: by a process of this session, or the
        client's own `wait`."""
        call = self._ops[req.op].call
        if req.pid is None:  # (By.EITHER: a process's calls without a pid are refused before)
            assert call.name == "wait", call.name
            return await self.kernel.wait(args.pid, by=session.user)
        sys_ = self.syscalls[req.pid]
        target: Any = sys_.kv if call.name.startswith("kv.") else sys_
        positional, keywords = bind(call, args)
        result = await getattr(target, call.method)(*positional, **keywords)
        return handle_to_wire(result) if isinstance(result, Handle) else result

    def _client_call(self, session: Session, call: Call, args: Args) -> Any:
        """A call by the client itself, outside any process (a call declared By.EITHER)."""
        k = self.kernel
        if call.name == "ps":
            return k.ps()
        if call.name == "kill":
            k.kill(args.pid, by=session.user)
            self._cancel_dead_tasks()
            return None
        # KVFS takes them in the declared order
        return getattr(k.kvfs, call.method)(Caller(None, session.user), *args)

    def _handle(self, session: Session, value: Any) -> Any:
        """A wire handle (a map with its fd) as the engine's handle, if this session opened it;
        any other value (a path) as it is."""
        if not is_wire_handle(value):
            return value
        h = self.kernel.kvfs.handle(value["fd"])
        if h is None or h.caller.pid is None or h.caller.pid not in session.pids:
            raise HandleNotOpen(value["fd"])
        return h

    # --- server runs (engine.workers) and tools (engine.tools) ----------------------------------

    async def _run_worker(self, session: Session, req: Request, args: Args) -> int:
        """Start a worker for the code in args; its pid, at once (the session owns it)."""
        if req.pid is not None:
            raise InvalidArgument("run is a client call: send it without a pid")
        if args.parent is not None and args.parent not in session.pids:
            raise NotAttached(args.parent)
        info = dataclasses.asdict(self.connection_info())
        if session.cred:  # the worker acts with its user's credential, never the owner's
            info.update(token=self.credentials.tokens[session.cred], user=session.cred)
        if info["ip"] in ("0.0.0.0", "*", "", "::"):
            info["ip"] = "127.0.0.1"
        return await self.workers.launch(session.id, session.user, args._asdict(), info)

    async def _output(self, session: Session, req: Request, args: Args) -> dict[str, Any]:
        """New output of a server run after chunk `after` (long-polled), and whether it ended."""
        run = self.workers.run_of(args.pid, session.id, session.user)
        return await self.workers.output(run, args.after)

    def _adopt(self, session: Session, req: Request, args: Args) -> dict[str, Any]:
        """A worker presents its one-time key: its pid becomes this session's, with its code."""
        run = self.workers.adopt(args.key, session.user)
        session.pids.add(run.pid)
        self.syscalls[run.pid] = Syscalls(self.kernel, self.kernel.procs[run.pid])
        return {"pid": run.pid, "name": run.name, "code": run.code, "memory_mb": run.memory_mb}

    def _worker_exit(self, session: Session, req: Request, args: Args) -> None:
        """A worker's cell ended: error {type, message} or None, and its traceback."""
        pid = args.pid
        if pid not in session.pids or pid not in self.workers.runs:
            raise NotAttached(pid)
        error = self.workers.report(pid, args.error, args.traceback)
        if error is None:
            self.workers.runs[pid].process.result = args.result  # what wait(pid) gives
        self._end_process(session, pid, error)

    # --- users' credentials (engine.credentials) -------------------------------------------

    def _check_owner(self, session: Session, op: str) -> None:
        if session.cred:
            raise PermissionDenied(op, "only the engine's owner (its own token) may do this")

    def _drop_caches(self, session: Session, req: Request, args: Args) -> int:
        """Evict every cached page (as Linux's drop_caches); how many. The engine's owner only:
        it costs every user their cache."""
        self._check_owner(session, "drop_caches")
        return self.kernel.pool.drop_cache()

    def _policy(self, session: Session, req: Request, args: Args) -> PolicyInfo:
        policy = self.kernel.scheduler.policy
        return PolicyInfo(policy.name, policy_settings(policy))

    def _set_policy(self, session: Session, req: Request, args: Args) -> PolicyInfo:
        """Set the batch policy by name. The engine's owner only: it changes every user's
        batches (a class may set one for an engine of its own: EngineThread)."""
        self._check_owner(session, "set_policy")
        self.kernel.set_policy(make_policy(args.name, args.settings))
        return self._policy(session, req, args)

    def _user_add(self, session: Session, req: Request, args: Args) -> dict[str, Any]:
        """A new credential for user: {user, token} (an earlier one of theirs stops working)."""
        self._check_owner(session, "user.add")
        user = args.user
        token = self.credentials.add(user)
        self._wires.pop(user, None)
        self._end_sessions_of(user, "its user's credential was replaced")
        return {"user": user, "token": token}

    def _user_remove(self, session: Session, req: Request, args: Args) -> bool:
        """Revoke user's credential and end their sessions; whether they had one."""
        self._check_owner(session, "user.remove")
        user = args.user
        had = self.credentials.remove(user)
        self._wires.pop(user, None)
        self._end_sessions_of(user, "its user's credential was revoked")
        return had

    def _end_sessions_of(self, cred: str, why: str) -> None:
        for s in [s for s in self.sessions.values() if s.cred == cred]:
            self._end_session(s, why)

    async def _tool_register(self, session: Session, req: Request, args: Args) -> dict[str, Any]:
        return await self.kernel.tools.register(args.name, args.source, args.timeout, session.user)

    def _tool_list(self, session: Session, req: Request, args: Args) -> list[dict[str, Any]]:
        return self.kernel.tools.infos()

    # --- ending processes and sessions -----------------------------------------------------------

    def _check_attached(self, session: Session, pid: int) -> None:
        if pid in session.pids:
            return
        if pid in session.ended:
            p = self.kernel.procs.get(pid)  # None: it exited so long ago that the kernel forgot it
            raise ProcessExited(
                f"process {pid} has exited"
                if p is None
                else f"process {pid} ({p.name}) has exited: {p.error or 'done'}"
            )
        raise NotAttached(pid)

    def _end_process(self, session: Session, pid: int, error: str | None) -> None:
        self.kernel.detach(pid, error)
        session.pids.discard(pid)
        session.ended.add(pid)
        self.syscalls.pop(pid, None)
        for task in session.tasks.pop(pid, set()):
            task.cancel()

    def _end_session(self, session: Session, error: str, why: str | None = None) -> None:
        """Detach a session's processes with `error`; `why` (default: the error) is what a
        later call from it is told."""
        for pid in list(session.pids):
            self._end_process(session, pid, error)
        self.sessions.pop(session.id, None)
        self.ended[session.id] = why or error
        while len(self.ended) > ENDED_SESSIONS:
            self.ended.popitem(last=False)
        self.workers.session_ended(session.id, error)

    def _cancel_dead_tasks(self) -> None:
        """Calls still in flight for processes that have exited (killed)."""
        for session in self.sessions.values():
            for pid in [p for p in session.pids if p not in self.kernel.live]:
                self._end_process(session, pid, None)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            try:
                self._reap()
            except Exception:
                log.exception("failed to reap sessions")

    def _reap(self) -> None:
        """End the sessions whose clients are gone: silent past the heartbeat timeout, or not
        heard from since a connection dropped.

        Judged on what was received: the messages waiting in the socket are read first, and a
        check that ran late (the loop was held by a long forward) credits every session with the
        time the engine itself was busy.
        """
        self._cancel_dead_tasks()
        now = time.monotonic()
        busy = now - self._last_reap - REAP_INTERVAL  # how late this check runs
        self._last_reap = now
        if busy > REAP_INTERVAL:
            for s in self.sessions.values():
                s.excused += busy
        if self._reader is not None:
            self._reader.drain()  # pings that queued up while the loop was busy
        suspect = self._suspect_since
        check_drop = suspect is not None and now - suspect >= DISCONNECT_GRACE
        for s in list(self.sessions.values()):
            silent = now - s.last_seen - s.excused > self.heartbeat_timeout
            dropped = check_drop and s.last_seen < suspect  # type: ignore[operator]
            if silent or dropped:
                quiet = now - s.last_seen - s.excused
                how = f"silent for {quiet:.1f} s" if silent else "connection dropped"
                self._end_session(s, "client vanished", f"client vanished: {how}")
        if check_drop:
            self._suspect_since = None
        self._stop_if_idle(now)

    def _stop_if_idle(self, now: float) -> None:
        """An engine a client started for itself goes away once nobody uses it."""
        busy = self.sessions or self.kernel.live
        if busy or self.idle_exit is None:
            self._idle_since = now
        elif now - self._idle_since >= self.idle_exit:
            log.info("no clients for %.0f s: stopping", self.idle_exit)
            self.request_stop()

    async def _monitor_loop(self, monitor: zmq.asyncio.Socket) -> None:
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                if event["event"] == zmq.EVENT_DISCONNECTED and self._suspect_since is None:
                    # What the dropped peer sent before it went is in the socket already: read
                    # it first, so that it does not count as being heard from after the drop.
                    if self._reader is not None:
                        self._reader.drain()
                    self._suspect_since = time.monotonic()
        finally:
            monitor.close(linger=0)


def bind(call: Call, args: Args) -> tuple[list[Any], dict[str, Any]]:
    """A call's arguments record as a method takes them: positional-only ones in order,
    `*args` from its list, `**kwargs` from its map, the rest by name."""
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for p, value in zip(call.params, args, strict=True):
        if p.kind is POSITIONAL_ONLY:
            positional.append(value)
        elif p.kind is VAR_POSITIONAL:
            positional.extend(value)
        elif p.kind is VAR_KEYWORD:
            keywords.update(value)
        else:
            keywords[p.name] = value
    return positional, keywords


async def serve(
    kernel: Kernel,
    host: str = "127.0.0.1",
    port: int = 0,
    connection_file: str | None = None,
    ready: Callable[[EngineServer, str], None] | None = None,
    idle_exit: float | None = None,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
) -> None:
    """Run an engine server until `shutdown` or SIGINT/SIGTERM, with its connection file."""
    import signal

    async with kernel:
        server = EngineServer(
            kernel, host, port, idle_exit=idle_exit, heartbeat_timeout=heartbeat_timeout
        )
        await server.start()
        info = server.connection_info()
        path = connection.write(info, connection_file)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, server.request_stop)
        if ready is not None:
            ready(server, str(path))
        try:
            await server.stopped.wait()
        finally:
            await server.stop()
            connection.remove(path, info)
            print("symphony engine stopped", file=sys.stderr, flush=True)
