"""`symphony bench plain | shared-prefix | api-overhead | agent`: programs on the kernel.

Each workload runs as LIPs on one kernel, beside its baseline, in one process:
- plain: 16 LIPs x 128-token prompt x 64 new tokens vs transformers batched `generate`;
- shared-prefix: 16 continuations of one 512-token prompt (one prefill, 16 forks) vs
  transformers given 16 copies of the prompt (shorter where the model's context is: the demo
  model `tiny` has 512 positions, so its prompt is 448 tokens, and the case says so);
- api-overhead: the plain workload driven token by token through system calls vs the
  engine's own generation loop (`engine.generate`) on the same runner;
- agent: 16 ReAct-style agents x 4 rounds of (generate 32, a 100 ms tool call, append 32 tokens
  of tool output) vs transformers re-sending each agent's whole history every round.
Throughput is generated tokens per second; ratio = engine / baseline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import torch

from engine import event_loop
from engine.bench.common import Row, Timing, side_by_side, throughput_row
from engine.bench.runtime import dtypes, load_pair, random_prompts, sync
from engine.generate import generate
from engine.kernel import Kernel
from engine.loader import LoadedModel
from engine.runner import Sample
from engine.sampler import SamplingParams
from engine.syscalls import Syscalls

LIPS = 16
TOOL_SECONDS = 0.1
CASES = {
    "plain": "16x128+64",
    "shared-prefix": "16x(512)+64",
    "api-overhead": "16x128+64",
    "agent": "16x4x(32+32)",
}
WORKLOADS = tuple(CASES)


def _kernel(loaded: LoadedModel, tokens_per_lip: int, lips: int = LIPS) -> Kernel:
    pages = lips * (tokens_per_lip // 16 + 2) + 64
    return Kernel(loaded, num_pages=pages, token_budget=4096)


def _run_lips(kernel: Kernel, main: Callable, args: list[tuple]) -> list:
    async def go() -> list:
        async with kernel:
            pids = [kernel.spawn(main, *a) for a in args]
            return [await kernel.wait(p) for p in pids]

    return event_loop.run(go())  # the loop the engine serves on


async def decode_lip(sys: Syscalls, prompt: list[int], new: int) -> list[int]:
    f = await sys.kv.create()
    greedy = Sample()
    t = await sys.forward(f, prompt, returns=greedy)
    out = [t]
    for _ in range(new - 1):
        t = await sys.forward(f, [t], returns=greedy)
        out.append(t)
    return out


async def fork_lip(sys: Syscalls, prompt: list[int], n: int, new: int, temperature: float) -> int:
    root = await sys.kv.create()
    await sys.forward(root, prompt[:-1], outputs=[])
    params = Sample(SamplingParams(temperature=temperature))

    async def branch(i: int) -> list[int]:
        f = await sys.kv.fork(root)
        t = await sys.forward(f, prompt[-1:], returns=params)
        out = [t]
        for _ in range(new - 1):
            t = await sys.forward(f, [t], returns=params)
            out.append(t)
        return out

    outs = await asyncio.gather(*(branch(i) for i in range(n)))
    return sum(len(o) for o in outs)


async def agent_lip(
    sys: Syscalls, prompt: list[int], rounds: int, gen: int, tool: list[int]
) -> int:
    f = await sys.kv.create()
    t = await sys.forward(f, prompt, returns=Sample())
    for r in range(rounds):
        for _ in range(gen - 1):
            t = await sys.forward(f, [t], returns=Sample())
        await sys.sleep(TOOL_SECONDS)  # the tool runs; the engine serves the other agents
        if r < rounds - 1:
            t = await sys.forward(f, [t, *tool], returns=Sample())
    return rounds * gen


def _hf_generate(hf: Any, ids: torch.Tensor, new: int, **kw: object) -> torch.Tensor:
    """transformers' `generate` on its device; synchronized, so the time includes its GPU work."""
    ids = ids.to(hf.device)
    with torch.inference_mode():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=0,
            **kw,
        )
    sync(hf.device)
    return out


