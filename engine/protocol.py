"""The wire format between an engine and its clients. No torch: notebooks import this.

Transport: ZeroMQ, a ROUTER socket in the engine and a DEALER per client (a second DEALER
carries the client's heartbeat). Every message is three frames, as in Jupyter's kernel protocol:

    [signature, header, body]      (the ROUTER sees the peer's identity frame before them)

`header` and `body` are msgpack (never pickle). `signature` is the hex HMAC-SHA256 of
header + body keyed by the connection token, checked with `hmac.compare_digest`.

    header   {"v": 2, "kind": "request" | "reply" | "ping" | "pong", "session": str, "id": int}
    request  {"id": int, "op": str, "args": {...}, "pid": int | None}   (pid: the acting LIP)
    reply    {"id": int, "ok": true, "result": ...}
             {"id": int | None, "ok": false, "error": {"type": "PermissionDenied",
                                                       "message": "...", "attrs": {...}}}

Values are plain msgpack; the records of `engine.records` (Distribution, FileStat, ProcessInfo,
Message, Event, PageMap) travel as msgpack extension 1 holding `[name, [values in field order]]`
(the protocol version pins the order), so both ends rebuild the same NamedTuple. A KV file
handle is `{"fd", "path", "writable"}`; forward's `returns=` is `{"kind": "topk", "k"}`,
`{"kind": "sample", "temperature", "top_k", "top_p", "min_p", "seed"}`,
`{"kind": "logprobs", "tokens"}` or `{"kind": "logits"}`.

What the receiver refuses, and how (nothing changes in any case):
- not three frames, or an empty signature: dropped without a reply;
- a wrong signature: an unsigned `AuthenticationFailed` reply (id None): the token is wrong;
- a message over the size limit (16 MiB by default): a signed `MessageTooLarge` reply;
- a header or body that is not a well-formed request: a signed `BadMessage` reply;
- an unknown op: a signed `UnknownOperation` reply.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import functools
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import msgpack
import zmq

from engine import errors
from engine.errors import (
    AuthenticationFailed,
    BadMessage,
    EngineError,
    InvalidArgument,
    MessageTooLarge,
    ProtocolError,
)
from engine.records import (
    RECORDS,
    TUPLE_FIELDS,
    FileHandle,
    Logits,
    LogProbs,
    Returns,
    Sample,
    SamplingParams,
    TopK,
)

VERSION = 2  # 2: records as value lists
MAX_MESSAGE = 16 * 2**20  # bytes of header + body a receiver accepts
MAX_HEADER = 4096
RECORD_EXT = 1
REQUEST, REPLY, PING, PONG = "request", "reply", "ping", "pong"
KINDS = (REQUEST, REPLY, PING, PONG)


class Dropped(ProtocolError):
    """A message not worth an answer (unsigned, wrong frame count): ignored."""


class RemoteError(EngineError):
    """An error from the other side whose type this side does not know."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type = type_name


# ---- values ----


def _default(obj: Any) -> Any:
    """What msgpack cannot pack by itself (strict types: tuples and subclasses come here)."""
    name = type(obj).__name__
    if RECORDS.get(name) is type(obj):
        return msgpack.ExtType(RECORD_EXT, packb([name, list(obj)]))
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (tuple, list, set, frozenset)):
        return list(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if hasattr(obj, "__index__"):  # numpy integers
        return obj.__index__()
    if isinstance(obj, float) or hasattr(obj, "__float__"):
        return float(obj)
    raise TypeError(f"cannot send a {name} over the wire (msgpack values and records only)")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != RECORD_EXT:
        raise BadMessage(f"unknown msgpack extension type {code}")
    name, values = unpackb(data)
    cls = RECORDS.get(name) if isinstance(name, str) else None
    if cls is None or not isinstance(values, list) or len(values) != len(cls._fields):
        raise BadMessage(f"malformed record {name!r}")
    for f in TUPLE_FIELDS.get(name, ()):
        i = cls._fields.index(f)
        if isinstance(values[i], list):
            values[i] = tuple(values[i])
    return cls(*values)


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True)


# ---- signing and framing ----


def new_token() -> str:
    return os.urandom(32).hex()


def sign(key: bytes, header: bytes, body: bytes) -> bytes:
    mac = hmac.new(key, header, hashlib.sha256)
    mac.update(body)
    return mac.hexdigest().encode()


