"""The memory manager, level 1 of the scheduler: which processes hold KV memory now.

A batch must fit in the free pages of the pool. When it does not, later calls wait for the next
batch; when even one call does not fit, other processes are suspended for it (the pages only
their files hold move to host memory, see `KVSequence.swap_out`), lowest priority and most
recently started first. Suspended processes come back (highest priority and longest suspended
first) as soon as they fit; the first in line gets room made for it after MAKE_ROOM_AFTER
seconds, or at once when nobody resident has a call to run: every process that fits alone makes
progress. A file that outlives its process while swapped out comes back when the process exits,
or when next used (`KVFS.bring_back`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import NamedTuple

from engine.kvfs import KVFS, KVFile
from engine.page_pool import PagePool
from engine.process import READY, SUSPENDED, WAITING, Process
from engine.process_table import ProcessTable
from engine.scheduler import Batch, Call, Scheduler
from engine.wire.errors import OutOfPages

MAKE_ROOM_AFTER = 0.5  # seconds a suspended process waits before others are suspended for it


class Fitted(NamedTuple):
    """A batch cut to fit the pool, and the calls refused because they never could."""

    batch: Batch
    refused: list[tuple[Call, OutOfPages]]


class MemoryManager:
    def __init__(
        self, pool: PagePool, kvfs: KVFS, processes: ProcessTable, scheduler: Scheduler
    ) -> None:
        self.pool, self.kvfs, self.processes, self.scheduler = pool, kvfs, processes, scheduler

    def num_swapped_pages(self) -> int:
        """Pages in host memory: of suspended processes' files, and of files that outlived a
        process that exited suspended and have not fit back yet. The one count of them."""
        return self.pool.num_swapped

    def need(self, c: Call, n: int) -> int:
        """Pages n more tokens of c take: its file's pages in host memory (a file another
        process shares, swapped out with that process), then the write's new pages."""
        return c.seq.num_swapped_pages + c.seq.pages_needed(self.pool, n)

    def fit(self, batch: Batch) -> Fitted:
        """Defer calls, then suspend other processes, until the batch's new pages fit."""
        # The commonest case, without a look at each sequence: n tokens take at most n // page
        # size + 1 new pages, and one more to copy a shared partial last page.
        bound = sum(batch.sizes) // self.pool.page_size + 2 * len(batch.sizes)
        if bound <= self.pool.num_free and all(c.seq.swapped is None for c in batch.calls):
            return Fitted(batch, [])
        calls, sizes = list(batch.calls), list(batch.sizes)
        while len(calls) > 1 and self._needed(calls, sizes) > self.pool.num_free:
            calls.pop()
            sizes.pop()
        if not calls or self._needed(calls, sizes) <= self.pool.num_free:
            return Fitted(Batch(calls, sizes), [])
        # One call that does not fit: suspend others, then run as much of it as fits.
        (head,), (size,) = calls, sizes
        while self.need(head, size) > self.pool.num_free:
            victim = self._pick_victim(exclude=head.process)
            if victim is None:
                break
            self.suspend(victim)
        while size and self.need(head, size) > self.pool.num_free:
            size -= 1
        if size == 0:  # the rest of the pool is held by files no suspension frees
            held = self.pool.num_pages - self.pool.num_free
            own = sum(len(f.seq.held_pages()) for f in self._private_files(head.process))
            refused = OutOfPages(
                self.need(head, 1),
                self.pool.num_free,
                f"{held} of the pool's {self.pool.num_pages} pages are held ({own} by process"
                f" {head.process.pid}'s own files, the rest by files no suspension frees), and"
                f" its call needs {self.need(head, 1)} more",
            )
            return Fitted(Batch([], []), [(head, refused)])
        return Fitted(Batch([head], [size]), [])

    def suspend(self, p: Process) -> None:
        freed = sum(f.seq.swap_out(self.pool) for f in self._private_files(p))
        p.suspended_since = time.monotonic()
        self.processes.set_state(p, SUSPENDED, pages_swapped=freed)

    def resume_suspended(self) -> None:
        """Bring back suspended processes, highest priority and oldest first, while they fit.

        One that does not fit now does not hold up those after it. The first in line gets room
        made for it (others suspended) once it has waited MAKE_ROOM_AFTER seconds, or at once
        when no resident process has a call to run.
        """
        waiting = sorted(self.processes.suspended(), key=lambda p: (-p.priority, p.suspended_since))
        for i, p in enumerate(waiting):
            need = self._resume_need(p)
            if i == 0 and self.pool.num_free < need <= self.pool.num_pages:
                waited = time.monotonic() - p.suspended_since
                idle = not any(c.process.state is not SUSPENDED for c in self.scheduler.queue)
                if idle or waited >= MAKE_ROOM_AFTER:
                    while need > self.pool.num_free:
                        victim = self._pick_victim(exclude=p)
                        if victim is None:
                            break
                        self.suspend(victim)
            if need <= self.pool.num_free:
                self._resume(p)

    async def ensure_resident(self, p: Process) -> None:
        """Wait until a suspended process's files are back in the pool (before it touches them)."""
        while p.state is SUSPENDED:
            self.resume_suspended()
            if p.state is SUSPENDED:
                await asyncio.sleep(0.01)

    def away(self, p: Process) -> list[KVFile]:
        """p's files that are swapped out (p is suspended)."""
        return [f for f in self._private_files(p) if not f.seq.resident]

    def bring_back(self, files: list[KVFile]) -> None:
        """Files that outlived their process while swapped out: back into the pool where they
        fit now (the others come back when next used)."""
        for f in files:
            if f.names or f.open_handles:
                with contextlib.suppress(OutOfPages):
                    self.kvfs.bring_back(min(f.names, default="(deleted)"), f)

    def _needed(self, calls: list[Call], sizes: list[int]) -> int:
        return sum(self.need(c, n) for c, n in zip(calls, sizes, strict=True))

    def _private_files(self, p: Process) -> list[KVFile]:
        prefix = f"/proc/{p.pid}/"
        return [f for path, f in self.kvfs.files() if path.startswith(prefix)]

    def _swappable(self, p: Process) -> int:
        """Pages suspending p would free: those only its resident files hold."""
        return sum(
            1
            for f in self._private_files(p)
            if f.seq.resident
            for page in f.seq.pages
            if self.pool.refcount[page] == 1
        )

    def _pick_victim(self, exclude: Process) -> Process | None:
        """The lowest-priority, most recently started process whose suspension frees pages."""
        candidates = [
            p
            for p in self.processes.live.values()
            if p.state is not SUSPENDED and p is not exclude and self._swappable(p) > 0
        ]
        return min(candidates, key=lambda p: (p.priority, -p.started), default=None)

    def _resume_need(self, p: Process) -> int:
        """Pages p needs to come back and run one token of each queued call: its swapped pages,
        plus, per call, a page when its file's last page is full (or a copy of a shared one)."""
        need = sum(f.seq.num_swapped_pages for f in self._private_files(p))
        return need + sum(
            c.seq.pages_needed(self.pool, 1) for c in self.scheduler.queue if c.process is p
        )

    def _resume(self, p: Process) -> None:
        back = 0
        for f in self._private_files(p):
            back += f.seq.num_swapped_pages
            f.seq.swap_in(self.pool)
        self.processes.set_state(p, WAITING if p.blocked else READY, pages_swapped_in=back)
