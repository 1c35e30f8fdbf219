"""Thought structures: a tree, a skeleton and a graph of thoughts over one prompt's KV file.

- `tree_of_thought` (Yao et al., 2023): each kept thought forks `branches` children, which
  write their next thoughts side by side (one batch per step); a value function keeps the best
  `keep` at each depth and the files of the others are removed. Thoughts share every page of
  the path above them.
- `skeleton_of_thought` (Ning et al., 2023): the model writes a skeleton of short points; then
  each point is expanded by a child process of its own (`spawn`), all at once, each forking the
  one file that holds the prompt and the skeleton.
- `graph_of_thought` (Besta et al., 2023): n thoughts on one prompt, then merged into one file
  by `kv.splice`: the prompt and every branch's pages by reference, so the merge computes
  nothing again; the aggregation is written after all of them and attends all of them.

Each takes the prompt as text or token ids (a chat-templated prompt, say) and returns plain
records; every file it makes is removed before it returns.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from engine.wire.records import Sample, SamplingParams, Spliced
from workbench.lib.decoding import Generation, generate
from workbench.lib.system import System, discard, home, ids_of, next_seed, seeds, spawn

WARM = SamplingParams(temperature=0.8)


def _name(folder: str | None, name: str) -> str | None:
    """A file's path in `folder` (None: the process's next /proc name)."""
    return None if folder is None else f"{folder}/{name}"


async def _close(sys: System, handle: Any, folder: str | None) -> None:
    """Done with a file: removed (no folder), or kept there for the views (its handle closed)."""
    if folder is None:
        await discard(sys, handle)
    else:
        await sys.kv.close(handle)


class Thought(NamedTuple):
    tokens: list[int]  # the path's tokens after the prompt, every thought on it
    text: str
    value: float  # what the value function gave the path's text
    depth: int


class _Node(NamedTuple):
    file: Any  # holds the prompt and the path but its last token, `pending`
    path: list[int]  # the tokens after the prompt
    pending: int  # the next token to feed: it goes in with the first token of a child's thought


async def tree_of_thought(
    sys: System,
    prompt: str | Sequence[int],
    value: Callable[[str], float],
    branches: int = 3,
    depth: int = 2,
    keep: int = 1,
    thought_tokens: int = 16,
    params: SamplingParams | None = None,
    seed: int = 0,
    stop: Sequence[str] = ("\n",),
    folder: str | None = None,
) -> list[Thought]:
    """Breadth-first tree search over thoughts: the `keep` best paths found, best first.

    At each depth every kept path forks `branches` children, each writes one thought (up to
    `thought_tokens` tokens, or to a `stop` string) in the same batches, and `value(text of the
    path)` ranks them all; the `keep` best go on, the files of the others are removed at once.
    Child i of the whole search samples with seed `seed + i`. With `folder` (a directory
    under /home/<user> or /shared) the files are made there and the paths kept are left for the
    views (the fork graph shows the tree); the pruned ones are removed all the same.
    """
    if min(branches, depth, keep, thought_tokens) < 1:
        raise ValueError("branches, depth, keep and thought_tokens must be at least 1")
    ids = ids_of(sys, prompt)
    params = params or WARM
    root = await sys.kv.create(_name(folder, "prompt"))
    if len(ids) > 1:
        await sys.forward(root, ids[:-1], outputs=[])
    kept = [_Node(root, [], ids[-1])]
    best: list[Thought] = []
    born = 0  # children so far: each one's seed
    try:
        for level in range(1, depth + 1):
            children = [
                (n, await sys.kv.fork(n.file, _name(folder, f"depth{level}-{i}")))
                for i, n in enumerate(n for n in kept for _ in range(branches))
            ]
            gens = await asyncio.gather(
                *(
                    generate(sys, f, [n.pending], thought_tokens, params, stop=stop, seed=seed + i)
                    for i, (n, f) in enumerate(children, start=born)
                )
            )
            born += len(children)
            ranked = sorted(
                (
                    (
                        value(sys.detokenize(n.path + g.tokens)),
                        _Node(f, n.path + g.tokens, g.tokens[-1]),
                    )
                    for (n, f), g in zip(children, gens, strict=True)
                ),
                key=lambda scored: -scored[0],
            )
            for n in kept:
                await _close(sys, n.file, folder)
            kept = [n for _, n in ranked[:keep]]
            for _, n in ranked[keep:]:
                await discard(sys, n.file)
            best = [Thought(n.path, sys.detokenize(n.path), v, level) for v, n in ranked[:keep]]
    finally:
        for n in kept:
            await _close(sys, n.file, folder)
    return best


class Skeleton(NamedTuple):
    points: list[str]  # the skeleton's points
    expansions: list[str]  # each point expanded, in the points' order
    children: list[int]  # the pid of the child process that expanded each point


def skeleton_points(text: str, most: int) -> list[str]:
    """The points of a skeleton: its lines with a list marker or a number stripped; lines left
    empty (or only a number: a list cut short) are not points."""
    lines = (re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.isdigit()][:most]


async def expand_point(
    sys: Any,
    path: str,
    point: list[int],
    max_tokens: int,
    temperature: float,
    seed: int,
    keep: str | None = None,
    stop: list[str] | None = None,
) -> str:
    """A skeleton point expanded: a child process forks the shared file (into `keep`, left
    there, or into its /proc), appends the point and writes on. (A spawned main is shipped as
    source over RPC: its imports are inside.)"""
    from engine.wire.records import SamplingParams
    from workbench.lib.decoding import generate

    f = await sys.kv.fork(path, keep)
    try:
        g = await generate(
            sys,
            f,
            point,
            max_tokens,
            SamplingParams(temperature=temperature),
            stop=stop or (),
            seed=seed,
        )
    finally:
        if keep is None:
            await sys.kv.unlink(f.path)
        await sys.kv.close(f)
    return g.text


async def skeleton_of_thought(
    sys: System,
    prompt: str | Sequence[int],
    points: Sequence[str] | None = None,
    most: int = 4,
    skeleton_tokens: int = 48,
    point_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    point_prefix: str = "\n",
    point_suffix: str = "",
    stop: Sequence[str] = (),
    folder: str | None = None,
) -> Skeleton:
    """A skeleton first, then every point expanded at once by a child process of its own.

    The prompt should ask for a short list of points (a chat-templated prompt, say). The model
    writes the skeleton into one file (or `points` are given: they are appended as the
    skeleton), which is linked under this user's /home so that the children can fork it; child i
    appends `point_prefix + points[i] + point_suffix` (a chat turn asking to expand it, say) and
    writes up to `point_tokens` tokens (or to a `stop` string) with seed `seed + i`. The
    children run as processes of their own, batched together by the engine. With `folder` the
    shared file (`skeleton`) and the children's (`point-i`) are made there and left for the
    views.
    """
    ids = ids_of(sys, prompt)
    shared = await sys.kv.create(_name(folder, "skeleton"))
    if points is None:
        sketch = await generate(
            sys, shared, ids, skeleton_tokens, SamplingParams(temperature=temperature), seed=seed
        )
        await sys.forward(shared, sketch.tokens[-1:], outputs=[])  # generate leaves it out
        chosen = skeleton_points(sketch.text, most)
    else:
        chosen = list(points)[:most]
        await sys.forward(shared, ids + sys.tokenize("\n".join(chosen)), outputs=[])
    path = shared.path if folder else f"{await home(sys)}/skeleton-{sys.pid}-{shared.fd}"
    if folder is None:
        await sys.kv.link(shared, path)
    try:
        pids = [
            await spawn(
                sys,
                expand_point,
                path,
                sys.tokenize(point_prefix + point + point_suffix),
                point_tokens,
                temperature,
                seed + i,
                _name(folder, f"point-{i}"),
                list(stop),
                name=f"point {i}",
            )
            for i, point in enumerate(chosen)
        ]
        expansions = [str(await sys.wait(pid)) for pid in pids]
    finally:
        if folder is None:
            await sys.kv.unlink(path)
        await _close(sys, shared, folder)
    return Skeleton(chosen, expansions, pids)


class Graph(NamedTuple):
    branches: list[Generation]  # the thoughts, each written after the prompt alone
    merged: Generation  # the aggregation, written after the prompt and every branch
    spliced: list[Spliced]  # what each splice of the merge took by reference and copied


async def graph_of_thought(
    sys: System,
    prompt: str | Sequence[int],
    n: int = 3,
    branch_tokens: int = 24,
    merge_prompt: str | Sequence[int] = "\n",
    merge_tokens: int = 32,
    params: SamplingParams | None = None,
    seed: int = 0,
    stop: Sequence[str] = (),
    folder: str | None = None,
) -> Graph:
    """n thoughts on one prompt, merged without computing them again, then aggregated.

    The prompt is computed once and forked n times; the branches write side by side (seed
    `seed + i`). The merge is a new file: `kv.splice` takes the first branch whole (the prompt
    and its thought, every page by reference), then each other branch's thought (by reference
    where its pages line up, else its keys and values copied): nothing is computed. Every token
    keeps its position, so the branches sit side by side at the same positions, each having
    seen only the prompt. `merge_prompt` goes after all of them (at the first position none of
    them used) and the aggregation is sampled from there, attending to every branch. With
    `folder` the files (prompt, branch-i, merged) are made there and left for the views.
    """
    if n < 1 or branch_tokens < 1 or merge_tokens < 1:
        raise ValueError("n, branch_tokens and merge_tokens must be at least 1")
    ids = ids_of(sys, prompt)
    params = params or WARM
    root = await sys.kv.create(_name(folder, "prompt"))
    if len(ids) > 1:
        await sys.forward(root, ids[:-1], outputs=[])
    files = [await sys.kv.fork(root, _name(folder, f"branch-{i}")) for i in range(n)]
    merged = None
    try:
        branches = list(
            await asyncio.gather(
                *(
                    generate(sys, f, ids[-1:], branch_tokens, params, stop=stop, seed=seed + i)
                    for i, f in enumerate(files)
                )
            )
        )
        # generate leaves each thought's last token out of its file: in it goes, one batch
        await asyncio.gather(
            *(
                sys.forward(f, b.tokens[-1:], outputs=[])
                for f, b in zip(files, branches, strict=True)
            )
        )
        merged = await sys.kv.create(_name(folder, "merged"))
        spliced = [await sys.kv.splice(merged, files[0])]
        spliced += [await sys.kv.splice(merged, f, len(ids)) for f in files[1:]]
        top = len(ids) + max(len(b.tokens) for b in branches)  # the first position no one used
        joint = ids_of(sys, merge_prompt)
        stream = seeds(seed + n)
        first = await sys.forward(
            merged,
            joint,
            positions=list(range(top, top + len(joint))),
            returns=Sample(params, next_seed(stream)),
        )
        rest = (
            await generate(
                sys, merged, [first], merge_tokens - 1, params, stop=stop, seed=next_seed(stream)
            )
            if merge_tokens > 1
            else Generation([], "", "length")
        )
        tokens = [first, *rest.tokens]
        text = sys.detokenize(tokens)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
        merge = Generation(tokens, text[:cut], rest.stop)
    finally:
        for f in [*files, root, *([merged] if merged is not None else [])]:
            await _close(sys, f, folder)
    return Graph(branches, merge, spliced)
