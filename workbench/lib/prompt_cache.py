"""`cached_prompt`: a prompt's keys and values computed once per engine, forked by every user.

A system prompt or a long document that many processes start with is computed by the first
one into a named file (`/shared/...`: readable by every user; `/home/<user>/...`: by one) and
forked by everyone after: the fork shares the prompt's pages, and nothing is computed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from engine.wire.errors import FileExists
from workbench.lib.system import System, ids_of

WAIT_SECONDS = 0.01  # between looks at a file another process is still computing
WAIT_LOOKS = 1000


class CachedPrompt(NamedTuple):
    file: Any  # this process's fork of the cached file: all of the prompt but `rest`
    rest: list[int]  # the prompt's last token: feed it next (its output is the first answer)


async def cached_prompt(sys: System, path: str, prompt: str | Sequence[int]) -> CachedPrompt:
    """A private file that begins with `prompt`, forked from the cached file at `path`.

    The first caller creates `path` and computes the prompt (all but its last token) into it;
    later callers, in any process of any user who may read `path`, fork it. A caller that
    comes while the first is still computing waits for it. A file at `path` holding another
    prompt is an error (ValueError naming it).
    """
    ids = ids_of(sys, prompt)
    head = ids[:-1]
    try:
        f = await sys.kv.create(path)
    except FileExists:
        pass  # made by someone else: fork theirs
    else:
        try:
            if head:
                await sys.forward(f, head, outputs=[])
        finally:
            await sys.kv.close(f)
    for _ in range(WAIT_LOOKS):
        held = await sys.kv.read(path)
        if held == head:
            return CachedPrompt(await sys.kv.fork(path), ids[-1:])
        if held != head[: len(held)]:
            break
        await sys.sleep(WAIT_SECONDS)  # a prefix of ours: its maker is still computing
    raise ValueError(f"{path} holds another prompt ({len(held)} tokens), not this one")
