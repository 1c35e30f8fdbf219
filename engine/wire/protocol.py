"""The wire format between an engine and its clients. No torch: notebooks import this.

Transport: ZeroMQ, a ROUTER socket in the engine and a DEALER per client (a second DEALER
carries the client's heartbeat). Every message is three frames, as in Jupyter's kernel protocol:

    [signature, header, body]      (the ROUTER sees the peer's identity frame before them)

`header` and `body` are msgpack (never pickle). `signature` is the hex HMAC-SHA256 of
header + body keyed by the connection token, checked with `hmac.compare_digest`.

    header   {"v": 3, "kind": "request" | "reply" | "ping" | "pong", "session": str, "id": int,
              "n": int}

`n` numbers the messages a `Wire` sends (requests and pings alike), so no two messages of a
session have the same header, hence the same signature. The engine accepts each (session, n)
once (`ReplayGuard`): a captured message sent again, from any socket, is dropped; the signature
binds it to its session, so it cannot be moved into another. This is Jupyter's digest history
(jupyter_client.session rejects a signature it has seen), made exact: a per-session window of
serial numbers rather than a culled set of digests.
    request  {"id": int, "op": str, "args": {...}, "pid": int | None}   (pid: the acting LIP)
             or a list of such maps: calls a client made at once (an asyncio.gather), which
             the engine starts together, before its next forward, so that they batch as the
             same calls made in the engine's own process do; each gets its own reply
    reply    {"id": int, "ok": true, "result": ...}
             {"id": int | None, "ok": false, "error": {"type": "PermissionDenied",
                                                       "message": "...", "attrs": {...}}}
             or a list of such maps: the replies the engine made to one connection in one
             loop turn (the calls of one batch), so that the client's tasks waiting on them
             resume together and their next calls batch as in process (engine.server)

Values are plain msgpack; the records of `engine.wire.records` (Distribution, FileStat, ProcessInfo,
Message, Event, PageMap) travel as msgpack extension 1 holding `[name, [values in field order]]`
(the protocol version pins the order), so both ends rebuild the same NamedTuple. A KV file
handle is `{"fd", "path", "writable"}`; forward's `returns=` is `{"kind": "topk", "k"}`,
`{"kind": "sample", "temperature", "top_k", "top_p", "min_p", "seed"}`,
`{"kind": "logprobs", "tokens"}` or `{"kind": "logits"}`.

What the receiver refuses, and how (nothing changes in any case). The cheap checks come first:
nothing is hashed or unpacked before its size is known to fit.
- not three frames, or an empty signature: dropped without a reply;
- a header over 4 KiB, or a message over the size limit (16 MiB by default; a sender that has
  not yet signed a message right gets 64 KiB, enough for a hello): dropped unread, before
  hashing. The engine's socket refuses any frame over the limit (ZeroMQ's MAXMSGSIZE), and
  clients check their own requests against the limit that hello reports (`MessageTooLarge`);
- a wrong signature: an unsigned `AuthenticationFailed` reply (id None): the token is wrong;
- a message seen before (same session and `n`): dropped;
- a header or body that is not a well-formed request, or nested deeper than 32 containers
  (maps, arrays, records): a signed `BadMessage` reply. msgpack's own unpacker keeps plain
  nesting on an explicit stack, but each record unpacks its fields in a call of its own, so
  records nested without limit would overflow the C stack: the depth budget is checked before
  each record is unpacked, and the whole value's depth after;
- an unknown op: a signed `UnknownOperation` reply.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import enum
import functools
import hashlib
import hmac
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import msgpack
import zmq

from engine.wire import errors
from engine.wire.errors import (
    AuthenticationFailed,
    BadMessage,
    EngineError,
    InvalidArgument,
    MessageTooLarge,
    ProtocolError,
)
from engine.wire.records import (
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

VERSION = 3  # 2: records as value lists; 3: every header has a serial number n
HEARTBEAT_INTERVAL = 0.5  # seconds between a client's pings (the engine's grace counts them)
HEARTBEAT_TIMEOUT = 5.0  # seconds of silence after which the engine ends a session (default)
MAX_MESSAGE = 16 * 2**20  # bytes of header + body a receiver accepts
MAX_HEADER = 4096
MAX_GREETING = 64 * 2**10  # bytes a sender may send before it has signed a message right
MAX_DEPTH = 32  # containers (maps, arrays, records) nested in a header or a body
MAX_REJECTION = 4096  # bytes of an unsigned reply a client reads (AuthenticationFailed)
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


def _ext_hook(depth_left: int, code: int, data: bytes) -> Any:
    """A record, from extension `code` holding `[name, [values]]`, nested at most depth_left."""
    if code != RECORD_EXT:
        raise BadMessage(f"unknown msgpack extension type {code}")
    if depth_left < 1:  # checked before unpacking: each record level is a C call of its own
        raise BadMessage(f"a value nested more than {MAX_DEPTH} deep")
    record = _unpack(data, depth_left)
    name, values = record if isinstance(record, list) and len(record) == 2 else (None, None)
    cls = RECORDS.get(name) if isinstance(name, str) else None
    if cls is None or not isinstance(values, list) or len(values) != len(cls._fields):
        raise BadMessage(f"malformed record {name!r}")
    for f in TUPLE_FIELDS.get(str(name), ()):
        i = cls._fields.index(f)
        if isinstance(values[i], list):
            values[i] = tuple(values[i])
    return cls(*values)


# Every byte that may open a container (fixmap, fixarray, array/map 16/32, ext): a value can
# nest no deeper than the number of them in its bytes, so most messages need no walk at all.
_OPENERS = bytes([*range(0x80, 0xA0), *range(0xC7, 0xCA), *range(0xD4, 0xD9), *range(0xDC, 0xE0)])
_CONTAINERS = (list, tuple, dict)


def nesting(value: Any) -> int:
    """How many containers (lists, tuples and records, dicts) deep a value is: 0 for a scalar."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        inner: list[Any] = []
        for v in level:
            inner.extend(
                x for x in (v.values() if isinstance(v, dict) else v) if isinstance(x, _CONTAINERS)
            )
        level = inner
    return depth


