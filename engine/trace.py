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


_new_event = tuple.__new__


class Trace:
    def __init__(self, capacity: int = 200_000) -> None:
        self.events: deque[Event] = deque(maxlen=capacity)
        self.start = time.monotonic()
        self._seq = itertools.count()

    def now(self) -> float:
        return time.monotonic() - self.start

    def emit(self, kind: str, pid: int | None, data: dict[str, Any]) -> Event:
        # data is a dict, not **kwargs: Python matches each keyword against the parameter names
        # by string comparison (this runs five times a forward call).
        # tuple.__new__: a NamedTuple's own __new__ costs more than the rest of this function.
        event = _new_event(Event, (next(self._seq), time.monotonic() - self.start, kind, pid, data))
        self.events.append(event)
        return event

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
            e
            for e in self.events
            if (since is None or e.t >= since)
            and (until is None or e.t <= until)
            and (pid is None or e.pid == pid or pid in e.data.get("pids", ()))
            and (wanted is None or e.kind in wanted)
            and (after_seq is None or e.seq > after_seq)
        ]
