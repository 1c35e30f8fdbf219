"""`generate`: the sampling loop, with a token limit, stop tokens, stop strings and streaming."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from engine.wire.records import Sample, SamplingParams
from workbench.lib.system import System, ids_of, next_seed, seeds


class Generation(NamedTuple):
    tokens: list[int]  # the new tokens; the last one ended it if it stopped early
    text: str  # their text, without the stop string
    stop: str  # why it ended: "length", "token", or the stop string that matched


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of text could be the start of a stop string (not shown yet)."""
    return max(
        (
            n
            for s in stops
            for n in range(min(len(s) - 1, len(text)), 0, -1)
            if text.endswith(s[:n])
        ),
        default=0,
    )


async def generate(
    sys: System,
    file: Any,
    prompt: str | Sequence[int],
    max_tokens: int = 64,
    params: SamplingParams | None = None,
    stop_ids: Sequence[int] = (),
    stop: Sequence[str] = (),
    on_text: Callable[[str], None] | None = None,
    seed: int | None = None,
) -> Generation:
    """Append `prompt` to `file` and sample up to `max_tokens` new tokens.

    Ends at a token in `stop_ids` (kept in `tokens`) or when the text contains a string of
    `stop` (cut from `text`). `on_text` receives the text as it grows, never a part that could
    still turn out to be a stop string. `seed` makes the samples reproducible (greedy needs
    none). Afterwards the file holds the prompt and every new token but the last.
    """
    params = params or SamplingParams()
    stream = seeds(seed)
    ids = ids_of(sys, prompt)
    tokens: list[int] = []
    shown = 0
    text, why = "", "length"
    for step in range(max_tokens):
        fed = ids if step == 0 else tokens[-1:]
        tokens.append(await sys.forward(file, fed, returns=Sample(params, next_seed(stream))))
        text = sys.detokenize(tokens)
        hit = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if hit >= 0:
            text, why = text[:hit], next(s for s in stop if text.find(s) == hit)
        elif tokens[-1] in stop_ids:
            why = "token"
        if on_text is not None:
            safe = len(text) if why != "length" else len(text) - held_back(text, stop)
            if safe > shown:
                on_text(text[shown:safe])
                shown = safe
        if why != "length":
            break
    if on_text is not None and len(text) > shown:
        on_text(text[shown:])
    return Generation(tokens, text, why)