def plain(loaded: LoadedModel, hf: Any, runs: int) -> tuple[Timing, int]:
    ids = random_prompts(LIPS, 128, loaded.config.vocab_size)
    prompts = ids.tolist()

    def engine() -> None:
        _run_lips(_kernel(loaded, 192), decode_lip, [(p, 64) for p in prompts])

    def baseline() -> None:
        _hf_generate(hf, ids, 64, do_sample=False)

    return side_by_side(engine, baseline, runs), LIPS * 64


def shared_prompt_length(loaded: LoadedModel, new: int = 64) -> int:
    """512, or less where the model's context cannot hold 512 + `new` positions."""
    return min(512, loaded.config.max_position_embeddings - new)


def shared_prefix(loaded: LoadedModel, hf: Any, runs: int) -> tuple[Timing, int]:
    ids = random_prompts(1, shared_prompt_length(loaded), loaded.config.vocab_size)
    prompt = ids[0].tolist()

    def engine() -> None:
        _run_lips(_kernel(loaded, 64, lips=LIPS + 32), fork_lip, [(prompt, LIPS, 64, 0.8)])

    def baseline() -> None:
        _hf_generate(hf, ids.repeat(LIPS, 1), 64, do_sample=True, temperature=0.8, top_k=0)

    return side_by_side(engine, baseline, runs), LIPS * 64


def api_overhead(loaded: LoadedModel, hf: Any, runs: int) -> tuple[Timing, int]:
    prompts = random_prompts(LIPS, 128, loaded.config.vocab_size).tolist()
    kernel = _kernel(loaded, 192)

    def engine() -> None:
        _run_lips(kernel, decode_lip, [(p, 64) for p in prompts])

    def baseline() -> None:
        generate(kernel.runner, prompts, 64)

    return side_by_side(engine, baseline, runs), LIPS * 64


def agent(loaded: LoadedModel, hf: Any, runs: int) -> tuple[Timing, int]:
    rounds, gen = 4, 32
    vocab = loaded.config.vocab_size
    ids = random_prompts(LIPS, 128, vocab)
    tool = random_prompts(1, 32, vocab, seed=1)[0].tolist()

    def engine() -> None:
        _run_lips(
            _kernel(loaded, 128 + rounds * 64),
            agent_lip,
            [(p, rounds, gen, tool) for p in ids.tolist()],
        )

    def baseline() -> None:
        history = ids
        tool_t = torch.tensor([tool], device=hf.device).repeat(LIPS, 1)
        for r in range(rounds):
            history = _hf_generate(hf, history, gen, do_sample=False)  # the whole history again
            asyncio.run(asyncio.sleep(TOOL_SECONDS))  # 16 tool calls, run concurrently
            if r < rounds - 1:
                history = torch.cat([history, tool_t], dim=1)

    return side_by_side(engine, baseline, runs), LIPS * rounds * gen


BENCHES = {
    "plain": plain,
    "shared-prefix": shared_prefix,
    "api-overhead": api_overhead,
    "agent": agent,
}


def run(
    workload: str,
    models: list[str],
    runs: int,
    dtype: str | None,
    baseline_dtype: str,
    report: Callable[[Row], None],
    cases: list[str] | None = None,
    device: str = "cpu",
) -> list[Row]:
    rows: list[Row] = []
    if cases and CASES[workload] not in cases:
        return rows
    for name in models:
        loaded, hf = load_pair(
            name, dtype, baseline_dtype, need_baseline=workload != "api-overhead", device=device
        )
        timing, work = BENCHES[workload](loaded, hf, runs)
        label = dtypes(loaded, hf)
        case = CASES[workload]
        if workload == "shared-prefix":
            case = case.replace("512", str(shared_prompt_length(loaded)))
        row = throughput_row(workload, case, name, work, "tok/s", timing, label)
        report(row)
        rows.append(row)
    return rows
