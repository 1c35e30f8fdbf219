"""Grammars attached to KV files: constrained sampling in the engine, by `llguidance`.

`kv.constrain(file, grammar, start)` attaches a `Grammar` (regex, JSON schema, Lark, a choice
of strings) to a file. From then on the grammar lives in the engine, beside the file:

- the tokens appended at index `start` and after are matched: forward advances the grammar
  as it appends them, and refuses a token the grammar does not allow (`TokenRefused`, before
  anything is appended);
- every output of a forward that predicts such a token (the output at index i, for i + 1 >=
  start) is computed from masked logits: the tokens the grammar refuses after tokens
  `start..i` get -inf, so `Sample` never draws one, `TopK` gives them probability 0 and
  `LogProbs` -inf; `Logits` shows the -inf too. Once the grammar is complete, only the model's
  stop tokens are allowed;
- `kv.fork` copies the grammar's state, `kv.truncate` rolls it back (to its start at most:
  the grammar stays attached); `kv.constrain(file, None)` detaches it. A saved file keeps no
  grammar.

So a program over RPC or in a `--server` worker sends its grammar once, never a mask per
token. The matcher is llguidance's (the one vLLM, SGLang and llama.cpp use), never an
automaton of our own; its tokenizer is built once per engine, on first use, from the engine's
own `tokenizers` tokenizer.

Masks are computed while the model computes (`MaskJob`, on a thread of its own: llguidance
releases the GIL while it computes a mask), so they add little to a forward's time.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import llguidance
import numpy as np
import torch
from torch import Tensor

from engine.tokenizer import Tokenizer
from engine.wire.errors import GrammarError, InvalidArgument, TokenRefused
from engine.wire.records import GRAMMAR_KINDS, Grammar

BITS = 32  # a mask is a row of int32 words, one bit per token id (llguidance's layout)


class Grammars:
    """The engine's grammar compiler: one llguidance tokenizer, built on first use (about 1 s
    for a 49k vocabulary), shared by every grammar."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: Sequence[int]) -> None:
        """vocab_size: the model's (its logits' width, which may exceed the tokenizer's);
        stop_ids: the tokens allowed once a grammar is complete."""
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = list(stop_ids)
        self._ll: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()  # grammars compile off the event loop, maybe two at once

    @classmethod
    def of(cls, tokenizer: Tokenizer, vocab_size: int, stop_ids: Sequence[int]) -> Grammars:
        """The compiler of an engine's tokenizer: made once, kept while the tokenizer lives."""
        found = _COMPILERS.get(tokenizer)
        if found is None:
            found = _COMPILERS[tokenizer] = cls(tokenizer, vocab_size, stop_ids)
        return found

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll is None:
                eos = self.stop_ids or [self.tokenizer.eos_id or 0]
                self._ll = llguidance.LLTokenizer(
                    self.tokenizer.backend.to_str(), n_vocab=self.vocab_size, eos_token=eos
                )
            return self._ll

    def compile(self, grammar: Grammar) -> str:
        """llguidance's grammar text for `grammar`; GrammarError naming what is wrong."""
        if not isinstance(grammar, Grammar) or grammar.kind not in GRAMMAR_KINDS:
            kind = getattr(grammar, "kind", grammar)
            raise GrammarError(
                f"a grammar's kind is one of {', '.join(GRAMMAR_KINDS)}, not {kind!r}"
            )
        if not isinstance(grammar.source, str):
            raise GrammarError(f"a {grammar.kind} grammar's source is a str")
        if grammar.kind == "choice":
            try:
                options = json.loads(grammar.source)
            except json.JSONDecodeError as e:
                raise GrammarError(f"a choice grammar's source is a JSON list: {e}") from None
            if not (
                isinstance(options, list) and options and all(isinstance(o, str) for o in options)
            ):
                raise GrammarError("a choice grammar needs a non-empty list of strings")
        try:
            text = llguidance.grammar_from(grammar.kind, grammar.source)  # type: ignore[arg-type]
        except ValueError as e:  # a JSON schema that is not JSON
            raise GrammarError(f"{grammar.kind} grammar: {e}") from None
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            text, self.ll_tokenizer
        )
        if failed:
            raise GrammarError(f"{grammar.kind} grammar: {messages[0]}")
        return text

    def constraint(self, grammar: Grammar, start: int) -> Constraint:
        """A fresh matcher for `grammar`, matching a file's tokens from index `start` on."""
        matcher = llguidance.LLMatcher(self.ll_tokenizer, self.compile(grammar), log_level=0)
        if matcher.is_error():
            raise GrammarError(f"{grammar.kind} grammar: {matcher.get_error()}")
        return Constraint(grammar, matcher, start, self.tokenizer)


