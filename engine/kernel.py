"""The kernel: one model, one page pool, one KV file system, and the step loop that runs them.

Its parts, one job each: the process table (engine.process_table), the memory manager, level 1
of the scheduler (engine.memory), the batch scheduler, level 2 (engine.scheduler), the runner
(engine.runner). The step loop (`_loop`) reads top to bottom: wait for calls; level 1 brings
back suspended processes that fit; level 2 says wait, or which calls form the next batch;
level 1 makes it fit in KV memory; one forward runs it; each call gets its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from engine.kvfs import KVFS
from engine.loader import LoadedModel
from engine.memory import MemoryManager
from engine.page_pool import PagePool
from engine.prefix_cache import chain
from engine.process import Process, ProcessInfo
from engine.process_table import ProcessTable
from engine.runner import Runner
from engine.saved import SavedFiles, default_data_dir
from engine.scheduler import Adaptive, Batch, BatchPolicy, Call, Eager, Scheduler, join_results
from engine.tools import Tools
from engine.trace import Trace
from engine.wire.engine_config import EngineConfig
from engine.wire.errors import InvalidArgument, ProcessFailed
from engine.wire.events import (
    BatchRan,
    CallFinished,
    CallStarted,
    CallSubmitted,
    PagesUsed,
    PrefixLookup,
)

Program = Callable[..., Awaitable[Any]]  # async def main(sys: Syscalls, *args) -> Any

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
YOUNG_OBJECTS_PER_COLLECTION = 10_000  # the collector's first threshold; Python's default is 700


class Kernel:
    def __init__(
        self,
        loaded: LoadedModel,
        num_pages: int = EngineConfig.num_pages,
        page_size: int = EngineConfig.page_size,
        policy: BatchPolicy | None = None,
        token_budget: int = EngineConfig.token_budget,
        trace_capacity: int = EngineConfig.trace_capacity,
        data_dir: Path | None = None,
        prefix_sharing: bool = EngineConfig.prefix_sharing,
    ) -> None:
        """The defaults are `EngineConfig`'s (`from_config` takes one whole). data_dir: where
        saved KV files are kept (default: engine.saved.default_data_dir()); prefix_sharing:
        forwards take full pages other files computed for the same prefix (prefix_cache)."""
        self.loaded = loaded
        model = loaded.model
        self.pool = PagePool.for_model(
            loaded.config, num_pages, page_size, model.dtype, model.device
        )
        self.runner = Runner(model, self.pool)
        self.data_dir = data_dir or default_data_dir()  # saved files, users' credentials
        saved = SavedFiles(self.data_dir / "saved")
        self.trace = Trace(trace_capacity)  # its clock is the engine's: seconds since it started
        self.kvfs = KVFS(
            self.pool, model_id(loaded), self.trace.now, saved=saved, prefix_sharing=prefix_sharing
        )
        self.tokenizer = loaded.tokenizer
        self.processes = ProcessTable(self.trace)
        self.scheduler = Scheduler(policy, token_budget)  # level 2
        self.memory = MemoryManager(self.pool, self.kvfs, self.processes, self.scheduler)  # 1
        self.tools = Tools()  # functions any LIP may call; their host starts on first use
        self._call_ids = itertools.count(1)
        self._batch_ids = itertools.count(1)
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    @classmethod
    def from_config(cls, loaded: LoadedModel, config: EngineConfig) -> Kernel:
        """A kernel set up as config says (the server's settings are the server's)."""
        policy = {"adaptive": Adaptive, "eager": Eager}[config.policy]()
        return cls(
            loaded,
            num_pages=config.num_pages,
            page_size=config.page_size,
            policy=policy,
            token_budget=config.token_budget,
            trace_capacity=config.trace_capacity,
            data_dir=Path(config.data_dir) if config.data_dir else None,
            prefix_sharing=config.prefix_sharing,
        )

    @property
    def procs(self) -> dict[int, Process]:
        """The live processes and the last exited ones, by pid (see ProcessTable)."""
        return self.processes.procs

    @property
    def live(self) -> dict[int, Process]:
        return self.processes.live

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
        name = name or str(getattr(main, "__name__", "lip"))
        p = self.processes.add(name, owner, priority, parent)
        p.task = asyncio.create_task(
            self._run(p, main, Syscalls(self, p), args), name=f"lip-{p.pid}"
        )
        return p.pid

    def attach(self, name: str, owner: str, priority: int = 0, parent: int | None = None) -> int:
        """A process whose code runs elsewhere (a notebook kernel) and calls in over RPC."""
        return self.processes.add(name, owner, priority, parent).pid

    def detach(self, pid: int, error: str | None = None) -> None:
        """An attached process ended (its cell finished, raised, was interrupted, or vanished)."""
        p = self.processes.get(pid)
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
        away = self.memory.away(p)  # p was suspended: its files that outlive it come back
        freed = self.kvfs.remove_process(p.pid)
        self.memory.bring_back(away)
        self.processes.exit(p, pages_freed=freed)
        self._wake()

    def owned(self, pid: int, user: str | None) -> Process:
        """Process pid, when `user` (None: the engine itself) may wait on or kill it."""
        return self.processes.owned(pid, user)

    async def wait(self, pid: int, by: str | None = None) -> Any:
        """pid's result once it has exited (by: the user asking, who must own it)."""
        p = self.processes.owned(pid, by)
        if p.task is not None:
            await asyncio.shield(p.task)
        await p.done.wait()  # an attached process: until it detaches
        if p.error is not None:
            raise ProcessFailed(f"process {pid} ({p.name}) ended: {p.error}") from (
                p.result if isinstance(p.result, BaseException) else None
            )
        return p.result

    def kill(self, pid: int, by: str | None = None) -> None:
        p = self.processes.owned(pid, by)
        if p.alive and p.task is not None:
            p.task.cancel()
        elif p.alive:  # attached: end it here; its remote code sees its next call fail
            self.detach(pid, error="killed")

    def ps(self) -> list[ProcessInfo]:
        return self.processes.ps()

    # --- forward calls ---------------------------------------------------------------------------

    async def submit(self, call: Call) -> Any:
        """Queue a checked forward and wait for its result (chunks joined)."""
        p = call.process
        self.scheduler.submit(call)
        self.trace.emit(p.pid, CallSubmitted(call.id, len(call.segment.tokens)))
        self.processes.block(p)
        self._wake()
        try:
            return await call.future
        except asyncio.CancelledError:
            if call.started is None:  # withdrawn: its tokens never reach the file
                self._finish(call, error=asyncio.CancelledError("cancelled before it ran"))
            raise
        finally:
            self.processes.unblock(p)

    def new_call_id(self) -> int:
        return next(self._call_ids)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # --- the step loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            if not self.scheduler.queue:
                await self._sleep(None)  # until a call comes
                continue
            self.memory.resume_suspended()  # level 1: who may run
            now = time.monotonic()
            plan = self.scheduler.plan(now, self.processes.ready_for(now))  # level 2: when, what
            if plan.delay > 0:
                await self._sleep(plan.delay)  # or until another call comes
                continue
            fitted = self.memory.fit(self._runnable(plan.batch))  # level 1: in KV memory
            for call, error in fitted.refused:
                self._finish(call, error=error)
            if fitted.batch.calls:
                self._run_batch(fitted.batch)  # one forward; each call gets its share
            await asyncio.sleep(0)  # let the processes whose calls finished submit their next

    async def _sleep(self, seconds: float | None) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    def _runnable(self, batch: Batch) -> Batch:
        """The batch without the calls that can no longer run as they were checked: their
        handle was closed, or their mask was made for a file that has changed since."""
        keep = Batch([], [])
        for c, n in zip(batch.calls, batch.sizes, strict=True):
            error = self._stale(c)
            if error is None:
                keep.calls.append(c)
                keep.sizes.append(n)
            else:
                self._finish(c, error=error)
        return keep

    def _stale(self, c: Call) -> InvalidArgument | None:
        if c.file is not None and self.kvfs.handle(c.file.fd) is not c.file:
            return InvalidArgument(
                f"forward: {c.file.path}: handle {c.file.fd} was closed before the call ran"
            )
        if c.done == 0 and c.segment.mask is not None and len(c.seq) != c.base:
            return InvalidArgument(
                f"forward: the mask was made for a file of {c.base} tokens, and the file has"
                f" {len(c.seq)} tokens when the call runs (it changed while the call was queued)"
            )
        return None

    def _run_batch(self, batch: Batch) -> None:
        bid = next(self._batch_ids)
        start = time.monotonic()
        for c in batch.calls:
            if c.seq.swapped is not None:  # shared with a process suspended since (fit counted)
                c.seq.swap_in(self.pool)
        if self.pool.index is not None:  # automatic prefix sharing: cached pages, not computed
            batch = self._share_prefixes(batch)
        segments = [c.chunk(n) for c, n in zip(batch.calls, batch.sizes, strict=True)]
        pids = sorted({c.process.pid for c in batch.calls})
        for c in batch.calls:
            if c.started is None:
                c.started = start
                c.process.counters.time_waiting += start - c.submitted
                self.trace.emit(c.process.pid, CallStarted(c.id, bid))
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
        calls = [c.id for c in batch.calls]
        policy = self.scheduler.policy.name
        self.trace.emit(
            None, BatchRan(bid, pids, calls, batch.sizes, sum(batch.sizes), took, policy)
        )
        free, swapped = self.pool.num_free, self.memory.num_swapped_pages()
        self.trace.emit(None, PagesUsed(free, self.pool.num_pages - free, swapped))
        for pid in pids:
            self.processes.procs[pid].counters.time_computing += took
        for c, n, r in zip(batch.calls, batch.sizes, results, strict=True):
            c.seq.publish(self.pool)  # its new full pages, for later forwards to take
            c.done += n
            c.process.counters.tokens_in += n
            if type(r) is not Tensor or r.shape[0]:  # (not len(r): Tensor.__len__ is slow)
                c.results.append(r)
            if c.remaining == 0:
                self._finish(c)
        self.scheduler.last_batch = len(batch.calls)

    def _share_prefixes(self, batch: Batch) -> Batch:
        """Automatic prefix sharing before a forward: each call that has computed nothing yet
        takes the cached full pages that hold its next tokens. A call whose next page another
        call of this batch computes waits for the next batch, and takes it then."""
        calls, sizes, computing = [], [], set()
        for c, n in zip(batch.calls, batch.sizes, strict=True):
            left, upcoming = self._take_cached(c, n)
            if upcoming and upcoming[0] in computing:
                continue  # still queued: the next forward finds the page cached
            computing.update(upcoming)
            calls.append(c)
            sizes.append(left)
        return Batch(calls, sizes)

    def _take_cached(self, c: Call, n: int) -> tuple[int, list[bytes]]:
        """Take the cached pages for a call; how many of its n tokens are left to compute,
        and the digests of the full pages it will compute now."""
        s, sharing = c.segment, c.seq.sharing
        if c.done != c.cached or sharing is None:  # it computed some: its file moved on
            return n, []
        if s.mask is not None:  # tree attention: its keys and values are not a plain prefix's
            sharing.mark_dirty(len(c.seq))
            return n, []
        limit = (min(s.outputs) if s.outputs else len(s.tokens) - 1) - c.done  # one computed
        if limit < 1:  # a decode step: it computes its one token, and nothing is looked up
            return n, []
        start = c.seq.next_position
        tokens = s.tokens[c.done :]
        positions = (
            s.positions[c.done :]
            if s.positions is not None
            else list(range(start, start + len(tokens)))
        )
        reuse = c.seq.take_cached(self.pool, tokens, positions, limit)
        if reuse is None:
            return n, []
        lookup = PrefixLookup(
            c.id, sharing.source, reuse.start, reuse.tokens, reuse.pages, reuse.stop.kind
        )
        self.trace.emit(c.process.pid, lookup)
        c.done += reuse.tokens
        c.cached += reuse.tokens
        c.process.counters.tokens_cached += reuse.tokens
        left = min(n, c.remaining)
        ps = self.pool.page_size
        if len(c.seq) % ps or sharing.dirty_from is not None or c.seq.hidden:
            return left, []
        parent = sharing.chain[-1] if sharing.chain else b""
        k = reuse.tokens
        return left, chain(parent, tokens[k : k + left], positions[k : k + left], ps)

    def _finish(self, c: Call, error: BaseException | None = None) -> None:
        self.scheduler.remove(c)
        p = c.process
        p.counters.calls += 1
        p.counters.tokens_out += len(c.segment.outputs)  # type: ignore[arg-type]
        waited = (c.started or c.submitted) - c.submitted
        failed = None if error is None else str(error)
        self.trace.emit(p.pid, CallFinished(c.id, len(c.segment.tokens), waited, failed))
        if c.future.done():
            return
        if error is not None:
            c.future.set_exception(error)
        else:
            c.future.set_result(join_results(c.results) if c.results else None)
