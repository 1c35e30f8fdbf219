"""The trace ring and its typed records (engine.wire.events): what is emitted is what is read."""

from __future__ import annotations

from engine.trace import Trace
from engine.wire import events as ev
from engine.wire.events import (
    BatchRan,
    CallFinished,
    CallStarted,
    CallSubmitted,
    PagesUsed,
    PrefixLookup,
    ProcessChanged,
    ToolFinished,
    ToolStarted,
    record_of,
)
from engine.wire.records import Event

EMITTED = [
    (1, ProcessChanged(None, "ready", "one", "alice")),
    (1, CallSubmitted(7, 5)),
    (1, PrefixLookup(7, "/proc/1/kv0", 0, 4, [2], "floor")),
    (1, CallStarted(7, 1)),
    (None, BatchRan(1, [1, 2], [7, 8], [5, 1], 6, 0.01, "eager")),
    (None, PagesUsed(3, 5, 0)),
    (1, CallFinished(7, 5, 0.002, None)),
    (1, ToolStarted(9, "search")),
    (1, ToolFinished(9, "search", "TimeoutError: 1 s")),
    (2, ProcessChanged("ready", "suspended", pages_swapped=3)),
    (2, ProcessChanged("suspended", "exited", error="killed", pages_freed=4)),
]


def filled() -> Trace:
    trace = Trace(capacity=100)
    for pid, record in EMITTED:
        trace.emit(pid, record)
    return trace


def test_every_event_reads_back_as_the_record_emitted() -> None:
    events = filled().query()
    assert [e.seq for e in events] == list(range(len(EMITTED)))
    assert [(e.pid, record_of(e)) for e in events] == EMITTED
    assert [e.kind for e in events] == [r.kind for _, r in EMITTED]
    assert set(ev.RECORDS) == {r.kind for _, r in EMITTED}  # one record per kind


def test_the_wire_form_names_each_field() -> None:
    batch = filled().last(ev.BATCH)
    assert batch is not None and batch.data["pids"] == [1, 2] and batch.data["policy"] == "eager"
    suspended = filled().query(pid=2, kinds=[ev.PROCESS])[0]
    assert suspended.data["new"] == "suspended" and suspended.data["pages_swapped"] == 3


def test_a_batch_belongs_to_every_process_in_it() -> None:
    trace = filled()
    assert [e.kind for e in trace.query(pid=2)] == [ev.BATCH, ev.PROCESS, ev.PROCESS]
    assert [e.kind for e in trace.query(pid=1, kinds=[ev.CALL_STARTED, ev.BATCH])] == [
        ev.CALL_STARTED,
        ev.BATCH,
    ]


def test_a_record_from_another_engine_version_still_reads() -> None:
    older = Event(0, 0.0, ev.BATCH, None, {"batch": 3, "pids": [1], "calls": [4], "sizes": [2]})
    assert record_of(older) == BatchRan(3, [1], [4], [2], tokens=0, seconds=0.0, policy="")
    newer = Event(1, 0.0, ev.CALL_STARTED, 1, {"call": 4, "batch": 3, "device": "cuda:1"})
    assert record_of(newer) == CallStarted(4, 3)