_COMPILERS: weakref.WeakKeyDictionary[Tokenizer, Grammars] = weakref.WeakKeyDictionary()


def attach(
    grammars: Grammars, tokens: Sequence[int], grammar: Grammar, start: int | None
) -> Constraint:
    """A grammar for a file holding `tokens`, matching them from index `start` (default: their
    end) on: the tokens already there past `start` are matched now (TokenRefused if they do
    not match). Compiles the grammar: a call for a worker thread, off the event loop."""
    if start is None:
        start = len(tokens)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise InvalidArgument(f"kv.constrain: start must be an int >= 0, not {start!r}")
    c = grammars.constraint(grammar, start)
    present = list(tokens[start:])
    c.check(start, present, "kv.constrain")
    c.consume(present)
    return c


class Constraint:
    """A grammar attached to one KV file: llguidance's matcher after the file's tokens
    `start..start + consumed - 1`."""

    __slots__ = ("consumed", "grammar", "matcher", "start", "tokenizer")

    def __init__(
        self,
        grammar: Grammar,
        matcher: llguidance.LLMatcher,
        start: int,
        tokenizer: Tokenizer,
        consumed: int = 0,
    ) -> None:
        self.grammar = grammar
        self.matcher = matcher
        self.start = start
        self.tokenizer = tokenizer  # for the text of a refused token
        self.consumed = consumed

    @property
    def end(self) -> int:
        """The file length the matcher's state is at (start, before it matched anything)."""
        return self.start + self.consumed

    def matched(self, base: int, tokens: Sequence[int]) -> list[int]:
        """Of tokens appended at file index `base`, those the grammar matches (index >= start)."""
        return list(tokens[max(0, self.start - base) :])

    def refused(self, base: int, tokens: Sequence[int]) -> int | None:
        """The index in `tokens` of the first one the grammar refuses, else None; no change."""
        mine = self.matched(base, tokens)
        if not mine:
            return None
        ok = self.matcher.validate_tokens(mine)
        return None if ok == len(mine) else len(tokens) - len(mine) + ok

    def check(self, base: int, tokens: Sequence[int], where: str) -> None:
        """TokenRefused naming the first of `tokens` (appended at file index `base`) that the
        grammar refuses; nothing changes."""
        i = self.refused(base, tokens)
        if i is not None:
            t = tokens[i]
            state = (
                "is complete (only a stop token may follow)"
                if self.matcher.is_stopped()
                else ("refuses it")
            )
            raise TokenRefused(
                f"{where}: token {t} ({self.tokenizer.decode([t])!r}) at index {i} does not"
                f" match the file's {self.grammar.kind} grammar, which {state}"
            )

    def follow(self, before: Sequence[int], now: Sequence[int], where: str) -> None:
        """The file held `before` when this state was made and holds `now`: roll back to
        what they share, then match what is new (TokenRefused, changing nothing, if refused)."""
        same = next((i for i, (a, b) in enumerate(zip(before, now, strict=False)) if a != b), None)
        same = min(len(before), len(now)) if same is None else same
        if same == len(before) == len(now):
            return
        fork = self.fork()
        fork.rollback_to(same)
        fork.check(same, now[same:], where)
        self.rollback_to(same)
        self.consume(self.matched(same, now[same:]))

    def consume(self, tokens: Sequence[int]) -> None:
        if tokens:
            if not self.matcher.consume_tokens(list(tokens)):
                raise TokenRefused(f"the grammar refused a token: {self.matcher.get_error()}")
            self.consumed += len(tokens)

    def rollback_to(self, length: int) -> None:
        """The file was truncated to `length` tokens: forget what the matcher matched past it."""
        drop = self.end - max(length, self.start)
        if drop > 0:
            if not self.matcher.rollback(drop):
                raise InvalidArgument(
                    f"the grammar cannot roll back {drop} tokens: {self.matcher.get_error()}"
                )
            self.consumed -= drop

    def fork(self) -> Constraint:
        return Constraint(
            self.grammar, self.matcher.deep_copy(), self.start, self.tokenizer, self.consumed
        )

    def fill(self, bitmask: Tensor, row: int) -> None:
        """The tokens allowed next, as bits, into row `row` of a contiguous int32 [rows, words]
        CPU tensor (as `llguidance.torch.fill_next_token_bitmask` does; that module compiles
        a kernel with torch.compile on import, which the engine does not need)."""
        target = bitmask[row]
        self.matcher.unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * BITS // 8)


