"""Tools from a notebook: decorate a function and it is registered on the engine.

    @tool
    def weather(city: str) -> str:
        import json, urllib.request
        ...

`tool` records the function (and returns it unchanged, so it still works here); the `%%lip`
magic calls `register_pending(client)` before each cell, which ships each recorded function's
source to the engine (see `engine.tools`). Any LIP may then `await tool("weather", "Oslo")`.
A tool runs in the engine's tool host, not in this kernel: it must be self-contained (imports
inside it), take and return msgpack values.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from workbench.client import Client

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Pending:
    fn: Callable[..., Any]
    name: str
    timeout: float | None


PENDING: list[Pending] = []  # decorated, not yet registered
FUTURE = "from __future__ import annotations\n"


@overload
def tool(fn: F, *, name: str | None = None, timeout: float | None = None) -> F: ...


@overload
def tool(
    fn: None = None, *, name: str | None = None, timeout: float | None = None
) -> Callable[[F], F]: ...


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, timeout: float | None = None
) -> Any:
    """Mark fn as a tool to register on the engine (`@tool` or `@tool(name=..., timeout=...)`)."""

    def record(f: F) -> F:
        PENDING.append(Pending(f, name or f.__name__, timeout))
        return f

    return record if fn is None else record(fn)


async def register_pending(client: Client) -> list[str]:
    """Register every recorded tool on the engine (each once); their names."""
    done = []
    while PENDING:
        p = PENDING.pop(0)
        await client.register_tool(p.fn, name=p.name, timeout=p.timeout)
        done.append(p.name)
    return done


def tool_source(fn: Callable[..., Any] | str) -> tuple[str, str]:
    """(name, source) of a function, its decorators stripped; a source string as it is."""
    if isinstance(fn, str):
        tree = ast.parse(fn)
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        return (defs[-1].name if defs else ""), fn
    source = textwrap.dedent(inspect.getsource(fn))
    node = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == fn.__name__
    )
    lines = source.splitlines(keepends=True)[node.lineno - 1 : node.end_lineno]
    # Its annotations name things of this module, not there: keep them unevaluated strings.
    return fn.__name__, FUTURE + textwrap.dedent("".join(lines))
