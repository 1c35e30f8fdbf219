"""`symphony bench plain | shared-prefix | api-overhead | agent`: programs on the kernel.

Each workload runs as LIPs on one kernel, beside its baseline, in one process:
- plain: 16 LIPs x 128-token prompt x 64 new tokens vs transformers batched `generate`;
- shared-prefix: 16 continuations of one 512-token prompt vs transformers given 16 copies of
  the prompt (shorter where the model's context is: the demo model `tiny` has 512 positions, so
  its prompt is 448 tokens, and the case says so); two cases: "fork" (one prefill, 16 forks) and
  "automatic" (16 separate LIPs each sending the whole prompt, shared by automatic prefix
  sharing: engine.prefix_cache);
- api-overhead: the plain workload driven token by token through system calls vs the
  engine's own generation loop (`engine.generate`) on the same runner;
- agent: 16 ReAct-style agents x 4 rounds of (generate 32, a 100 ms tool call, append 32 tokens
  of tool output) vs transformers re-sending each agent's whole history every round; the
  "re-sent" case's agents also send their whole history each round, into a new KV file, as a
  stateless API client does: automatic prefix sharing finds it in the cache.
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
WORKLOADS = ("plain", "shared-prefix", "api-overhead", "agent")


def _kernel(
    loaded: LoadedModel, tokens_per_lip: int, lips: int = LIPS, prefix_sharing: bool = True
) -> Kernel:
    num_pages = lips * (tokens_per_lip // 16 + 2) + 64
    return Kernel(loaded, num_pages=num_pages, token_budget=4096, prefix_sharing=prefix_sharing)


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


async def sampling_lip(sys: Syscalls, prompt: list[int], new: int, temperature: float) -> int:
    f = await sys.kv.create()
    params = Sample(SamplingParams(temperature=temperature))
    t = await sys.forward(f, prompt, returns=params)
    for _ in range(new - 1):
        t = await sys.forward(f, [t], returns=params)
    return new


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


async def resending_agent_lip(
    sys: Syscalls, prompt: list[int], rounds: int, gen: int, tool: list[int]
) -> int:
    """agent_lip as a stateless client writes it: each round a new file, the whole history."""
    history = list(prompt)
    for r in range(rounds):
        f = await sys.kv.create()
        t = await sys.forward(f, history, returns=Sample())
        for _ in range(gen - 1):
            history.append(t)
            t = await sys.forward(f, [t], returns=Sample())
        history.append(t)
        await sys.kv.close(f)
        await sys.sleep(TOOL_SECONDS)
        history.extend(tool if r < rounds - 1 else [])
    return rounds * gen


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


def shared_prefix_automatic(loaded: LoadedModel, hf: Any, runs: int) -> tuple[Timing, int]:
    ids = random_prompts(1, shared_prompt_length(loaded), loaded.config.vocab_size)
    prompt = ids[0].tolist()

    def engine() -> None:  # a fresh kernel each run: its cache starts empty
        kernel = _kernel(loaded, 512 + 64, lips=LIPS)
        _run_lips(kernel, sampling_lip, [(prompt, 64, 0.8)] * LIPS)

    def baseline() -> None:
        _hf_generate(hf, ids.repeat(LIPS, 1), 64, do_sample=True, temperature=0.8, top_k=0)

    return side_by_side(engine, baseline, runs), LIPS * 64


def api_overhead(loaded: LoadedModel, hf: Any, runs: int) -> tuple[Timing, int]:
    prompts = random_prompts(LIPS, 128, loaded.config.vocab_size).tolist()
    kernel = _kernel(loaded, 192, prefix_sharing=False)  # every run computes, like the baseline

    def engine() -> None:
        _run_lips(kernel, decode_lip, [(p, 64) for p in prompts])

    def baseline() -> None:
        generate(kernel.runner, prompts, 64)

    return side_by_side(engine, baseline, runs), LIPS * 64


def agent(loaded: LoadedModel, hf: Any, runs: int, lip: Callable = agent_lip) -> tuple[Timing, int]:
    rounds, gen = 4, 32
    vocab = loaded.config.vocab_size
    ids = random_prompts(LIPS, 128, vocab)
    tool = random_prompts(1, 32, vocab, seed=1)[0].tolist()

    def engine() -> None:
        _run_lips(
            _kernel(loaded, 128 + rounds * 64),
            lip,
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


def agent_resending(loaded: LoadedModel, hf: Any, runs: int) -> tuple[Timing, int]:
    return agent(loaded, hf, runs, resending_agent_lip)


Bench = Callable[[LoadedModel, Any, int], tuple[Timing, int]]
CASES: dict[str, dict[str, Bench]] = {  # workload -> case -> its bench
    "plain": {"16x128+64": plain},
    "shared-prefix": {
        "16x(512)+64": shared_prefix,
        "16x(512)+64 automatic": shared_prefix_automatic,
    },
    "api-overhead": {"16x128+64": api_overhead},
    "agent": {"16x4x(32+32)": agent, "16x4x(32+32) re-sent": agent_resending},
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
    chosen = {c: b for c, b in CASES[workload].items() if not cases or c in cases}
    if not chosen:
        return rows
    for name in models:
        loaded, hf = load_pair(
            name, dtype, baseline_dtype, need_baseline=workload != "api-overhead", device=device
        )
        label = dtypes(loaded, hf)
        for case, bench in chosen.items():
            timing, work = bench(loaded, hf, runs)
            if workload == "shared-prefix":
                case = case.replace("512", str(shared_prompt_length(loaded)))
            row = throughput_row(workload, case, name, work, "tok/s", timing, label)
            report(row)
            rows.append(row)
    return rows
