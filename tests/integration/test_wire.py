"""The wire against hostile and careless peers (issue 18, items 6 to 9): a real `symphony serve`
process, raw ZeroMQ sockets that send exactly the frames a test makes, and real clients beside
them whose output must stay right.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from engine_process import EngineProcess, engine_process
from engine_process import greedy as decode

from engine.wire import connection
from engine.wire.errors import BadArgument, BadMessage, InvalidArgument, ToolFailed
from engine.wire.protocol import (
    MAX_DEPTH,
    PING,
    RECORD_EXT,
    REPLY,
    REQUEST,
    VERSION,
    Wire,
    packb,
    rebuild_error,
    request_body,
    sign,
)
from workbench.client import Client

REPO = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SYMPHONY_")}
ENV.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
PROMPT = [5, 17, 42, 9, 100, 3, 77, 8, 61, 12]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    with engine_process(
        tmp_path_factory.mktemp("wire"), "--num-pages", "256", "--page-size", "4"
    ) as e:
        yield e


class Raw:
    """A raw ZeroMQ peer holding the token: it sends exactly the frames it is given."""

    def __init__(self, engine: EngineProcess, session: str | None = None) -> None:
        self.info = connection.read(engine.conn)
        self.wire = Wire(self.info.token)
        self.session = session or uuid.uuid4().hex
        self.ids = iter(range(1, 1 << 30))
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.info.local_address)

    def request(self, op: str, args: dict[str, Any], pid: int | None = None) -> list[bytes]:
        """The signed frames of a request (not sent)."""
        rid = next(self.ids)
        header = {"kind": REQUEST, "session": self.session, "id": rid}
        return self.wire.frames(header, request_body(rid, op, args, pid))

    def reply(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The body of the next reply, None if none comes within timeout."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.wire.parse(self.sock.recv_multipart()).body  # type: ignore[no-any-return]

    def exchange(self, frames: list[bytes], timeout: float = 5.0) -> dict[str, Any] | None:
        self.sock.send_multipart(frames)
        return self.reply(timeout)

    def call(self, op: str, args: dict[str, Any] | None = None, pid: int | None = None) -> Any:
        body = self.exchange(self.request(op, args or {}, pid))
        assert body is not None, f"no reply to {op}"
        if not body["ok"]:
            raise rebuild_error(body["error"])
        return body["result"]

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def alive(engine: EngineProcess) -> None:
    assert engine.proc.poll() is None, f"the engine died ({engine.proc.returncode}):\n{engine.log}"


async def greedy(lip: Any, n: int = 12) -> list[int]:
    return await decode(lip, PROMPT, n)


@pytest.fixture(scope="module")
def reference(engine: EngineProcess) -> list[int]:
    """What a greedy LIP writes on this engine when nobody disturbs it."""

    async def body() -> list[int]:
        async with (
            await Client.connect(engine.conn, user="alice") as alice,
            await alice.attach("reference") as lip,
        ):
            return await greedy(lip)

    return asyncio.run(body())


def nested_records(levels: int) -> bytes:
    """msgpack for a record inside a record ... `levels` deep: 3 bytes a level."""
    data = msgpack.packb(0)
    for _ in range(levels):
        data = msgpack.packb(msgpack.ExtType(RECORD_EXT, data))
    return data  # type: ignore[no-any-return]


# ---- 6: nesting -------------------------------------------------------------------------------


def test_a_deeply_nested_signed_message_is_refused_and_the_engine_serves_on(
    engine: EngineProcess,
) -> None:
    raw = Raw(engine)
    try:
        raw.call("hello", {"user": "mallory", "name": "deep"})
        deep = nested_records(250)
        assert len(deep) < 1024
        plain = b"\x91" * 200 + b"\xc0"
        for n, body in ((100, deep), (101, plain)):  # records 250 deep; arrays 200 deep
            header = packb({"v": VERSION, "kind": REQUEST, "session": raw.session, "id": 7, "n": n})
            reply = raw.exchange([sign(raw.wire.key, header, body), header, body])
            alive(engine)
            assert reply is not None and reply["id"] == 7 and not reply["ok"]
            error = rebuild_error(reply["error"])
            assert isinstance(error, BadMessage) and f"nested more than {MAX_DEPTH}" in str(error)
        assert raw.call("noop") is None  # the same session goes on
        data = {"nested": [[[[["as deep as a user's data may go"]]]]]}
        pid = raw.call("attach", {"name": "deep"})
        raw.call("send", {"pid": pid, "data": data}, pid)
        assert raw.call("receive", {"timeout": 5}, pid).data == data
    finally:
        raw.close()


FAKE_ENGINE_CLIENT = """
import asyncio, sys
from engine.wire.errors import EngineNotRunning
from workbench.client import Client

