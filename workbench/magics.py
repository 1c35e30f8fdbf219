"""IPython magics: a `%%lip` cell is one LIP process of the shared engine.

    %load_ext workbench

    %%lip --name demo --priority 1
    f = await kv.create()
    d = await forward(f, tokenize("The return value"))
    print(detokenize([d.argmax()]))

The cell is ordinary notebook code with the process's system calls bound as names (see
`workbench.names`): it runs in the kernel's event loop, prints as it goes, keeps its variables,
and shows a normal traceback. Under the hood the cell is rewritten, before IPython compiles it,
into `async with __lip_cell__(ARGS):` around its indented body; entering attaches the process,
leaving ends it (and reclaims its /proc files), whether the body finished, raised, or was
stopped. With `--server` the body is shipped to an engine-side worker instead (`Client.run`).

Line magics: `%lip ps [-a]`, `%lip kill PID`, `%lip ls [PATH]`, `%lip stat PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import html
import io
import os
import shlex
import sys
import time
import tokenize
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from engine.wire.errors import EngineNotRunning, ProcessFailed, SessionEnded
from engine.wire.tables import ps_table, stat_table
from workbench import autostart
from workbench.client import LIP, USER_ENV, Client
from workbench.names import lip_names
from workbench.tools import register_pending

MISSING = object()
_clients: dict[int, Client] = {}  # one connection per event loop


def _cell_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%%lip", add_help=False, exit_on_error=False)
    p.add_argument("--name", help="the process's name (default: cell-N)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first under pressure")
    p.add_argument("--server", action="store_true", help="run the cell in an engine-side worker")
    p.add_argument("--timeout", type=float, help="--server: end the worker after this long")
    return p


def parse_cell_args(line: str) -> argparse.Namespace:
    try:
        opts = _cell_parser().parse_args(shlex.split(line))
    except (argparse.ArgumentError, ValueError) as e:
        raise UsageError(f"%%lip: {e}\n{_cell_parser().format_usage()}") from None
    if opts.name is None:
        shell = get_ipython()  # its count has moved on to the next cell already
        opts.name = f"cell-{shell.execution_count - 1}" if shell is not None else "cell"
    return opts


# ---- the connection ----------------------------------------------------------------------------


async def connect() -> Client:
    """This event loop's connection to the shared engine, started if none runs."""
    loop = asyncio.get_running_loop()
    client = _clients.get(id(loop))
    if client is None:
        client = _clients[id(loop)] = await autostart.connect(name=client_name())
    return client


def client_name() -> str:
    """`kernel-<id>` in a Jupyter kernel (the server extension maps it to its notebook)."""
    try:
        from ipykernel.connect import get_connection_file

        stem = Path(get_connection_file()).stem  # kernel-<id>.json, as jupyter_server names it
    except Exception:  # not in a kernel
        stem = ""
    return stem if stem.startswith("kernel-") else f"client-{os.getpid()}"


async def _attach(name: str, priority: int) -> LIP:
    try:
        return await (await connect()).attach(name, priority)
    except (EngineNotRunning, SessionEnded):  # the engine went away or ended this session:
        # find (or start) the engine, and begin a new session
        stale = _clients.pop(id(asyncio.get_running_loop()), None)
        if stale is not None:
            await stale.close()
        return await (await connect()).attach(name, priority)


# ---- %%lip in the kernel ------------------------------------------------------------------------


