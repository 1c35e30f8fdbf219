"""The scheduler timeline, computed from trace events alone: no widgets, no I/O.

    builder = TimelineBuilder()
    builder.add(await client.trace(after_seq=builder.last_seq))   # again and again, live
    data = builder.data(pid=None)

Per process: its calls, each waiting (submitted, not yet in a batch) then computing (from its
first batch to its result), and its suspensions. Beside them: every forward batch with its size
(calls) and tokens. Times are seconds since the engine's trace began.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from engine.wire import events as ev
from engine.wire.events import (
    BatchRan,
    CallFinished,
    CallStarted,
    CallSubmitted,
    ProcessChanged,
    record_of,
)
from engine.wire.records import Event, ProcessInfo

KINDS = (ev.CALL_SUBMITTED, ev.CALL_STARTED, ev.CALL_FINISHED, ev.BATCH, ev.PROCESS)


class Lane(NamedTuple):
    pid: int
    name: str
    owner: str
    start: float | None  # when the process began (None: before the trace's oldest event)
    end: float | None  # when it exited (None: still running)

    @property
    def label(self) -> str:
        return f"{self.pid} {self.name}"


class CallSpan(NamedTuple):
    pid: int
    call: int
    tokens: int
    submitted: float
    started: float | None  # its first batch began (None: still waiting)
    finished: float | None  # its result came back (None: still computing)
    error: str | None


class Suspension(NamedTuple):
    pid: int
    start: float
    end: float | None  # None: still suspended
    pages: int  # pages swapped out


class BatchBar(NamedTuple):
    batch: int
    start: float
    end: float
    pids: tuple[int, ...]
    sizes: tuple[int, ...]  # tokens of each call in it
    tokens: int

    @property
    def size(self) -> int:
        """Calls in the batch."""
        return len(self.sizes)


class TimelineData(NamedTuple):
    lanes: list[Lane]
    calls: list[CallSpan]
    suspensions: list[Suspension]
    batches: list[BatchBar]
    now: float  # the newest event's time


@dataclass
class _Proc:
    name: str = "?"
    owner: str = "?"
    start: float | None = None
    end: float | None = None


@dataclass
class TimelineBuilder:
    """Folds trace events, in sequence order, into a timeline; keeps at most max_calls calls."""

    max_calls: int = 20_000
    last_seq: int | None = None  # the newest event folded in: ask the trace for what follows
    now: float = 0.0
    procs: dict[int, _Proc] = field(default_factory=dict)
    calls: dict[int, CallSpan] = field(default_factory=dict)
    suspensions: list[Suspension] = field(default_factory=list)
    batches: list[BatchBar] = field(default_factory=list)

    def add(self, events: Iterable[Event]) -> int:
        """Fold in events newer than last_seq; how many were new."""
        n = 0
        for e in events:
            if self.last_seq is not None and e.seq <= self.last_seq:
                continue
            self.last_seq, self.now = e.seq, max(self.now, e.t)
            self._fold(e)
            n += 1
        self._trim()
        return n

    def add_processes(self, procs: Iterable[ProcessInfo]) -> None:
        """Names and owners of processes whose first events the trace no longer holds."""
        for p in procs:
            if p.pid in self.procs:
                proc = self.procs[p.pid]
                proc.name, proc.owner = p.name, p.owner

    def data(self, pid: int | None = None) -> TimelineData:
        """The timeline, of one process and the batches it was in (pid), or of all."""
        pids = sorted(self.procs) if pid is None else [pid] if pid in self.procs else []
        lanes = [Lane(p, *self._lane(p)) for p in pids]
        keep = set(pids)
        return TimelineData(
            lanes,
            [c for c in self.calls.values() if c.pid in keep],
            [s for s in self.suspensions if s.pid in keep],
            [b for b in self.batches if pid is None or pid in b.pids],
            self.now,
        )

    def _lane(self, pid: int) -> tuple[str, str, float | None, float | None]:
        p = self.procs[pid]
        return p.name, p.owner, p.start, p.end

    def _fold(self, e: Event) -> None:
        r = record_of(e)
        if isinstance(r, BatchRan):
            bar = BatchBar(r.batch, e.t - r.seconds, e.t, tuple(r.pids), tuple(r.sizes), r.tokens)
            self.batches.append(bar)
            return
        if e.pid is None:
            return
        proc = self.procs.setdefault(e.pid, _Proc())
        if isinstance(r, ProcessChanged):
            self._process(e.pid, e.t, r, proc)
        elif isinstance(r, CallSubmitted):
            self.calls[r.call] = CallSpan(e.pid, r.call, r.tokens, e.t, *[None] * 3)
        elif isinstance(r, CallStarted) and r.call in self.calls:
            self.calls[r.call] = self.calls[r.call]._replace(started=e.t)
        elif isinstance(r, CallFinished) and r.call in self.calls:
            c = self.calls[r.call]
            started = c.started if c.started is not None else e.t
            self.calls[r.call] = c._replace(started=started, finished=e.t, error=r.error)

    def _process(self, pid: int, t: float, r: ProcessChanged, proc: _Proc) -> None:
        if r.old is None:  # created
            proc.name, proc.owner, proc.start = r.name or "?", r.owner or "?", t
        if r.old == "suspended":
            self._resume(pid, t)
        if r.new == "suspended":
            self.suspensions.append(Suspension(pid, t, None, r.pages_swapped or 0))
        if r.new == "exited":
            proc.end = t
            self._resume(pid, t)
            self._cancel_calls(pid, t)

    def _resume(self, pid: int, t: float) -> None:
        for i, s in enumerate(self.suspensions):
            if s.pid == pid and s.end is None:
                self.suspensions[i] = s._replace(end=t)

    def _cancel_calls(self, pid: int, t: float) -> None:
        """An exiting process's calls still queued end with it (the trace says no more)."""
        for cid, c in self.calls.items():
            if c.pid == pid and c.finished is None:
                started = c.started if c.started is not None else t
                self.calls[cid] = c._replace(started=started, finished=t, error="process exited")

    def _trim(self) -> None:
        """Forget the oldest calls and batches past max_calls (a long-running live view)."""
        if len(self.calls) > self.max_calls:
            for cid in list(self.calls)[: len(self.calls) - self.max_calls]:
                del self.calls[cid]
        if len(self.batches) > self.max_calls:
            del self.batches[: len(self.batches) - self.max_calls]
