"""The scheduler timeline, computed from trace events alone: no widgets, no I/O.

    builder = TimelineBuilder()
    builder.add(await client.trace(after_seq=builder.last_seq))   # again and again, live
    data = builder.data(pid=None)

Per process: its calls, each waiting (submitted, not yet in a batch) then computing (from its
first batch to its result), its tool calls (waiting on a tool), its suspensions and the pages
swapped out and back in. A spawned process's lane comes right under its parent's. Beside them:
every forward batch with its size (calls) and tokens. Times are seconds since the engine's
trace began.

Two runs side by side: `window(data, pids)` cuts one run's processes out of a timeline, its
clock starting at 0, and `summary(data)` counts what a scheduler did in it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from engine.wire import events as ev
from engine.wire.events import (
    BatchRan,
    CallFinished,
    CallStarted,
    CallSubmitted,
    ProcessChanged,
    ToolFinished,
    ToolStarted,
    record_of,
)
from engine.wire.records import Event, ProcessInfo

KINDS = (
    ev.CALL_SUBMITTED,
    ev.CALL_STARTED,
    ev.CALL_FINISHED,
    ev.BATCH,
    ev.PROCESS,
    ev.TOOL_STARTED,
    ev.TOOL_FINISHED,
)


class Lane(NamedTuple):
    pid: int
    name: str
    owner: str
    start: float | None  # when the process began (None: before the trace's oldest event)
    end: float | None  # when it exited (None: still running)
    parent: int | None = None  # the process that spawned it
    depth: int = 0  # how many of its ancestors have lanes above it

    @property
    def label(self) -> str:
        return f"{'↳ ' * self.depth}{self.pid} {self.name}"


class CallSpan(NamedTuple):
    pid: int
    call: int
    tokens: int
    submitted: float
    started: float | None  # its first batch began (None: still waiting)
    finished: float | None  # its result came back (None: still computing)
    error: str | None


class ToolWait(NamedTuple):
    """A process waiting on a tool (it runs beside the engine; no forward is involved)."""

    pid: int
    call: int
    tool: str
    start: float
    end: float | None  # None: still waiting
    error: str | None


class Suspension(NamedTuple):
    pid: int
    start: float
    end: float | None  # None: still suspended
    pages_out: int  # pages swapped out
    pages_in: int | None = None  # pages swapped back in when it resumed (None: not yet, or exited)


class Swap(NamedTuple):
    """Pages of a process moved out of the pool to host memory (out) or back (in)."""

    pid: int
    t: float
    num_pages: int
    out: bool


class BatchBar(NamedTuple):
    batch: int
    start: float
    end: float
    pids: tuple[int, ...]
    sizes: tuple[int, ...]  # tokens of each call in it
    tokens: int
    policy: str = ""  # the batch policy that ran it

    @property
    def size(self) -> int:
        """Calls in the batch."""
        return len(self.sizes)


class TimelineData(NamedTuple):
    lanes: list[Lane]  # parents first, each followed by the processes it spawned
    calls: list[CallSpan]
    suspensions: list[Suspension]
    batches: list[BatchBar]
    now: float  # the newest event's time
    tools: list[ToolWait]
    swaps: list[Swap]


class TimelineSummary(NamedTuple):
    """What the scheduler did in a timeline, in numbers to set beside another's."""

    processes: int
    batches: int
    calls: int  # forward calls that finished
    tokens: int  # tokens forwarded in the batches
    calls_per_batch: float  # mean
    seconds: float  # from the first call submitted to the last finished
    waited: float  # seconds calls spent waiting for a batch, summed
    suspensions: int
    pages_swapped: int  # out and back in
    tool_seconds: float  # seconds processes spent waiting on tools, summed


def family(data: TimelineData, pid: int) -> set[int]:
    """pid and every process it spawned, and they spawned, that has a lane in data."""
    pids = {pid}
    for lane in data.lanes:  # parents come before their children
        if lane.parent in pids:
            pids.add(lane.pid)
    return pids


def window(data: TimelineData, pids: Collection[int]) -> TimelineData:
    """The lanes of pids and what happened to them, the batches they were in, on a clock that
    starts (0) at the earliest of them: one run of a workload, to set beside another run."""
    keep = set(pids)
    lanes = [lane for lane in data.lanes if lane.pid in keep]
    calls = [c for c in data.calls if c.pid in keep]
    batches = [b for b in data.batches if keep & set(b.pids)]
    starts = [lane.start for lane in lanes if lane.start is not None]
    starts += [c.submitted for c in calls] + [b.start for b in batches]
    t0 = min(starts, default=0.0)

    def at(t: float | None) -> float | None:
        return None if t is None else t - t0

    ends = [lane.end for lane in lanes if lane.end is not None]
    now = max(ends) if lanes and len(ends) == len(lanes) else data.now  # all exited: their end
    return TimelineData(
        [lane._replace(start=at(lane.start), end=at(lane.end)) for lane in lanes],
        [
            c._replace(submitted=c.submitted - t0, started=at(c.started), finished=at(c.finished))
            for c in calls
        ],
        [s._replace(start=s.start - t0, end=at(s.end)) for s in data.suspensions if s.pid in keep],
        [b._replace(start=b.start - t0, end=b.end - t0) for b in batches],
        now - t0,
        [t._replace(start=t.start - t0, end=at(t.end)) for t in data.tools if t.pid in keep],
        [w._replace(t=w.t - t0) for w in data.swaps if w.pid in keep],
    )


