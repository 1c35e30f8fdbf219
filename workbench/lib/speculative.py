"""`speculative_decode`: greedy decoding that drafts ahead and verifies the draft in one
forward.

A `Drafter` proposes the next k tokens. One forward feeds the last token and the draft and asks
for the greedy token after each; the draft's longest prefix that matches is accepted, plus the
model's own next token, and the rejected tail is truncated from the file. The output is greedy
decoding's, token for token, whatever the drafter proposes; a good drafter only makes it take
fewer verifying forwards.

Two drafters:
- `PromptLookup` (the default): what followed the last earlier occurrence of the text's final
  n-gram (in the prompt or in what was generated). Free to make, and often right on
  repetitive text (code, extraction, quoting).
- `DraftLIP` (`workbench.lib.draft_lip`): a second process that decodes k tokens greedily in a
  KV file of its own and truncates it when the verifier rejects a tail.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from engine.wire.records import Distribution, TopK
from workbench.lib.system import System, ids_of


class Speculation(NamedTuple):
    tokens: list[int]  # the new tokens (greedy decoding's)
    forwards: int  # forward calls made, the prompt's included (plain greedy: one per token)
    drafted: int  # draft tokens proposed
    accepted: int  # draft tokens the model agreed with
    draft_forwards: int = 0  # forward calls the drafter made (prompt lookup: none)


class Proposal(NamedTuple):
    """What a `Drafter` proposes."""

    tokens: list[int]  # the proposed next tokens, at most the k asked for
    forwards: int  # forward calls the drafter made to propose them (0: no model call)


class Verification(NamedTuple):
    """One forward of speculative decoding, as `on_step` sees it."""

    draft: list[int]  # the drafted tokens
    accepted: int  # how many of them (from the first) the model agreed with
    dists: list[Distribution]  # the model's next-token distribution after each token fed
    tokens: list[int]  # what this forward added: the accepted draft, then the model's own token


def lookup(history: Sequence[int], ngram: int, k: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of history's last n tokens
    (n from `ngram` down to 1); [] when none occurred before."""
    for n in range(min(ngram, len(history) - 1), 0, -1):
        tail = list(history[-n:])
        for i in range(len(history) - n - 1, -1, -1):
            if list(history[i : i + n]) == tail:
                return list(history[i + n : i + n + k])
    return []


class Drafter(ABC):
    """Proposes the tokens that speculative decoding verifies.

    `propose(history, k)` is given the whole text so far (prompt and output, token ids) and
    returns up to k tokens it guesses come next. After the verifier's forward, `verified` is
    told how many of them (from the first) the model agreed with, so a drafter that keeps
    state (a KV file) can drop the rest. A wrong draft costs time, never correctness.
    """

    @abstractmethod
    async def propose(self, history: Sequence[int], k: int) -> Proposal:
        """Up to k tokens guessed to follow `history`."""

    async def verified(self, draft: Proposal, accepted: int) -> None:  # noqa: B027 (a hook)
        """The verifier accepted the first `accepted` tokens of `draft`; by default nothing."""


class PromptLookup(Drafter):
    """Drafts what followed the latest earlier occurrence of the text's last n-gram
    (n from `ngram` down to 1): no model call."""

    def __init__(self, ngram: int = 3) -> None:
        if ngram < 1:
            raise ValueError(f"ngram must be at least 1, not {ngram}")
        self.ngram = ngram

    async def propose(self, history: Sequence[int], k: int) -> Proposal:
        return Proposal(lookup(history, self.ngram, k), 0)


async def speculative_decode(
    sys: System,
    file: Any,
    prompt: str | Sequence[int],
    max_tokens: int = 64,
    ngram: int = 3,
    draft: int = 4,
    stop_ids: Sequence[int] = (),
    on_step: Callable[[Verification], None] | None = None,
    drafter: Drafter | None = None,
) -> Speculation:
    """Greedy decoding of up to `max_tokens` after `prompt` (appended to `file`), drafting
    up to `draft` tokens per forward with `drafter` (default: `PromptLookup(ngram)`). Ends
    after a token in `stop_ids`. Afterwards the file holds the prompt and every new token but
    the last. `on_step` sees each verifying forward (the first forward, the prompt's, drafts
    nothing). A drafter passed in is left running (the caller closes it)."""
    if draft < 1:
        raise ValueError(f"draft must be at least 1, not {draft}")
    drafter = drafter if drafter is not None else PromptLookup(ngram)
    ids = ids_of(sys, prompt)
    top = TopK(5)  # greedy: the most likely token; the rest shows what it beat
    first = await sys.forward(file, ids, returns=top)
    out = [first.argmax()]
    if on_step is not None:
        on_step(Verification([], 0, [first], out[:]))
    length = start = (await sys.kv.stat(file)).tokens  # (out[-1] is not in the file yet)
    forwards = 1
    drafted = accepted = draft_forwards = 0
    while len(out) < max_tokens and out[-1] not in stop_ids:
        room = min(draft, max_tokens - len(out) - 1)
        proposal = await drafter.propose(ids + out, room) if room > 0 else Proposal([], 0)
        draft_forwards += proposal.forwards
        guess = proposal.tokens[:room]
        fed = [out[-1], *guess]
        dists = await sys.forward(file, fed, outputs=list(range(len(fed))), returns=top)
        got = [d.argmax() for d in dists]
        forwards += 1
        n = 0
        while n < len(guess) and guess[n] == got[n]:
            n += 1
        drafted, accepted = drafted + len(guess), accepted + n
        if guess:
            await drafter.verified(proposal, n)
        length += 1 + n  # the last token and the accepted draft stay in the file
        if n < len(guess):
            await sys.kv.truncate(file, length)
        new = got[: n + 1]
        stop = next((j for j, t in enumerate(new) if t in stop_ids), None)
        new = new if stop is None else new[: stop + 1]
        out += new
        if on_step is not None:
            on_step(Verification(guess, n, dists[: len(new)], new))
    if length > start + len(out) - 1:  # a stop token came inside the accepted draft
        await sys.kv.truncate(file, start + len(out) - 1)
    return Speculation(out, forwards, drafted, accepted, draft_forwards)
