"""The batch scheduler, level 2 of the scheduler: when the next forward runs, and which calls.

It owns the queue of forward calls. A `BatchPolicy` says when to run (now, or after a wait for
more calls); the ready calls of admitted processes go in, in fair-share order, within a token
budget; a long prefill is cut into chunks that ride along with decodes. Level 1, which processes
hold KV memory (suspension and resumption), is engine.memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from engine.kvfs import Handle
from engine.process import SUSPENDED, Process
from engine.runner import LogProbs, Result, Segment, TopKResult
from engine.sequence import KVSequence
from engine.wire.arguments import describe
from engine.wire.engine_config import EngineConfig
from engine.wire.errors import InvalidArgument


@dataclass(eq=False, slots=True)
class Call:
    """One forward system call: a checked segment, possibly run in several chunks."""

    id: int
    process: Process
    segment: Segment  # outputs explicit; positions None continue the file when the call runs
    future: asyncio.Future
    submitted: float
    base: int  # len(seq) when the call runs (the calls before it on its file done): the mask's
    done: int = 0  # tokens already forwarded
    cached: int = 0  # of them, those taken from the prefix cache (engine.prefix_cache)
    started: float | None = None
    results: list[Result] = field(default_factory=list)
    file: Handle | None = None  # the handle it writes through: it must stay open until it runs

    @property
    def seq(self) -> KVSequence:
        return self.segment.seq

    @property
    def remaining(self) -> int:
        return len(self.segment.tokens) - self.done

    def chunk(self, n: int) -> Segment:
        """The next n tokens as a segment, with the outputs and mask rows that fall in it."""
        s = self.segment
        if self.done == 0 and n == len(s.tokens):
            return s  # the whole call in one forward, the commonest case
        a, b = self.done, self.done + n
        mask = None if s.mask is None else s.mask[a:b, : self.base + b]
        outputs: list[int] = s.outputs  # type: ignore[assignment]
        picked = [i for i, o in enumerate(outputs) if a <= o < b]
        returns = s.returns
        if isinstance(returns, LogProbs):
            returns = returns._replace(tokens=[returns.tokens[i] for i in picked])
        outs = [outputs[i] - a for i in picked]
        positions = None if s.positions is None else s.positions[a:b]
        return Segment(s.seq, s.tokens[a:b], positions, mask, outs, returns)


def join_results(parts: list[Result]) -> Result:
    """A chunked call's results, joined: one list, TopKResult or tensor of every chunk's rows."""
    if len(parts) == 1:
        return parts[0]
    if lists := [p for p in parts if isinstance(p, list)]:
        return [t for p in lists for t in p]
    if tops := [p for p in parts if isinstance(p, TopKResult)]:
        return TopKResult(torch.cat([p.ids for p in tops]), torch.cat([p.probs for p in tops]))
    return torch.cat([p for p in parts if isinstance(p, Tensor)])


class QueueView(NamedTuple):
    """What a batch policy sees when deciding whether to run a forward now."""

    calls: int  # ready calls of admitted processes
    tokens: int  # their remaining tokens
    oldest_wait: float  # seconds the oldest of them has waited
    last_batch: int  # calls in the previous forward
    ready_for: tuple[float, ...] = ()  # per running process, seconds since its last call ended

    @property
    def running(self) -> int:
        """Live processes running their own code: they may submit soon."""
        return len(self.ready_for)


class BatchPolicy(ABC):
    """When to run the next forward.

    The engine asks `delay` whenever calls are ready; 0 runs a forward now, a positive number
    waits that long (or until another call arrives, when it asks again). Subclass it and install
    with `Kernel.set_policy` to try your own; the trace shows what it did.
    """

    name = "policy"

    @abstractmethod
    def delay(self, view: QueueView) -> float:
        """Seconds to wait for more calls before running a forward."""


class Eager(BatchPolicy):
    """Run as soon as anything is ready."""

    name = "eager"

    def delay(self, view: QueueView) -> float:
        return 0.0


@dataclass
class WaitForK(BatchPolicy):
    """Wait until k calls are ready, or the oldest has waited max_wait seconds."""

    k: int = 8
    max_wait: float = 0.05
    name = "wait-for-k"

    def delay(self, view: QueueView) -> float:
        return 0.0 if view.calls >= self.k else max(0.0, self.max_wait - view.oldest_wait)


@dataclass
class WaitForT(BatchPolicy):
    """Let the oldest ready call wait t seconds, collecting whatever else arrives."""

    t: float = 0.01
    name = "wait-for-t"

    def delay(self, view: QueueView) -> float:
        return max(0.0, self.t - view.oldest_wait)


@dataclass
class Adaptive(BatchPolicy):
    """Wait briefly, only while a process that is between two calls may join.

    A process that has run its own code for longer than max_wait is not waited for: it is busy
    elsewhere (a notebook between cells, a LIP in a long computation of its own).
    """

    max_wait: float = 0.005
    name = "adaptive"

    def delay(self, view: QueueView) -> float:
        if not any(t < self.max_wait for t in view.ready_for):  # nobody is about to join
            return 0.0
        return max(0.0, self.max_wait - view.oldest_wait)


POLICIES: dict[str, type[BatchPolicy]] = {
    p.name: p for p in (Eager, Adaptive, WaitForK, WaitForT)
}  # the policies a client may set by name (a notebook's own class: `Kernel.set_policy`)


def policy_settings(policy: BatchPolicy) -> dict[str, Any]:
    """A policy's settings (its dataclass fields), as plain values."""
    if not dataclasses.is_dataclass(policy):
        return {}
    return {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}


