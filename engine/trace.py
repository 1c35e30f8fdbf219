"""The trace: a bounded ring of engine events, the only source the widgets read.

Every event has a sequence number, so a live view asks for what came after the last one it saw.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from engine.records import Event

# Event kinds
CALL_SUBMITTED = "call.submitted"
CALL_STARTED = "call.started"
CALL_FINISHED = "call.finished"
BATCH = "batch"
PROCESS = "process"  # a state change: data has old and new
PAGES = "pages"
TOOL_STARTED = "tool.started"  # a process called a tool and waits for it: data has call, tool
TOOL_FINISHED = "tool.finished"  # its result (or error) came back


class Trace:
    """Events are kept as plain tuples, (seq, t, kind, pid, data), and become `Event`s when read.

    Five events are emitted per forward call and most are never read: building the `Event`
    record (a NamedTuple) cost more than the rest of `emit`.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.events: deque[tuple[int, float, str, int | None, dict[str, Any]]] = deque(
            maxlen=capacity
        )
        self.start = time.monotonic()
        self._seq = itertools.count()

    def now(self) -> float:
        return time.monotonic() - self.start

    def emit(self, kind: str, pid: int | None, data: dict[str, Any]) -> None:
        # data is a dict, not **kwargs: Python matches each keyword against the parameter names
        # by string comparison (this runs five times a forward call).
        self.events.append((next(self._seq), time.monotonic() - self.start, kind, pid, data))

    def last(self, kind: str) -> Event | None:
        """The newest event of a kind still in the ring."""
        return next((Event._make(e) for e in reversed(self.events) if e[2] == kind), None)

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        pid: int | None = None,
        kinds: Iterable[str] | None = None,
        after_seq: int | None = None,
    ) -> list[Event]:
        """Events in a time range, of one process, of some kinds, or after a sequence number."""
        wanted = set(kinds) if kinds is not None else None
        return [
            Event._make(e)
            for e in self.events
            if (since is None or e[1] >= since)
            and (until is None or e[1] <= until)
            and (pid is None or e[3] == pid or pid in e[4].get("pids", ()))
            and (wanted is None or e[2] in wanted)
            and (after_seq is None or e[0] > after_seq)
        ]
