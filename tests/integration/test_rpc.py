"""The engine as a shared service: a real `symphony serve` process, real clients over ZeroMQ.

The tests share one engine and run in file order; the last one stops it with `symphony stop`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from engine_process import EngineProcess, engine_process

from engine.cli_client import SyncClient
from engine.server import HEARTBEAT_TIMEOUT, REAPED_WITHIN
from engine.wire import connection
from engine.wire.errors import (
    AuthenticationFailed,
    BadMessage,
    InvalidArgument,
    MessageTooLarge,
    PermissionDenied,
    ProcessExited,
    UnknownOperation,
)
from engine.wire.protocol import VERSION, Wire, packb, rebuild_error, request_body, sign
from workbench.client import LIP, Client, Distribution, FileHandle, Message, Sample

REPO = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k != connection.ENV_VAR}
ENV.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
PROMPT = [5, 17, 42, 9, 100, 3, 77, 8, 61, 12]

BOB = """
import asyncio, sys
from workbench.client import Client, Sample

async def main(conn: str, n: int) -> None:
    client = await Client.connect(conn, user="bob", name="bob-process")
    lip = await client.attach("bob-lip")
    print("pid", lip.pid, flush=True)
    f = await lip.kv.create()
    t = await lip.forward(f, [9, 8, 7, 6, 5, 4, 3, 2], returns=Sample())
    for i in range(n):
        t = await lip.forward(f, [t], returns=Sample())
        print("token", i, flush=True)
    await lip.exit()
    await client.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    with engine_process(
        tmp_path_factory.mktemp("rpc"), "--num-pages", "512", "--page-size", "4"
    ) as e:
        yield e


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def greedy(
    lip: LIP, prompt: list[int], n: int, on_token: Callable[[int], None] | None = None
) -> list[int]:
    f = await lip.kv.create()
    t = await lip.forward(f, prompt, returns=Sample())
    out = [t]
    for i in range(n - 1):
        if on_token is not None:
            on_token(i)
        t = await lip.forward(f, [t], returns=Sample())
        out.append(t)
    return out


def test_two_clients_batch_together_and_a_killed_one_is_reaped(engine: EngineProcess) -> None:
    async def body() -> None:
        alice = await Client.connect(engine.conn, user="alice")
        solo_lip = await alice.attach("solo")
        solo = await greedy(solo_lip, PROMPT, 60)
        await solo_lip.exit()
        used_before = (await alice.stat_engine())["pages_used"]

        bob = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BOB, str(engine.conn), "200",
            cwd=REPO, env=ENV, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert bob.stdout is not None
        bob_pid = int((await bob.stdout.readline()).split()[1])
        while (line := await bob.stdout.readline()) != b"token 10\n":
            assert line, "bob's LIP ended early"
        killed: list[float] = []

        def kill_bob(i: int) -> None:  # kill -9, in the middle of both LIPs
            if i == 25:
                bob.kill()
                killed.append(time.monotonic())

        lip = await alice.attach("together")
        together = await greedy(lip, PROMPT, 60, kill_bob)
        while (info := {p.pid: p for p in await alice.ps()}[bob_pid]).state != "exited":
            reaped_in = time.monotonic() - killed[0]
            assert reaped_in < REAPED_WITHIN, f"bob's process was not reaped in {reaped_in:.2f} s"
            await asyncio.sleep(0.02)
        assert info.error == "client vanished", info
        assert await bob.wait() == -9

        assert together == solo  # the other client's output is unaffected
        batches = await alice.trace(kinds=["batch"])
        assert any({bob_pid, lip.pid} <= set(b.data["pids"]) for b in batches)
        exits = await alice.trace(pid=bob_pid, kinds=["process"])
        assert exits[-1].data["new"] == "exited" and exits[-1].data["pages_freed"] > 0
        await lip.exit()
        assert (await alice.stat_engine())["pages_used"] == used_before
        await alice.close()

    run(body())