def summary(data: TimelineData) -> TimelineSummary:
    done = [c for c in data.calls if c.finished is not None and c.error is None]
    first = min((c.submitted for c in data.calls), default=0.0)
    last = max((c.finished for c in done if c.finished is not None), default=first)
    waited = sum((c.started if c.started is not None else data.now) - c.submitted for c in done)
    tool_seconds = sum((t.end if t.end is not None else data.now) - t.start for t in data.tools)
    n = len(data.batches)
    return TimelineSummary(
        len(data.lanes),
        n,
        len(done),
        sum(b.tokens for b in data.batches),
        sum(b.size for b in data.batches) / n if n else 0.0,
        last - first,
        waited,
        len(data.suspensions),
        sum(w.num_pages for w in data.swaps),
        tool_seconds,
    )


@dataclass
class _Proc:
    name: str = "?"
    owner: str = "?"
    start: float | None = None
    end: float | None = None
    parent: int | None = None


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
    tools: dict[int, ToolWait] = field(default_factory=dict)
    swaps: list[Swap] = field(default_factory=list)

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
                proc.name, proc.owner, proc.parent = p.name, p.owner, p.parent

    def data(self, pid: int | None = None) -> TimelineData:
        """The timeline, of one process and the batches it was in (pid), or of all."""
        pids = sorted(self.procs) if pid is None else [pid] if pid in self.procs else []
        lanes = self._lanes(pids)
        keep = set(pids)
        return TimelineData(
            lanes,
            [c for c in self.calls.values() if c.pid in keep],
            [s for s in self.suspensions if s.pid in keep],
            [b for b in self.batches if pid is None or pid in b.pids],
            self.now,
            [t for t in self.tools.values() if t.pid in keep],
            [w for w in self.swaps if w.pid in keep],
        )

    def _lanes(self, pids: list[int]) -> list[Lane]:
        """Lanes in pid order, each process's children (by pid) right under it, depth first."""
        shown = set(pids)
        children: dict[int | None, list[int]] = {}
        for pid in pids:  # a parent not shown: its child is a root here
            parent = self.procs[pid].parent
            children.setdefault(parent if parent in shown else None, []).append(pid)
        lanes: list[Lane] = []
        stack = [(pid, 0) for pid in reversed(children.get(None, []))]
        while stack:
            pid, depth = stack.pop()
            p = self.procs[pid]
            lanes.append(Lane(pid, p.name, p.owner, p.start, p.end, p.parent, depth))
            stack += [(c, depth + 1) for c in reversed(children.get(pid, []))]
        return lanes

    def _fold(self, e: Event) -> None:
        r = record_of(e) if e.kind in ev.RECORDS else None  # (a newer engine's kinds: skipped)
        if isinstance(r, BatchRan):
            start, pids, sizes = e.t - r.seconds, tuple(r.pids), tuple(r.sizes)
            self.batches.append(BatchBar(r.batch, start, e.t, pids, sizes, r.tokens, r.policy))
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
        elif isinstance(r, ToolStarted):
            self.tools[r.call] = ToolWait(e.pid, r.call, r.tool, e.t, None, None)
        elif isinstance(r, ToolFinished) and r.call in self.tools:
            self.tools[r.call] = self.tools[r.call]._replace(end=e.t, error=r.error)

    def _process(self, pid: int, t: float, r: ProcessChanged, proc: _Proc) -> None:
        if r.old is None:  # created
            proc.name, proc.owner, proc.start = r.name or "?", r.owner or "?", t
            proc.parent = r.parent
        if r.old == "suspended":
            back = r.pages_swapped_in
            self._resume(pid, t, back)
            if back:
                self.swaps.append(Swap(pid, t, back, out=False))
        if r.new == "suspended":
            out = r.pages_swapped or 0
            self.suspensions.append(Suspension(pid, t, None, out))
            if out:
                self.swaps.append(Swap(pid, t, out, out=True))
        if r.new == "exited":
            proc.end = t
            self._resume(pid, t, None)
            self._cancel_calls(pid, t)
            for cid, w in self.tools.items():
                if w.pid == pid and w.end is None:
                    self.tools[cid] = w._replace(end=t, error="process exited")

    def _resume(self, pid: int, t: float, pages_in: int | None) -> None:
        for i, s in enumerate(self.suspensions):
            if s.pid == pid and s.end is None:
                self.suspensions[i] = s._replace(end=t, pages_in=pages_in)

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
        if len(self.tools) > self.max_calls:
            for cid in list(self.tools)[: len(self.tools) - self.max_calls]:
                del self.tools[cid]
        for kept in (self.suspensions, self.swaps):
            if len(kept) > self.max_calls:
                del kept[: len(kept) - self.max_calls]