class lip_cell:  # noqa: N801 - reads as a statement in the rewritten cell
    """`async with lip_cell(ARGS):` — the body runs as one process, with its names bound."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.lip: LIP | None = None
        self.saved: dict[str, Any] = {}

    async def __aenter__(self) -> LIP:
        __tracebackhide__ = True
        opts = parse_cell_args(self.line)
        self.lip = lip = await _attach(opts.name, opts.priority)
        await register_pending(lip.client)
        self.status = Status(lip.pid, lip.name)
        self._bind(lip_names(lip))
        self.started = time.monotonic()
        return lip

    async def __aexit__(self, kind: type | None, error: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        assert self.lip is not None
        self._unbind()
        stopped = kind is not None and issubclass(kind, (asyncio.CancelledError, KeyboardInterrupt))
        why = "interrupted" if stopped else None if error is None else _describe(error)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(self.lip.exit(why))
        await self._report(why)
        if stopped:
            raise KeyboardInterrupt from None  # the stop button: shown as an interrupt
        return False

    def _bind(self, names: dict[str, Any]) -> None:
        ns = get_ipython().user_ns
        self.saved = {k: ns.get(k, MISSING) for k in names}
        ns.update(names)

    def _unbind(self) -> None:
        ns = get_ipython().user_ns
        for k, v in self.saved.items():
            if v is MISSING:
                ns.pop(k, None)
            else:
                ns[k] = v

    async def _report(self, why: str | None) -> None:
        assert self.lip is not None
        info = None
        with contextlib.suppress(Exception):
            info = next((p for p in await self.lip.client.ps() if p.pid == self.lip.pid), None)
        self.status.done(time.monotonic() - self.started, info, why)


async def server_cell(line: str, body: str) -> int:
    """A `%%lip --server` cell: ship the body to an engine-side worker and stream its output."""
    __tracebackhide__ = True
    opts = parse_cell_args(line)
    client = await connect()
    await register_pending(client)
    started = time.monotonic()
    status: list[Status] = []

    def on_start(pid: int) -> None:
        status.append(Status(pid, opts.name, where="engine-side worker"))

    why = None
    try:
        return await client.run(
            body, opts.name, opts.priority, timeout=opts.timeout, on_start=on_start
        )
    except (asyncio.CancelledError, KeyboardInterrupt):
        why = "interrupted"
        raise KeyboardInterrupt from None
    except ProcessFailed as e:  # its traceback has streamed in already: say only how it ended
        why = e.reason or str(e)
        summary = [f"ProcessFailed: {e}"]
        e._render_traceback_ = lambda: summary  # type: ignore[attr-defined]
        raise
    except Exception as e:
        why = _describe(e)
        raise
    finally:
        if status:
            status[0].done(time.monotonic() - started, None, why)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Status:
    """The line above a cell's output: its pid while it runs, then how it ended."""

    def __init__(self, pid: int, name: str, where: str = "") -> None:
        self.pid, self.name = pid, name
        suffix = f" in an {where}" if where else ""
        self.handle = display(self._bundle(f"running{suffix}…"), raw=True, display_id=True)

    def done(self, seconds: float, info: Any, why: str | None) -> None:
        parts = [f"ended: {why}" if why else "exited"]
        if info is not None:
            cached = f" ({info.tokens_cached} more from the cache)" if info.tokens_cached else ""
            parts.append(
                f"{info.tokens_in} tokens in{cached}, {info.tokens_out} out, {info.calls} calls"
            )
        parts.append(f"{seconds:.2f} s")
        if self.handle is not None:
            self.handle.update(self._bundle(" · ".join(parts)), raw=True)

    def _bundle(self, state: str) -> dict[str, str]:
        text = f"LIP {self.pid} ({self.name}) {state}"
        style = "font-family: monospace; color: var(--jp-ui-font-color2, #666)"
        return {"text/plain": text, "text/html": f'<div style="{style}">{html.escape(text)}</div>'}


# ---- the rewrite --------------------------------------------------------------------------------


def rewrite_lip_cells(lines: list[str]) -> list[str]:
    """IPython input transformer: a `%%lip ARGS` cell becomes an `async with` around its body."""
    if not lines or not lines[0].startswith("%%lip"):
        return lines
    magic, _, line = lines[0].rstrip("\n").partition(" ")
    if magic != "%%lip":
        return lines
    body = lines[1:]
    if _is_server(line):
        code = "\n" + "".join(body)  # line numbers as in the notebook cell
        return [f"await __lip_server_cell__({line!r}, {code!r})\n"]
    head = f"async with __lip_cell__({line!r}):\n"
    return [head, *(_indent(body) if any(s.strip() for s in body) else ["    pass\n"])]