def test_shared_files_and_permissions_between_users(engine: EngineProcess) -> None:
    async def body() -> None:
        alice = await Client.connect(engine.conn, user="alice")
        bob = await Client.connect(engine.conn, user="bob")
        a, b = await alice.attach("writer"), await bob.attach("reader")
        f = await a.kv.create()
        await a.forward(f, PROMPT, outputs=[])
        await a.kv.fork(f, "/shared/rpc-prompt")
        notes = await a.kv.fork(f, "/home/alice/notes")

        g = await b.kv.fork("/shared/rpc-prompt")  # bob reads alice's shared prompt cache
        st = await b.kv.stat(g)
        assert (st.tokens, st.parent, st.owner) == (len(PROMPT), "/shared/rpc-prompt", "bob")
        assert st.num_shared_pages >= 1
        d = await b.forward(g, [1])
        mine = await a.forward(await a.kv.fork(f), [1])
        assert isinstance(d, Distribution) and d.ids == mine.ids

        attempts = {
            "write alice's home file": b.kv.open("/home/alice/notes", write=True),
            "unlink alice's home file": b.kv.unlink("/home/alice/notes"),
            "fork alice's home file": b.kv.fork("/home/alice/notes"),
            "unlink alice's shared file": b.kv.unlink("/shared/rpc-prompt"),
            "write alice's shared file": b.kv.open("/shared/rpc-prompt", write=True),
            "unlink as the client": bob.unlink("/home/alice/notes"),
        }
        for what, attempt in attempts.items():
            with pytest.raises(PermissionDenied) as err:
                await attempt
            assert err.value.path in ("/home/alice/notes", "/shared/rpc-prompt"), what
        stolen = FileHandle(notes.fd, notes.path, True)
        with pytest.raises(InvalidArgument, match="not open in this session"):
            await b.forward(stolen, [1])
        assert await b.kv.listdir("/home/alice") == []
        assert await a.kv.listdir("/home/alice") == ["notes"]
        assert (await alice.stat("/home/alice/notes")).tokens == len(PROMPT)

        with pytest.raises(PermissionDenied, match="belongs to bob"):  # as kill and wait
            await a.send(b.pid, {"prompt": "/shared/rpc-prompt"})
        b2 = await bob.attach("bob's other")  # bob's own processes message each other
        await b2.send(b.pid, {"prompt": "/shared/rpc-prompt", "tokens": [1, 2]})
        msg = await b.receive(timeout=5)
        assert msg == Message(b2.pid, {"prompt": "/shared/rpc-prompt", "tokens": [1, 2]})
        with pytest.raises(TimeoutError):  # alice's refused message never came
            await b.receive(timeout=0.05)
        await b2.exit()

        await a.kv.unlink("/shared/rpc-prompt")
        await a.kv.unlink("/home/alice/notes")
        await a.exit()
        await b.exit()
        await alice.close()
        await bob.close()

    run(body())


def _exchange(sock: zmq.Socket, frames: list[bytes], timeout: float = 1.0) -> list[bytes] | None:
    sock.send_multipart(frames)
    return sock.recv_multipart() if sock.poll(int(timeout * 1000)) else None


def _error(frames: list[bytes] | None, wire: Wire) -> BaseException:
    assert frames is not None, "no reply"
    body = wire.parse(frames).body
    assert body["ok"] is False
    return rebuild_error(body["error"])


def test_bad_messages_are_refused_and_change_nothing(engine: EngineProcess) -> None:
    info = connection.read(engine.conn)
    good = Wire(info.token)
    with SyncClient(info, user="alice") as probe:
        before = probe.call("stat_engine"), [tuple(p) for p in probe.call("ps")]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(info.address)
    try:
        hdr = {"kind": "request", "session": "raw", "id": 1}
        hello = request_body(1, "hello", {"user": "mallory", "name": "raw"}, None)

        reply = _exchange(sock, Wire("not-the-token").frames(hdr, hello))
        assert reply is not None and isinstance(Wire.rejection(reply), AuthenticationFailed)
        h, b = packb({"v": VERSION, **hdr}), packb(hello)
        assert _exchange(sock, [b"", h, b], timeout=0.5) is None  # unsigned: ignored
        assert _exchange(sock, [sign(good.key, h, b), h], timeout=0.5) is None  # two frames
        assert _exchange(sock, good.frames(hdr, hello)) is not None  # now a session

        bad_body = b"\xc1"
        err = _error(_exchange(sock, [sign(good.key, h, bad_body), h, bad_body]), good)
        assert isinstance(err, BadMessage)
        err = _error(_exchange(sock, good.frames({**hdr, "id": 2}, ["not", "a", "map"])), good)
        assert isinstance(err, BadMessage)
        unknown = request_body(3, "format_disk", {}, None)
        err = _error(_exchange(sock, good.frames(hdr, unknown)), good)
        assert isinstance(err, UnknownOperation) and "format_disk" in str(err)
        args = request_body(4, "kv.create", {"path": "/shared/x"}, None)
        assert isinstance(_error(_exchange(sock, good.frames(hdr, args)), good), InvalidArgument)
        huge = request_body(5, "send", {"pid": 1, "data": "x" * (17 * 2**20)}, 1)
        assert _exchange(sock, good.frames({**hdr, "id": 5}, huge), timeout=2) is None  # unread
    finally:
        sock.close(linger=0)
        ctx.term()

    wrong = engine.tmp / "wrong.json"
    wrong_info = dataclasses.replace(info, token="0" * 64)
    wrong.write_text(json.dumps(dataclasses.asdict(wrong_info)))

    async def body() -> None:
        with pytest.raises(AuthenticationFailed):
            await Client.connect(wrong, user="mallory", timeout=5)
        alice = await Client.connect(engine.conn, user="alice")  # the engine still serves
        lip = await alice.attach("after")
        with pytest.raises(MessageTooLarge):  # the client knows the engine's limit: not sent
            await lip.send(lip.pid, "x" * alice.engine["max_message"])
        assert len(await greedy(lip, PROMPT, 3)) == 3
        root = await lip.kv.create()
        await lip.forward(root, PROMPT, outputs=[])
        forks = [await lip.kv.fork(root) for _ in range(8)]
        outs = await asyncio.gather(
            *(lip.forward(f, [i], returns=Sample()) for i, f in enumerate(forks))
        )
        assert all(isinstance(t, int) for t in outs)
        widest = max(len(b.data["calls"]) for b in await alice.trace(pid=lip.pid, kinds=["batch"]))
        assert widest >= 4, "calls from concurrent tasks were not pipelined into one batch"
        await lip.exit()
        await alice.close()

    run(body())
    with SyncClient(info, user="alice") as probe:
        after = probe.call("stat_engine")
        procs = [tuple(p) for p in probe.call("ps")]
    same = ("pages_used", "pages_swapped", "processes")
    assert {k: after[k] for k in same} == {k: before[0][k] for k in same}
    assert procs[: len(before[1])] == before[1] and [p[1] for p in procs[len(before[1]) :]] == [
        "after"
    ]


