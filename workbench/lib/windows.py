"""`attention_sink` and `sliding_window`: sampling in bounded KV memory.

StreamingLLM (Xiao et al., 2023) keeps the first few tokens of a text, which soak up attention
whatever they say (the attention *sink*), and the latest `window` tokens; every token between
them leaves attention as the text goes on. Here those tokens leave the file too: `kv.drop`
removes them and frees their pages, so the file's page count stops growing once the window is
full. With `free=False` they are only hidden (`kv.hide`): attention is the same, the logits are
the same, but their pages stay and memory grows; the lesson compares both.

Tokens are dropped a chunk at a time, one page's worth by default, so that each drop lines up
with the file's pages and nothing is copied (`kv.drop`). Every token keeps its position, so
the text cannot run past the model's context length (StreamingLLM renumbers positions inside
the cache instead, which would mean computing the window again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from engine.wire.records import Sample, SamplingParams
from workbench.lib.system import System, ids_of, next_seed, seeds


class Windowed(NamedTuple):
    tokens: list[int]  # the new tokens; the last one ended it if it was a stop token
    text: str
    left: int  # tokens that left attention (dropped from the file, or hidden with free=False)
    num_pages: list[int]  # the file's page count before each drop: flat once the window is full


async def attention_sink(
    sys: System,
    file: Any,
    prompt: str | Sequence[int],
    max_tokens: int = 64,
    sink: int = 4,
    window: int = 64,
    params: SamplingParams | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] = (),
    free: bool = True,
    chunk: int | None = None,
) -> Windowed:
    """Append `prompt` to `file` and sample up to `max_tokens` tokens, attending only the
    file's first `sink` tokens and at least its latest `window` ones.

    Whenever `window + chunk` tokens follow the sink, the oldest `chunk` of them leave: dropped
    from the file (`free=True`: their pages go back to the pool) or hidden (`free=False`).
    chunk defaults to the page size, so that drops line up with pages. The file holds at most
    `sink + window + chunk` tokens; afterwards it holds what was kept of the prompt and every
    new token but the last (as `generate`).
    """
    if sink < 0 or window < 1 or (chunk is not None and chunk < 1):
        raise ValueError(f"need sink >= 0, window >= 1, chunk >= 1 (got {sink}, {window}, {chunk})")
    if chunk is None:
        chunk = (await sys.kv.pages()).page_size
    params = params or SamplingParams()
    stream = seeds(seed)
    length = (await sys.kv.stat(file)).tokens
    tokens: list[int] = []
    pages: list[int] = []
    left = 0
    fed = ids_of(sys, prompt)
    for _ in range(max_tokens):
        tokens.append(await sys.forward(file, fed, returns=Sample(params, next_seed(stream))))
        length += len(fed)
        fed = tokens[-1:]
        while length - sink - (0 if free else left) >= window + chunk:
            pages.append((await sys.kv.stat(file)).num_pages)
            if free:
                await sys.kv.drop(file, sink, sink + chunk)
                length -= chunk
            else:
                await sys.kv.hide(file, list(range(sink + left, sink + left + chunk)))
            left += chunk
        if tokens[-1] in stop_ids:
            break
    return Windowed(tokens, sys.detokenize(tokens), left, pages)


async def sliding_window(
    sys: System,
    file: Any,
    prompt: str | Sequence[int],
    max_tokens: int = 64,
    window: int = 64,
    params: SamplingParams | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] = (),
    free: bool = True,
    chunk: int | None = None,
) -> Windowed:
    """`attention_sink` without a sink: only the latest `window` tokens (at least) are kept."""
    return await attention_sink(
        sys, file, prompt, max_tokens, 0, window, params, seed, stop_ids, free, chunk
    )
