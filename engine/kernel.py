"""The kernel: one model, one page pool, one KV file system, the process table and the step loop.

The step loop, top to bottom: wait for calls; resume suspended processes that fit again; ask
the batch policy whether to run now; form a batch (level 2); make it fit in KV memory
(level 1: defer calls, suspend processes); run one forward; hand each call its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from engine import trace as ev
from engine.errors import (
    NoSuchProcess,
    OutOfPages,
    PermissionDenied,
    ProcessFailed,
)
from engine.kvfs import KVFS
from engine.loader import LoadedModel
from engine.page_pool import DEFAULT_PAGE_SIZE, PagePool
from engine.process import EXITED, READY, SUSPENDED, WAITING, Process, ProcessInfo, State
from engine.runner import Runner
from engine.saved import SavedFiles, default_data_dir
from engine.scheduler import Batch, BatchPolicy, Call, Scheduler, join_results
from engine.tools import Tools
from engine.trace import Trace

Program = Callable[..., Awaitable[Any]]  # async def main(sys: Syscalls, *args) -> Any
PS_EXITED = 1000  # exited processes `ps` still lists
EXITED_KEPT = 10_000  # exited processes whose record (result, error, counters) `wait` still finds

__all__ = ["Kernel", "ProcessFailed", "Program", "model_id"]


def model_id(loaded: LoadedModel) -> str:
    """Identifies the model a KV file was computed by: config and a sample of the weights."""
    config_file = loaded.path / "config.json"
    h = hashlib.sha256(
        config_file.read_bytes() if config_file.is_file() else repr(loaded.config).encode()
    )
    for p in list(loaded.model.parameters())[:4]:
        h.update(p.detach().float().flatten()[:64].numpy().tobytes())
    return h.hexdigest()[:16]


def freeze_startup_heap() -> None:
    """Hide what is alive when the first kernel starts from the garbage collector, once a process.

    Modules, the model and the page pool live as long as the process, yet every full collection
    walks them (some 350k objects with torch loaded: a 100-200 ms stall of every LIP on a small
    CPU) and frees none of them. vLLM freezes its engine's heap after start-up for the same
    reason. Objects made later are collected as usual, but less often: each forward call makes
    a dozen short-lived objects that reference counting frees, and at Python's default threshold
    (700) the collector ran every 40 calls and found next to nothing (7% of the time the engine
    spends on a call).
    """
    global _startup_heap_frozen
    if not _startup_heap_frozen:  # a flag: gc.get_freeze_count() walks the frozen heap (20 ms)
        _startup_heap_frozen = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, *gc.get_threshold()[1:])


_startup_heap_frozen = False
MAKE_ROOM_AFTER = 0.5  # seconds a suspended process waits before others are suspended for it
YOUNG_OBJECTS_PER_COLLECTION = 10_000  # the collector's first threshold; Python's default is 700


class Kernel:
    def __init__(
        self,
        loaded: LoadedModel,
        num_pages: int = 1024,
        page_size: int = DEFAULT_PAGE_SIZE,
        policy: BatchPolicy | None = None,
        token_budget: int = 2048,
        trace_capacity: int = 200_000,
        data_dir: Path | None = None,
    ) -> None:
        """data_dir: where saved KV files are kept (default: engine.saved.default_data_dir())."""
        self.loaded = loaded
        model = loaded.model
        self.pool = PagePool.for_model(
            loaded.config, num_pages, page_size, model.dtype, model.device
        )
        self.runner = Runner(model, self.pool)
        self.data_dir = data_dir or default_data_dir()  # saved files, users' credentials
        saved = SavedFiles(self.data_dir / "saved")
        self.kvfs = KVFS(self.pool, model_id(loaded), saved=saved)
        self.tokenizer = loaded.tokenizer
        self.trace = Trace(trace_capacity)
        self.scheduler = Scheduler(policy, token_budget)
        self.procs: dict[int, Process] = {}  # the live and the last EXITED_KEPT exited, by pid
        self.live: dict[int, Process] = {}  # those not exited: what the step loop looks at
        self.exited: deque[int] = deque()  # pids of the exited records kept, oldest first
        self.tools = Tools()  # functions any LIP may call; their host starts on first use
        self._pids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._batch_ids = itertools.count(1)
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> Kernel:
        if self._loop_task is None:
            freeze_startup_heap()
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.create_task(self._loop(), name="symphony-step-loop")
        return self

    async def stop(self) -> None:
        live = [p.task for p in self.live.values() if p.task is not None]
        for task in live:
            task.cancel()
        await asyncio.gather(*live, return_exceptions=True)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self.tools.stop()

    async def __aenter__(self) -> Kernel:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def set_policy(self, policy: BatchPolicy) -> None:
        self.scheduler.policy = policy
        self._wake()

    # --- processes -------------------------------------------------------------------------------

    def spawn(
        self,
        main: Program,
        *args: Any,
        name: str | None = None,
        owner: str = "local",
        priority: int = 0,
        parent: int | None = None,
    ) -> int:
        from engine.syscalls import Syscalls

        if self._loop_task is None:
            raise RuntimeError("start the kernel first (await kernel.start())")
        pid = next(self._pids)
        p = Process(
            pid,
            name or str(getattr(main, "__name__", "lip")),
            owner,
            priority,
            parent,
            started=self.trace.now(),
        )
        self.procs[pid] = self.live[pid] = p
        self._emit_created(p)
        p.task = asyncio.create_task(self._run(p, main, Syscalls(self, p), args), name=f"lip-{pid}")
        return pid

    def attach(self, name: str, owner: str, priority: int = 0, parent: int | None = None) -> int:
        """A process whose code runs elsewhere (a notebook kernel) and calls in over RPC."""
        pid = next(self._pids)
        p = Process(pid, name, owner, priority, parent, started=self.trace.now())
        self.procs[pid] = self.live[pid] = p
        self._emit_created(p)
        return pid

    def _emit_created(self, p: Process) -> None:
        data = {"old": None, "new": p.state.value, "name": p.name, "owner": p.owner}
        self.trace.emit(ev.PROCESS, p.pid, {**data, "parent": p.parent})

    def detach(self, pid: int, error: str | None = None) -> None:
        """An attached process ended (its cell finished, raised, was interrupted, or vanished)."""
        p = self._proc(pid)
        if p.alive:
            p.error = error
            self._exit(p)

    async def _run(self, p: Process, main: Program, sys: Any, args: tuple) -> None:
        try:
            p.result = await main(sys, *args)
        except asyncio.CancelledError:
            p.error = "killed"
        except Exception as e:  # a LIP's bug ends that LIP only
            p.error = f"{type(e).__name__}: {e}"
            p.result = e
        finally:
            self._exit(p)

    def _exit(self, p: Process) -> None:
        for call in self.scheduler.drop_process(p.pid):
            if not call.future.done():
                call.future.cancel()
        freed = self.kvfs.remove_process(p.pid)
        p.ended = self.trace.now()
        self._set_state(p, EXITED, error=p.error, pages_freed=freed)
        self.live.pop(p.pid, None)
        self.exited.append(p.pid)
        if len(self.exited) > EXITED_KEPT:  # a long-lived engine runs processes without end
            self.procs.pop(self.exited.popleft())
        p.done.set()
        self._wake()

    def owned(self, pid: int, user: str | None) -> Process:
        """Process pid, when `user` (None: the engine itself) may wait on or kill it: processes
        of one user are theirs alone."""
        p = self._proc(pid)
        if user is not None and p.owner != user:
            raise PermissionDenied(f"process {pid}", f"belongs to {p.owner}, not {user}")
        return p

    async def wait(self, pid: int, by: str | None = None) -> Any:
        """pid's result once it has exited (by: the user asking, who must own it)."""
        p = self.owned(pid, by)
        if p.task is not None:
            await asyncio.shield(p.task)
        await p.done.wait()  # an attached process: until it detaches
        if p.error is not None:
            raise ProcessFailed(f"process {pid} ({p.name}) ended: {p.error}") from (
                p.result if isinstance(p.result, BaseException) else None
            )
        return p.result

    def kill(self, pid: int, by: str | None = None) -> None:
        p = self.owned(pid, by)
        if p.alive and p.task is not None:
            p.task.cancel()
        elif p.alive:  # attached: end it here; its remote code sees its next call fail
            self.detach(pid, error="killed")

    def ps(self) -> list[ProcessInfo]:
        """The live processes and the PS_EXITED that exited last (a long-lived engine ran many)."""
        exited = [self.procs[pid] for pid in itertools.islice(reversed(self.exited), PS_EXITED)]
        shown = sorted([*exited, *self.live.values()], key=lambda p: p.pid)
        return [ProcessInfo.of(p) for p in shown]

    def _proc(self, pid: int) -> Process:
        if pid not in self.procs:
            raise NoSuchProcess(
                f"no process {pid} (the kernel keeps the last {EXITED_KEPT} that exited)"
            )
        return self.procs[pid]

    def _set_state(self, p: Process, state: State, **data: Any) -> None:
        if p.state is not state:
            # _value_, not .value: the enum property costs more than the rest of this call
            self.trace.emit(
                ev.PROCESS, p.pid, {"old": p.state._value_, "new": state._value_, **data}
            )
            p.state = state
            if state is READY:
                p.ready_since = time.monotonic()

    # --- forward calls ---------------------------------------------------------------------------

    async def submit(self, call: Call) -> Any:
        """Queue a checked forward and wait for its result (chunks joined)."""
        p = call.process
        self.scheduler.submit(call)
        self.trace.emit(
            ev.CALL_SUBMITTED, p.pid, {"call": call.id, "tokens": len(call.segment.tokens)}
        )
        self.block(p)
        self._wake()
        try:
            return await call.future
        finally:
            self.unblock(p)

    def block(self, p: Process) -> None:
        """p entered a system call that waits (a forward, sleep, receive, wait, a tool)."""
        p.blocked += 1
        if p.state is READY:
            self._set_state(p, WAITING)

    def unblock(self, p: Process) -> None:
        p.blocked -= 1
        if p.blocked == 0 and p.state is WAITING:
            self._set_state(p, READY)

    def new_call_id(self) -> int:
        return next(self._call_ids)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # --- the step loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self.scheduler.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._resume_suspended()
            now = time.monotonic()
            ready_for = [now - p.ready_since for p in self.live.values() if p.state is READY]
            ready = self.scheduler.ready_calls()
            view = self.scheduler.view(ready, now, ready_for)
            delay = self.scheduler.policy.delay(view) if ready else 0.05
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                continue
            batch = self._fit_memory(self.scheduler.form_batch(ready))
            if batch.calls:
                self._run_batch(batch)
            await asyncio.sleep(0)  # let the processes whose calls finished submit their next

    def _run_batch(self, batch: Batch) -> None:
        bid = next(self._batch_ids)
        start = time.monotonic()
        segments = [c.chunk(n) for c, n in zip(batch.calls, batch.sizes, strict=True)]
        pids = sorted({c.process.pid for c in batch.calls})
        for c in batch.calls:
            if c.started is None:
                c.started = start
                c.process.counters.time_waiting += start - c.submitted
                self.trace.emit(ev.CALL_STARTED, c.process.pid, {"call": c.id, "batch": bid})
        try:
            results = self.runner.forward(segments, validate=False)  # checked at submission
        except Exception as e:  # checked at submission, yet failed: the batch left no trace
            if len(batch.calls) == 1:
                self._finish(batch.calls[0], error=e)
            else:  # each call alone: only the calls that cause the failure fail
                for c, n in zip(batch.calls, batch.sizes, strict=True):
                    self._run_batch(Batch([c], [n]))
            return
        took = time.monotonic() - start
        self.trace.emit(
            ev.BATCH,
            None,
            {
                "batch": bid,
                "pids": pids,
                "calls": [c.id for c in batch.calls],
                "sizes": batch.sizes,
                "tokens": sum(batch.sizes),
                "seconds": took,
                "policy": self.scheduler.policy.name,
            },
        )
        self.trace.emit(
            ev.PAGES,
            None,
            {
                "free": self.pool.num_free,
                "used": self.pool.num_pages - self.pool.num_free,
                "swapped": self._swapped_pages(),
            },
        )
        for pid in pids:
            self.procs[pid].counters.time_computing += took
        for c, n, r in zip(batch.calls, batch.sizes, results, strict=True):
            c.done += n
            c.process.counters.tokens_in += n
            if type(r) is not Tensor or r.shape[0]:  # (not len(r): Tensor.__len__ is slow)
                c.results.append(r)
            if c.remaining == 0:
                self._finish(c)
        self.scheduler.last_batch = len(batch.calls)

    def _finish(self, c: Call, error: Exception | None = None) -> None:
        if c in self.scheduler.queue:
            self.scheduler.queue.remove(c)
        p = c.process
        p.counters.calls += 1
        p.counters.tokens_out += len(c.segment.outputs)  # type: ignore[arg-type]
        self.trace.emit(
            ev.CALL_FINISHED,
            p.pid,
            {
                "call": c.id,
                "tokens": len(c.segment.tokens),
                "waited": (c.started or c.submitted) - c.submitted,
                "error": None if error is None else str(error),
            },
        )
        if c.future.done():
            return
        if error is not None:
            c.future.set_exception(error)
        else:
            c.future.set_result(join_results(c.results) if c.results else None)

    # --- level 1: KV memory ----------------------------------------------------------------------

    def _pages_needed(self, batch: Batch) -> int:
        return sum(
            c.seq.pages_needed(self.pool, n) for c, n in zip(batch.calls, batch.sizes, strict=True)
        )

    def _fit_memory(self, batch: Batch) -> Batch:
        """Defer calls, then suspend other processes, until the batch's new pages fit."""
        # The commonest case, without a look at each sequence: n tokens take at most n // page
        # size + 1 new pages, and one more to copy a shared partial last page.
        bound = sum(batch.sizes) // self.pool.page_size + 2 * len(batch.sizes)
        if bound <= self.pool.num_free or self._pages_needed(batch) <= self.pool.num_free:
            return batch
        calls, sizes = list(batch.calls), list(batch.sizes)
        while len(calls) > 1 and self._pages_needed(Batch(calls, sizes)) > self.pool.num_free:
            calls.pop()
            sizes.pop()
        if not calls or self._pages_needed(Batch(calls, sizes)) <= self.pool.num_free:
            return Batch(calls, sizes)
        # One call that does not fit: suspend others, then run as much of it as fits.
        (head,), (size,) = calls, sizes
        while head.seq.pages_needed(self.pool, size) > self.pool.num_free:
            victim = self._pick_victim(exclude={head.process.pid})
            if victim is None:
                break
            self._suspend(victim)
        while size and head.seq.pages_needed(self.pool, size) > self.pool.num_free:
            size -= 1
        if size == 0:  # its own process's other files hold the rest of the pool
            held = self.pool.num_pages - self.pool.num_free
            self._finish(
                head,
                error=OutOfPages(
                    head.seq.pages_needed(self.pool, 1),
                    self.pool.num_free,
                    f"process {head.process.pid}'s files hold {held} of the pool's"
                    f" {self.pool.num_pages} pages, and its call needs one more",
                ),
            )
            return Batch([], [])
        return Batch([head], [size])

    def _private_files(self, p: Process) -> list[Any]:
        prefix = f"/proc/{p.pid}/"
        return [f for path, f in self.kvfs.files() if path.startswith(prefix)]

    def _swappable(self, p: Process) -> int:
        return sum(
            1
            for f in self._private_files(p)
            for page in f.seq.pages
            if page >= 0 and self.pool.refcount[page] == 1
        )

    def _pick_victim(self, exclude: set[int]) -> Process | None:
        """The lowest-priority, most recently started process whose suspension frees pages."""
        candidates = [
            p
            for p in self.live.values()
            if p.state is not SUSPENDED and p.pid not in exclude and self._swappable(p) > 0
        ]
        return min(candidates, key=lambda p: (p.priority, -p.started), default=None)

    def _suspend(self, p: Process) -> None:
        freed = sum(f.seq.swap_out(self.pool) for f in self._private_files(p))
        p.suspended_since = time.monotonic()
        self._set_state(p, SUSPENDED, pages_swapped=freed)

    def _resume_suspended(self) -> None:
        """Bring back suspended processes, highest priority and oldest first, while they fit.

        One that does not fit now does not hold up those after it. The first in line gets room
        made for it (others suspended) once it has waited MAKE_ROOM_AFTER seconds, or at once
        when no resident process has a call to run: every process that fits alone makes progress.
        """
        suspended = [p for p in self.live.values() if p.state is SUSPENDED]
        first = True
        for p in sorted(suspended, key=lambda p: (-p.priority, p.suspended_since)):
            need = self._resume_need(p)
            if first and need > self.pool.num_free and need <= self.pool.num_pages:
                waited = time.monotonic() - p.suspended_since
                idle = not any(c.process.state is not SUSPENDED for c in self.scheduler.queue)
                if idle or waited >= MAKE_ROOM_AFTER:
                    while need > self.pool.num_free:
                        victim = self._pick_victim(exclude={p.pid})
                        if victim is None:
                            break
                        self._suspend(victim)
            first = False
            if need <= self.pool.num_free:
                self._resume(p)

    def _resume_need(self, p: Process) -> int:
        """Pages p needs to come back and run one token of each queued call: its swapped pages,
        plus, per call, a page when its file's last page is full (or a copy of a shared one)."""
        need = sum(len(f.seq.swapped) for f in self._private_files(p))
        return need + sum(
            c.seq.pages_needed(self.pool, 1) for c in self.scheduler.queue if c.process is p
        )

    def _resume(self, p: Process) -> None:
        back = 0
        for f in self._private_files(p):
            back += len(f.seq.swapped)
            f.seq.swap_in(self.pool)
        self._set_state(p, WAITING if p.blocked else READY, pages_swapped_in=back)

    async def ensure_resident(self, p: Process) -> None:
        """Wait until a suspended process's files are back in the pool (before it touches them)."""
        while p.state is SUSPENDED:
            self._resume_suspended()
            if p.state is SUSPENDED:
                await asyncio.sleep(0.01)

    def _swapped_pages(self) -> int:
        """Only suspended processes hold swapped pages (resuming brings all of them back)."""
        suspended = [p for p in self.live.values() if p.state is SUSPENDED]
        return sum(len(f.seq.swapped) for p in suspended for f in self._private_files(p))
