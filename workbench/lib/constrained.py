"""Constrained generation: text that matches a regex, JSON that validates, one of a few strings.

The grammar lives in the engine: `kv.constrain` attaches it to the file, the engine masks every
sampled token by it (and refuses a token that does not match), so the loop below is `generate`
unchanged, and over RPC no mask crosses the wire. The grammar is detached when the loop ends.

```python
from workbench.lib import choose, generate_json, generate_regex

f = await lip.kv.create()
year = await generate_regex(lip, f, "The year Python 3.0 came out: ", r"(19|20)\\d\\d")
person = await generate_json(lip, await lip.kv.create(), prompt, {"type": "object", ...})
mood = await choose(lip, await lip.kv.create(), "Sentiment of 'great!':", ["good", "bad"])
```
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from engine.wire.records import Grammar, SamplingParams
from workbench.lib.decoding import generate
from workbench.lib.system import System, ids_of


class Constrained(NamedTuple):
    tokens: list[int]  # the new tokens, a final stop token included
    text: str  # their text, without the stop token
    complete: bool  # the grammar was satisfied and the model stopped (False: max_tokens ran out)


class Incomplete(ValueError):
    """The token limit ran out before the grammar was complete: raise max_tokens."""


async def constrained(
    sys: System,
    file: Any,
    prompt: str | Sequence[int],
    grammar: Grammar,
    max_tokens: int = 256,
    params: SamplingParams | None = None,
    seed: int | None = None,
) -> Constrained:
    """Append `prompt` to `file` and sample a continuation that matches `grammar`.

    Every sampled token is drawn among those the grammar allows (masked in the engine), until
    the model picks a stop token, which the grammar allows only once it is complete.
    """
    ids = ids_of(sys, prompt)
    start = (await sys.kv.stat(file)).tokens + len(ids)  # the first generated token's index
    stop_ids = (await sys.special_tokens()).stop
    await sys.kv.constrain(file, grammar, start)
    try:
        out = await generate(sys, file, ids, max_tokens, params, stop_ids=stop_ids, seed=seed)
    finally:
        await sys.kv.constrain(file, None)
    complete = out.stop == "token"
    text = sys.detokenize(out.tokens[:-1]) if complete else out.text
    return Constrained(out.tokens, text, complete)


async def generate_regex(
    sys: System,
    file: Any,
    prompt: str | Sequence[int],
    pattern: str,
    max_tokens: int = 64,
    params: SamplingParams | None = None,
    seed: int | None = None,
) -> str:
    """A continuation of `prompt` that `pattern` matches in full (Rust `regex` syntax).

    Incomplete when max_tokens ran out first."""
    out = await constrained(sys, file, prompt, Grammar.regex(pattern), max_tokens, params, seed)
    return _complete(out, max_tokens)


async def generate_json(
    sys: System,
    file: Any,
    prompt: str | Sequence[int],
    schema: dict[str, Any],
    max_tokens: int = 256,
    params: SamplingParams | None = None,
    seed: int | None = None,
) -> Any:
    """A JSON value that validates against `schema`, parsed (llguidance's JSON schema subset:
    types, properties, required, enum, const, arrays, lengths, ranges, $ref).

    Incomplete when max_tokens ran out first."""
    out = await constrained(
        sys, file, prompt, Grammar.json_schema(schema), max_tokens, params, seed
    )
    return json.loads(_complete(out, max_tokens))


async def choose(
    sys: System,
    file: Any,
    prompt: str | Sequence[int],
    options: Sequence[str],
    params: SamplingParams | None = None,
    seed: int | None = None,
) -> str:
    """One of `options`, as the model continues `prompt` (greedy unless `params` say not)."""
    limit = max(len(o.encode()) for o in options) + 1  # a token holds a byte at least; the stop
    out = await constrained(sys, file, prompt, Grammar.choice(options), limit, params, seed)
    return _complete(out, limit)


def _complete(out: Constrained, max_tokens: int) -> str:
    if not out.complete:
        raise Incomplete(
            f"the grammar was not complete after {max_tokens} tokens: {out.text[:80]!r}..."
        )
    return out.text
