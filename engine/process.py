"""Processes: the LIPs the engine runs, with their state and counters."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from engine.wire.records import ProcessInfo


class State(str, enum.Enum):
    READY = "ready"  # running its own code
    WAITING = "waiting"  # inside a system call: queued for a forward, sleeping, receiving
    SUSPENDED = "suspended"  # its private pages moved to host memory under KV pressure
    EXITED = "exited"


# Python 3.11 finds State.X through a descriptor (~90 ns, several times a call): hot paths use these
READY, WAITING, SUSPENDED, EXITED = State.READY, State.WAITING, State.SUSPENDED, State.EXITED


@dataclass(slots=True)
class Counters:
    tokens_in: int = 0  # tokens forwarded into its KV files
    tokens_out: int = 0  # results returned (one per output index)
    calls: int = 0
    time_waiting: float = 0.0  # seconds between submitting forwards and their first batch
    time_computing: float = 0.0  # seconds of forward passes its calls were part of
    tokens_cached: int = 0  # tokens its forwards took from the prefix cache (not computed)


@dataclass(slots=True)
class Process:
    pid: int
    name: str
    owner: str
    priority: int = 0  # higher runs first and is suspended last
    parent: int | None = None
    state: State = READY
    blocked: int = 0  # system calls it is waiting in (a LIP may gather several)
    ready_since: float = field(default_factory=time.monotonic)  # when it last became READY
    suspended_since: float = 0.0  # when it was last suspended
    counters: Counters = field(default_factory=Counters)
    started: float = 0.0
    ended: float | None = None
    error: str | None = None  # why it ended, when not normally
    task: asyncio.Task | None = None
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    result: Any = None
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set when it exits

    @property
    def alive(self) -> bool:
        return self.state is not EXITED


__all__ = ["EXITED", "READY", "SUSPENDED", "WAITING", "Counters", "Process", "ProcessInfo", "State"]
