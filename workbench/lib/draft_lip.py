"""`DraftLIP`: speculative decoding's drafts written by a second process, a draft LIP.

The verifier (the process running `speculative_decode`) spawns a child process, `draft_main`.
The child keeps a KV file of its own holding the text so far and answers messages: "keep the
first `keep` tokens of your file, append these `new` tokens, and decode k tokens greedily".
It replies with the k tokens and how many forwards it made. Its file then holds the text and
the draft but the draft's last token; when the verifier rejects a tail, the next message keeps
only the accepted part (`kv.truncate`), so the child never computes the accepted text again:
per step it feeds the verifier's own token (and a fully accepted draft's last token), then
decodes.

What speeds this up, and what does not. The engine serves one model, so the draft LIP drafts
with the same model as the verifier: each drafted token is one forward of every layer, as
costly as a verifying forward except for attention (a verifying forward feeds k+1 tokens,
a draft step one). With the same weights and greedy decoding the draft is nearly always
accepted, so the verifier makes about one forward per k+1 tokens, but the drafter makes about
k: the forwards move from one process to the other and their sum does not drop. Nor do they
overlap: the verifier waits for the draft, so the drafter's k forwards and the verifier's one
run one after another, each a batch of its own unless other processes fill it (`symphony bench
speculative`, `draft LIP` rows: the same number of forwards as greedy, fewer tokens/s). Speculation
pays off when a draft token is much cheaper than a verifying forward: a smaller model, an
early exit after a few layers, or a draft on a cheaper view of the context (a sliding window
of a long text bounds its attention, at the price of drafts the verifier sometimes rejects).
On a GPU a verifying forward of k+1 tokens costs about what one decode step costs (decode is
bound by reading the weights), which is where the saving in verifier forwards turns into time.
This drafter shows the protocol, two processes cooperating through messages and KV files,
with the costs visible in the trace; `PromptLookup` is the one that is free.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from workbench.lib.speculative import Drafter, Proposal
from workbench.lib.system import System, home, settled, spawn

_serial = itertools.count()  # tells apart the drafters one process starts


async def draft_main(sys: Any, path: str) -> int:
    """The draft LIP: a file at `path` that it keeps, messages `[keep, new, k]` answered with
    `[drafted tokens, forwards, tokens fed]` to the sender, until a message `None` or until its
    parent has ended. Returns the forwards it made. (A spawned main is shipped as source over
    RPC: its imports are inside.)"""
    import inspect

    from engine.wire.records import TopK

    async def done(result: Any) -> Any:  # (workbench.lib.system.settled: not shipped with it)
        return await result if inspect.isawaitable(result) else result

    parent = (await done(sys.whoami())).parent
    f = await sys.kv.create(path)
    length = total = 0  # tokens in the file, forwards made
    try:
        while True:
            try:
                message = await sys.receive(timeout=1.0)
            except TimeoutError:  # a verifier that ended without closing it: end too
                alive = [p for p in await done(sys.ps()) if p.pid == parent]
                if not alive or alive[0].state == "exited":
                    return total
                continue
            if message.data is None:
                return total
            keep, new, k = message.data
            if keep < length:
                await sys.kv.truncate(f, keep)  # the verifier rejected what follows
                length = keep
            fed, tokens, step = len(new), [], list(new)
            for _ in range(k):
                dist = await sys.forward(f, step, returns=TopK(1))
                length += len(step)
                step = [dist.argmax()]
                tokens.append(step[0])
            total += k
            await done(sys.send(message.sender, [tokens, k, fed]))
    finally:
        await sys.kv.unlink(path)
        await sys.kv.close(f)


class DraftLIP(Drafter):
    """Drafts by a child process that decodes greedily in a KV file of its own (see the
    module). Start it with `await DraftLIP.start(sys)`, close it with `await drafter.close()`
    (or `async with`). While it drafts, the verifier's inbox is the drafter's: a message from
    another process in the meantime is an error."""

    def __init__(self, sys: System, pid: int, path: str) -> None:
        self.sys, self.pid, self.path = sys, pid, path
        self.held: list[int] = []  # what the child's file holds (it agrees after each reply)
        self.fed = 0  # tokens the child was given to feed, over every proposal (not drafts)
        self._asked: list[int] = []  # the history of the last proposal

    @classmethod
    async def start(cls, sys: System, name: str = "draft") -> DraftLIP:
        """A draft LIP spawned as a child of this process; its file is under the user's
        /home (so the verifier can stat it) and removed when it ends."""
        path = f"{await home(sys)}/{name}-{sys.pid}-{next(_serial)}"
        pid = await spawn(sys, draft_main, path, name=name)
        return cls(sys, pid, path)

    async def propose(self, history: Sequence[int], k: int) -> Proposal:
        keep = 0
        while keep < min(len(self.held), len(history)) and self.held[keep] == history[keep]:
            keep += 1
        keep = min(keep, len(history) - 1)  # at least one token to feed
        new = [int(t) for t in history[keep:]]
        await settled(self.sys.send(self.pid, [keep, new, k]))
        reply = await self.sys.receive()
        if reply.sender != self.pid:
            raise RuntimeError(
                f"DraftLIP: a message from process {reply.sender} came while drafting "
                f"(the draft LIP is {self.pid})"
            )
        tokens, forwards, fed = reply.data
        self.fed += fed
        self._asked = list(history)
        self.held = self._asked + list(tokens[:-1])  # its last token is not fed yet
        return Proposal([int(t) for t in tokens], int(forwards))

    async def verified(self, draft: Proposal, accepted: int) -> None:
        """What the child holds past the accepted draft is wrong: the next proposal truncates
        it there (in the same message, so rejection costs no extra round trip)."""
        self.held = self.held[: len(self._asked) + accepted]

    async def close(self) -> int:
        """End the draft LIP (its file is removed); the forwards it made."""
        await settled(self.sys.send(self.pid, None))
        return int(await self.sys.wait(self.pid))

    async def __aenter__(self) -> DraftLIP:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
