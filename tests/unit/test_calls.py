"""The calls are declared once (engine.wire.calls): everything that offers them agrees.

Each test names the call and the side that drifted from its declaration: the in-process
`Syscalls`, the client's `LIP` and `Client`, the server's op table and its handlers' records, a
`%%lip` cell's names, the widgets' `Source` and the CLI commands.
"""

from __future__ import annotations

import argparse
import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine import cli_client
from engine.server import EngineServer
from engine.syscalls import KVCalls as EngineKV
from engine.syscalls import Syscalls
from engine.wire.arguments import arguments_of, check_call
from engine.wire.calls import (
    BY_NAME,
    CALLS,
    CLIENT_CALLS,
    KV_CALLS,
    OPS,
    PROCESS_CALLS,
    REQUIRED,
    By,
    Call,
)
from engine.wire.errors import BadArgument, InvalidArgument
from engine.wire.protocol import error_reply, rebuild_error
from engine.wire.records import FileStat
from workbench import names
from workbench.client import LIP, Client
from workbench.client import KVCalls as ClientKV
from workbench.widgets.live import Source

# A session call that `Client` offers as a method of the same name and parameters.
CLIENT_SESSION_METHODS = ("attach", "trace", "stat_engine", "sessions", "policy", "set_policy")


def shape(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """(name, kind, default) of each parameter but self."""
    params = inspect.signature(fn).parameters.values()
    return [
        (p.name, p.kind, REQUIRED if p.default is p.empty else p.default)
        for p in params
        if p.name != "self"
    ]


def declared(call: Call) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in call.params]


def hints(fn: Callable[..., Any], call: Call) -> dict[str, str]:
    """The type hint of each parameter the wire carries as declared, as text (the engine's
    handle read as the client's)."""
    found = typing.get_type_hints(fn, localns={"Program": Any, "Kernel": Any})
    text = {name: _text(found.get(name, Any)) for name in declared_hints(call)}
    return {name: t.replace("engine.kvfs.Handle", "FileHandle") for name, t in text.items()}


def _text(hint: Any) -> str:
    return (
        repr(hint)
        .replace("engine.wire.records.", "")
        .replace("collections.abc.", "")
        .replace("typing.", "")
    )


def declared_hints(call: Call) -> dict[str, str]:
    """The declared types a side must take as they are: not those of calls a client makes
    locally (tokenize, spawn), nor the wire's list and map for `*args` and `**kwargs`."""
    if not call.op:
        return {}
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {p.name: _text(p.type) for p in call.params if p.kind not in variadic}


def test_every_call_is_declared_once_with_a_distinct_name() -> None:
    assert len({c.name for c in CALLS}) == len(CALLS)
    assert set(BY_NAME) == {c.name for c in CALLS}
    assert all(c.op for c in CALLS if c.by is not By.PROCESS)  # only a process's run locally


@pytest.mark.parametrize("call", PROCESS_CALLS + KV_CALLS, ids=lambda c: c.name)
def test_syscalls_have_each_process_call_as_declared(call: Call) -> None:
    fn = getattr(EngineKV if call.name.startswith("kv.") else Syscalls, call.method, None)
    assert fn is not None, f"engine.syscalls has no {call.name}"
    assert shape(fn) == declared(call), f"Syscalls' {call.name} drifted from its declaration"
    assert hints(fn, call) == declared_hints(call), f"Syscalls' {call.name}: types drifted"


@pytest.mark.parametrize("call", PROCESS_CALLS + KV_CALLS, ids=lambda c: c.name)
def test_the_clients_lip_has_each_process_call_as_declared(call: Call) -> None:
    fn = getattr(ClientKV if call.name.startswith("kv.") else LIP, call.method, None)
    assert fn is not None, f"workbench.client's LIP has no {call.name}"
    assert shape(fn) == declared(call), f"LIP's {call.name} drifted from its declaration"
    assert hints(fn, call) == declared_hints(call), f"LIP's {call.name}: types drifted"


