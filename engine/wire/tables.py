"""The records as plain text, the way `symphony ps|ls|stat` and `%lip ps|ls|stat` print them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.wire.records import FileStat, ProcessInfo


def table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    """Columns padded to their widest cell; None shows as '-'."""
    cells = [tuple(map(str, head))] + [tuple("-" if x is None else str(x) for x in r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip() for c in cells)
    return "\n".join(lines)


def ps_table(procs: Sequence[ProcessInfo], exited: bool = False) -> str:
    """The process table; the processes that have exited too when asked."""
    shown = procs if exited else [p for p in procs if p.state != "exited"]
    head = (
        "PID", "NAME", "OWNER", "STATE", "PRI", "IN", "CACHED", "OUT", "CALLS", "WAIT_S", "ERROR",
    )  # fmt: skip
    return table(
        [
            (p.pid, p.name, p.owner, p.state, p.priority, p.tokens_in, p.tokens_cached)
            + (p.tokens_out, p.calls, f"{p.time_waiting:.3f}", p.error)
            for p in shown
        ],
        head,
    )


def stat_table(st: FileStat) -> str:
    """One field a line; the mode in octal."""
    return "\n".join(
        f"{field:13} {oct(value) if field == 'mode' else value}"
        for field, value in st._asdict().items()
    )