def make_policy(name: str, settings: dict[str, Any] | None = None) -> BatchPolicy:
    """The policy of that name with those settings; InvalidArgument naming what is wrong."""
    cls = POLICIES.get(name)
    if cls is None:
        raise InvalidArgument(f"no batch policy {name!r} (there are {', '.join(POLICIES)})")
    fields: list[str] = (
        [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    )
    for key, value in (settings or {}).items():
        if key not in fields:
            takes = ", ".join(fields) or "no settings"
            raise InvalidArgument(f"policy {name}: no setting {key!r} (it takes {takes})")
        kind = type(getattr(cls(), key))
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)) or not value >= 0:
            raise InvalidArgument(
                f"policy {name}: {key} must be {describe(kind)} >= 0, not {value!r:.40}"
            )
        if math.isinf(value):
            raise InvalidArgument(f"policy {name}: {key} must be finite")
    return cls(**(settings or {}))


class Batch(NamedTuple):
    calls: list[Call]
    sizes: list[int]  # tokens of each call in this forward


class Plan(NamedTuple):
    """What level 2 decided: wait `delay` seconds (for more calls), or run `batch` now."""

    delay: float
    batch: Batch


class Scheduler:
    def __init__(
        self, policy: BatchPolicy | None = None, token_budget: int = EngineConfig.token_budget
    ) -> None:
        self.policy = policy or Adaptive()
        self.token_budget = token_budget
        self.queue: list[Call] = []
        self.last_batch = 0
        self._calls_on: dict[int, int] = {}  # id(seq) -> its calls in the queue (none: absent)

    def submit(self, call: Call) -> None:
        self.queue.append(call)
        key = id(call.segment.seq)  # (the queued call keeps its sequence, and so its id, alive)
        self._calls_on[key] = self._calls_on.get(key, 0) + 1

    def remove(self, call: Call) -> None:
        """A call that is done, failed or withdrawn leaves the queue."""
        if call in self.queue:
            self.queue.remove(call)
            self._forget(call)

    def _forget(self, call: Call) -> None:
        key = id(call.segment.seq)
        left = self._calls_on[key] - 1
        if left:
            self._calls_on[key] = left
        else:
            del self._calls_on[key]

    def plan(self, now: float, ready_for: list[float]) -> Plan:
        """Ask the policy whether to run now; if so, the batch. ready_for: per process running
        its own code, seconds since its last call returned (it may call again soon)."""
        ready = self.ready_calls()
        if not ready:  # every queued call's process is suspended: look again soon
            return Plan(0.05, Batch([], []))
        delay = self.policy.delay(self.view(ready, now, ready_for))
        return Plan(delay, Batch([], [])) if delay > 0 else Plan(0.0, self.form_batch(ready))

    def queued_tokens(self, seq: KVSequence) -> int:
        """Tokens the queued calls on seq will still append (they run before a new one)."""
        if id(seq) not in self._calls_on:  # the commonest case: a LIP's one call at a time
            return 0
        return sum(c.remaining for c in self.queue if c.seq is seq)

    def drop_process(self, pid: int) -> list[Call]:
        """Take a process's calls out of the queue (it exited or was killed)."""
        gone = [c for c in self.queue if c.process.pid == pid]
        if gone:
            self.queue = [c for c in self.queue if c.process.pid != pid]
            for c in gone:
                self._forget(c)
        return gone

    def ready_calls(self) -> list[Call]:
        """Calls of admitted processes, in fair-share order: priority, then fewest tokens served."""
        calls = [c for c in self.queue if c.process.state is not SUSPENDED]
        return sorted(
            calls,
            key=lambda c: (
                -c.process.priority,
                c.started is None,
                c.process.counters.tokens_in,
                c.submitted,
            ),
        )

    def view(self, calls: list[Call], now: float, ready_for: list[float]) -> QueueView:
        """What the policy sees, given the ready calls and how long each running process ran."""
        oldest = max((now - c.submitted for c in calls), default=0.0)
        tokens = sum(c.remaining for c in calls)
        return QueueView(len(calls), tokens, oldest, self.last_batch, tuple(ready_for))

    def form_batch(self, calls: list[Call]) -> Batch:
        """Level 2: the ready calls that fit the token budget; one call per KV sequence."""
        batch = Batch([], [])
        budget = self.token_budget
        seen: set[int] = set()
        for c in calls:
            if budget == 0:
                break
            seq = id(c.segment.seq)
            if seq in seen:
                continue
            n = min(c.remaining, budget)
            batch.calls.append(c)
            batch.sizes.append(n)
            seen.add(seq)
            budget -= n
        return batch