class MaskRows(NamedTuple):
    """The masks of a forward's constrained outputs: which logits rows, and what they refuse."""

    rows: list[int]  # indices into the forward's output rows
    refused: Tensor  # bool [len(rows), vocab]: True where the grammar refuses the token

    @classmethod
    def of(cls, rows: list[int], bits: Tensor, vocab_size: int) -> MaskRows:
        """From llguidance's bits (int32 [len(rows), words], bit k of word w: token 32w + k)."""
        return cls(rows, refused_by(bits.numpy().view(np.uint8), vocab_size))


def refused_by(bitmask: bytes | np.ndarray, vocab_size: int) -> Tensor:
    """bool [..., vocab_size], True where a compact bitmask (bit t % 8 of byte t // 8: the
    layout of llguidance's little-endian int32 words, and of `records.token_bitmask`) has no
    bit. Unpacked by numpy, a loop in C: some 10 µs for 49k tokens (torch's shifts took 10x)."""
    raw = np.frombuffer(bitmask, np.uint8) if isinstance(bitmask, bytes) else bitmask
    bit = np.unpackbits(raw, axis=-1, bitorder="little")[..., :vocab_size]
    return torch.from_numpy(bit == 0)


class ConstrainedSegment(NamedTuple):
    """A segment of a forward whose file has a grammar: where its tokens and outputs go."""

    constraint: Constraint
    base: int  # the file's length before this forward
    tokens: list[int]
    outputs: list[int]  # indices into tokens that want a result
    first_row: int  # the logits row of its first output


def compute_masks(segments: Sequence[ConstrainedSegment], vocab_size: int) -> MaskRows:
    """Advance each grammar through its segment's tokens, filling a mask at each output that
    predicts a matched token (output index i with base + i + 1 >= start)."""
    plans = [
        (seg, [o for o in sorted(set(seg.outputs)) if seg.base + o + 1 >= seg.constraint.start])
        for seg in segments
    ]
    bits = torch.empty((sum(len(at) for _, at in plans), -(-vocab_size // BITS)), dtype=torch.int32)
    rows: list[int] = []  # the logits rows masked
    picks: list[int] = []  # for each, its row of bits (outputs at one index share a mask)
    filled = 0
    for seg, at in plans:
        c, row_of = seg.constraint, {}
        done = max(c.end - seg.base, 0)  # tokens of the segment before the grammar's end
        for o in at:
            c.consume(seg.tokens[done : o + 1])
            done = max(done, o + 1)
            c.fill(bits, filled)
            row_of[o] = filled
            filled += 1
        c.consume(seg.tokens[done:])
        for j, o in enumerate(seg.outputs):
            if o in row_of:
                rows.append(seg.first_row + j)
                picks.append(row_of[o])
    return MaskRows.of(rows, bits[picks], vocab_size)


def apply_masks(logits: Tensor, masks: MaskRows) -> None:
    """Set the refused tokens' logits to -inf, in place, in the masked rows."""
    refused = masks.refused.to(logits.device, non_blocking=True)
    if len(masks.rows) == len(logits):  # every row constrained: in one go
        order = torch.tensor(masks.rows, device=logits.device)
        logits.masked_fill_(refused[order.argsort()], float("-inf"))
        return
    for i, row in enumerate(masks.rows):  # a few rows: each in place, no gather and scatter
        logits[row].masked_fill_(refused[i], float("-inf"))


class MaskJob:
    """Masks computed on a thread of their own while the model runs (see `compute_masks`)."""

    _pool: ThreadPoolExecutor | None = None

    def __init__(self, segments: Sequence[ConstrainedSegment], vocab_size: int) -> None:
        if MaskJob._pool is None:
            MaskJob._pool = ThreadPoolExecutor(1, thread_name_prefix="symphony-grammar")
        self._future: Future[MaskRows] = MaskJob._pool.submit(compute_masks, segments, vocab_size)

    def result(self) -> MaskRows:
        return self._future.result()

    def settle(self) -> None:
        """Wait for the job to end, whatever it raised (before a failed forward rolls back)."""
        self._future.exception()
