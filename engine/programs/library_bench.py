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
from workbench.lib import generate, speculative_decode

LIPS, NEW = 4, 96
BLOCK = "def area(width, height):\n    return width * height\n\n"
PROMPT = "# Three copies of one function\n" + BLOCK * 3 + "def area(width, height):\n"
CASE = f"repetitive {LIPS}x{NEW}"


async def speculative(sys: Syscalls, prompt: list[int]) -> tuple[list[int], int]:
    s = await speculative_decode(sys, await sys.kv.create(), prompt, NEW)
    return s.tokens, s.forwards


async def greedy(sys: Syscalls, prompt: list[int]) -> tuple[list[int], int]:
    g = await generate(sys, await sys.kv.create(), prompt, NEW)
    return g.tokens, len(g.tokens)  # one forward per token


def measure(model: str, runs: int, dtype: str | None, device: str) -> dict[str, Any]:
    loaded = load_model(bench_model(model), device=device, dtype=dtype, show_progress=False)
    prompt = loaded.tokenizer.encode(PROMPT)
    kernel = Kernel(loaded, num_pages=LIPS * ((len(prompt) + NEW) // 16 + 4) + 16)
    results: dict[str, list[tuple[list[int], int]]] = {}

    def each(name: str, main: Any) -> Any:
        async def go() -> list[tuple[list[int], int]]:
            async with kernel:
                pids = [kernel.spawn(main, prompt) for _ in range(LIPS)]
                return [await kernel.wait(p) for p in pids]

        def run() -> None:
            results[name] = event_loop.run(go())

        return run

    timing = side_by_side(each("engine", speculative), each("baseline", greedy), runs)
    if [t for t, _ in results["engine"]] != [t for t, _ in results["baseline"]]:
        raise AssertionError("speculative decoding wrote other tokens than greedy decoding")
    forwards = {side: sum(f for _, f in results[side]) / LIPS for side in results}
    return {
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "cases": {CASE: {"timing": list(timing), "tokens": LIPS * NEW, "forwards": forwards}},
    }


if __name__ == "__main__":
    model, runs, dtype, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    print(json.dumps(measure(model, runs, "float32" if dtype == "auto" else dtype, device)))