@dataclass(frozen=True)
class Message:
    header: dict[str, Any]
    body: Any


class Wire:
    """Signs outgoing and checks incoming messages for one connection token."""

    def __init__(self, token: str, max_message: int = MAX_MESSAGE) -> None:
        self.key = token.encode()
        self.max_message = max_message

    def frames(self, header: dict[str, Any], body: Any) -> list[bytes]:
        h, b = packb({"v": VERSION, **header}), packb(body)
        return [sign(self.key, h, b), h, b]

    @staticmethod
    def unsigned(header: dict[str, Any], body: Any) -> list[bytes]:
        """For peers whose signature failed: they could not check ours anyway."""
        return [b"", packb({"v": VERSION, **header}), packb(body)]

    def parse(self, frames: Sequence[bytes]) -> Message:
        """The message in frames, or a ProtocolError saying why not (with .request_id if known)."""
        if len(frames) != 3 or not frames[0]:
            raise Dropped("expected three frames with a signature")
        signature, h, b = frames
        if len(h) > MAX_HEADER:
            raise Dropped(f"header of {len(h)} bytes")
        if not hmac.compare_digest(signature, sign(self.key, h, b)):
            raise AuthenticationFailed("bad message signature: is the connection token right?")
        header = self._header(h)
        if len(h) + len(b) > self.max_message:
            raise _with_id(
                MessageTooLarge(
                    f"a message of {len(h) + len(b)} bytes is over the limit of "
                    f"{self.max_message} bytes"
                ),
                header.get("id"),
            )
        try:
            body = unpackb(b)
        except Exception as e:
            raise _with_id(BadMessage(f"body is not msgpack: {e}"), header.get("id")) from None
        return Message(header, body)

    @staticmethod
    def rejection(frames: Sequence[bytes]) -> ProtocolError | None:
        """An unsigned reply saying the peer rejected our signature (wrong token), if it is one."""
        if len(frames) != 3 or frames[0] or len(frames[1]) > MAX_HEADER or len(frames[2]) > 4096:
            return None
        try:
            body = unpackb(frames[2])
        except Exception:
            return None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("type") == AuthenticationFailed.__name__:
            return AuthenticationFailed(
                "the engine rejected this client's signature: is the connection token right?"
            )
        return None

    @staticmethod
    def _header(h: bytes) -> dict[str, Any]:
        try:
            header = unpackb(h)
        except Exception as e:
            raise BadMessage(f"header is not msgpack: {e}") from None
        if not isinstance(header, dict) or header.get("kind") not in KINDS:
            raise BadMessage(f"header must be a map with a kind in {KINDS}")
        if header.get("v") != VERSION:
            raise BadMessage(f"protocol version {header.get('v')!r}; this side speaks {VERSION}")
        rid = header.get("id")
        if not isinstance(rid, (int, type(None))) or isinstance(rid, bool):
            raise BadMessage("header id must be an integer")
        return header


def _with_id(error: ProtocolError, request_id: Any) -> ProtocolError:
    error.request_id = request_id if isinstance(request_id, int) else None  # type: ignore[attr-defined]
    return error


# ---- requests and replies ----


@dataclass(frozen=True)
class Request:
    id: int
    op: str
    args: dict[str, Any]
    pid: int | None


def request_body(id: int, op: str, args: dict[str, Any], pid: int | None) -> dict[str, Any]:
    return {"id": id, "op": op, "args": args, "pid": pid}


def parse_request(body: Any) -> Request:
    if not isinstance(body, dict):
        raise BadMessage("a request body must be a map")
    rid, op, args, pid = body.get("id"), body.get("op"), body.get("args", {}), body.get("pid")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise BadMessage("a request needs an integer id")
    if not isinstance(op, str):
        raise _with_id(BadMessage("a request needs an op (a string)"), rid)
    if not isinstance(args, dict):
        raise _with_id(BadMessage(f"{op}: args must be a map"), rid)
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
        raise _with_id(BadMessage(f"{op}: pid must be an integer"), rid)
    return Request(rid, op, args, pid)


def ok_reply(id: int | None, result: Any) -> dict[str, Any]:
    return {"id": id, "ok": True, "result": result}


def error_reply(id: int | None, error: BaseException) -> dict[str, Any]:
    attrs = {
        k: v
        for k, v in vars(error).items()
        if k != "request_id" and isinstance(v, (str, int, float, bool, type(None)))
    }
    return {
        "id": id,
        "ok": False,
        "error": {"type": type(error).__name__, "message": str(error), "attrs": attrs},
    }