@pytest.mark.parametrize(
    "call",
    [c for c in CLIENT_CALLS if c.by is By.EITHER or c.name in CLIENT_SESSION_METHODS],
    ids=lambda c: c.name,
)
def test_the_client_has_each_call_it_may_make_as_itself(call: Call) -> None:
    fn = getattr(Client, call.method, None)
    assert fn is not None, f"workbench.client's Client has no {call.method} ({call.name})"
    assert shape(fn) == declared(call), f"Client.{call.method} drifted from {call.name}"
    assert hints(fn, call) == declared_hints(call), f"Client.{call.method}: types drifted"


def test_the_server_serves_exactly_the_declared_ops() -> None:
    server = EngineServer.__new__(EngineServer)  # the op table needs no kernel
    ops = server._op_table()
    assert set(ops) == set(OPS)
    for name, op in ops.items():
        assert op.call is OPS[name]
        syscall = op.call.by is not By.CLIENT
        assert (op.serve is not None and op.serve.__name__ == "_syscall") == syscall, name


def test_calls_that_never_wait_are_served_by_plain_functions_the_others_by_tasks() -> None:
    """A call declared never to wait is served at once by a plain function (for a process's
    call: the plain function of its Syscalls method); a call that may wait, by a coroutine."""
    server = EngineServer.__new__(EngineServer)
    for name, op in server._op_table().items():
        if op.call.waits:
            assert op.now is None and inspect.iscoroutinefunction(op.serve), name
        else:
            assert op.now is not None and not inspect.iscoroutinefunction(op.now), name
        if op.call.by is not By.CLIENT:
            assert (op.plain is None) == op.call.waits, name


def test_the_server_decodes_handles_by_the_declared_type_not_the_name() -> None:
    server = EngineServer.__new__(EngineServer)
    ops = server._op_table()
    handle_params = {(name, p) for name, op in ops.items() for p in op.decoders if p != "returns"}
    assert handle_params == {
        (c.name, p.name) for c in CALLS for p in c.params if "FileHandle" in _text(p.type)
    }
    assert ("kv.stat", "path") in handle_params and ("kv.rename", "src") not in handle_params
    assert set(ops["forward"].decoders) == {"file", "returns"}


SOURCE_METHODS = [
    name
    for name, fn in vars(Source).items()
    if inspect.iscoroutinefunction(fn) and not name.startswith("_") and name != "client"
]


@pytest.mark.parametrize("method", SOURCE_METHODS)
def test_the_widgets_source_makes_declared_calls_as_declared(method: str) -> None:
    """Each call the widgets' Source makes is a declared call a client may make, with some of
    its parameters (each as declared: kind, default, type; those it leaves out are optional)
    and its declared result."""
    call = BY_NAME.get(f"kv.{method}") or BY_NAME.get(method)
    assert call is not None, f"Source.{method} makes no declared call"
    assert call.by is not By.PROCESS, f"Source.{method}: {call.name} needs a process"
    fn = getattr(Source, method)
    mine = shape(fn)
    assert [p for p in declared(call) if p in mine] == mine, f"Source.{method} drifted"
    taken_names = {name for name, _, _ in mine}
    left_out = [p.name for p in call.params if p.required and p.name not in taken_names]
    assert not left_out, f"Source.{method} leaves out {left_out}, which {call.name} requires"
    found = {name: _text(hint) for name, hint in typing.get_type_hints(fn).items()}
    taken = {p.name: _text(p.type) for p in call.params if p.name in found}
    assert {name: found[name] for name in taken} == taken, f"Source.{method}: types drifted"
    assert found["return"] == _text(call.result), f"Source.{method}: its result drifted"


def test_a_lip_cell_gets_exactly_the_process_calls() -> None:
    class Stub:  # what lip_names reads of a client
        user = "ada"

    lip = LIP(Stub(), 7, "cell")  # type: ignore[arg-type]
    got = names.lip_names(lip)
    calls = {n for n, v in got.items() if inspect.ismethod(v) and v.__self__ is lip}
    assert calls == {c.name for c in PROCESS_CALLS}
    assert got["kv"] is lip.kv and got["pid"] == 7 and got["home"] == "/home/ada"


