"""Fuzzing the wire of a real engine process (issue 18): hypothesis makes frames, headers and
msgpack bodies, signed with the token, with a wrong one, or unsigned, and sends them from one
raw peer while a LIP of another client decodes beside it.

Every message is answered or dropped: after each one the peer sends a signed `noop` and waits
for its reply (the engine reads one peer's messages in order), so nothing is left to chance.
The engine never dies, every error it sends back is a typed engine error (never a raw
`TypeError`), and the LIP's tokens are the ones it writes alone. Bounded: about 15 s of messages.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgpack
import pytest
import zmq
from engine_process import EngineProcess, engine_process
from engine_process import greedy as decode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.wire import connection
from engine.wire.calls import BY_NAME
from engine.wire.errors import EngineError
from engine.wire.protocol import (
    RECORD_EXT,
    REPLY,
    REQUEST,
    VERSION,
    Wire,
    packb,
    rebuild_error,
    sign,
)
from workbench.client import Client

PROMPT = [5, 17, 42, 9, 100, 3, 77, 8, 61, 12]
# Ops a hostile peer may call at random. Not: shutdown (any token holder may stop the engine),
# run and tool.register (they run code, by design), goodbye (it would end the fuzzing session).
OPS = [
    "hello", "attach", "detach", "trace", "stat_engine", "sessions", "noop", "forward",
    "tokenize", "detokenize", "wait", "kill", "ps", "send", "receive", "sleep", "output",
    "worker.adopt", "worker.exit", "tool.list", "tool", "no.such.op",
    *(f"kv.{op}" for op in (
        "create", "open", "close", "fork", "truncate", "hide", "unhide", "link", "rename",
        "unlink", "stat", "listdir", "chmod", "save", "load", "walk", "pages", "read",
    )),
]  # fmt: skip
NAMES = ["file", "handle", "src", "dst", "path", "tokens", "positions", "mask", "outputs",
         "returns", "n", "indices", "mode", "pid", "data", "timeout", "seconds", "name", "user",
         "priority", "error", "limit", "kinds", "since", "args", "kwargs", "key", "write",
         "start", "stop", "text", "ids", "after"]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.sampled_from(["/", "/proc/1/kv0", "/home/fuzz/x", "/shared/x", "..", "topk", "sample"]),
)
records = st.builds(
    lambda name, values: msgpack.ExtType(RECORD_EXT, msgpack.packb([name, values])),
    st.sampled_from(["Distribution", "Message", "FileStat", "Event", "Nope"]),
    st.lists(st.integers(0, 3), max_size=3),
)
values = st.recursive(
    st.one_of(scalars, records),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(NAMES), inner, max_size=4)
    ),
    max_leaves=12,
)
handles = st.fixed_dictionaries(
    {"fd": st.integers(-2, 40), "path": st.text(max_size=8), "writable": st.booleans()}
)
returns = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["topk", "sample", "logprobs", "logits", "beam"])},
        optional={
            "k": values,
            "temperature": values,
            "top_k": values,
            "seed": values,
            "tokens": values,
        },  # fmt: skip
    ),
)


class Packed(NamedTuple):
    """A body sent as these bytes."""

    data: bytes


ME, MINE = "<the peer's pid>", "<a handle of the peer's process>"  # filled in when sent


def params(op: str) -> list[str]:
    """The argument names a call takes (from its declaration), where it has one."""
    call = BY_NAME.get(op)
    return [] if call is None else [p.name for p in call.params]


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, Any, Any]:
    """(how it is signed, header, body), or ("raw", frames, None): a request of a real op with
    arguments by its parameters' names most often, anything at all too."""
    signing = draw(st.sampled_from(["token", "token", "token", "wrong", "unsigned", "raw"]))
    if signing == "raw":  # any frames at all
        return signing, draw(st.lists(st.binary(max_size=64), max_size=5)), None
    body: Any
    if draw(st.integers(0, 9)) == 0:  # nested deep: records (each a C call to unpack) or arrays
        depth = draw(st.integers(1, 400))
        body = Packed(draw(st.sampled_from([b"\xd4\x01", b"\x91", b"\x81\xa1k"])) * depth + b"\x00")
    elif draw(st.integers(0, 3)):
        op = draw(st.sampled_from(OPS))
        real = params(op) if draw(st.integers(0, 4)) else []
        plausible = st.one_of(
            values, handles, returns, st.lists(st.integers(-1, 300), max_size=4), st.just(MINE)
        )
        body = {
            "id": draw(st.integers(1, 10**6)),
            "op": op,
            "args": draw(st.dictionaries(st.sampled_from(real or NAMES), plausible, max_size=4)),
            "pid": draw(st.sampled_from([ME, ME, None, 0, -1, 10**9])),
        }
    else:
        body = draw(values)
    header = draw(
        st.one_of(
            st.just({"kind": REQUEST}),
            st.dictionaries(st.sampled_from(["kind", "v", "id", "session", "n"]), values),
        )
    )
    return signing, header, body