@functools.cache
def _error_types() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    todo: list[type[BaseException]] = [EngineError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, EngineError):
            found[name] = obj
    for name in (
        "ValueError",
        "TypeError",
        "KeyError",
        "IndexError",
        "LookupError",
        "TimeoutError",
        "NotImplementedError",
        "RuntimeError",
        "OverflowError",
        "ZeroDivisionError",
    ):
        found.setdefault(name, getattr(builtins, name))
    return found


def rebuild_error(error: Any) -> BaseException:
    """The exception an error reply describes, as its own type where this side knows it."""
    if not isinstance(error, dict):
        return BadMessage(f"malformed error in reply: {error!r}")
    name, message = str(error.get("type", "?")), str(error.get("message", ""))
    cls = _error_types().get(name)
    if cls is None:
        return RemoteError(name, message)
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    attrs = error.get("attrs")
    if isinstance(attrs, dict):
        exc.__dict__.update({k: v for k, v in attrs.items() if isinstance(k, str)})
    return exc


# ---- handles and forward's returns= ----


def handle_to_wire(handle: FileHandle | Any) -> dict[str, Any]:
    return {"fd": handle.fd, "path": handle.path, "writable": handle.writable}


def is_wire_handle(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("fd"), int)


def returns_to_wire(returns: Returns | None) -> dict[str, Any] | None:
    if returns is None:
        return None
    if isinstance(returns, TopK):
        return {"kind": "topk", "k": returns.k}
    if isinstance(returns, Sample):
        seed = returns.generator
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidArgument("over the wire a Sample's generator is an int seed or None")
        p = returns.params
        return {
            "kind": "sample",
            "temperature": p.temperature,
            "top_k": p.top_k,
            "top_p": p.top_p,
            "min_p": p.min_p,
            "seed": seed,
        }
    if isinstance(returns, LogProbs):
        return {"kind": "logprobs", "tokens": [[int(t) for t in row] for row in returns.tokens]}
    if isinstance(returns, Logits):
        return {"kind": "logits"}
    raise InvalidArgument(f"returns must be TopK, Sample, LogProbs or Logits, not {returns!r}")


def returns_from_wire(spec: Any) -> Returns | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise InvalidArgument(f"returns must be a map with a kind, not {spec!r}")
    kind = spec.get("kind")
    try:
        if kind == "topk":
            return TopK(int(spec["k"]))
        if kind == "sample":
            params = SamplingParams(
                float(spec.get("temperature", 0.0)),
                int(spec.get("top_k", 0)),
                float(spec.get("top_p", 1.0)),
                float(spec.get("min_p", 0.0)),
            )
            return Sample(params, spec.get("seed"))
        if kind == "logprobs":
            return LogProbs([[int(t) for t in row] for row in spec["tokens"]])
        if kind == "logits":
            return Logits()
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidArgument(f"returns {kind!r}: {e}") from None
    raise InvalidArgument(f"returns kind must be topk, sample, logprobs or logits, not {kind!r}")


class SocketReader:
    """Reads a plain ZeroMQ socket from an asyncio loop: `on_frames(frames)` runs in the loop for
    each message as soon as it arrives.

    Cheaper than `zmq.asyncio` by a loop turn or two per message, which is most of a round trip
    on loopback. ZeroMQ's FD is edge-triggered and also changes when the socket sends, so after
    each send call `drain()`, or a message that came in meanwhile could wait unnoticed.
    """

    # plain ints: pyzmq's enum flags cost more than the rest of a small message's handling
    _EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)

    def __init__(self, sock: zmq.Socket, on_frames: Any) -> None:
        self.sock, self.on_frames = sock, on_frames
        self.loop = asyncio.get_running_loop()
        self.fd = sock.getsockopt(zmq.FD)
        self._draining = False
        self.loop.add_reader(self.fd, self.drain)

    def drain(self) -> None:
        if self._draining:  # a handler sent: the loop below reads on after it returns
            return
        self._draining = True
        try:
            sock = self.sock
            while not sock.closed and sock.getsockopt(self._EVENTS) & self._POLLIN:
                try:
                    frames = sock.recv_multipart(self._NOBLOCK)
                except zmq.Again:
                    break
                self.on_frames(frames)
        finally:
            self._draining = False

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
