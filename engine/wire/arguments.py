"""A call's arguments checked against its declaration (`engine.wire.calls`), and its record.

Arguments that come over the wire are plain msgpack values: before a call is submitted, each
one is checked here, so a wrong name, a missing argument or a value of the wrong type (a float
token id, a string where an int belongs) is a `BadArgument` naming the op and the argument,
never a `TypeError` from deep inside the engine.

The server hands each op's handler its arguments as a record (`arguments_of`): a NamedTuple made
from the call's declaration (`record_type`: `kv.fork`'s is `KvForkArgs(src, dst)`), with a field
per parameter and the declared default of each one not given.
"""

from __future__ import annotations

import functools
import inspect
import operator
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, NamedTuple

from engine.wire.errors import BadArgument, InvalidArgument
from engine.wire.records import FileHandle, Logits, LogProbs, Sample, TopK

if TYPE_CHECKING:
    from engine.wire.calls import Call, Param

WIRE_MAPS = (FileHandle, TopK, Sample, LogProbs, Logits)  # records a client sends as maps


class Checks(NamedTuple):
    """A call's parameters as the server checks them, made once per call."""

    hints: dict[str, Any]  # each parameter's declared type, by name
    checks: dict[str, Callable[[Any], bool]]  # each one's check, made from its type
    required: tuple[str, ...]


@functools.cache
def checks_of(call: Call) -> Checks:
    """The checks of a declared call's parameters."""
    hints = {p.name: p.type for p in call.params}
    return Checks(
        hints,
        {name: checker(hint) for name, hint in hints.items()},
        tuple(p.name for p in call.params if p.required),
    )


def check_call(call: Call, args: dict[str, Any]) -> None:
    """BadArgument naming the first argument that the call's declaration does not take as
    given (a wrong name, a missing one, a value of the wrong type)."""
    hints, checks, required = checks_of(call)
    op = call.name
    for name, value in args.items():
        check = checks.get(name)
        if check is None:
            takes = ", ".join(hints) or "no arguments"
            raise BadArgument(op, name, f"no argument {name!r} (it takes {takes})")
        if not check(value):
            raise BadArgument(
                op, name, f"{name} must be {describe(hints[name])}, not {_show(value)}"
            )
    for name in required:
        if name not in args:
            raise BadArgument(op, name, f"missing argument {name!r}")


@functools.cache
def record_type(call: Call) -> type[tuple[Any, ...]]:
    """The record of a call's arguments: a NamedTuple named after the call (`kv.fork`:
    `KvForkArgs`), a field per declared parameter, of its declared type."""
    name = "".join(part.capitalize() for part in re.split(r"[._]", call.name)) + "Args"
    fields = [(p.name, p.type) for p in call.params]
    record: type[tuple[Any, ...]] = typing.NamedTuple(name, fields)  # type: ignore[misc]
    return record


def arguments_of(call: Call, args: dict[str, Any]) -> Any:
    """A request's arguments checked against the call's declaration (`check_call`), as its
    record: each one not given takes its declared default (`*args` none, `**kwargs` none)."""
    check_call(call, args)
    return record_type(call)(*(args.get(p.name, _default(p)) for p in call.params))


def _default(p: Param) -> Any:
    if p.kind is inspect.Parameter.VAR_POSITIONAL:
        return []
    if p.kind is inspect.Parameter.VAR_KEYWORD:
        return {}
    return p.default


def members(hint: Any) -> tuple[Any, ...]:
    """The types a hint admits: a union's members, else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def check_arg(op: str, name: str, hint: Any, value: Any) -> Any:
    """value, if it is of the type hint; else BadArgument naming the op and the argument."""
    if not checker(hint)(value):
        raise BadArgument(op, name, f"{name} must be {describe(hint)}, not {_show(value)}")
    return value


def accepts(hint: Any, value: Any) -> bool:
    """Whether value is of the type hint (as msgpack carries it: a path is a str)."""
    return checker(hint)(value)


def checker(hint: Any) -> Callable[[Any], bool]:
    """A function telling whether a value is of the type hint."""
    if hint is Any:
        return lambda value: True
    if hint is None or hint is type(None):
        return lambda value: value is None
    if hint is int:
        return lambda value: type(value) is int  # not a bool, not a float
    if hint is float:
        return lambda value: type(value) is int or type(value) is float
    if hint is bool or hint is str:
        return lambda value: type(value) is hint
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [checker(h) for h in typing.get_args(hint)]
        return lambda value: any(ok(value) for ok in options)
    if _is(origin, Mapping):
        return lambda value: isinstance(value, dict)
    if _is(origin, Iterable):  # Sequence[int], list[str], ...: a msgpack array
        (item,) = typing.get_args(hint) or (Any,)
        if item is int:  # token ids, indices: the common case, kept quick
            return lambda value: type(value) in (list, tuple) and all(type(v) is int for v in value)
        ok = checker(item)
        return lambda value: type(value) in (list, tuple) and all(ok(v) for v in value)
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return lambda value: isinstance(value, str)
    if hint in WIRE_MAPS:  # on the wire a map, decoded by the server (see engine.wire.calls)
        return lambda value: isinstance(value, (hint, dict))
    if isinstance(hint, type):
        return lambda value: isinstance(value, hint)
    return lambda value: False


def describe(hint: Any) -> str:
    """A type hint in words: 'an int', 'a list of int or None'."""
    if hint is None or hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(h) for h in typing.get_args(hint)))
    if _is(origin, Mapping):
        return "a map"
    if _is(origin, Iterable):
        (item,) = typing.get_args(hint) or (Any,)
        return f"a list of {describe(item).removeprefix('an ').removeprefix('a ')}"
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return "a str"
    if hint is Any:
        return "any value"
    name = {"Handle": "KV file handle", "FileHandle": "KV file handle", "float": "number"}.get(
        getattr(hint, "__name__", ""), getattr(hint, "__name__", str(hint))
    )
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _is(origin: Any, kind: type) -> bool:
    return isinstance(origin, type) and issubclass(origin, kind)


def _show(value: Any) -> str:
    text = repr(value)
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"{shown} ({type(value).__name__})"


def int_list(name: str, values: Sequence[int]) -> list[int]:
    """values as a new list of ints (numpy and torch integers too); InvalidArgument naming the
    argument for anything else: a float (1.5 is no token id), a bool, a string."""
    if type(values) is list and all(type(v) is int for v in values):
        return values[:]  # the common case, kept quick
    try:
        items = list(values)
        if any(isinstance(v, bool) for v in items):
            raise TypeError("a bool")
        return [operator.index(v) for v in items]
    except TypeError:
        raise InvalidArgument(f"{name} must be a list of integers, not {values!r:.40}") from None