def _is_server(line: str) -> bool:
    try:
        return "--server" in shlex.split(line)
    except ValueError:
        return False  # lip_cell reports the bad arguments


def _indent(body: list[str]) -> list[str]:
    """Indent each line by four spaces, except lines that continue a multi-line string."""
    inside = _string_continuations("".join(body))
    return [s if i in inside or not s.strip() else "    " + s for i, s in enumerate(body)]


def _string_continuations(source: str) -> set[int]:
    rows: set[int] = set()
    fstring_starts: list[int] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            name = tokenize.tok_name[tok.type]
            if name == "FSTRING_START":
                fstring_starts.append(tok.start[0])
            elif name in ("STRING", "FSTRING_END"):
                first = fstring_starts.pop() if name == "FSTRING_END" else tok.start[0]
                rows.update(range(first, tok.end[0]))  # 0-based rows after the first line
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # Python reports the problem when it compiles the cell
    return rows


# ---- %lip ps | kill | ls | stat -----------------------------------------------------------------


def _line_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%lip", add_help=False, exit_on_error=False)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("ps", add_help=False).add_argument("-a", "--all", action="store_true")
    sub.add_parser("kill", add_help=False).add_argument("pid", type=int)
    sub.add_parser("ls", add_help=False).add_argument("path", nargs="?", default="/")
    sub.add_parser("stat", add_help=False).add_argument("path")
    return p


@magics_class
class LIPMagics(Magics):
    @line_cell_magic
    def lip(self, line: str, cell: str | None = None) -> None:
        """%lip ps [-a] | kill PID | ls [PATH] | stat PATH — and %%lip [--name N] [--priority P]
        [--server] [--timeout S] for a cell that runs as one LIP process."""
        if cell is not None:
            raise UsageError("%%lip needs the workbench extension's rewrite: %load_ext workbench")
        try:
            args = _line_parser().parse_args(shlex.split(line))
        except (argparse.ArgumentError, ValueError, SystemExit):
            raise UsageError(f"usage: {LIPMagics.lip.__doc__}") from None
        try:
            print(_in_thread(line_command(args)))
        except EngineNotRunning as e:
            raise UsageError(str(e)) from None
        except Exception as e:  # the engine's errors: say what, not where
            print(f"%lip {args.command}: {type(e).__name__}: {e}", file=sys.stderr)


async def line_command(args: argparse.Namespace) -> str:
    """What `%lip ps|kill|ls|stat` prints, asked through a client of this kernel's engine."""
    async with await Client.connect(user=os.environ.get(USER_ENV), name="%lip") as client:
        if args.command == "ps":
            return ps_table(await client.ps(), exited=args.all)
        if args.command == "kill":
            await client.kill(args.pid)
            return f"killed {args.pid}"
        if args.command == "ls":
            return "\n".join(await client.listdir(args.path))
        return stat_table(await client.stat(args.path))


def _in_thread(coro: Coroutine[Any, Any, str]) -> str:
    """Run a coroutine to its end from synchronous code, on a loop of its own in a thread (the
    kernel's loop is busy running the cell that called)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def load_ipython_extension(ip: Any) -> None:
    ip.register_magics(LIPMagics)
    ip.push({"__lip_cell__": lip_cell, "__lip_server_cell__": server_cell}, interactive=False)
    if rewrite_lip_cells not in ip.input_transformers_cleanup:
        ip.input_transformers_cleanup.append(rewrite_lip_cells)


def unload_ipython_extension(ip: Any) -> None:
    with contextlib.suppress(ValueError):
        ip.input_transformers_cleanup.remove(rewrite_lip_cells)
