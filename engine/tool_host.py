"""The tool host: `python -m engine.tool_host`, the process beside the engine that runs tools.

Pure Python (it never imports torch), started by `engine.tools.Tools` on the first registration.
Requests and replies are length-prefixed msgpack frames on stdin and the original stdout:

    {"id", "op": "register", "name", "source"} -> {"id", "ok", "result": {"signature", "doc"}}
    {"id", "op": "call", "name", "args", "kwargs"} -> {"id", "ok", "result": value}
    failures: {"id", "ok": false, "error": {"type", "message", "traceback"}}

A tool's `print` goes to the engine's stderr. Calls run in threads, so slow tools overlap; a
coroutine function runs in an event loop of its own. A tool that raises fails that call only.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import linecache
import os
import struct
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from engine.sandbox import cell_traceback, limit_memory
from engine.wire.protocol import MAX_DEPTH, nesting, packb, unpackb

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 2**20
THREADS = 32
MEMORY_ENV = "SYMPHONY_TOOL_MEMORY_MB"


def read_frame(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (n,) = HEADER.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"a frame of {n} bytes")
    body = stream.read(n)
    return unpackb(body) if len(body) == n else None


def frame(msg: Any) -> bytes:
    body = packb(msg)
    return HEADER.pack(len(body)) + body


def define(name: str, source: str) -> Callable[..., Any]:
    """Run a tool's source and return its function: the one called name, else the last one."""
    filename = f"<tool {name}>"
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    tree = ast.parse(source, filename)
    namespace: dict[str, Any] = {"__name__": f"tool_{name}"}
    exec(compile(tree, filename, "exec", dont_inherit=True), namespace)  # noqa: S102
    defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    fn = namespace.get(name) if callable(namespace.get(name)) else None
    if fn is None and defs:
        fn = namespace[defs[-1]]
    if fn is None:
        raise ValueError(f"the source of tool {name!r} defines no function")
    return fn


class Host:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.tools: dict[str, Callable[..., Any]] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="tool")

    def reply(self, msg: dict[str, Any]) -> None:
        try:
            if (depth := nesting(msg.get("result"))) > MAX_DEPTH - 1:  # as a reply's result
                raise ValueError(f"nested {depth} deep, and the wire carries {MAX_DEPTH - 1}")
            data = frame(msg)
        except Exception as e:  # a result msgpack cannot carry
            what = type(msg.get("result")).__name__
            err = TypeError(f"a tool returned a {what}, which cannot be sent ({e})")
            data = frame(self.failure(msg["id"], err, ""))
        with self.lock:
            self.out.write(data)
            self.out.flush()

    @staticmethod
    def failure(rid: Any, error: BaseException, tb: str) -> dict[str, Any]:
        info = {"type": type(error).__name__, "message": str(error), "traceback": tb}
        return {"id": rid, "ok": False, "error": info}

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("op") == "register":
            self.reply(self.register(msg))
        else:
            self.pool.submit(self.call, msg)

    def register(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = msg["name"]
        try:
            fn = define(name, msg["source"])
        except BaseException as e:
            return self.failure(msg["id"], e, cell_traceback(e, f"<tool {name}>"))
        self.tools[name] = fn
        info = {"signature": _signature(fn), "doc": inspect.getdoc(fn) or ""}
        return {"id": msg["id"], "ok": True, "result": info}

    def call(self, msg: dict[str, Any]) -> None:
        name = str(msg.get("name"))
        try:
            fn = self.tools[name]
            result = fn(*msg.get("args") or [], **msg.get("kwargs") or {})
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
        except BaseException as e:  # the tool's own failure: that call fails, the host goes on
            self.reply(self.failure(msg.get("id"), e, cell_traceback(e, f"<tool {name}>")))
            return
        self.reply({"id": msg.get("id"), "ok": True, "result": result})


class _Shown(str):
    """An annotation kept as a string (`from __future__ import annotations`), shown unquoted."""

    def __repr__(self) -> str:
        return str(self)


def _signature(fn: Callable[..., Any]) -> str:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "(...)"

    def shown(a: Any) -> Any:
        return _Shown(a) if isinstance(a, str) else a

    params = [p.replace(annotation=shown(p.annotation)) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=shown(sig.return_annotation)))


def main() -> int:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a tool's print() must not land among the replies
    limit_memory(int(os.environ.get(MEMORY_ENV, "4096")))
    host = Host(out)
    while (msg := read_frame(sys.stdin.buffer)) is not None:
        host.handle(msg)
    host.pool.shutdown(wait=False, cancel_futures=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
