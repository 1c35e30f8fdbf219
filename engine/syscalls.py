"""The system calls: the one async API every LIP uses.

Each call is declared in `engine.wire.calls` (its parameters, types and defaults); the methods
here are their handlers in the engine, and tests/unit/test_calls.py keeps the two in step.

A LIP is `async def main(sys: Syscalls, *args)`. Results are plain Python values (ints,
lists, `Distribution`, `FileStat`), so the same calls behave the same over RPC.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, NamedTuple, ParamSpec, TypeVar

import torch
from tokenizers.decoders import DecodeStream

from engine.grammar import Grammars, attach
from engine.kvfs import Caller, Handle
from engine.process import EXITED, READY, SUSPENDED, Process
from engine.runner import Segment, TopKResult
from engine.sampler import make_generator
from engine.scheduler import Call
from engine.sequence import pages_for
from engine.wire.arguments import check_arg, int_list
from engine.wire.errors import InvalidArgument, OutOfPages, ProcessExited
from engine.wire.events import ToolFinished, ToolStarted, own_trace
from engine.wire.records import (
    Distribution,
    FileStat,
    Generation,
    Grammar,
    Identity,
    Logits,
    LogProbs,
    Message,
    OwnTrace,
    PageMap,
    PrefixReport,
    ProcessInfo,
    Returns,
    Sample,
    SamplingParams,
    SpecialTokens,
    Spliced,
    TopK,
)
from engine.wire.stops import first_stop, held_back

if TYPE_CHECKING:
    from engine.kernel import Kernel, Program


P = ParamSpec("P")
R = TypeVar("R")


def _plain(result: Any) -> Any:
    """Engine tensors -> plain Python, one item per output index."""
    if result is None:  # no output indices asked for
        return []
    if type(result) is list:  # sampled token ids
        return result
    if isinstance(result, TopKResult):
        return [
            Distribution(i, p)
            for i, p in zip(result.ids.tolist(), result.probs.tolist(), strict=True)
        ]
    return result.tolist()


def _seconds(name: str, value: float) -> float:
    """A duration: a number, not NaN (a NaN timer breaks the order of asyncio's timer heap, and
    the engine's timers stop firing), at least 0 (infinity waits for ever)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidArgument(f"{name} must be a number of seconds >= 0, not {value!r}")
    return value


class Plain(NamedTuple):
    """A call that never waits, as the plain function that does it."""

    fn: Callable[..., Any]  # (self, *args, **kwargs) -> result, at once
    resident: bool  # it needs the process's files resident (not swapped out by suspension)


PLAIN: dict[Callable[..., Any], Plain] = {}  # the method a LIP awaits -> its plain function


def never_waits(
    resident: bool,
) -> Callable[[Callable[Concatenate[Any, P], R]], Callable[Concatenate[Any, P], Awaitable[R]]]:
    """A call that never waits, written as a plain function; a LIP awaits it as every call.

    Awaited, it first checks that its process is live and, if resident, brings a suspended
    process's files back (the one wait it may have). The server calls the plain function itself
    (`PLAIN`) when there is nothing to wait for.
    """

    def decorate(
        fn: Callable[Concatenate[Any, P], R],
    ) -> Callable[Concatenate[Any, P], Awaitable[R]]:
        @functools.wraps(fn)
        async def call(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
            if resident:
                await self._sys._caller()
            return fn(self, *args, **kwargs)

        PLAIN[call] = Plain(fn, resident)
        return call

    return decorate


class KVCalls:
    """The KV file system calls (`sys.kv.*`)."""

    def __init__(self, sys: Syscalls) -> None:
        self._sys = sys
        self._fs = sys.kernel.kvfs

    @never_waits(resident=True)
    def create(self, path: str | None = None, mode: int | None = None) -> Handle:
        return self._fs.create(self._sys.caller, path, mode)

    @never_waits(resident=True)
    def open(self, path: str, write: bool = False) -> Handle:
        return self._fs.open(self._sys.caller, path, write)

    @never_waits(resident=False)
    def close(self, handle: Handle) -> None:
        self._fs.close(handle)

    @never_waits(resident=True)
    def fork(self, src: Handle | str, dst: str | None = None) -> Handle:
        return self._fs.fork(self._sys.caller, src, dst)

    @never_waits(resident=True)
    def truncate(self, handle: Handle, n: int) -> None:
        self._fs.truncate(handle, n)

    @never_waits(resident=True)
    def splice(
        self, handle: Handle, src: Handle | str, start: int = 0, stop: int | None = None
    ) -> Spliced:
        """Append tokens [start, stop) of src (stop None: its end) to a file, with their
        positions and their keys and values as computed: nothing is computed again. Pages that
        line up are shared by reference (copy-on-write); a seam's tokens are copied. A forward
        on the file then gives what a fresh prefill of the same tokens at the same positions
        gives under a mask letting each token see what it saw where it was computed
        (`engine.sequence.KVSequence.splice`). The file no longer takes part in prefix sharing
        from the splice on (explain: "edited")."""
        return self._fs.splice(self._sys.caller, handle, src, start, stop)

    @never_waits(resident=True)
    def drop(self, handle: Handle, start: int, stop: int) -> None:
        """Remove tokens [start, stop) of a file and free the pages only they filled. The tokens
        after keep their positions and keys and values: a forward sees what it would see with
        the range hidden (`engine.sequence.KVSequence.drop`)."""
        self._fs.drop(handle, start, stop)

    async def constrain(
        self, handle: Handle, grammar: Grammar | None, start: int | None = None
    ) -> None:
        """Attach a grammar to a file: the tokens appended from index `start` on (default: the
        file's length now) must match it, and forward masks the outputs that predict them (see
        `engine.grammar`). None detaches the file's grammar."""
        await self._sys._caller()
        seq = self._fs.sequence(handle, write=True)
        if grammar is None:
            seq.constraint = None
            return
        k = self._sys.kernel
        grammars = Grammars.of(k.tokenizer, k.runner.vocab_size, k.loaded.stop_ids)
        held = list(seq.tokens)
        c = await self._sys._waiting(asyncio.to_thread(attach, grammars, held, grammar, start))
        c.follow(held, seq.tokens, "kv.constrain")  # a forward or truncate while it compiled
        seq.constraint = c

    @never_waits(resident=True)
    def hide(self, handle: Handle, indices: Sequence[int]) -> None:
        self._fs.hide(handle, list(indices))

    @never_waits(resident=True)
    def unhide(self, handle: Handle, indices: Sequence[int]) -> None:
        self._fs.unhide(handle, list(indices))

    @never_waits(resident=True)
    def link(self, src: Handle | str, dst: str) -> None:
        self._fs.link(self._sys.caller, src, dst)

    @never_waits(resident=True)
    def rename(self, src: str, dst: str) -> None:
        self._fs.rename(self._sys.caller, src, dst)

    @never_waits(resident=True)
    def unlink(self, path: str) -> None:
        self._fs.unlink(self._sys.caller, path)

    @never_waits(resident=True)
    def stat(self, path: Handle | str) -> FileStat:
        return self._fs.stat(self._sys.caller, path)

    @never_waits(resident=True)
    def listdir(self, path: str = "/") -> list[str]:
        return self._fs.listdir(self._sys.caller, path)

    @never_waits(resident=False)
    def explain(self, path: Handle | str) -> PrefixReport:
        """How automatic prefix sharing went for a file: what each forward took from the cache,
        and where and why matching stopped (engine.prefix_cache)."""
        return self._fs.explain(self._sys.caller, path)

    @never_waits(resident=True)
    def share(self, handle: Handle, on: bool) -> None:
        """Switch automatic prefix sharing for one file (on by default)."""
        self._fs.set_sharing(handle, on)

    @never_waits(resident=True)
    def chmod(self, path: str, mode: int) -> None:
        self._fs.chmod(self._sys.caller, path, mode)

    async def save(self, path: Handle | str, dest: str) -> None:
        """Save a file under the name dest, among this user's saved files (engine.saved)."""
        caller = await self._sys._caller()
        tensors, meta = self._fs.snapshot(caller, path)
        saved = self._fs.saved_files()
        writing = asyncio.to_thread(saved.write, caller.user, dest, tensors, meta)  # off the loop
        await self._sys._waiting(writing)

    async def load(self, src: str, path: str | None = None) -> Handle:
        """A new file from the saved file named src (`name`, or `user/name` for another's)."""
        caller = await self._sys._caller()
        reading = asyncio.to_thread(self._fs.saved_files().read, caller.user, src)
        saved = await self._sys._waiting(reading)
        return self._fs.restore(caller, saved, path)

    # --- views: what the workbench's widgets read (see KVFS.walk, .pages, .read) ---------------

    @never_waits(resident=True)
    def walk(self, path: str = "/") -> list[FileStat]:
        """The stat of every file under path this process may read."""
        return self._fs.walk(self._sys.caller, path)

    @never_waits(resident=True)
    def pages(self) -> PageMap:
        """The page pool: per page its reference count and the readable files holding it."""
        return self._fs.pages(self._sys.caller)

    @never_waits(resident=True)
    def read(self, path: Handle | str, start: int = 0, stop: int | None = None) -> list[int]:
        """The token ids of a readable file, `tokens[start:stop]`."""
        return self._fs.read(self._sys.caller, path, start, stop)


class Syscalls:
    """Everything a LIP can ask of the engine, bound to the calling process."""

    def __init__(self, kernel: Kernel, process: Process, seed: int | None = None) -> None:
        self.kernel = kernel
        self.process = process
        self._sys = self  # (what never_waits reads, as of a KVCalls)
        self.kv = KVCalls(self)
        self.caller = Caller(process.pid, process.owner)  # who this process is, to the KVFS
        self.generator = make_generator(process.pid if seed is None else seed)
        self._last_sample: tuple[Sample | None, Sample] = (None, Sample())  # _with_generator's

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_live(self) -> None:
        """ProcessExited once this process has exited: it makes no more calls."""
        p = self.process
        if p.state is EXITED:
            raise ProcessExited(f"process {p.pid} ({p.name}) has exited: {p.error or 'done'}")

    async def _caller(self) -> Caller:
        """Who is calling; waits while the process is suspended (its files are in host memory)."""
        p = self.process
        self.check_live()
        if p.state is SUSPENDED:
            await self.kernel.memory.ensure_resident(p)
        return self.caller

    # --- text ------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InvalidArgument(f"tokenize takes a str, got {type(text).__name__}")
        return self.kernel.tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        vocab = self.kernel.tokenizer.vocab_size
        if not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
            raise InvalidArgument(f"detokenize takes token ids in 0..{vocab - 1}")
        return self.kernel.tokenizer.decode(ids)

    @never_waits(resident=False)
    def chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """The model's chat template applied to messages (`{"role", "content"}` maps), as
        token ids; add_generation_prompt ends them with the assistant's turn opening."""
        check_arg("chat_template", "messages", Sequence[dict[str, Any]], messages)  # as RPC does
        if not all(isinstance(m.get("role"), str) for m in messages):
            raise InvalidArgument(
                'chat_template: messages must be a list of {"role": str, "content": str} maps'
            )
        tok = self.kernel.tokenizer
        return tok.encode(tok.apply_chat_template(list(messages), bool(add_generation_prompt)))

    @never_waits(resident=False)
    def special_tokens(self) -> SpecialTokens:
        """The model's bos, eos, stop, pad and unk token ids."""
        loaded, tok = self.kernel.loaded, self.kernel.tokenizer
        return SpecialTokens(
            bos=tok.bos_id,
            eos=tok.eos_id,
            stop=tuple(loaded.stop_ids),
            pad=tok.id_of("pad_token"),
            unk=tok.id_of("unk_token"),
        )

    @never_waits(resident=False)
    def vocab_size(self) -> int:
        """How many token ids the model has (0..vocab_size - 1)."""
        return self.kernel.tokenizer.vocab_size

    @never_waits(resident=False)
    def context_length(self) -> int:
        """How many positions the model has (0..context_length - 1); past it forward refuses."""
        return self.kernel.loaded.config.max_position_embeddings

    # --- the model -------------------------------------------------------------------------

    async def forward(
        self,
        file: Handle,
        tokens: Sequence[int],
        positions: Sequence[int] | None = None,
        mask: Any = None,
        outputs: Sequence[int] | None = None,
        returns: Returns | None = None,
    ) -> Any:
        """Append tokens to a KV file and compute; see `engine.runner.Segment` for the arguments.

        returns: `TopK(k)` (default k=20) -> Distribution; `Sample(SamplingParams(...))` ->
        token id; `LogProbs([[ids], ...])` -> log-probabilities; `Logits()` -> a list of floats.
        With `outputs` given, a list with one item per output index; otherwise the last token's.
        """
        p, k = self.process, self.kernel
        if p.state is not READY:  # suspended or exited: see _caller
            await self._caller()
        if not isinstance(file, Handle) or file.caller.pid != p.pid:
            raise InvalidArgument("forward needs a KV file handle this process opened")
        seq = k.kvfs.sequence(file, write=True)
        if returns is None:
            returns = TopK(20)
        elif isinstance(returns, Sample) and type(returns.generator) is not torch.Generator:
            # (type, not isinstance: torch.Generator's isinstance runs Python code, every call)
            returns = self._with_generator(returns)
        tokens = int_list("tokens", tokens)
        pos = None if positions is None else int_list("positions", positions)
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.bool)
        outs = None if outputs is None else int_list("outputs", outputs)
        segment = Segment(seq, tokens, pos, mask, outs, returns)
        base = len(seq) + k.scheduler.queued_tokens(seq)  # its length when this call runs
        k.runner.check(segment, "forward", base)  # what the caller gave
        num_pages = pages_for(base + len(tokens), k.pool.page_size)
        if num_pages > k.pool.num_pages:  # it could never run, however long it waited
            raise OutOfPages(
                num_pages - len(seq.pages),
                k.pool.num_free,
                f"forward: the file would take {num_pages} pages; the pool has {k.pool.num_pages}",
            )
        # A queued call carries explicit outputs (it may run in chunks); the default is valid.
        # Default positions stay None: they continue the file when the call runs, after any
        # call on the same file queued before it.
        if outs is None:
            segment.outputs = [len(tokens) - 1]
        future = asyncio.get_running_loop().create_future()
        call = Call(k.new_call_id(), p, segment, future, time.monotonic(), base, file=file)
        result = _plain(await k.submit(call))
        return result if outputs is not None else result[0]

    async def sample_loop(
        self,
        file: Handle,
        tokens: Sequence[int],
        max_tokens: int = 64,
        returns: Sample | None = None,
        stop_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
        before: Sequence[int] = (),
    ) -> Generation:
        """Append tokens to a KV file, then sample up to max_tokens new tokens, in the engine.

        Each step is a forward of its own (batched with every other process's calls), and its
        token is detokenized incrementally (`tokenizers`' DecodeStream): no round trip and no
        full detokenization per token. It ends at a token of `stop_ids` (kept in the result's
        tokens) or once the text holds a string of `stop` (cut from the text). `before`: the
        tokens this generation sampled in earlier calls (a client streaming in pieces), whose
        text counts for stop strings and comes back in `text`. `returns`' int seed seeds one
        stream for the whole call. The file then holds tokens and every new token but the last.
        """
        check_arg("sample_loop", "max_tokens", int, max_tokens)
        if max_tokens < 1:
            raise InvalidArgument(f"sample_loop: max_tokens must be >= 1, not {max_tokens}")
        sample = Sample() if returns is None else returns
        if not isinstance(sample, Sample):
            raise InvalidArgument(f"sample_loop: returns must be a Sample, not {sample!r:.40}")
        if isinstance(stop, str):  # (a str is a sequence of one-character strings)
            raise InvalidArgument(f"sample_loop: stop is a list of strings, not {stop!r:.40}")
        check_arg("sample_loop", "stop", Sequence[str], list(stop))
        if any(not s for s in stop):
            raise InvalidArgument("sample_loop: a stop string must not be empty")
        vocab = self.kernel.tokenizer.vocab_size
        ends = set(int_list("stop_ids", stop_ids))
        earlier = int_list("before", before)
        if not all(0 <= t < vocab for t in [*ends, *earlier]):
            raise InvalidArgument(f"sample_loop: stop_ids and before take ids in 0..{vocab - 1}")
        if type(sample.generator) is not torch.Generator:  # one stream for every step
            sample = sample._replace(generator=self._generator(sample.generator))
        backend = self.kernel.tokenizer.backend
        decoder = DecodeStream(earlier, skip_special_tokens=False)
        text = self.kernel.tokenizer.decode(earlier)  # what the stop strings are looked for in
        out: list[int] = []
        fed = int_list("tokens", tokens)
        while len(out) < max_tokens:
            token = await self.forward(file, fed, returns=sample)
            out.append(token)
            grew = len(text)
            text += decoder.step(backend, token) or ""
            if first_stop(text, stop, grew) is not None or token in ends:
                break
            fed = [token]
        text = self.kernel.tokenizer.decode([*earlier, *out])  # once, with any pending bytes
        if (hit := first_stop(text, stop)) is not None:
            return Generation(out, text[: hit[0]], hit[1])
        if out[-1] in ends:
            return Generation(out, text, "token")
        return Generation(out, text, "length", held_back(text, stop))

    def _with_generator(self, returns: Sample) -> Sample:
        """returns with its generator a torch.Generator. A LIP passes one record call after
        call (a decode loop): the last one made for the process's own stream (generator None)
        is kept, not made again each call (the api-overhead bench's row)."""
        last, made = self._last_sample
        if returns is last:
            return made
        made = returns._replace(generator=self._generator(returns.generator))
        if returns.generator is None:  # (an int seed starts a fresh stream at every call)
            self._last_sample = (returns, made)
        return made

    def _generator(self, seed: Any) -> torch.Generator:
        """The process's own stream (seed None) or a fresh one seeded for this call."""
        if seed is None:
            return self.generator
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise InvalidArgument(
                f"a Sample generator is a torch.Generator or an int seed in 0..2**64-1,"
                f" not {seed!r}"
            )
        return make_generator(seed)

    # --- processes -------------------------------------------------------------------------------

    def spawn(
        self, main: Program, *args: Any, name: str | None = None, priority: int | None = None
    ) -> int:
        p = self.process
        return self.kernel.spawn(
            main,
            *args,
            name=name,
            owner=p.owner,
            priority=p.priority if priority is None else priority,
            parent=p.pid,
        )

    async def wait(self, pid: int) -> Any:
        return await self._waiting(self.kernel.wait(pid, by=self.process.owner))

    @never_waits(resident=False)
    def kill(self, pid: int) -> None:
        self.kernel.kill(pid, by=self.process.owner)

    @never_waits(resident=False)
    def ps(self) -> list[ProcessInfo]:
        return self.kernel.ps()

    @never_waits(resident=False)
    def send(self, pid: int, data: Any) -> None:
        """Put a message in the inbox of a live process of this process's user: messages are
        how one user's programs pass each other prompts and results (the message names its
        sender's pid). As with `kill` and `wait`, another user's process is refused
        (PermissionDenied): share between users through files under /shared."""
        target = self.kernel.owned(pid, self.process.owner)
        if not target.alive:
            raise ProcessExited(f"send: process {pid} has exited")
        target.inbox.put_nowait(Message(self.pid, data))

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message sent to this process; TimeoutError after `timeout` seconds."""
        if timeout is not None:
            _seconds("timeout", timeout)
        return await self._waiting(asyncio.wait_for(self.process.inbox.get(), timeout))

    async def sleep(self, seconds: float) -> None:
        await self._waiting(asyncio.sleep(_seconds("seconds", seconds)))

    @never_waits(resident=False)
    def whoami(self) -> Identity:
        """Who this process is: its pid and name, its user and that user's home directory."""
        p = self.process
        home, proc = f"/home/{p.owner}", f"/proc/{p.pid}"
        return Identity(p.pid, p.name, p.owner, home, proc, p.parent, p.priority)

    @never_waits(resident=False)
    def own_trace(self, after_seq: int | None = None) -> OwnTrace:
        """This process's trace, as far as the engine's trace ring still holds it: the batches
        its calls were in (beside whose calls) and the spans it waited (a tool named). after_seq:
        only events after that one (a previous result's last_seq)."""
        if after_seq is not None:
            check_arg("own_trace", "after_seq", int, after_seq)
        events = self.kernel.trace.query(pid=self.pid, after_seq=after_seq)
        return own_trace(events, self.pid)

    # --- tools -----------------------------------------------------------------------------------

    async def tool(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call a tool registered on the engine (see `engine.tools`); it runs beside the engine."""
        await self._caller()
        k, pid = self.kernel, self.pid
        call = k.new_call_id()  # pairs the two events; the trace holds only plain values
        shown = name if isinstance(name, str) else repr(name)
        k.trace.emit(pid, ToolStarted(call, shown))
        error = None
        try:
            return await self._waiting(k.tools.call(name, list(args), kwargs))
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            k.trace.emit(pid, ToolFinished(call, shown, error))

    async def _waiting(self, aw: Any) -> Any:
        k, p = self.kernel, self.process
        k.processes.block(p)
        try:
            return await aw
        finally:
            k.processes.unblock(p)


__all__ = [
    "Distribution",
    "Grammar",
    "KVCalls",
    "Logits",
    "LogProbs",
    "Message",
    "Sample",
    "SamplingParams",
    "Syscalls",
    "TopK",
]
