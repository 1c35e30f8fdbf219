"""Engine-side workers: a `%%lip --server` cell runs in a subprocess beside the engine.

The server's `run` op attaches a process and launches `WORKER_COMMAND` (the program
`engine.programs.worker`, a client of the engine named here only as a module to run: the engine
never imports it, nor `workbench`). The worker finds the engine, its pid and a one-time key in its
environment, never on its command line; it connects as a client, adopts the pid with the key
(`worker.adopt`, which also hands it the code), runs the cell with the same names a notebook cell
has, and reports how it ended (`worker.exit`). Its stdout and stderr are read into a buffer per
pid that `output` serves, long-polled.

A worker ends with its process: killed (`kill`, its requesting session closing or vanishing) or
past its time limit, its subprocess group is killed; its subprocess exiting ends the process with
why ("raised ValueError: ...", "exceeded its memory limit of 200 MB", "killed by SIGTERM", "exit
code 3", "ended without reporting how its cell ended"). Its memory limit is an address-space cap
(RLIMIT_AS) the worker sets on itself before running the cell: what it has mapped then (Python,
the connection) plus `memory_mb`.

Workers run in the sandbox of `engine.sandbox` where the machine allows it: there the engine's
process does not exist for them (no signal reaches it), and everything a worker started, `setsid`
children too, ends with it. `Workers.sandboxed` says whether that is so on this machine.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hmac
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine import sandbox
from engine.kernel import Kernel
from engine.process import Process
from engine.wire.errors import InvalidArgument, NoSuchProcess, PermissionDenied, ProcessExited

WORKER_COMMAND = (sys.executable, "-u", "-m", "engine.programs.worker")  # a module, not an import
DEFAULT_TIMEOUT = 600.0  # seconds a worker may run; None: no limit
DEFAULT_MEMORY_MB = 4096
EXIT_GRACE = 5.0  # seconds a worker that reported its end has to exit by itself
PIPE_GRACE = 2.0  # seconds to read what is left in its pipes once it exited
POLL_WAIT = 1.0  # an `output` call with nothing new answers after this long
MAX_BUFFERED = 8 * 2**20  # characters of unread output kept per worker (oldest dropped first)
MAX_REPLY = 2**20  # characters of output in one `output` reply
READ_SIZE = 65536
ENV_INFO = "SYMPHONY_WORKER_ENGINE"  # the engine's connection info, JSON
ENV_KEY = "SYMPHONY_WORKER_KEY"
ENV_PID = "SYMPHONY_WORKER_PID"
ENV_USER = "SYMPHONY_WORKER_USER"
ENV_MEMORY = "SYMPHONY_WORKER_MEMORY_MB"

Chunk = tuple[int, str, str]  # (seq, "stdout" | "stderr", text)


@dataclass
class Run:
    """One worker: who asked for it, its limits, its subprocess and its output."""

    process: Process  # its record, held here: the kernel forgets the oldest exited
    session: str  # the session that ran it
    owner: str
    name: str
    code: str
    timeout: float | None
    memory_mb: int
    key: str | None  # until the worker adopts its pid
    proc: asyncio.subprocess.Process | None = None
    chunks: list[Chunk] = field(default_factory=list)
    seq: int = 0
    buffered: int = 0
    dropped: int = 0  # characters of output dropped unread
    limit_hit: str | None = None  # the time limit, when the engine ended it for that
    killed: bool = False  # the engine killed it (kill, its session gone, its time up)
    reported: bool = False  # the worker said how it ended
    traceback: str | None = None
    finished: bool = False  # its subprocess exited and its pipes are drained
    orphan: bool = False  # its session is gone: forget it once finished
    task: asyncio.Task | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def add(self, stream: str, text: str) -> None:
        self.seq += 1
        self.chunks.append((self.seq, stream, text))
        self.buffered += len(text)
        while self.buffered > MAX_BUFFERED and len(self.chunks) > 1:
            _, _, old = self.chunks.pop(0)
            self.buffered -= len(old)
            self.dropped += len(old)
        self.changed()


class Workers:
    """The engine's worker subprocesses, by pid (`EngineServer.workers`)."""

    def __init__(self, kernel: Kernel, on_exit: Callable[[], None] = lambda: None) -> None:
        self.kernel = kernel
        self.on_exit = on_exit  # a process ended here: let the server drop its sessions' state
        self.runs: dict[int, Run] = {}
        self.sandboxed = sandbox.namespaces_work()

    # --- starting one -----------------------------------------------------------------------------

    async def launch(
        self, session: str, user: str, args: dict[str, Any], engine: dict[str, Any]
    ) -> int:
        """Attach a process for args' code and start its worker; the pid, at once."""
        code, name, priority, timeout, memory_mb = _run_args(args)
        parent = args.get("parent")  # checked by the server: one of the session's processes
        pid = self.kernel.attach(name, owner=user, priority=priority, parent=parent)
        key = secrets.token_hex(16)
        run = Run(self.kernel.procs[pid], session, user, name, code, timeout, memory_mb, key)
        self.runs[pid] = run
        try:
            command, _ = sandbox.sandboxed(WORKER_COMMAND)
            run.proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(run, engine),
                start_new_session=True,  # its own process group: killed whole, spared ^C
            )
        except OSError as e:
            self._end(run, f"could not start its worker: {e}")
            run.finished = True
            raise
        run.task = asyncio.create_task(self._watch(run), name=f"symphony-worker-{pid}")
        return pid

    @staticmethod
    def _env(run: Run, engine: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYMPHONY_WORKER_")}
        env.update(
            {
                ENV_INFO: json.dumps(engine),
                ENV_KEY: run.key or "",
                ENV_PID: str(run.pid),
                ENV_USER: run.owner,
                ENV_MEMORY: str(run.memory_mb),
                "MALLOC_ARENA_MAX": env.get("MALLOC_ARENA_MAX", "2"),
            }
        )
        return env

    def adopt(self, key: Any, user: str) -> Run:
        """The run whose one-time key this is (the key is spent); PermissionDenied otherwise."""
        if isinstance(key, str) and key:
            for run in self.runs.values():
                if run.key is not None and hmac.compare_digest(run.key, key):
                    return self._adopted(run, user)
        raise PermissionDenied("worker key", "is wrong or was used already")

    def _adopted(self, run: Run, user: str) -> Run:
        if user != run.owner:
            raise PermissionDenied("worker key", f"belongs to {run.owner}, not {user}")
        run.key = None
        p = run.process
        if not p.alive:
            raise ProcessExited(f"process {run.pid} ({p.name}) has exited: {p.error or 'done'}")
        return run

    def report(self, pid: int, error: Any, traceback: Any) -> str | None:
        """The worker says how its cell ended; the error its process ends with."""
        run = self.runs[pid]
        run.reported = True
        run.traceback = traceback if isinstance(traceback, str) else None
        if not isinstance(error, dict):
            return None
        kind, message = str(error.get("type", "Exception")), str(error.get("message", ""))
        if kind == "MemoryError":
            return f"exceeded its memory limit of {run.memory_mb} MB"
        if kind == "SystemExit":
            return f"exit code {message}"
        return f"raised {kind}: {message}" if message else f"raised {kind}"

    # --- its output -------------------------------------------------------------------------------

    def run_of(self, pid: Any, session: str, user: str) -> Run:
        run = self.runs.get(pid) if isinstance(pid, int) else None
        if run is None:
            raise NoSuchProcess(f"process {pid} is not a server run (or is forgotten)")
        if run.session != session and run.owner != user:
            raise PermissionDenied(f"process {pid}", f"belongs to {run.owner}")
        return run

    async def output(self, run: Run, after: Any) -> dict[str, Any]:
        """Chunks after seq `after` (waiting up to POLL_WAIT for some), done, error, traceback."""
        if not isinstance(after, int) or isinstance(after, bool):
            raise InvalidArgument("output: after is a chunk number (an int)")
        if not run.finished and not _after(run, after):
            await run.wait_change(POLL_WAIT)
        run.chunks = _after(run, after)  # what the reader has seen is dropped
        run.buffered = sum(len(c[2]) for c in run.chunks)
        chunks: list[list[Any]] = []
        size = 0
        for c in run.chunks:
            if chunks and size + len(c[2]) > MAX_REPLY:
                break
            chunks.append(list(c))
            size += len(c[2])
        done = run.finished and len(chunks) == len(run.chunks)
        error = run.process.error if done else None
        return {
            "chunks": chunks,
            "done": done,
            "error": error,
            "traceback": run.traceback if done and error else None,
            "dropped": run.dropped,
        }

    # --- ending ---------------------------------------------------------------------------------

    def session_ended(self, session: str, error: str) -> None:
        """The session that ran these is gone: end them, forget them."""
        for run in [r for r in self.runs.values() if r.session == session]:
            run.orphan = True
            self._end(run, error)
            if run.finished:
                self.runs.pop(run.pid, None)

    async def stop(self) -> None:
        for run in list(self.runs.values()):
            self._end(run, "engine stopped")
        tasks = [r.task for r in self.runs.values() if r.task is not None]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), PIPE_GRACE)
        for run in self.runs.values():
            _kill(run)
        self.runs.clear()

    def _end(self, run: Run, error: str | None) -> None:
        if run.process.alive:
            self.kernel.detach(run.pid, error)
            self.on_exit()

    async def _watch(self, run: Run) -> None:
        assert run.proc is not None
        proc = run.proc
        readers = [
            asyncio.create_task(self._read(run, proc.stdout, "stdout")),
            asyncio.create_task(self._read(run, proc.stderr, "stderr")),
        ]
        exited = asyncio.create_task(proc.wait())
        ended = asyncio.create_task(run.process.done.wait())
        try:
            first = asyncio.FIRST_COMPLETED
            await asyncio.wait({exited, ended}, timeout=run.timeout, return_when=first)
            if not exited.done():
                await self._stop(run, exited)
            self._end(run, self._exit_reason(run, proc.returncode))
            await asyncio.wait(readers, timeout=PIPE_GRACE)
        finally:
            for t in (*readers, exited, ended):
                t.cancel()
            _kill(run)
            run.finished = True
            run.code = ""
            run.changed()
            if run.orphan:
                self.runs.pop(run.pid, None)

    async def _stop(self, run: Run, exited: asyncio.Task) -> None:
        """Its process ended (killed, reported) or its time is up, but the worker still runs."""
        if run.process.alive:
            run.limit_hit = f"exceeded its time limit of {run.timeout:g}s"
            self._end(run, run.limit_hit)
        elif run.reported:  # it is on its way out: give it a moment to exit by itself
            await asyncio.wait({exited}, timeout=EXIT_GRACE)
        _kill(run)
        await asyncio.wait({exited}, timeout=PIPE_GRACE)

    def _exit_reason(self, run: Run, code: int | None) -> str | None:
        """Why a worker's process ends, from how its subprocess exited."""
        if run.limit_hit is not None:
            return run.limit_hit
        sig = sandbox.end_signal(code, self.sandboxed)
        if sig is not None:
            by = " (by the engine)" if run.killed else ""
            return f"killed by {sandbox.signal_name(sig)}{by}"
        if code == 0:
            return None if run.reported else "ended without reporting how its cell ended"
        return f"exit code {code}"

    @staticmethod
    async def _read(run: Run, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while data := await stream.read(READ_SIZE):
            if text := decoder.decode(data):
                run.add(name, text)
        if text := decoder.decode(b"", final=True):
            run.add(name, text)


def _after(run: Run, after: int) -> list[Chunk]:
    return [c for c in run.chunks if c[0] > after]


def _kill(run: Run) -> None:
    """Kill a worker's whole process group (in the sandbox: all it started, by the kernel)."""
    if run.proc is not None and run.proc.returncode is None:
        run.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, signal.SIGKILL)


def _run_args(args: dict[str, Any]) -> tuple[str, str, int, float | None, int]:
    """code, name, priority, timeout, memory_mb: checked, with the defaults."""
    code, name = args.get("code"), args.get("name", "lip")
    priority = args.get("priority", 0)
    timeout, memory_mb = args.get("timeout", DEFAULT_TIMEOUT), args.get("memory_mb")
    if not isinstance(code, str) or not isinstance(name, str):
        raise InvalidArgument("run takes code (str) and a name (str)")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidArgument("run: priority is an int")
    if timeout is not None and (not isinstance(timeout, (int, float)) or not timeout > 0):  # NaN
        raise InvalidArgument(f"run: timeout is seconds > 0 or None (no limit), not {timeout!r}")
    memory_mb = DEFAULT_MEMORY_MB if memory_mb is None else memory_mb
    if not isinstance(memory_mb, int) or isinstance(memory_mb, bool) or memory_mb <= 0:
        raise InvalidArgument(f"run: memory_mb is an int > 0, not {memory_mb!r}")
    limit = None if timeout is None or timeout == float("inf") else float(timeout)
    return code, name, priority, limit, memory_mb
