"""Every call an engine serves, declared once, without torch.

A declaration (`Call`) gives a call's name, its parameters with their types and defaults, its
result type, who makes it (`By`), whether it may wait, and whether the engine serves it as an op
of that name. The in-process `engine.syscalls.Syscalls`, the server's op table
(`engine.server`), the client's `LIP`, `KVCalls` and `Client` (`workbench.client`), the names a
`%%lip` cell gets (`workbench.names`), the calls the widgets make (`workbench.widgets.live.Source`)
and the CLI commands are checked against these declarations (tests/unit/test_calls.py), and the
server checks every request's arguments by them before anything runs, then gives the handler
the op's record made from them (`engine.wire.arguments.arguments_of`).

Adding a call: declare it here, then write its handler (a `Syscalls` or `KVCalls` method for a
process's call, an `EngineServer` method for a session call) and the client's method; the test
names whatever is missing.

Types: parameters are typed as a client sees them. A KV file handle is a `FileHandle` (on the
wire a map `{"fd", "path", "writable"}`; the server decodes it, by this type, to the engine's
handle of the caller's session); forward's `returns` is a `Returns` (on the wire a map with a
`kind`). Variadic parameters (`*args`, `**kwargs`) travel as a list and a map under their names.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

from engine.wire.records import (
    Event,
    FileHandle,
    FileStat,
    Generation,
    Grammar,
    Identity,
    Message,
    OwnTrace,
    PageMap,
    PolicyInfo,
    PrefixReport,
    ProcessInfo,
    Returns,
    Sample,
    SpecialTokens,
    Spliced,
)


class Required:
    """The default of a parameter that has none: the caller must give it."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = Required()
POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY
VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD


class Param(NamedTuple):
    """One parameter: its name, its type (as a client passes it), its default."""

    name: str
    type: Any
    default: Any = REQUIRED
    kind: inspect._ParameterKind = POSITIONAL

    @property
    def required(self) -> bool:
        return self.default is REQUIRED and self.kind not in (VAR_POSITIONAL, VAR_KEYWORD)


class By(enum.Enum):
    """Who makes a call."""

    PROCESS = "process"  # a process (sent with its pid): Syscalls, LIP, a %%lip cell's names
    EITHER = "either"  # a process, or a client as itself (no pid): also a `Client` method
    CLIENT = "client"  # a client's session, outside any process: `Client` methods, the CLI


class Call(NamedTuple):
    """The declaration of one call."""

    name: str  # the op on the wire: "forward", "kv.fork", "tool.register"
    params: tuple[Param, ...]
    result: Any  # the result's type, as a client gets it
    by: By
    waits: bool  # it may wait (for a forward, a message, a timer, a disk, another process)
    op: bool = True  # the engine serves an op of this name (False: the client does it itself)
    doc: str = ""

    @property
    def needs_process(self) -> bool:
        return self.by is By.PROCESS

    @property
    def method(self) -> str:
        """Its method's name in `Syscalls`/`LIP` (`kv.` calls: in their `kv`) and `Client`."""
        return self.name.removeprefix("kv.")

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def _call(
    name: str,
    by: By,
    result: Any,
    *params: Param,
    waits: bool = False,
    op: bool = True,
    doc: str = "",
) -> Call:
    return Call(name, params, result, by, waits, op, doc)


P = Param
HandleOrPath = FileHandle | str
PROCESS, EITHER, CLIENT = By.PROCESS, By.EITHER, By.CLIENT

