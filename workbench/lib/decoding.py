"""`generate`: the sampling loop, with a token limit, stop tokens, stop strings and streaming.

The loop runs in the engine (the `sample_loop` call): it checks the stop tokens and strings as
tokens come, so a LIP does not detokenize after every token, and over RPC a generation is one
round trip, or one per `STREAM_CHUNK` tokens while it streams its text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine.wire.records import Generation, Sample, SamplingParams
from engine.wire.stops import held_back
from workbench.lib.system import System, ids_of, next_seed, seeds

STREAM_CHUNK = 8  # tokens per `sample_loop` call while streaming text to on_text

__all__ = ["STREAM_CHUNK", "Generation", "generate", "held_back"]


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
    still turn out to be a stop string (the engine says how much to hold back). `seed` makes
    the samples reproducible (greedy needs none). Afterwards the file holds the prompt and
    every new token but the last.
    """
    if max_tokens < 1:
        return Generation([], "", "length")
    stream = seeds(seed)
    chunk = max_tokens if on_text is None else STREAM_CHUNK
    fed, shown = ids_of(sys, prompt), 0
    tokens: list[int] = []
    while True:
        step = min(chunk, max_tokens - len(tokens))
        sample = Sample(params or SamplingParams(), next_seed(stream))
        g = await sys.sample_loop(file, fed, step, sample, stop_ids, stop, before=tokens)
        tokens = [*tokens, *g.tokens]
        if on_text is not None and len(g.text) - g.held > shown:
            on_text(g.text[shown : len(g.text) - g.held])
            shown = len(g.text) - g.held
        if g.stop != "length" or len(tokens) >= max_tokens:
            break
        fed = tokens[-1:]
    if on_text is not None and len(g.text) > shown:  # the held-back end: no stop string came
        on_text(g.text[shown:])
    return Generation(tokens, g.text, g.stop)
