"""The token view's data: each generation step's chosen token among its top-k alternatives,
and what a program did to the step: a speculative draft's verdict (`Draft`), a grammar's mask
(`Mask`). Pure functions from engine replies (`Distribution`, a row of `Logits`) to records."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from engine.wire.records import Distribution

if TYPE_CHECKING:
    from workbench.lib.speculative import Verification


class TokenChoice(NamedTuple):
    id: int
    text: str
    prob: float | None  # None: not among the distribution's top tokens


class Draft(NamedTuple):
    """A speculative draft's verdict on one step (`verification_steps`)."""

    guessed: TokenChoice  # what the draft proposed here, with the model's probability for it
    accepted: bool  # the model's greedy token was the draft's
    discarded: tuple[TokenChoice, ...] = ()  # a rejected guess's: the draft after it, dropped


class Mask(NamedTuple):
    """What a grammar did to one step (`masked_step`)."""

    allowed: int  # tokens the grammar allowed
    refused: int  # tokens it masked out (their logits were -inf)
    wanted: list[TokenChoice]  # the model's top k before the mask, most likely first
    refused_wanted: list[int]  # the ids among `wanted` that the grammar masked out

    @property
    def overruled(self) -> bool:
        """Whether the grammar masked out the token the model wanted most."""
        return bool(self.wanted) and self.wanted[0].id in self.refused_wanted


class TokenStep(NamedTuple):
    step: int
    chosen: TokenChoice
    rank: int | None  # the chosen token's place in the distribution (0: most likely)
    alternatives: list[TokenChoice]  # the top k, most likely first
    note: str = ""  # what the program says of this step
    draft: Draft | None = None  # a draft token verified at this step (None: none was)
    mask: Mask | None = None  # a grammar's mask on this step (None: no grammar)


def token_step(
    index: int,
    dist: Distribution,
    chosen: int,
    detokenize: Callable[[list[int]], str],
    k: int = 5,
    note: str = "",
) -> TokenStep:
    """One step: the chosen token and the distribution's k most likely tokens."""
    probs = dict(zip(dist.ids, dist.probs, strict=True))
    rank = dist.ids.index(chosen) if chosen in probs else None
    alternatives = [
        TokenChoice(i, detokenize([i]), p)
        for i, p in zip(dist.ids[:k], dist.probs[:k], strict=True)
    ]
    chosen_choice = TokenChoice(chosen, detokenize([chosen]), probs.get(chosen))
    return TokenStep(index, chosen_choice, rank, alternatives, note)


def token_steps(
    dists: Sequence[Distribution],
    chosen: Sequence[int],
    detokenize: Callable[[list[int]], str],
    k: int = 5,
) -> list[TokenStep]:
    """A generation's steps: dists[i] is the distribution token chosen[i] was picked from."""
    if len(dists) != len(chosen):
        raise ValueError(f"{len(dists)} distributions but {len(chosen)} chosen tokens")
    return [
        token_step(i, d, t, detokenize, k)
        for i, (d, t) in enumerate(zip(dists, chosen, strict=True))
    ]


def verification_steps(
    first: int, v: Verification, detokenize: Callable[[list[int]], str], k: int = 5
) -> list[TokenStep]:
    """The steps of one verifying forward of speculative decoding, numbered from `first`: each
    token it added, with the draft's guess there (accepted, or the first rejected one with the
    rest of the draft it took down); the model's own token past the draft has no `draft`."""
    steps = []
    for j, (d, t) in enumerate(zip(v.dists, v.tokens, strict=True)):
        step = token_step(first + j, d, t, detokenize, k)
        if j < len(v.draft):
            probs = dict(zip(d.ids, d.probs, strict=True))
            guess, rest = v.draft[j], v.draft[j + 1 :] if j == v.accepted else []
            discarded = tuple(TokenChoice(g, detokenize([g]), None) for g in rest)
            choice = TokenChoice(guess, detokenize([guess]), probs.get(guess))
            step = step._replace(draft=Draft(choice, j < v.accepted, discarded))
        steps.append(step)
    return steps


def top_of_logits(logits: Sequence[float], k: int = 20) -> Distribution:
    """The k most likely tokens of a row of logits (softmax), leaving out those at -inf
    (a grammar's refused tokens: probability 0)."""
    peak = max(logits)
    if peak == -math.inf:
        raise ValueError("every logit is -inf: no token is allowed")
    weights = [math.exp(x - peak) for x in logits]
    total = math.fsum(weights)
    top = heapq.nlargest(k, range(len(logits)), key=logits.__getitem__)
    top = [i for i in top if logits[i] != -math.inf]
    return Distribution(top, [weights[i] / total for i in top])


def masked_step(
    index: int,
    logits: Sequence[float],
    before: Distribution,
    chosen: int,
    detokenize: Callable[[list[int]], str],
    k: int = 5,
    note: str = "",
) -> TokenStep:
    """One step of constrained generation: `logits` is the masked row the engine computed for
    a file with a grammar (`Logits()`: -inf where the grammar refuses a token), `before` the
    model's distribution at the same place without the grammar (e.g. from a fork of the file
    that has none), `chosen` the token picked from the masked row."""
    refused = sum(1 for x in logits if x == -math.inf)
    wanted = [
        TokenChoice(i, detokenize([i]), p)
        for i, p in zip(before.ids[:k], before.probs[:k], strict=True)
    ]
    mask = Mask(
        len(logits) - refused,
        refused,
        wanted,
        [c.id for c in wanted if c.id >= len(logits) or logits[c.id] == -math.inf],
    )
    step = token_step(index, top_of_logits(logits, max(k, 20)), chosen, detokenize, k, note)
    return step._replace(mask=mask)
