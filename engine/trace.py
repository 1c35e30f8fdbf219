"""The trace: a bounded ring of engine events, the only source the widgets read.

Every event has a sequence number, so a live view asks for what came after the last one it saw.
What each kind of event says is a record in engine.wire.events.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable

from engine.wire.engine_config import EngineConfig
from engine.wire.events import BatchRan, TraceRecord
from engine.wire.records import Event


class Trace:
    """Events are kept as plain tuples, (seq, t, pid, record), and become `Event`s when read.

    Five events are emitted per forward call and most are never read: building the `Event`
    (its data a dict of the record's fields) costs more than the rest of `emit`.
    """

    def __init__(self, capacity: int = EngineConfig.trace_capacity) -> None:
        self.events: deque[tuple[int, float, int | None, TraceRecord]] = deque(maxlen=capacity)
        self.start = time.monotonic()
        self._seq = itertools.count()

    def now(self) -> float:
        return time.monotonic() - self.start

    def emit(self, pid: int | None, record: TraceRecord) -> None:
        """Record an event of process pid (None: of the engine, or of a batch's processes)."""
        self.events.append((next(self._seq), time.monotonic() - self.start, pid, record))

    def last(self, kind: str) -> Event | None:
        """The newest event of a kind still in the ring."""
        return next((_event(e) for e in reversed(self.events) if e[3].kind == kind), None)

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        pid: int | None = None,
        kinds: Iterable[str] | None = None,
        after_seq: int | None = None,
    ) -> list[Event]:
        """Events in a time range, of one process, of some kinds, or after a sequence number.

        A batch's events belong to every process in it.
        """
        wanted = set(kinds) if kinds is not None else None
        return [
            _event(e)
            for e in self.events
            if (since is None or e[1] >= since)
            and (until is None or e[1] <= until)
            and (pid is None or e[2] == pid or (type(e[3]) is BatchRan and pid in e[3].pids))
            and (wanted is None or e[3].kind in wanted)
            and (after_seq is None or e[0] > after_seq)
        ]


def _event(e: tuple[int, float, int | None, TraceRecord]) -> Event:
    seq, t, pid, record = e
    return Event(seq, t, record.kind, pid, record._asdict())
