"""`speculative_decode`: greedy decoding that drafts ahead by prompt lookup and verifies the
draft in one forward.

The draft is what followed the last earlier occurrence of the text's final n-gram (in the
prompt or in what was generated): free to make, and often right on repetitive text (code,
extraction, quoting). One forward feeds the last token and the draft and asks for the greedy
token after each; the draft's longest prefix that matches is accepted, plus the model's own
next token, and the rejected tail is truncated from the file. The output is greedy decoding's,
token for token, in fewer forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from engine.wire.records import Distribution, TopK
from workbench.lib.system import System, ids_of


class Speculation(NamedTuple):
    tokens: list[int]  # the new tokens (greedy decoding's)
    forwards: int  # forward calls made, the prompt's included (plain greedy: one per token)
    drafted: int  # draft tokens proposed
    accepted: int  # draft tokens the model agreed with


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


async def speculative_decode(
    sys: System,
    file: Any,
    prompt: str | Sequence[int],
    max_tokens: int = 64,
    ngram: int = 3,
    draft: int = 4,
    stop_ids: Sequence[int] = (),
    on_step: Callable[[Verification], None] | None = None,
) -> Speculation:
    """Greedy decoding of up to `max_tokens` after `prompt` (appended to `file`), drafting
    up to `draft` tokens per forward by prompt lookup. Ends after a token in `stop_ids`.
    Afterwards the file holds the prompt and every new token but the last. `on_step` sees
    each verifying forward (the first forward, the prompt's, drafts nothing)."""
    ids = ids_of(sys, prompt)
    top = TopK(5)  # greedy: the most likely token; the rest shows what it beat
    first = await sys.forward(file, ids, returns=top)
    out = [first.argmax()]
    if on_step is not None:
        on_step(Verification([], 0, [first], out[:]))
    length = start = (await sys.kv.stat(file)).tokens  # (out[-1] is not in the file yet)
    forwards = 1
    drafted = accepted = 0
    while len(out) < max_tokens and out[-1] not in stop_ids:
        guess = lookup(ids + out, ngram, draft)[: max_tokens - len(out) - 1]
        fed = [out[-1], *guess]
        dists = await sys.forward(file, fed, outputs=list(range(len(fed))), returns=top)
        got = [d.argmax() for d in dists]
        forwards += 1
        n = 0
        while n < len(guess) and guess[n] == got[n]:
            n += 1
        drafted, accepted = drafted + len(guess), accepted + n
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
    return Speculation(out, forwards, drafted, accepted)
