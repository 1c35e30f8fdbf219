"""`Chat`: a multi-turn conversation that keeps its KV file across turns.

Each turn renders the whole conversation with the model's chat template (`chat_template`, in
the engine), keeps the part of the file that the new rendering begins with (the system prompt,
the earlier questions and replies), and forwards only the rest: turn 2 computes its new message,
not turn 1 again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from engine.wire.records import SamplingParams
from workbench.lib.decoding import generate
from workbench.lib.system import System


class Turn(NamedTuple):
    reply: str  # the assistant's message, without the stop token or string that ended it
    tokens: list[int]  # the tokens sampled
    reused: int  # tokens of the file kept from earlier turns (not computed again)
    forwarded: int  # tokens of the conversation this turn computed before its reply
    stop: str  # why the reply ended: "token", "length" or a stop string


class Chat:
    """A conversation in one KV file: `await chat.say("...")` adds a user message, computes
    what the file does not hold yet, and samples the assistant's reply.

    Make one with `await Chat.start(sys, system="...")`. `messages` is the conversation so far,
    `file` its KV file (the rendered conversation and every reply token but the last).
    """

    def __init__(self, sys: System, file: Any, messages: Sequence[dict[str, str]] = ()) -> None:
        self.sys = sys
        self.file = file
        self.messages: list[dict[str, str]] = list(messages)

    @classmethod
    async def start(cls, sys: System, system: str | None = None, path: str | None = None) -> Chat:
        """A new conversation, in a new file (path: where; default a private one), opened
        by a system message if given."""
        file = await sys.kv.create(path)
        return cls(sys, file, [{"role": "system", "content": system}] if system else [])

    async def say(
        self,
        content: str,
        max_tokens: int = 128,
        params: SamplingParams | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        seed: int | None = None,
    ) -> Turn:
        """Add a user message and sample the reply (ended by the model's stop tokens, a string
        of `stop`, or max_tokens); the reply joins `messages`."""
        sys = self.sys
        self.messages.append({"role": "user", "content": content})
        ids = await sys.chat_template(self.messages)
        held = await sys.kv.read(self.file)
        same = len(os.path.commonprefix([held, ids]))
        keep = min(same, len(ids) - 1)  # at least one token to feed
        if keep < len(held):
            await sys.kv.truncate(self.file, keep)  # what differs, or an unfinished reply
        stops = (await sys.special_tokens()).stop
        g = await generate(
            sys, self.file, ids[keep:], max_tokens, params, stops, stop, on_text, seed
        )
        ended_by_token = g.stop == "token"
        reply = sys.detokenize(g.tokens[:-1]) if ended_by_token else g.text
        self.messages.append({"role": "assistant", "content": reply})
        return Turn(reply, g.tokens, keep, len(ids) - keep, g.stop)

    async def close(self) -> None:
        """Close the conversation's file handle (a private file goes when its process exits)."""
        await self.sys.kv.close(self.file)