async def main() -> None:
    try:
        await Client.connect(sys.argv[1], user="victim", timeout=3)
    except EngineNotRunning:
        print("no engine", flush=True)

asyncio.run(main())
"""


def test_a_client_survives_deep_replies_from_whoever_answers_on_the_engines_port(
    tmp_path: Path,
) -> None:
    """No token needed: an unsigned reply under 1 KB, nested deep, must not crash a kernel."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    info = connection.ConnectionInfo("tcp", "127.0.0.1", port, "0" * 64, os.getpid(), "m", "cpu")
    conn = tmp_path / "fake.json"
    conn.write_text(json.dumps(dataclasses.asdict(info)))
    client = subprocess.Popen(
        [sys.executable, "-c", FAKE_ENGINE_CLIENT, str(conn)],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    header = packb({"v": VERSION, "kind": REPLY, "session": "", "id": None, "n": 1})
    answers = [
        [b"", header, nested_records(250)],  # unsigned: the client reads these
        [b"", header, b"\x81\xa5error" + b"\x91" * 900 + b"\xc0"],
        [b"0" * 64, header, nested_records(250)],  # signed with some key
    ]
    try:
        deadline = time.monotonic() + 20
        while client.poll() is None and time.monotonic() < deadline:
            if router.poll(100):
                identity, *_ = router.recv_multipart()
                for frames in answers:
                    router.send_multipart([identity, *frames])
        out, err = client.communicate(timeout=10)
    finally:
        router.close(linger=0)
        ctx.term()
    assert client.returncode == 0, f"the client died ({client.returncode}): {err}"
    assert out == "no engine\n"


# ---- 7: size, before anything is hashed -----------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def flood(engine: EngineProcess, sizes: list[int], peers: int, rounds: int) -> None:
    """Unauthenticated peers sending big messages with made-up signatures: each peer sends
    `rounds` of one message of each size (bounded: this machine is shared)."""
    info = connection.read(engine.conn)
    ctx = zmq.Context()
    socks = []
    for _ in range(peers):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(info.local_address)
        socks.append(s)
    header = packb({"v": VERSION, "kind": REQUEST, "session": "flood", "id": 1, "n": 1})
    bodies = [zmq.Frame(b"\x00" * size) for size in sizes]
    deadline = time.monotonic() + 20
    try:
        for _ in range(rounds):
            for s in socks:
                for body in bodies:
                    while time.monotonic() < deadline:
                        try:
                            s.send_multipart([b"f" * 64, header, body], zmq.NOBLOCK, copy=False)
                            break
                        except zmq.Again:
                            time.sleep(0.01)
        time.sleep(1.0)  # let what was sent arrive
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()


def test_a_flood_of_big_unsigned_messages_is_refused_before_it_piles_up(
    engine: EngineProcess, reference: list[int]
) -> None:
    """30 MB messages (over any valid message) and 8 MB ones (from peers that never signed a
    message right), 0.9 GB in all: the engine's memory stays flat and a LIP beside them writes
    the same."""
    pid = engine.proc.pid
    before = _rss_mb(pid)
    peak = [before]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak.append(_rss_mb(pid))
            time.sleep(0.02)

    flooding = threading.Thread(target=flood, args=(engine, [30 * 2**20, 8 * 2**20], 4, 6))
    watching = threading.Thread(target=watch)
    watching.start()
    flooding.start()

    async def body() -> list[list[int]]:
        async with (
            await Client.connect(engine.conn, user="alice") as alice,
            await alice.attach("beside-a-flood") as lip,
        ):
            return [await greedy(lip) for _ in range(3)]

    try:
        outputs = asyncio.run(asyncio.wait_for(body(), 60))
    finally:
        flooding.join()
        stop.set()
        watching.join()
    alive(engine)
    assert outputs == [reference] * 3
    assert max(peak) - before < 300, f"the engine grew from {before:.0f} to {max(peak):.0f} MB"


# ---- 8: replay --------------------------------------------------------------------------------


def test_captured_messages_replayed_from_another_socket_are_dropped(engine: EngineProcess) -> None:
    victim, thief = Raw(engine), Raw(engine)
    try:
        hello = victim.request("hello", {"user": "victim", "name": "captured"})
        assert victim.exchange(hello)["ok"]  # type: ignore[index]
        pid = victim.call("attach", {"name": "inbox"})
        send = victim.request("send", {"pid": pid, "data": "pay 10"}, pid)
        assert victim.exchange(send)["ok"]  # type: ignore[index]

        assert thief.exchange(send, timeout=0.5) is None  # the captured send, again
        assert victim.exchange(send, timeout=0.5) is None  # from its own socket too
        assert victim.call("receive", {"timeout": 1}, pid).data == "pay 10"
        with pytest.raises(TimeoutError):  # delivered once
            victim.call("receive", {"timeout": 0.2}, pid)

        victim.call("goodbye")  # the victim leaves; its hello is replayed
        assert thief.exchange(hello, timeout=0.5) is None
        names = [s["name"] for s in thief_sessions(engine)]
        assert "captured" not in names
    finally:
        victim.close()
        thief.close()


def thief_sessions(engine: EngineProcess) -> list[dict[str, Any]]:
    raw = Raw(engine)
    try:
        raw.call("hello", {"user": "probe", "name": "probe"})
        return raw.call("sessions")  # type: ignore[no-any-return]
    finally:
        raw.call("goodbye")
        raw.close()


def test_a_replayed_ping_keeps_nobody_alive(engine: EngineProcess) -> None:
    raw = Raw(engine)
    try:
        raw.call("hello", {"user": "pinger", "name": "pings"})
        ping = raw.wire.frames({"kind": PING, "session": raw.session}, {})
        assert raw.exchange(ping) is not None
        assert raw.exchange(ping, timeout=0.3) is None  # a replayed ping keeps nobody alive
        assert raw.exchange(raw.wire.frames({"kind": PING, "session": raw.session}, {})) == {}
    finally:
        raw.close()


# ---- 9: argument types ------------------------------------------------------------------------


def test_wrong_argument_types_are_invalid_arguments_naming_the_argument(
    engine: EngineProcess,
) -> None:
    raw = Raw(engine)
    try:
        raw.call("hello", {"user": "careless", "name": "types"})
        pid = raw.call("attach", {"name": "types"})
        f = raw.call("kv.create", {}, pid)
        cases: list[tuple[str, dict[str, Any], int | None, str]] = [
            ("forward", {"file": f, "tokens": [1.5]}, pid, "tokens"),
            ("forward", {"file": f, "tokens": [True]}, pid, "tokens"),
            ("forward", {"file": f, "tokens": "abc"}, pid, "tokens"),
            ("forward", {"file": f, "tokens": [1], "positions": [0.5]}, pid, "positions"),
            ("forward", {"file": f, "tokens": [1], "outputs": ["0"]}, pid, "outputs"),
            ("forward", {"file": 3, "tokens": [1]}, pid, "file"),
            ("forward", {"tokens": [1]}, pid, "file"),
            (
                "forward",
                {"file": f, "tokens": [1], "returns": {"kind": "topk", "k": 1.5}},
                pid,
                "k",
            ),
            (
                "forward",
                {"file": f, "tokens": [1], "returns": {"kind": "sample", "seed": "x"}},
                pid,
                "seed",
            ),  # noqa: E501
            ("forward", {"file": f, "tokens": [1], "colour": "red"}, pid, "colour"),
            ("kv.truncate", {"handle": f, "n": "3"}, pid, "n"),
            ("kv.hide", {"handle": f, "indices": [0.0]}, pid, "indices"),
            ("kv.create", {"path": 5}, pid, "path"),
            ("kv.chmod", {"path": "/home/careless/x", "mode": "0644"}, None, "mode"),
            ("kv.listdir", {"path": ["/"]}, None, "path"),
            ("kill", {"pid": "1"}, None, "pid"),
            ("wait", {"pid": 1.0}, pid, "pid"),
            ("sleep", {"seconds": "1"}, pid, "seconds"),
            ("sleep", {"seconds": float("nan")}, pid, "seconds"),  # it stopped the engine's timers
            ("receive", {"timeout": float("nan")}, pid, "timeout"),
            ("receive", {"timeout": [1]}, pid, "timeout"),
            ("trace", {"pid": "x"}, None, "pid"),
            ("detach", {"pid": {"a": 1}}, None, "pid"),  # was: TypeError, unhashable type
            ("worker.exit", {"pid": [1]}, None, "pid"),
            ("trace", {"colour": 1}, None, "colour"),
        ]
        for op, args, caller, name in cases:
            with pytest.raises(InvalidArgument, match=name) as err:
                raw.call(op, args, caller)
            assert type(err.value) in (InvalidArgument, BadArgument), (op, args, err.value)
            if isinstance(err.value, BadArgument):  # refused by the declaration: it names both
                assert (err.value.op, err.value.argument) == (op, name), err.value
        assert raw.call("kv.stat", {"path": f}, pid).tokens == 0  # nothing was appended
        started = time.monotonic()
        raw.call("sleep", {"seconds": 0.05}, pid)  # the engine's timers still fire
        assert time.monotonic() - started < 2
        assert isinstance(raw.call("forward", {"file": f, "tokens": [1, 2]}, pid), tuple)
    finally:
        raw.close()


def test_a_client_refuses_float_token_ids_before_sending(engine: EngineProcess) -> None:
    async def body() -> None:
        async with (
            await Client.connect(engine.conn, user="alice") as alice,
            await alice.attach("floats") as lip,
        ):
            f = await lip.kv.create()
            with pytest.raises(InvalidArgument, match="tokens"):
                await lip.forward(f, [1.5])
            with pytest.raises(InvalidArgument, match="positions"):
                await lip.forward(f, [1], positions=[0.0])
            assert (await lip.kv.stat(f)).tokens == 0

    asyncio.run(body())


def test_a_tool_result_too_deep_for_the_wire_fails_that_call_only(engine: EngineProcess) -> None:
    def nest(depth: int) -> list:
        value: list = []
        for _ in range(depth - 1):
            value = [value]
        return value

    async def body() -> None:
        async with (
            await Client.connect(engine.conn, user="alice") as alice,
            await alice.attach("tools") as lip,
        ):
            await alice.register_tool(
                "def nest(depth):\n"
                "    value = []\n"
                "    for _ in range(depth - 1):\n"
                "        value = [value]\n"
                "    return value\n"
            )
            assert await lip.tool("nest", 31) == nest(31)  # as deep as a reply carries
            with pytest.raises(ToolFailed, match="nested 40 deep"):
                await lip.tool("nest", 40)
            assert await lip.tool("nest", 2) == [[]]  # the tool host serves on

    asyncio.run(body())