def _unpack(data: bytes, max_depth: int, records: bool = True) -> Any:
    """data unpacked, or BadMessage if it nests deeper than max_depth (records: extension 1)."""
    hook = functools.partial(_ext_hook, max_depth - 1) if records else _no_ext
    value = msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=True)
    if len(data) - len(data.translate(None, _OPENERS)) > max_depth and nesting(value) > max_depth:
        raise BadMessage(f"a value nested more than {max_depth} deep")
    return value


def _no_ext(code: int, data: bytes) -> Any:
    raise BadMessage(f"no msgpack extension (type {code}) belongs here")


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)


def unpackb(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """A msgpack value with records rebuilt; BadMessage if it nests deeper than max_depth."""
    try:
        return _unpack(data, max_depth)
    except BadMessage:
        raise
    except Exception as e:  # msgpack's own complaints (and StackError, deeper than 1024)
        raise BadMessage(f"not msgpack: {type(e).__name__}: {e}") from None


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
    """Signs outgoing and checks incoming messages for one connection token.

    Each message it signs gets the next serial number `n` in its header (thread-safe: a
    client's heartbeat thread shares its Wire), so no two of its messages sign alike.
    """

    def __init__(self, token: str, max_message: int = MAX_MESSAGE, cred: str = "") -> None:
        self.key = token.encode()
        self.max_message = max_message
        self.cred = cred  # whose credential the token is ("": the engine's owner's)
        self._serials = itertools.count(1)

    def frames(self, header: dict[str, Any], body: Any) -> list[bytes]:
        cred = {"cred": self.cred} if self.cred else {}
        h = packb({"v": VERSION, **header, **cred, "n": next(self._serials)})
        b = packb(body)
        return [sign(self.key, h, b), h, b]

    @staticmethod
    def unsigned(header: dict[str, Any], body: Any) -> list[bytes]:
        """For peers whose signature failed: they could not check ours anyway."""
        return [b"", packb({"v": VERSION, **header}), packb(body)]

    def parse(
        self,
        frames: Sequence[bytes],
        max_size: int | None = None,
        keys: Callable[[str], bytes | None] | None = None,
    ) -> Message:
        """The message in frames, or a ProtocolError saying why not (with .request_id and
        .session once the header is known to be genuine).

        max_size: the most bytes of header + body to read (default: max_message); a bigger
        message is dropped before it is hashed.
        keys: the key of each credential the header may name (`cred`, "" for the owner's);
        default: this Wire's own key for its own credential only.
        """
        if len(frames) != 3 or not frames[0]:
            raise Dropped("expected three frames with a signature")
        signature, h, b = frames
        if len(h) > MAX_HEADER:
            raise Dropped(f"header of {len(h)} bytes")
        limit = self.max_message if max_size is None else min(max_size, self.max_message)
        if len(h) + len(b) > limit:
            raise Dropped(f"a message of {len(h) + len(b)} bytes is over the limit of {limit}")
        try:  # flat and bounded: safe to read before the signature, for the credential it names
            header, bad = self._header(h), None
        except BadMessage as e:
            header, bad = {}, e
        cred = header.get("cred", "")
        key = (keys or self._own_key)(cred) if isinstance(cred, str) else None
        if key is None or not hmac.compare_digest(signature, sign(key, h, b)):
            raise AuthenticationFailed("bad message signature: is the connection token right?")
        if bad is not None:
            raise bad
        try:
            body = unpackb(b)
        except BadMessage as e:
            raise _with_id(BadMessage(f"body: {e}"), header.get("id"), header) from None
        return Message(header, body)

    def _own_key(self, cred: str) -> bytes | None:
        return self.key if cred == self.cred else None

    @staticmethod
    def rejection(frames: Sequence[bytes]) -> ProtocolError | None:
        """An unsigned reply saying the peer rejected our signature (wrong token), if it is one.

        Anyone who answers on the engine's address can send one: it is read only if small, as
        plain msgpack (no records) nested at most 3 deep.
        """
        if len(frames) != 3 or frames[0] or len(frames[1]) > MAX_HEADER:
            return None
        if len(frames[2]) > MAX_REJECTION:
            return None
        try:
            body = _unpack(frames[2], 3, records=False)
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
        """A header: a flat map of scalars (no records, nothing nested)."""
        try:
            header = _unpack(h, 1, records=False)
        except Exception as e:
            raise BadMessage(f"header is not a flat msgpack map: {e}") from None
        if not isinstance(header, dict) or header.get("kind") not in KINDS:
            raise BadMessage(f"header must be a map with a kind in {KINDS}")
        if header.get("v") != VERSION:
            raise BadMessage(f"protocol version {header.get('v')!r}; this side speaks {VERSION}")
        for key in ("id", "n"):
            value = header.get(key)
            if not isinstance(value, (int, type(None))) or isinstance(value, bool):
                raise BadMessage(f"header {key} must be an integer")
        return header


def _with_id(
    error: ProtocolError, request_id: Any, header: dict[str, Any] | None = None
) -> ProtocolError:
    """error, saying which request (and, from a genuine header, which session) it answers."""
    error.request_id = request_id if isinstance(request_id, int) else None  # type: ignore[attr-defined]
    if header is not None:
        session, cred = header.get("session"), header.get("cred", "")
        error.session = session if isinstance(session, str) else ""  # type: ignore[attr-defined]
        error.cred = cred if isinstance(cred, str) else ""  # type: ignore[attr-defined]
    return error


class _Serials:
    """The serial numbers one session has used: everything up to `floor`, and `recent` above."""

    def __init__(self) -> None:
        self.floor = 0
        self.recent: set[int] = set()


class ReplayGuard:
    """Accepts each (session, n) once: a message sent again is a replay.

    Per session it keeps a window of the serials seen (they arrive nearly in order: the calls
    of many tasks and a heartbeat thread interleave); below the window nothing is accepted, so
    the memory is bounded and still no old message passes. The sessions seen last are kept, ended
    ones too (a hello replayed after its client left is refused).
    """

    def __init__(self, sessions: int = 4096, window: int = 1024) -> None:
        self.sessions, self.window = sessions, window
        self._seen: collections.OrderedDict[str, _Serials] = collections.OrderedDict()

    def first_time(self, session: str, n: int) -> bool:
        seen = self._seen.get(session)
        if seen is None:
            seen = self._seen[session] = _Serials()
            if len(self._seen) > self.sessions:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(session)
        if n <= seen.floor or n in seen.recent:
            return False
        seen.recent.add(n)
        if len(seen.recent) > self.window:  # forget the older half; accept none of it again
            old = sorted(seen.recent)[: self.window // 2]
            seen.floor = old[-1]
            seen.recent.difference_update(old)
        return True


class Gate:
    """What an engine lets in, cheapest check first: a message's size before its signature (a
    sender that has not yet signed a message right may send MAX_GREETING bytes), its signature
    before its contents, then its serial number, once per session (ReplayGuard).

    `admit` returns the message or raises: Dropped (no answer), AuthenticationFailed (the
    token is wrong), or another ProtocolError (with .request_id and .session) to answer.
    """

    def __init__(
        self,
        wire: Wire,
        senders: int = 4096,
        keys: Callable[[str], bytes | None] | None = None,
    ) -> None:
        self.wire = wire
        self.keys = keys  # each credential's key (see Wire.parse)
        self.replays = ReplayGuard()
        self.senders = senders
        self._signed: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def admit(self, identity: bytes, frames: Sequence[bytes]) -> Message:
        known = identity in self._signed
        msg = self.wire.parse(frames, None if known else MAX_GREETING, self.keys)
        session, n = msg.header.get("session"), msg.header.get("n")
        if not isinstance(n, int):
            raise Dropped("a message without a serial number n")
        if not self.replays.first_time(str(session), n):
            raise Dropped(f"a replayed message (session {str(session)[:16]!r}, n {n})")
        if known:  # a sender of genuine messages: it may send up to max_message from now on
            self._signed.move_to_end(identity)
        else:
            self._signed[identity] = None
            if len(self._signed) > self.senders:
                self._signed.popitem(last=False)
        return msg


def check_size(frames: Sequence[bytes], limit: int) -> None:
    """MessageTooLarge if frames hold more than a receiver with this limit reads."""
    size = sum(map(len, frames[1:]))
    if size > limit:
        raise MessageTooLarge(f"a message of {size} bytes is over the engine's limit of {limit}")


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
    spec = _returns_to_wire(returns)
    allowed, bias = getattr(returns, "allowed", None), getattr(returns, "bias", None)
    if spec is not None and allowed is not None:  # a call's own constraint (engine.wire.records)
        spec["allowed"] = allowed
    if spec is not None and bias is not None:  # pairs: msgpack maps take str keys only
        spec["bias"] = [[t, v] for t, v in dict(bias).items()]
    return spec


def _returns_to_wire(returns: Returns | None) -> dict[str, Any] | None:
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
    """forward's returns= from its wire map; InvalidArgument naming a missing or mistyped field."""
    returns = _returns_from_wire(spec)
    if returns is None or isinstance(returns, Logits):
        return returns
    allowed, bias = spec.get("allowed"), spec.get("bias")
    if allowed is not None and type(allowed) is not bytes:
        raise InvalidArgument(f"returns: allowed must be bytes or None, not {allowed!r:.40}")
    if bias is not None:
        if not (
            isinstance(bias, list)
            and all(isinstance(p, list) and len(p) == 2 and type(p[0]) is int for p in bias)
        ):
            raise InvalidArgument("returns: bias must be a list of [token id, number] pairs")
        bias = {t: v for t, v in bias}
    return returns._replace(allowed=allowed, bias=bias)


def _returns_from_wire(spec: Any) -> Returns | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise InvalidArgument(f"returns must be a map with a kind, not {spec!r:.40}")
    kind = spec.get("kind")

    def field(name: str, kind_: type, default: Any = ...) -> Any:
        value = spec.get(name, default)
        if value is ...:
            raise InvalidArgument(f"returns {kind!r} needs {name}")
        if kind_ is float and type(value) is int:
            return float(value)
        if type(value) is not kind_:
            raise InvalidArgument(
                f"returns {kind!r}: {name} must be a {kind_.__name__}, not {value!r:.40}"
            )
        return value

    if kind == "topk":
        return TopK(field("k", int))
    if kind == "sample":
        params = SamplingParams(
            field("temperature", float, 0.0),
            field("top_k", int, 0),
            field("top_p", float, 1.0),
            field("min_p", float, 0.0),
        )
        seed = spec.get("seed")
        if seed is not None and type(seed) is not int:
            raise InvalidArgument(
                f"returns 'sample': seed must be an int or None, not {seed!r:.40}"
            )
        return Sample(params, seed)
    if kind == "logprobs":
        rows = field("tokens", list)
        if not all(isinstance(r, list) and all(type(t) is int for t in r) for r in rows):
            raise InvalidArgument("returns 'logprobs': tokens must be lists of int token ids")
        return LogProbs(rows)
    if kind == "logits":
        return Logits()
    raise InvalidArgument(
        f"returns kind must be topk, sample, logprobs or logits, not {kind!r:.40}"
    )


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
        self.fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]  # an int for FD
        self._draining = False
        self.loop.add_reader(self.fd, self.drain)

    def drain(self) -> None:
        if self._draining:  # a handler sent: the loop below reads on after it returns
            return
        self._draining = True
        try:
            sock = self.sock
            while not sock.closed and sock.getsockopt(self._EVENTS) & self._POLLIN:  # type: ignore[operator]
                try:
                    frames = sock.recv_multipart(self._NOBLOCK)
                except zmq.Again:
                    break
                self.on_frames(frames)
        finally:
            self._draining = False

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