class Peer:
    def __init__(self, info: connection.ConnectionInfo) -> None:
        self.wire, self.wrong = Wire(info.token), Wire("0" * 64)
        self.session = uuid.uuid4().hex
        self.ids = iter(range(10**7, 10**9))
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)  # an engine that stopped reading: a failure
        self.sock.connect(info.local_address)
        self.errors: list[BaseException] = []
        self.serials = self.wire._serials  # shared with the noops: each number is sent once
        self.pid: int | None = None
        self.handle: dict[str, Any] = {}

    def send(self, signing: str, header: Any, body: Any) -> None:
        if signing == "raw":
            self.sock.send_multipart(header or [b""])
            return
        if isinstance(body, dict) and isinstance(body.get("args"), dict):
            body["pid"] = self.pid if body.get("pid") == ME else body.get("pid")
            body["args"] = {k: self.handle if v == MINE else v for k, v in body["args"].items()}
        b = body.data if isinstance(body, Packed) else packb(body)
        if header.get("kind") == REQUEST:  # well-formed: this session's, numbered
            header = {"v": VERSION, "session": self.session, **header, "n": next(self.serials)}
        h = packb(header)
        key = {"token": self.wire.key, "wrong": self.wrong.key}.get(signing)
        self.sock.send_multipart([b"" if key is None else sign(key, h, b), h, b])

    def call(self, op: str, args: dict[str, Any], pid: int | None = None) -> Any:
        """A signed request; replies to earlier messages that come first are checked."""
        rid = next(self.ids)
        header = {"kind": REQUEST, "session": self.session, "id": rid}
        self.sock.send_multipart(
            self.wire.frames(header, {"id": rid, "op": op, "args": args, "pid": pid})
        )
        deadline = time.monotonic() + 10
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000)):
            frames = self.sock.recv_multipart()
            if frames[0] == b"":  # the engine's unsigned "wrong token" reply
                continue
            msg = self.wire.parse(frames)
            if msg.header["kind"] != REPLY:  # a pong
                continue
            # the replies the engine made in one loop turn come in one message, as a list
            for body in msg.body if isinstance(msg.body, list) else [msg.body]:
                if not body["ok"]:
                    self.errors.append(rebuild_error(body["error"]))
                if body["id"] == rid:
                    return body.get("result")
        raise AssertionError(f"no answer to {op} in 10 s")

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with engine_process(tmp, "--num-pages", "4096", "--page-size", "4") as e:
        yield e


async def greedy(lip: Any, n: int = 8) -> list[int]:
    return await decode(lip, PROMPT, n)


def test_the_engine_answers_or_drops_every_message_and_never_dies(engine: EngineProcess) -> None:
    info = connection.read(engine.conn)
    stop = threading.Event()
    lip_outputs: list[list[int]] = []
    reference: list[int] = []
    ready = threading.Event()

    async def decode() -> None:  # another client's LIP, all along
        async with (
            await Client.connect(engine.conn, user="alice") as alice,
            await alice.attach("beside-the-fuzz") as lip,
        ):
            reference.extend(await greedy(lip))
            ready.set()
            while not stop.is_set():
                lip_outputs.append(await greedy(lip))

    failures: list[BaseException] = []

    def run_lip() -> None:
        try:
            asyncio.run(asyncio.wait_for(decode(), 120))
        except BaseException as e:
            failures.append(e)
            ready.set()

    lip_thread = threading.Thread(target=run_lip)
    lip_thread.start()
    assert ready.wait(60) and not failures, failures
    peer = Peer(info)
    peer.call("hello", {"user": "fuzz", "name": "fuzz"})
    peer.pid = peer.call("attach", {"name": "fuzzed"})  # a process for the calls that need one
    peer.handle = peer.call("kv.create", {}, peer.pid)
    started = time.monotonic()
    sent: list[str] = []

    @settings(
        max_examples=2000,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(messages())
    def one_message(message: tuple[str, Any, Any]) -> None:
        if time.monotonic() - started > 15:
            return  # bounded in time, whatever the machine
        sent.append(message[0])
        peer.send(*message)
        assert peer.call("noop", {}) is None  # the message before it was answered or dropped
        assert engine.proc.poll() is None, engine.log

    try:
        one_message()
    finally:
        stop.set()
        lip_thread.join(60)
        peer.close()
    assert engine.proc.poll() is None, engine.log
    assert not failures, failures
    assert len(sent) > 100 and {"token", "wrong", "unsigned", "raw"} <= set(sent)
    print(f"{len(sent)} messages, the LIP decoded {len(lip_outputs)} times beside them")
    raw = [e for e in peer.errors if not isinstance(e, (EngineError, TimeoutError))]
    assert not raw, f"errors that are not typed engine errors: {raw[:5]}"
    assert lip_outputs and all(out == reference for out in lip_outputs)
