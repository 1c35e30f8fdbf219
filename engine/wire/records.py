"""The records system calls take and return, without torch: the engine and its clients share them.

Results are plain values or these NamedTuples; `engine.wire.protocol` carries them over the wire as
`[name, {field: value}]`, so a notebook rebuilds the very same types the engine made.
Forward's `returns=` specs live here too: `TopK(k)`, `Sample(params, generator)`,
`LogProbs(tokens)`, `Logits()`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from engine.wire.errors import InvalidArgument

if TYPE_CHECKING:
    from engine.process import Process


# ---- sampling and what a forward returns ----


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means off
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0 or math.isinf(self.temperature):  # NaN too
            raise InvalidArgument(f"temperature must be finite and >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise InvalidArgument(f"min_p must be in [0, 1), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Logits(NamedTuple):
    """Return the float32 logits `[n_out, vocab]`."""


# TopK, LogProbs and Sample take a call's own constraint on every output of the call, beside
# the file's grammar (kv.constrain): `allowed`, a compact bitmask (`token_bitmask`): the tokens
# outside it get -inf; `bias`, token id -> a number added to its logit (-inf bans it).


class TopK(NamedTuple):
    """Return the k most likely next tokens and their probabilities, `[n_out, k]` each."""

    k: int = 20
    allowed: bytes | None = None
    bias: Mapping[int, float] | None = None


class LogProbs(NamedTuple):
    """Return the log-probability of given tokens: one list of candidates per output index."""

    tokens: Sequence[Sequence[int]]
    allowed: bytes | None = None
    bias: Mapping[int, float] | None = None


class Sample(NamedTuple):
    """Return a sampled token id per output index; the batch's rows are sampled together.

    generator: None uses the process's own random stream (seeded by its pid); an int seeds a
    fresh stream for this call; inside the engine a `torch.Generator` is used as is.
    """

    params: SamplingParams = SamplingParams()
    generator: Any = None
    allowed: bytes | None = None
    bias: Mapping[int, float] | None = None


def token_bitmask(vocab_size: int, allowed: Iterable[int]) -> bytes:
    """A returns record's `allowed`: bit t % 8 of byte t // 8 set for each allowed token t, in
    32-bit words (llguidance's layout: `LLMatcher.compute_bitmask()` gives the same bytes)."""
    mask = bytearray(-(-vocab_size // 32) * 4)
    for t in allowed:
        if not 0 <= t < vocab_size:
            raise InvalidArgument(f"token ids must be in 0..{vocab_size - 1}, not {t}")
        mask[t // 8] |= 1 << (t % 8)
    return bytes(mask)


Returns = Logits | TopK | LogProbs | Sample


# ---- grammars: what `kv.constrain` attaches to a file ----

GRAMMAR_KINDS = ("regex", "json_schema", "lark", "choice")


class Grammar(NamedTuple):
    """A constraint on the tokens a KV file may hold, compiled in the engine by `llguidance`.

    kind: "regex" (source: the pattern, matched by the whole text), "json_schema" (the schema
    as JSON text), "lark" (a Lark grammar, llguidance's dialect) or "choice" (a JSON list of
    strings: the text is exactly one of them). Build one with the constructors below.
    """

    kind: str
    source: str

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        return cls("regex", pattern)

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str, whitespace: bool = False) -> Grammar:
        """JSON that validates against schema; whitespace=False: compact JSON, no whitespace
        between items (llguidance's `x-guidance` options, where the schema sets none)."""
        value = json.loads(schema) if isinstance(schema, str) else schema
        if isinstance(value, dict) and not whitespace and "x-guidance" not in value:
            value = {**value, "x-guidance": {"whitespace_flexible": False}}
        return cls("json_schema", json.dumps(value))

    @classmethod
    def lark(cls, grammar: str) -> Grammar:
        return cls("lark", grammar)

    @classmethod
    def choice(cls, options: Sequence[str]) -> Grammar:
        return cls("choice", json.dumps(list(options)))


# ---- results ----


class Distribution(NamedTuple):
    """The top of a next-token distribution: token ids and probabilities, most likely first."""

    ids: list[int]
    probs: list[float]

    def argmax(self) -> int:
        return self.ids[0]

    def sample(self, temperature: float = 1.0, generator: random.Random | int | None = None) -> int:
        """Sample among these tokens (renormalized), sharpened or flattened by temperature.

        generator: a `random.Random` (its stream advances), an int seed, or None (module random).
        """
        if temperature <= 0:
            return self.ids[0]
        weights = [max(p, 1e-30) ** (1.0 / temperature) for p in self.probs]
        rng = random.Random(generator) if isinstance(generator, int) else generator or random
        return rng.choices(self.ids, weights=weights)[0]


class SpecialTokens(NamedTuple):
    """The model's special token ids (None where it has none)."""

    bos: int | None  # begins a sequence (the chat template writes it where the model wants it)
    eos: int | None  # ends a sequence
    stop: tuple[int, ...]  # every id that ends a reply: eos and the model's other stop tokens
    pad: int | None
    unk: int | None


class Generation(NamedTuple):
    """What the `generate` call (and `workbench.lib.generate`) sampled."""

    tokens: list[int]  # the new tokens; the last one ended it if it stopped early
    text: str  # the generation's text, cut before the stop string that matched
    stop: str  # why it ended: "length", "token", or the stop string that matched
    held: int = 0  # trailing characters of text that could begin a stop string (not shown yet)


class PolicyInfo(NamedTuple):
    """The engine's batch policy (engine.scheduler): its name and its settings."""

    name: str  # "adaptive", "eager", "wait-for-k", "wait-for-t", or a notebook's own class
    settings: dict[str, Any]  # e.g. {"max_wait": 0.005}


class Identity(NamedTuple):
    """Who a process is (`whoami`)."""

    pid: int
    name: str
    user: str  # who owns it, and its files
    home: str  # the user's KV directory, kept after the process exits: /home/<user>
    proc: str  # its private KV directory, gone when it exits: /proc/<pid>
    parent: int | None
    priority: int


class BatchShare(NamedTuple):
    """One forward pass that held calls of a process (`own_trace`)."""

    batch: int
    t: float  # when it ended (the trace's clock: seconds since the engine started)
    calls: int  # of this process's calls
    size: int  # calls in the whole batch, every process's
    processes: int  # processes in the batch
    tokens: int  # tokens in the whole batch
    seconds: float  # how long the forward took


class Wait(NamedTuple):
    """A span in which a process did not run its own code (`own_trace`)."""

    start: float  # the trace's clock
    end: float | None  # None: it still waits
    state: str  # "waiting" (in a system call: forwards, a tool, a message, a timer) or "suspended"
    tool: str | None = None  # the engine-side tool it waited for, if that was the call


class OwnTrace(NamedTuple):
    """What the trace holds of one process (`own_trace`), from the ring's oldest event on."""

    pid: int
    batches: list[BatchShare]
    waits: list[Wait]
    calls: int  # forward calls that finished
    waited: float  # seconds its forwards waited for their first batch, summed
    last_seq: int | None  # the newest event read: pass it as after_seq to read only what is new


class Message(NamedTuple):
    sender: int
    data: Any


class FileStat(NamedTuple):
    path: str
    tokens: int
    num_pages: int
    num_shared_pages: int  # pages with reference count > 1
    shared_with: dict[str, int]  # other readable path -> pages in common
    parent: str | None
    owner: str
    pid: int | None
    mode: int
    created: float  # the engine's clock: seconds since it started, as the trace's and ps's
    last_use: float
    hidden: int
    page_table: tuple[int | None, ...]  # each page's pool page; None: in host memory (swapped)
    names: tuple[str, ...]
    open_handles: int
    # file (its name when it computed them) -> pages this file took from the prefix cache
    cached_from: dict[str, int] = {}
    # file (its name when spliced from) -> tokens `kv.splice` appended from it, summed over every
    # splice. A record of where the tokens came from, like `parent`: a later drop or truncate
    # leaves it as it is, and a fork does not inherit it (its parent edge leads to the splices)
    spliced_from: dict[str, int] = {}


class Spliced(NamedTuple):
    """What `kv.splice` appended: its tokens, the pages it took by reference (nothing computed,
    nothing copied) and the tokens whose keys and values it copied slot by slot (at a seam, where
    a page of the source does not line up with a page of the file)."""

    tokens: int
    num_shared_pages: int
    copied_tokens: int


class PageMap(NamedTuple):
    """The page pool as one caller sees it (`kv.pages`): per pool page its holders."""

    page_size: int
    refcount: list[int]  # per pool page: files holding it (0: free)
    files: list[list[str]]  # per pool page: a readable name of each file holding it
    swapped: dict[str, int]  # readable file name -> its pages swapped out to host memory
    swapped_total: int  # every file's swapped-out pages, readable or not
    cached: list[int] = []  # pages nobody holds, kept for automatic prefix sharing (LRU first)


class ProcessInfo(NamedTuple):
    """What `ps` shows of a process."""

    pid: int
    name: str
    owner: str
    state: str
    priority: int
    parent: int | None
    tokens_in: int  # the tokens its forwards computed (those taken from the cache: tokens_cached)
    tokens_out: int
    calls: int
    time_waiting: float
    time_computing: float
    started: float
    ended: float | None
    error: str | None
    tokens_cached: int = 0  # its forwards' tokens taken from the prefix cache, not computed

    @classmethod
    def of(cls, p: Process) -> ProcessInfo:
        c = p.counters
        return cls(
            p.pid,
            p.name,
            p.owner,
            p.state.value,
            p.priority,
            p.parent,
            c.tokens_in,
            c.tokens_out,
            c.calls,
            round(c.time_waiting, 6),
            round(c.time_computing, 6),
            p.started,
            p.ended,
            p.error,
            c.tokens_cached,
        )


class Event(NamedTuple):
    """One trace event (see `engine.trace`)."""

    seq: int
    t: float  # seconds since the trace began
    kind: str
    pid: int | None
    data: dict[str, Any]


class FileHandle(NamedTuple):
    """A client's reference to a KV file it opened: on the wire `{"fd", "path", "writable"}`."""

    fd: int
    path: str
    writable: bool


# ---- automatic prefix sharing (engine.prefix_cache): kv.explain's report ----

StopKind = Literal[
    "end",  # every full page matched; only tokens short of a page (or none) are left
    "floor",  # the tokens left do not fill a page: a partly filled page is never shared
    "output",  # the page holds a token whose output was asked for: it must be computed
    "differ",  # a cached page after the same prefix holds other tokens (first at `at`)
    "positions",  # a cached page after the same prefix holds these tokens at other positions
    "evicted",  # this very page was cached, and the pool took it back at `when`
    "other_user",  # this very page is cached, but in another user's private scope
    "new",  # nothing after this prefix was ever computed (or it was forgotten long ago)
    "hidden",  # the file hides tokens: its keys and values differ from a plain prefix's
    "edited",  # tokens were spliced in or dropped: its keys and values are not a plain prefix's
    "off",  # sharing is off for this file or this engine
    "constrained",  # the file has a grammar (kv.constrain): its new tokens are checked as computed
    "unaligned",  # the file does not end at a page boundary, so no full page can be appended
]


class Stop(NamedTuple):
    """Where and why matching stopped."""

    kind: StopKind
    at: int  # the token index (in the file) where it stopped
    ours: int | None = None  # "differ": our token there
    theirs: int | None = None  # "differ": the cached page's token there
    when: float | None = None  # "evicted": when (the engine's clock, as the trace's)
    owner: str | None = None  # "other_user": whose scope holds it


class Reuse(NamedTuple):
    """One forward's lookup in the prefix cache: what it took, and where and why it stopped."""

    start: int  # the file index where the forward's tokens began
    tokens: int  # how many of them came from the cache
    pages: list[int]
    sources: list[str]  # the file that computed each page
    stop: Stop
    time: float  # when (the engine's clock, as the trace's)


class PrefixReport(NamedTuple):
    """Automatic prefix sharing as one file saw it (`kv.explain`): each forward's lookup."""

    path: str
    tokens: int
    tokens_cached: int  # of its tokens, those taken from the cache (over the lookups kept)
    num_published_pages: int  # its first full pages in the prefix index's chain
    on: bool  # sharing is on for this file (and the engine)
    dirty_from: int | None  # tokens from here on were computed with tokens hidden or masked
    reuses: list[Reuse]  # the lookups, oldest first (the last REUSES_KEPT)


# Records that cross the wire by name (engine.wire.protocol); tuples come back as tuples.
RECORDS: dict[str, Any] = {  # name -> NamedTuple class
    cls.__name__: cls
    for cls in (
        Distribution,
        Message,
        FileStat,
        ProcessInfo,
        Event,
        PageMap,
        SpecialTokens,
        PrefixReport,
        Reuse,
        Stop,
        Grammar,
        Spliced,
        Generation,
        PolicyInfo,
        Identity,
        BatchShare,
        Wait,
        OwnTrace,
    )
}
TUPLE_FIELDS: dict[str, tuple[str, ...]] = {
    "FileStat": ("page_table", "names"),
    "SpecialTokens": ("stop",),
}