def _cli(engine: EngineProcess, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "engine.cli", *args, "--connection-file", str(engine.conn)]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=30)


def test_a_sync_client_silent_past_its_heartbeat_says_hello_again(engine: EngineProcess) -> None:
    with SyncClient.connect(engine.conn, user="carol") as client:
        client.call("ps")
        time.sleep(HEARTBEAT_TIMEOUT + 0.6)  # no heartbeats: the engine has ended this session
        assert isinstance(client.call("kv.listdir", {"path": "/"}), list)


def test_calls_that_wait_are_pipelined_and_end_when_their_process_is_killed(
    engine: EngineProcess,
) -> None:
    """A call that waits (receive) goes on beside quick ones; killing its process ends it."""

    async def body() -> None:
        alice = await Client.connect(engine.conn, user="alice")
        lip = await alice.attach("waits")
        receiving = asyncio.create_task(lip.receive(timeout=30))
        await asyncio.sleep(0.2)
        assert {p.pid: p.state for p in await lip.ps()}[lip.pid] == "waiting"  # served meanwhile
        started = time.monotonic()
        await alice.kill(lip.pid)
        with pytest.raises(ProcessExited):
            await receiving
        assert time.monotonic() - started < 2.0
        other = await alice.attach("after")  # the engine serves on
        live = [p.pid for p in await other.ps() if p.owner == "alice" and p.state != "exited"]
        assert live == [other.pid]
        await alice.close()

    run(body())


def test_cli_commands_then_stop(engine: EngineProcess) -> None:
    info = connection.read(engine.conn)
    ipc_socket = Path(info.ipc.removeprefix("ipc://"))
    assert ipc_socket.is_socket() and info.local_address == info.ipc  # clients here use it

    async def body() -> None:
        no_tcp = dataclasses.replace(info, port=1)  # nothing listens there: only ipc can answer
        async with await Client.connect(no_tcp, user="alice", timeout=5) as local:
            assert local.address == info.ipc and isinstance(await local.ps(), list)
        alice = await Client.connect(engine.conn, user="alice")
        lip = await alice.attach("cli-target")
        f = await lip.kv.create("/home/alice/cli-file")
        await lip.forward(f, PROMPT, outputs=[])

        ps = _cli(engine, "ps", "--user", "alice")
        assert ps.returncode == 0 and "cli-target" in ps.stdout and "alice" in ps.stdout
        ls = _cli(engine, "ls", "/home/alice", "--user", "alice")
        assert ls.stdout.split() == ["cli-file"]
        stat = _cli(engine, "stat", "/home/alice/cli-file", "--user", "alice")
        assert f"tokens        {len(PROMPT)}" in stat.stdout and "0o600" in stat.stdout
        assert (
            "PermissionDenied"
            in _cli(engine, "stat", "/home/alice/cli-file", "--user", "bob").stderr
        )
        denied = _cli(engine, "kill", str(lip.pid), "--user", "bob")
        assert denied.returncode == 1 and "PermissionDenied" in denied.stderr
        assert _cli(engine, "kill", str(lip.pid), "--user", "alice").returncode == 0
        with pytest.raises(ProcessExited):
            await lip.forward(f, [1])
        await alice.close()

    run(body())
    stop = _cli(engine, "stop")
    assert stop.returncode == 0, stop.stderr
    assert engine.proc.wait(10) == 0
    assert not engine.conn.exists() and not ipc_socket.parent.exists()
    gone = _cli(engine, "ps")
    assert gone.returncode == 1 and "no engine is running" in gone.stderr
    no_model = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--model", str(engine.tmp)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert no_model.returncode == 2 and "config.json: missing config.json" in no_model.stderr


def test_bench_rpc_measures_both_sides(tiny_loaded) -> None:  # noqa: ANN001
    from engine.bench import rpc

    times = rpc.measure(tiny_loaded, runs=1)
    assert set(times) == {"noop", "forward-1", "transport"}
    for remote, inside in times.values():
        assert len(remote) == len(inside) == rpc.BLOCK and min(remote) > 0 and min(inside) > 0
    noop, echo = times["transport"]
    assert noop == times["noop"][0]
    # the bare echo carries the same frames with nothing done at either end
    assert statistics.median(echo) < statistics.median(noop)
