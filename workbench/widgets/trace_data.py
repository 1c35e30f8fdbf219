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

from engine.wire.records import Event, ProcessInfo

KINDS = ("call.submitted", "call.started", "call.finished", "batch", "process")


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
        d = e.data
        if e.kind == "batch":
            start = e.t - float(d.get("seconds", 0.0))
            sizes = tuple(d.get("sizes", ()))
            pids = tuple(d.get("pids", ()))
            self.batches.append(BatchBar(d["batch"], start, e.t, pids, sizes, d.get("tokens", 0)))
            return
        if e.pid is None:
            return
        proc = self.procs.setdefault(e.pid, _Proc())
        if e.kind == "process":
            self._process(e, proc)
        elif e.kind == "call.submitted":
            self.calls[d["call"]] = CallSpan(e.pid, d["call"], d.get("tokens", 0), e.t, *[None] * 3)
        elif e.kind == "call.started" and d["call"] in self.calls:
            self.calls[d["call"]] = self.calls[d["call"]]._replace(started=e.t)
        elif e.kind == "call.finished" and d["call"] in self.calls:
            c = self.calls[d["call"]]
            started = c.started if c.started is not None else e.t
            self.calls[d["call"]] = c._replace(started=started, finished=e.t, error=d.get("error"))

    def _process(self, e: Event, proc: _Proc) -> None:
        d = e.data
        if d.get("old") is None:  # created
            proc.name, proc.owner, proc.start = d.get("name", "?"), d.get("owner", "?"), e.t
        if d.get("old") == "suspended":
            self._resume(e.pid, e.t)  # type: ignore[arg-type]
        if d.get("new") == "suspended":
            self.suspensions.append(Suspension(e.pid, e.t, None, d.get("pages_swapped", 0)))  # type: ignore[arg-type]
        if d.get("new") == "exited":
            proc.end = e.t
            self._resume(e.pid, e.t)  # type: ignore[arg-type]
            self._cancel_calls(e.pid, e.t)  # type: ignore[arg-type]

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
