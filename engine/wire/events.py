"""The trace's events: one record per kind, defined here once.

The engine emits these records (`Trace.emit`); on the wire, and to `Trace.query`, each is an
`Event` whose `data` holds the record's fields by name; `record_of(event)` gives the record back,
for the widgets and the tests alike. Torch-free, so a notebook imports it without the engine.
"""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

from engine.wire.records import BatchShare, Event, OwnTrace, Wait

# The kinds of event, by name (what `Trace.query(kinds=...)` takes)
CALL_SUBMITTED = "call.submitted"
CALL_STARTED = "call.started"
CALL_FINISHED = "call.finished"
BATCH = "batch"
PROCESS = "process"
PAGES = "pages"
PREFIX = "prefix"
TOOL_STARTED = "tool.started"
TOOL_FINISHED = "tool.finished"


class CallSubmitted(NamedTuple):
    """A forward call entered the queue (pid: its process)."""

    call: int
    tokens: int

    @property
    def kind(self) -> str:
        return CALL_SUBMITTED


class CallStarted(NamedTuple):
    """A forward call's first tokens went into a batch."""

    call: int
    batch: int

    @property
    def kind(self) -> str:
        return CALL_STARTED


class CallFinished(NamedTuple):
    """A forward call's result (or error) went back to its process."""

    call: int
    tokens: int
    waited: float  # seconds from submission to its first batch
    error: str | None = None

    @property
    def kind(self) -> str:
        return CALL_FINISHED


class BatchRan(NamedTuple):
    """One forward pass (pid None: it belongs to every process in it)."""

    batch: int
    pids: list[int]
    calls: list[int]
    sizes: list[int]  # tokens of each call in it
    tokens: int = 0
    seconds: float = 0.0
    policy: str = ""

    @property
    def kind(self) -> str:
        return BATCH


class ProcessChanged(NamedTuple):
    """A process changed state: old None when it was created (with its name, owner and parent);
    pages_swapped when it was suspended, pages_swapped_in when it came back; error and
    pages_freed when it exited."""

    old: str | None
    new: str
    name: str | None = None
    owner: str | None = None
    pages_swapped: int | None = None
    error: str | None = None
    pages_freed: int | None = None
    parent: int | None = None
    pages_swapped_in: int | None = None

    @property
    def kind(self) -> str:
        return PROCESS


class PagesUsed(NamedTuple):
    """The page pool after a batch: free, used, and swapped out to host memory."""

    free: int
    used: int
    swapped: int

    @property
    def kind(self) -> str:
        return PAGES


class ToolStarted(NamedTuple):
    """A process called an engine-side tool and waits for it (call pairs it with its end)."""

    call: int
    tool: str

    @property
    def kind(self) -> str:
        return TOOL_STARTED


class ToolFinished(NamedTuple):
    """A tool's result (or error) came back to the process that called it."""

    call: int
    tool: str
    error: str | None = None

    @property
    def kind(self) -> str:
        return TOOL_FINISHED


class PrefixLookup(NamedTuple):
    """A forward looked its coming full pages up in the prefix cache (engine.prefix_cache): the
    tokens it took, the pages, and why matching stopped (a `Stop` kind)."""

    call: int
    file: str
    start: int  # the file index where the forward's tokens began
    tokens: int  # taken from the cache, not computed
    pages: list[int]
    stop: str

    @property
    def kind(self) -> str:
        return PREFIX


TraceRecord = (
    CallSubmitted
    | CallStarted
    | CallFinished
    | BatchRan
    | ProcessChanged
    | PagesUsed
    | PrefixLookup
    | ToolStarted
    | ToolFinished
)
RECORDS: dict[str, type[TraceRecord]] = {
    CALL_SUBMITTED: CallSubmitted,
    CALL_STARTED: CallStarted,
    CALL_FINISHED: CallFinished,
    BATCH: BatchRan,
    PROCESS: ProcessChanged,
    PAGES: PagesUsed,
    PREFIX: PrefixLookup,
    TOOL_STARTED: ToolStarted,
    TOOL_FINISHED: ToolFinished,
}


def own_trace(events: list[Event], pid: int) -> OwnTrace:
    """What events (earliest first) say of process pid: the batches its calls were in and the
    spans it waited (torch-free: the engine's `own_trace` call and a notebook both use it)."""
    batches: list[BatchShare] = []
    waits: list[Wait] = []
    tool: str | None = None  # the tool it is calling now
    calls, waited = 0, 0.0
    started = collections.Counter(  # its calls that began in each batch
        e.data["batch"] for e in events if e.pid == pid and e.kind == CALL_STARTED
    )
    for e in events:
        r = record_of(e)
        if type(r) is BatchRan and pid in r.pids:
            mine = max(started[r.batch], 1)  # (a chunk of a long prefill started before)
            share = BatchShare(r.batch, e.t, mine, len(r.calls), len(r.pids), r.tokens, r.seconds)
            batches.append(share)
        elif e.pid != pid:
            continue
        elif type(r) is ToolStarted:
            tool = r.tool
        elif type(r) is ToolFinished:
            tool = None
        elif type(r) is CallFinished:
            calls, waited = calls + 1, waited + r.waited
        elif type(r) is ProcessChanged:
            if waits and waits[-1].end is None:
                waits[-1] = waits[-1]._replace(end=e.t)
            if r.new in ("waiting", "suspended"):
                waits.append(Wait(e.t, None, r.new, tool if r.new == "waiting" else None))
    last = events[-1].seq if events else None
    return OwnTrace(pid, batches, waits, calls, waited, last)


def record_of(event: Event) -> TraceRecord:
    """The record an event carries (fields it lacks take their defaults; unknown ones are
    ignored, so an engine newer or older than the notebook still reads)."""
    cls = RECORDS[event.kind]
    data: dict[str, Any] = event.data
    return cls(**{k: data[k] for k in cls._fields if k in data})


__all__ = [
    "BATCH",
    "CALL_FINISHED",
    "CALL_STARTED",
    "CALL_SUBMITTED",
    "PAGES",
    "PREFIX",
    "PROCESS",
    "TOOL_FINISHED",
    "TOOL_STARTED",
    "RECORDS",
    "BatchRan",
    "CallFinished",
    "CallStarted",
    "CallSubmitted",
    "PagesUsed",
    "PrefixLookup",
    "ProcessChanged",
    "ToolFinished",
    "ToolStarted",
    "TraceRecord",
    "own_trace",
    "record_of",
]