class Recorder:
    """Stands in for the engine behind a CLI command: each call is checked against its
    declaration, and answered with a value of the declared result's shape."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.engine = {"engine_pid": 1}
        from engine.wire.connection import ConnectionInfo

        self.info = ConnectionInfo("tcp", "127.0.0.1", 1, "t" * 8, 1, "m", "cpu")

    def call(self, op: str, args: dict[str, Any] | None = None, **_: Any) -> Any:
        assert op in OPS, f"the CLI calls {op!r}, which is not declared"
        check_call(OPS[op], args or {})
        self.calls.append(op)
        answers: dict[str, Any] = {
            "ps": [],
            "kv.listdir": [],
            "kv.stat": FileStat("/x", 0, 0, 0, {}, None, "u", None, 0o600, 0, 0, 0, (), (), 0),
            "user.add": {"user": "bo", "token": "t" * 8},
            "user.remove": True,
        }
        return answers.get(op)


COMMAND_LINES = [
    ["ps", "-a"],
    ["ls", "/home"],
    ["stat", "/x"],
    ["kill", "3"],
    ["stop"],
    ["user", "add", "bo"],
    ["user", "remove", "bo"],
]


def test_cli_commands_make_declared_calls_with_declared_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    cli_client.add_parsers(parser.add_subparsers(dest="command"))
    recorder = Recorder()
    for line in COMMAND_LINES:
        args = parser.parse_args(
            line + (["--out", str(tmp_path / "bo.json")] * (line[1:2] == ["add"]))
        )
        cli_client.COMMANDS[args.command](recorder, args)  # type: ignore[arg-type]
    assert recorder.calls == [
        "ps",
        "kv.listdir",
        "kv.stat",
        "kill",
        "shutdown",
        "user.add",
        "user.remove",
    ]
    assert set(cli_client.COMMANDS) == {line[0] for line in COMMAND_LINES}


def test_a_wrong_argument_is_refused_by_the_declaration() -> None:
    with pytest.raises(InvalidArgument, match="kv.truncate: n must be an int"):
        check_call(BY_NAME["kv.truncate"], {"handle": {"fd": 1}, "n": 1.5})
    with pytest.raises(InvalidArgument, match="missing argument 'pid'"):
        check_call(BY_NAME["worker.exit"], {})


@pytest.mark.parametrize(
    ("op", "args", "argument"),
    [
        ("kv.truncate", {"handle": {"fd": 1}, "n": 1.5}, "n"),  # of the wrong type
        ("worker.exit", {}, "pid"),  # missing
        ("trace", {"limit": 5, "kind": ["batch"]}, "kind"),  # not a parameter (kinds is)
    ],
)
def test_a_bad_argument_is_a_typed_error_naming_the_op_and_the_argument(
    op: str, args: dict[str, Any], argument: str
) -> None:
    with pytest.raises(BadArgument) as raised:
        arguments_of(BY_NAME[op], args)
    assert (raised.value.op, raised.value.argument) == (op, argument)
    again = rebuild_error(error_reply(1, raised.value)["error"])  # as a client gets it
    assert isinstance(again, BadArgument) and str(again) == str(raised.value)
    assert (again.op, again.argument) == (op, argument)


def test_each_ops_arguments_come_as_its_record_with_the_declared_defaults() -> None:
    detach = arguments_of(BY_NAME["detach"], {"pid": 3})
    assert type(detach).__name__ == "DetachArgs" and detach == (3, None)
    assert (detach.pid, detach.error) == (3, None)
    run = arguments_of(BY_NAME["run"], {"code": "1"})
    assert run._asdict() == {
        "code": "1", "name": "lip", "priority": 0, "timeout": 600.0, "memory_mb": None,
        "parent": None,
    }  # fmt: skip
    tool = arguments_of(BY_NAME["tool"], {"name": "wc", "args": ["a b"]})
    assert tool._asdict() == {"name": "wc", "args": ["a b"], "kwargs": {}}


def test_session_handlers_read_only_the_arguments_their_op_declares() -> None:
    """A session op's handler reads its arguments as record fields (`args.pid`): each one it
    reads is a parameter of its op's declaration, so renaming a parameter fails here, not in
    a client's call."""
    server = EngineServer.__new__(EngineServer)
    for name, op in server._op_table().items():
        handler = op.now or op.serve
        if op.call.by is not By.CLIENT or handler is None:
            continue
        source = inspect.getsource(handler)
        read = set(re.findall(r"\bargs\.([a-z_]+)\b", source)) - {"_asdict", "_replace"}
        assert read <= {p.name for p in op.call.params}, f"{name}'s handler reads {read}"
