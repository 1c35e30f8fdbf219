"""Liveness: the engine judges clients on what it received, and clients learn at once when their
session or their engine is gone (and can start again).

The engines here are real: a kernel and its RPC server in a thread of this process (so a test can
hold its loop, as a long forward does, and give it a short heartbeat timeout), or a real
`symphony serve` process killed with -9. The silent client is a real process, stopped with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from checkpoints import write_checkpoint
from engine_process import engine_process

from engine.engine_thread import EngineThread
from engine.loader import load_model
from engine.wire import connection
from engine.wire.errors import EngineNotRunning
from workbench import client as client_module
from workbench.client import Client

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 1.0  # the engines' heartbeat timeout here (seconds)
PROMPT = [5, 17, 42, 9, 100, 3, 77, 8]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EngineThread]:
    write_checkpoint(tmp_path, "llama-tied")
    thread = EngineThread(load_model(tmp_path, dtype="float32"), heartbeat_timeout=TIMEOUT)
    connection.write(thread.server.connection_info(), tmp_path / "conn.json")
    yield thread
    thread.close()


def test_an_engine_busy_past_the_heartbeat_timeout_keeps_every_client(
    engine: EngineThread,
) -> None:
    """The loop held for three heartbeat timeouts (as by a long forward): pings queue up unread,
    and the engine's busy time is nobody's silence."""

    async def body() -> None:
        clients = [await Client.connect(engine.server.connection_info(), user=u) for u in "ab"]
        lips = [await c.attach("steady") for c in clients]
        files = [await lip.kv.create() for lip in lips]
        for _ in range(2):  # busy, then serving, then busy again
            engine.loop.call_soon_threadsafe(time.sleep, 3 * TIMEOUT)
            await asyncio.sleep(3 * TIMEOUT + 0.3)
            for lip, f in zip(lips, files, strict=True):
                await lip.forward(f, PROMPT)
        assert {s["name"] for s in await clients[0].sessions()} >= {c.name for c in clients}
        for c in clients:
            assert c.session not in engine.server.ended
            await c.close()

    asyncio.run(body())


SILENT = """
import asyncio, sys
from workbench.client import Client

async def main(conn: str) -> None:
    client = await Client.connect(conn, user="bob", name="sleeper")
    lip = await client.attach("before")
    print("ready", lip.pid, flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the test stops this process meanwhile
    for _ in range(2):  # the session has ended: every call says so at once
        started = asyncio.get_running_loop().time()
        try:
            await lip.ps()
        except Exception as e:
            took = asyncio.get_running_loop().time() - started
            print("error", type(e).__name__, f"{took:.3f}", e, flush=True)
    await client.reconnect()
    lip = await client.attach("after")
    f = await lip.kv.create()
    d = await lip.forward(f, [5, 17, 42])
    print("again", lip.pid, d.argmax(), flush=True)
    await client.close()

asyncio.run(main(sys.argv[1]))
"""


def test_a_client_silent_past_the_timeout_is_told_its_session_ended_and_can_attach_again(
    engine: EngineThread, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(connection.ENV_VAR, None)
    cmd = [sys.executable, "-c", SILENT, str(tmp_path / "conn.json")]
    with subprocess.Popen(
        cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[0] == "ready", ready
        before = int(ready[1])
        os.kill(proc.pid, signal.SIGSTOP)  # silent, its connection still open
        deadline = time.monotonic() + 10 * TIMEOUT
        while engine.kernel.procs[before].state != "exited":
            assert time.monotonic() < deadline, "the silent client's process was not detached"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write("go on\n")
        proc.stdin.flush()
        out = [proc.stdout.readline().split(maxsplit=3) for _ in range(3)]
        assert proc.wait(30) == 0
    for kind, name, _took, message in out[:2]:
        assert (kind, name) == ("error", "SessionEnded"), out
        assert "client vanished: silent for" in message, message
    assert float(out[1][2]) < 0.05  # the second call failed without asking the engine
    assert engine.kernel.procs[before].error == "client vanished"
    again = out[2]
    assert again[0] == "again" and int(again[1]) != before
    assert 0 <= int(again[2]) < engine.kernel.loaded.config.vocab_size


def test_after_the_engine_dies_every_call_fails_fast_and_the_client_reconnects_to_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "ENGINE_DEAD_AFTER", 1.0)
    conn = tmp_path / "conn.json"

    async def body(first: subprocess.Popen, start_second: object) -> None:
        client = await Client.connect(conn, user="alice")
        lip = await client.attach("outlives-its-engine")
        waiting = asyncio.create_task(lip.receive(timeout=60))
        await asyncio.sleep(0.2)
        first.kill()
        first.wait()
        with pytest.raises(EngineNotRunning, match="stopped answering"):
            await asyncio.wait_for(waiting, 10)  # the call in flight
        for call in (client.ps, lip.ps, client.stat_engine):  # and every later one, at once
            started = time.monotonic()
            with pytest.raises(EngineNotRunning):
                await asyncio.wait_for(call(), 5)
            assert time.monotonic() - started < 0.05
        await asyncio.to_thread(start_second)  # type: ignore[arg-type]
        await client.reconnect()
        lip = await client.attach("on-the-new-engine")
        f = await lip.kv.create()
        await lip.forward(f, PROMPT)
        assert (await lip.kv.stat(f)).tokens == len(PROMPT)
        await client.close()

    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with engine_process(tmp_path / "first", conn=conn) as first:
        second: list[contextlib.ExitStack] = []

        def start_second() -> None:
            conn.unlink()  # the killed engine's file, stale
            stack = contextlib.ExitStack()
            stack.enter_context(engine_process(tmp_path / "second", conn=conn))
            second.append(stack)

        try:
            asyncio.run(body(first.proc, start_second))
        finally:
            for stack in second:
                stack.close()