CALLS: tuple[Call, ...] = (
    # --- text ------------------------------------------------------------------------------------
    _call("tokenize", PROCESS, list[int], P("text", str), op=False, doc="text -> token ids"),
    _call("detokenize", PROCESS, str, P("ids", Sequence[int]), op=False, doc="ids -> text"),
    _call(
        "chat_template",
        PROCESS,
        list[int],
        P("messages", Sequence[dict[str, Any]]),
        P("add_generation_prompt", bool, True),
        doc="the model's chat template applied to messages, as token ids",
    ),
    _call("special_tokens", PROCESS, SpecialTokens, doc="bos, eos, stop, pad, unk"),
    _call("vocab_size", PROCESS, int, doc="how many token ids the model has"),
    _call("context_length", PROCESS, int, doc="how many positions the model has"),
    # --- the model -------------------------------------------------------------------------------
    _call(
        "forward",
        PROCESS,
        Any,
        P("file", FileHandle),
        P("tokens", Sequence[int]),
        P("positions", Sequence[int] | None, None),
        P("mask", Any, None),
        P("outputs", Sequence[int] | None, None),
        P("returns", Returns | None, None),
        waits=True,
        doc="append tokens to a KV file and compute what `returns` asks for",
    ),
    _call(
        "sample_loop",
        PROCESS,
        Generation,
        P("file", FileHandle),
        P("tokens", Sequence[int]),
        P("max_tokens", int, 64),
        P("returns", Sample | None, None),
        P("stop_ids", Sequence[int], ()),
        P("stop", Sequence[str], ()),
        P("before", Sequence[int], ()),
        waits=True,
        doc="append tokens, then sample up to max_tokens in the engine: stop tokens and strings",
    ),
    # --- processes -------------------------------------------------------------------------------
    _call(
        "spawn",
        PROCESS,
        int,
        P("main", Any),
        P("args", Any, kind=VAR_POSITIONAL),
        P("name", str | None, None, KEYWORD_ONLY),
        P("priority", int | None, None, KEYWORD_ONLY),
        op=False,  # over the wire a client ships main's source: `run` with a parent
        doc="a child process running main(sys, *args); its pid",
    ),
    _call("wait", EITHER, Any, P("pid", int), waits=True, doc="a process's result, once it ends"),
    _call("kill", EITHER, None, P("pid", int), doc="end a process (one of this user's)"),
    _call("ps", EITHER, list[ProcessInfo], doc="the process table"),
    _call(
        "send",
        PROCESS,
        None,
        P("pid", int),
        P("data", Any),
        doc="put a message in the inbox of a live process of this user's",
    ),
    _call(
        "receive",
        PROCESS,
        Message,
        P("timeout", float | None, None),
        waits=True,
        doc="the next message sent to this process",
    ),
    _call("sleep", PROCESS, None, P("seconds", float), waits=True, doc="wait that long"),
    _call("whoami", PROCESS, Identity, doc="who this process is: pid, user, home directory"),
    _call(
        "own_trace",
        PROCESS,
        OwnTrace,
        P("after_seq", int | None, None),
        doc="this process's trace: the batches its calls were in, the spans it waited",
    ),
    _call(
        "tool",
        PROCESS,
        Any,
        P("name", str, kind=POSITIONAL_ONLY),
        P("args", list[Any], kind=VAR_POSITIONAL),
        P("kwargs", dict[str, Any], kind=VAR_KEYWORD),
        waits=True,
        doc="call a tool registered on the engine",
    ),
    # --- KV files --------------------------------------------------------------------------------
    _call(
        "kv.create",
        PROCESS,
        FileHandle,
        P("path", str | None, None),
        P("mode", int | None, None),
        doc="a new empty file (default: private, in /proc/<pid>/)",
    ),
    _call(
        "kv.open", PROCESS, FileHandle, P("path", str), P("write", bool, False), doc="open a file"
    ),
    _call("kv.close", PROCESS, None, P("handle", FileHandle), doc="close a handle"),
    _call(
        "kv.fork",
        PROCESS,
        FileHandle,
        P("src", HandleOrPath),
        P("dst", str | None, None),
        doc="a copy-on-write copy of a file",
    ),
    _call(
        "kv.truncate",
        PROCESS,
        None,
        P("handle", FileHandle),
        P("n", int),
        doc="keep the first n tokens",
    ),
    _call(
        "kv.splice",
        PROCESS,
        Spliced,
        P("handle", FileHandle),
        P("src", HandleOrPath),
        P("start", int, 0),
        P("stop", int | None, None),
        doc="append tokens [start, stop) of a file, sharing its pages; nothing is computed",
    ),
    _call(
        "kv.drop",
        PROCESS,
        None,
        P("handle", FileHandle),
        P("start", int),
        P("stop", int),
        doc="remove tokens [start, stop) and free the pages only they filled",
    ),
    _call(
        "kv.constrain",
        PROCESS,
        None,
        P("handle", FileHandle),
        P("grammar", Grammar | None),
        P("start", int | None, None),
        waits=True,  # while the grammar compiles, off the event loop
        doc="attach a grammar the file's new tokens must match (None detaches it)",
    ),
    _call(
        "kv.hide",
        PROCESS,
        None,
        P("handle", FileHandle),
        P("indices", Sequence[int]),
        doc="hide tokens from attention",
    ),
    _call(
        "kv.unhide",
        PROCESS,
        None,
        P("handle", FileHandle),
        P("indices", Sequence[int]),
        doc="show hidden tokens again",
    ),
    _call("kv.link", EITHER, None, P("src", HandleOrPath), P("dst", str), doc="a second name"),
    _call("kv.rename", EITHER, None, P("src", str), P("dst", str), doc="move a name"),
    _call("kv.unlink", EITHER, None, P("path", str), doc="remove a name"),
    _call("kv.stat", EITHER, FileStat, P("path", HandleOrPath), doc="what a file is"),
    _call("kv.listdir", EITHER, list[str], P("path", str, "/"), doc="a directory's names"),
    _call(
        "kv.explain",
        EITHER,
        PrefixReport,
        P("path", HandleOrPath),
        doc="what automatic prefix sharing took for a file, and why matching stopped",
    ),
    _call(
        "kv.share",
        PROCESS,
        None,
        P("handle", FileHandle),
        P("on", bool),
        doc="switch automatic prefix sharing for one file",
    ),
    _call("kv.chmod", EITHER, None, P("path", str), P("mode", int), doc="change a file's mode"),
    _call(
        "kv.save",
        PROCESS,
        None,
        P("path", HandleOrPath),
        P("dest", str),
        waits=True,
        doc="save a file under a name among this user's saved files",
    ),
    _call(
        "kv.load",
        PROCESS,
        FileHandle,
        P("src", str),
        P("path", str | None, None),
        waits=True,
        doc="a new file from a saved file",
    ),
    # --- views: what the widgets read ------------------------------------------------------------
    _call("kv.walk", EITHER, list[FileStat], P("path", str, "/"), doc="every readable file's stat"),
    _call("kv.pages", EITHER, PageMap, doc="the page pool: each page's holders"),
    _call(
        "kv.read",
        EITHER,
        list[int],
        P("path", HandleOrPath),
        P("start", int, 0),
        P("stop", int | None, None),
        doc="a readable file's token ids",
    ),
    # --- the session -----------------------------------------------------------------------------
    _call(
        "hello",
        CLIENT,
        dict[str, Any],
        P("user", str),
        P("name", str, "client"),
        doc="begin a session as a user",
    ),
    _call(
        "attach",
        CLIENT,
        int,
        P("name", str, "lip"),
        P("priority", int, 0),
        doc="a new process whose code runs in the client; its pid",
    ),
    _call(
        "detach",
        CLIENT,
        None,
        P("pid", int),
        P("error", str | None, None),
        doc="end an attached process",
    ),
    _call(
        "trace",
        CLIENT,
        list[Event],
        P("since", float | None, None),
        P("until", float | None, None),
        P("pid", int | None, None),
        P("kinds", Sequence[str] | None, None),
        P("after_seq", int | None, None),
        P("limit", int, 50_000),
        doc="trace events, earliest first",
    ),
    _call("stat_engine", CLIENT, dict[str, Any], doc="pages, batches, model, device, ..."),
    _call("sessions", CLIENT, list[dict[str, Any]], doc="the connected clients"),
    _call("noop", CLIENT, None, doc="nothing: a round trip"),
    _call(
        "drop_caches",
        CLIENT,
        int,
        doc="evict every page the prefix cache keeps (the engine's owner only); how many",
    ),
    _call("policy", CLIENT, PolicyInfo, doc="the engine's batch policy and its settings"),
    _call(
        "set_policy",
        CLIENT,
        PolicyInfo,
        P("name", str),
        P("settings", dict[str, Any] | None, None),
        doc="set the batch policy by name (the engine's owner only): eager, adaptive, ...",
    ),
    _call("goodbye", CLIENT, None, doc="the client is closing: end its session now"),
    _call("shutdown", CLIENT, None, doc="stop the engine"),
    # --- server runs (engine.workers) ------------------------------------------------------------
    _call(
        "run",
        CLIENT,
        int,
        P("code", str),
        P("name", str, "lip"),
        P("priority", int, 0),
        P("timeout", float | None, 600.0),
        P("memory_mb", int | None, None),
        P("parent", int | None, None),
        waits=True,  # for the worker's process to start
        doc="run a cell's code in an engine-side worker; its pid, at once",
    ),
    _call(
        "output",
        CLIENT,
        dict[str, Any],
        P("pid", int),
        P("after", int, 0),
        waits=True,
        doc="a server run's output after chunk `after` (long-polled)",
    ),
    _call("worker.adopt", CLIENT, dict[str, Any], P("key", str), doc="a worker takes its pid"),
    _call(
        "worker.exit",
        CLIENT,
        None,
        P("pid", int),
        P("error", dict[str, Any] | None, None),
        P("traceback", str | None, None),
        P("result", Any, None),
        doc="a worker's cell ended",
    ),
    # --- users' credentials and tools ------------------------------------------------------------
    _call("user.add", CLIENT, dict[str, Any], P("user", str), doc="issue a user's credential"),
    _call("user.remove", CLIENT, bool, P("user", str), doc="revoke a user's credential"),
    _call(
        "tool.register",
        CLIENT,
        dict[str, Any],
        P("name", str),
        P("source", str),
        P("timeout", float | None, None),
        waits=True,
        doc="register a tool (a self-contained function's source)",
    ),
    _call("tool.list", CLIENT, list[dict[str, Any]], doc="the engine's tools"),
)

BY_NAME: dict[str, Call] = {c.name: c for c in CALLS}
OPS: dict[str, Call] = {c.name: c for c in CALLS if c.op}  # what the engine serves
PROCESS_CALLS = tuple(c for c in CALLS if c.by is not CLIENT and not c.name.startswith("kv."))
KV_CALLS = tuple(c for c in CALLS if c.by is not CLIENT and c.name.startswith("kv."))
CLIENT_CALLS = tuple(c for c in CALLS if c.by is not PROCESS)  # a client makes without a pid
