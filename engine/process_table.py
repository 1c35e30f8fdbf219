"""The process table: every process the kernel knows, its record, and its state changes.

A process is added (spawned or attached), changes state (ready, waiting in a system call,
suspended, exited), and exits. Its record (result, error, counters) outlives it: `wait` finds the
last EXITED_KEPT that exited, `ps` lists the live ones and the last PS_EXITED that exited.
Every state change is traced; the step loop looks only at the live processes.
"""

from __future__ import annotations

import itertools
import time
from collections import deque

from engine.process import EXITED, READY, SUSPENDED, WAITING, Process, ProcessInfo, State
from engine.trace import Trace
from engine.wire.errors import NoSuchProcess, PermissionDenied
from engine.wire.events import ProcessChanged

# Each plain state change's record, made once: every system call that waits makes two (a record
# is immutable, so one serves all). _value_, not .value: the enum property costs more.
CHANGES = {(a, b): ProcessChanged(a._value_, b._value_) for a in State for b in State}

PS_EXITED = 1000  # exited processes `ps` still lists
EXITED_KEPT = 10_000  # exited processes whose record (result, error, counters) `wait` still finds


class ProcessTable:
    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.procs: dict[int, Process] = {}  # the live and the last EXITED_KEPT exited, by pid
        self.live: dict[int, Process] = {}  # those not exited: what the step loop looks at
        self.exited: deque[int] = deque()  # pids of the exited records kept, oldest first
        self._pids = itertools.count(1)

    def add(self, name: str, owner: str, priority: int = 0, parent: int | None = None) -> Process:
        """A new process, ready."""
        p = Process(next(self._pids), name, owner, priority, parent, started=self.trace.now())
        self.procs[p.pid] = self.live[p.pid] = p
        created = ProcessChanged(None, p.state._value_, name, owner, parent=parent)
        self.trace.emit(p.pid, created)
        return p

    def exit(self, p: Process, pages_freed: int) -> None:
        """p has ended (its error, if any, set): traced, out of the live, its record kept."""
        p.ended = self.trace.now()
        self.set_state(p, EXITED, error=p.error, pages_freed=pages_freed)
        self.live.pop(p.pid, None)
        self.exited.append(p.pid)
        if len(self.exited) > EXITED_KEPT:  # a long-lived engine runs processes without end
            self.procs.pop(self.exited.popleft())
        p.done.set()

    def get(self, pid: int) -> Process:
        if pid not in self.procs:
            raise NoSuchProcess(
                f"no process {pid} (the kernel keeps the last {EXITED_KEPT} that exited)"
            )
        return self.procs[pid]

    def owned(self, pid: int, user: str | None) -> Process:
        """Process pid, when `user` (None: the engine itself) may wait on or kill it: processes
        of one user are theirs alone."""
        p = self.get(pid)
        if user is not None and p.owner != user:
            raise PermissionDenied(f"process {pid}", f"belongs to {p.owner}, not {user}")
        return p

    def ps(self) -> list[ProcessInfo]:
        """The live processes and the PS_EXITED that exited last (a long-lived engine ran many)."""
        exited = [self.procs[pid] for pid in itertools.islice(reversed(self.exited), PS_EXITED)]
        shown = sorted([*exited, *self.live.values()], key=lambda p: p.pid)
        return [ProcessInfo.of(p) for p in shown]

    def suspended(self) -> list[Process]:
        return [p for p in self.live.values() if p.state is SUSPENDED]

    def ready_for(self, now: float) -> list[float]:
        """Per process running its own code, seconds since its last system call returned."""
        return [now - p.ready_since for p in self.live.values() if p.state is READY]

    def set_state(
        self,
        p: Process,
        state: State,
        pages_swapped: int | None = None,
        error: str | None = None,
        pages_freed: int | None = None,
        pages_swapped_in: int | None = None,
    ) -> None:
        """p's new state, traced (suspended: with the pages swapped; back: with the pages
        swapped in; exited: why, and the pages freed)."""
        if p.state is not state:
            change = CHANGES[p.state, state]
            if pages_swapped is not None:
                change = change._replace(pages_swapped=pages_swapped)
            if state is EXITED:
                change = change._replace(error=error, pages_freed=pages_freed)
            elif pages_swapped_in is not None:
                change = change._replace(pages_swapped_in=pages_swapped_in)
            self.trace.emit(p.pid, change)
            p.state = state
            if state is READY:
                p.ready_since = time.monotonic()

    def block(self, p: Process) -> None:
        """p entered a system call that waits (a forward, sleep, receive, wait, a tool)."""
        p.blocked += 1
        if p.state is READY:
            self.set_state(p, WAITING)

    def unblock(self, p: Process) -> None:
        p.blocked -= 1
        if p.blocked == 0 and p.state is WAITING:
            self.set_state(p, READY)
