"""The token view's data: each generation step's chosen token among its top-k alternatives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from engine.wire.records import Distribution


class TokenChoice(NamedTuple):
    id: int
    text: str
    prob: float | None  # None: not among the distribution's top tokens


class TokenStep(NamedTuple):
    step: int
    chosen: TokenChoice
    rank: int | None  # the chosen token's place in the distribution (0: most likely)
    alternatives: list[TokenChoice]  # the top k, most likely first
    note: str = ""  # what the program says of this step ("draft accepted", "masked 120 tokens")


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
