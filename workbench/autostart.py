"""Find the shared engine, or start one when there is none (under nbclient, or a plain script).

An engine started here is nobody's in particular: it runs `symphony serve --idle-exit`, so it
stops by itself once no client has been connected for `IDLE_EXIT` seconds. A file lock beside
the connection file makes two kernels starting at once share one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.wire import connection
from engine.wire.engine_config import EngineConfig
from engine.wire.errors import EngineNotRunning
from workbench.client import Client

IDLE_EXIT = float(os.environ.get("SYMPHONY_IDLE_EXIT", 60))  # seconds without clients, then stop
START_TIMEOUT = 300.0  # loading a large model from a slow disk takes a while
MODEL_ENV = "SYMPHONY_MODEL"  # the model an engine started here serves (default: the instruct one)


async def connect(
    connection_file: str | Path | None = None, start: bool = True, **kw: object
) -> Client:
    """A client of the running engine; with start, an engine is started first if none runs."""
    try:
        return await Client.connect(connection_file, **kw)  # type: ignore[arg-type]
    except EngineNotRunning:
        if not start:
            raise
    path = Path(connection_file) if connection_file else connection.default_path()
    await asyncio.to_thread(start_engine, path)
    return await Client.connect(path, **kw)  # type: ignore[arg-type]


def start_engine(
    path: Path, timeout: float = START_TIMEOUT, args: Sequence[str] = ()
) -> tuple[connection.ConnectionInfo, subprocess.Popen | None]:
    """The engine behind path, and its process when it was started here (None: it ran already).

    args: more `symphony serve` options (`--model`, `--num-pages`, ...) for an engine started here.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(path.with_name(path.name + ".lock")):
        with contextlib.suppress(EngineNotRunning):
            return connection.read(path), None  # another kernel started it while we waited
        log = path.with_name(path.stem + ".log")
        proc = _launch(path, log, args)
        print(f"started the Symphony engine (pid {proc.pid}; log {log})", file=sys.stderr)
        return _wait_for(path, proc, log, timeout), proc


def _launch(path: Path, log: Path, args: Sequence[str] = ()) -> subprocess.Popen:
    model = os.environ.get(MODEL_ENV) if "--model" not in args else None
    config = EngineConfig(model=model or None, idle_exit=IDLE_EXIT)  # args may say more
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--connection-file", str(path)]
    cmd += config.argv() + list(args)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this kernel; an interrupt here must not stop it
        )


def _wait_for(
    path: Path, proc: subprocess.Popen, log: Path, timeout: float
) -> connection.ConnectionInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(EngineNotRunning):
            info = connection.read(path)
            if info.pid == proc.pid:
                return info
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise EngineNotRunning(
                f"the engine exited while starting (code {proc.returncode}): " + "\n".join(tail)
            )
        time.sleep(0.1)
    proc.terminate()
    raise EngineNotRunning(f"the engine did not start in {timeout:g}s (log {log})")


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
