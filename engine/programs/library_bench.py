"""The measuring side of `symphony bench speculative`: library programs (`workbench.lib`) as
LIPs on a kernel in this process, beside their baseline, alternating (engine.bench.common).

Started by module name (`engine.bench.speculative` runs it; the engine never imports
`workbench`): `python -m engine.programs.library_bench MODEL RUNS DTYPE DEVICE` prints one
JSON line, each case's `Timing` and its work.

- `repetitive 4x96`: 4 LIPs each decode 96 tokens greedily after a repetitive prompt (a code
  listing that repeats), by speculative decoding with prompt-lookup drafts against plain greedy
  decoding (`generate`, one forward per token). Both must write the same tokens (checked).
  The work is the tokens; the forwards each side made come with it. The engine runs in
  float32 unless asked otherwise: the only dtype in which a verifying forward's rows (several
  per call) give the tokens one row at a time gives (bfloat16 rounds by the batch's rows).
- `draft LIP 4x96`: the same, but each LIP's drafts come from a draft LIP of its own (a child
  process drafting `DRAFT` tokens greedily with the same model in its own KV file,
  `workbench.lib.draft_lip`). The verifier's forwards drop; the drafter's come on top, one
  per drafted token, each as costly as a decode step: with one model this is not faster, and
  the bench shows by how much (the forwards of both are reported).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from engine import event_loop
from engine.bench.common import side_by_side
from engine.bench.models import bench_model
from engine.kernel import Kernel
from engine.loader import load_model
from engine.syscalls import Syscalls
from workbench.lib import DraftLIP, generate, speculative_decode

LIPS, NEW, DRAFT = 4, 96, 4
BLOCK = "def area(width, height):\n    return width * height\n\n"
PROMPT = "# Three copies of one function\n" + BLOCK * 3 + "def area(width, height):\n"
CASE = f"repetitive {LIPS}x{NEW}"
DRAFT_CASE = f"draft LIP {LIPS}x{NEW}"


async def speculative(sys: Syscalls, prompt: list[int]) -> tuple[list[int], int, int]:
    s = await speculative_decode(sys, await sys.kv.create(), prompt, NEW)
    return s.tokens, s.forwards, s.draft_forwards


async def drafted(sys: Syscalls, prompt: list[int]) -> tuple[list[int], int, int]:
    async with await DraftLIP.start(sys) as drafter:
        s = await speculative_decode(
            sys, await sys.kv.create(), prompt, NEW, draft=DRAFT, drafter=drafter
        )
    return s.tokens, s.forwards, s.draft_forwards


async def greedy(sys: Syscalls, prompt: list[int]) -> tuple[list[int], int, int]:
    g = await generate(sys, await sys.kv.create(), prompt, NEW)
    return g.tokens, len(g.tokens), 0  # one forward per token


def measure(model: str, runs: int, dtype: str | None, device: str) -> dict[str, Any]:
    loaded = load_model(bench_model(model), device=device, dtype=dtype, show_progress=False)
    prompt = loaded.tokenizer.encode(PROMPT)
    kernel = Kernel(loaded, num_pages=2 * LIPS * ((len(prompt) + NEW) // 16 + 4) + 16)  # drafters'
    results: dict[str, list[tuple[list[int], int, int]]] = {}

    def each(name: str, main: Any) -> Any:
        async def go() -> list[tuple[list[int], int, int]]:
            async with kernel:
                pids = [kernel.spawn(main, prompt) for _ in range(LIPS)]
                return [await kernel.wait(p) for p in pids]

        def run() -> None:
            results[name] = event_loop.run(go())

        return run

    cases: dict[str, Any] = {}
    for case, side, main in ((CASE, "lookup", speculative), (DRAFT_CASE, "draft", drafted)):
        timing = side_by_side(each(side, main), each("greedy", greedy), runs)
        if [t for t, _, _ in results[side]] != [t for t, _, _ in results["greedy"]]:
            raise AssertionError(f"{case}: speculative decoding wrote other tokens than greedy")
        cases[case] = {
            "timing": list(timing),
            "tokens": LIPS * NEW,
            "forwards": {
                "engine": sum(f for _, f, _ in results[side]) / LIPS,
                "baseline": sum(f for _, f, _ in results["greedy"]) / LIPS,
            },
            "draft_forwards": sum(d for _, _, d in results[side]) / LIPS,
        }
    return {"dtype": str(loaded.model.dtype).removeprefix("torch."), "cases": cases}


if __name__ == "__main__":
    model, runs, dtype, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    print(json.dumps(measure(model, runs, "float32" if dtype == "auto" else dtype, device)))
