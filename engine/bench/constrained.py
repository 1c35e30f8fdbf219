"""`symphony bench constrained`: grammar masks in the engine, priced two ways.

- `json 8x64` (tokens/s, higher is better): 8 LIPs each decode 64 tokens of a JSON array
  (a schema too long to finish in 64 tokens) greedily. The engine side attaches the grammar to
  the file (`kv.constrain`) and samples with `Sample()`; the baseline is what a LIP had to do
  before: pull the full `Logits()` row (the whole vocabulary) to Python at each step, mask it
  with its own llguidance matcher and take the argmax. Both sides must write the same tokens
  (checked).
- `mask cost 8x64` (µs per token, lower is better): the engine side as above, against the same
  LIPs decoding without a grammar: the difference is what a mask adds to a token.

Run it on a real model with a real tokenizer: `--models smollm2-135m-instruct`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from engine.bench.common import Row, Timing, side_by_side, throughput_row
from engine.bench.programs import _run_lips
from engine.bench.runtime import bench_model
from engine.grammar import BITS, Grammars, MaskRows
from engine.kernel import Kernel
from engine.loader import LoadedModel, load_model
from engine.syscalls import Syscalls
from engine.wire.records import Grammar, Logits, Sample

LIPS = 8
NEW = 64
CASES = ("json 8x64", "mask cost 8x64")
WORKLOADS = ("constrained",)
# an array of integers that cannot be complete in NEW tokens: every step is masked
SCHEMA = {"type": "array", "items": {"type": "integer"}, "minItems": 4 * NEW}
GRAMMAR = Grammar.json_schema(SCHEMA)
PROMPT = "A list of {i} random numbers as a JSON array:"


def _kernel(loaded: LoadedModel, lips: int, new: int) -> Kernel:
    return Kernel(loaded, num_pages=lips * (new // 16 + 4) + 16, token_budget=4096)


async def engine_lip(
    sys: Syscalls, prompt: list[int], grammar: Grammar | None, new: int
) -> list[int]:
    """Decode `new` tokens greedily, the grammar (if any) attached to the file in the engine."""
    f = await sys.kv.create()
    if grammar is not None:
        await sys.kv.constrain(f, grammar, start=len(prompt))
    out = [await sys.forward(f, prompt, returns=Sample())]
    while len(out) < new:
        out.append(await sys.forward(f, out[-1:], returns=Sample()))
    return out


async def logits_lip(sys: Syscalls, prompt: list[int], grammars: Grammars, new: int) -> list[int]:
    """The same tokens the LIP's way: full logits to Python, masked by its own matcher."""
    matcher = grammars.constraint(GRAMMAR, 0)
    bits = torch.empty((1, -(-grammars.vocab_size // BITS)), dtype=torch.int32)
    f = await sys.kv.create()
    fed, out = prompt, list[int]()
    while len(out) < new:
        logits = torch.tensor(await sys.forward(f, fed, returns=Logits()))
        matcher.fill(bits, 0)
        refused = MaskRows.of([0], bits, len(logits)).refused[0]  # unpacked as the engine does
        t = int(logits.masked_fill_(refused, float("-inf")).argmax())
        matcher.consume([t])
        out.append(t)
        fed = [t]
    return out


def measure(
    loaded: LoadedModel, runs: int, lips: int = LIPS, new: int = NEW
) -> dict[str, tuple[Timing, int]]:
    """Both cases' timings and tokens; `lips` LIPs of `new` tokens each (the cases' names keep
    the defaults')."""
    tok = loaded.tokenizer
    prompts = [tok.encode(PROMPT.format(i=10 + i)) for i in range(lips)]
    grammars = Grammars.of(tok, loaded.config.vocab_size, loaded.stop_ids)
    kernel = _kernel(loaded, lips, new)
    results: dict[str, list[Any]] = {}

    def each(name: str, main: Callable, extra: Any) -> Callable[[], None]:
        def go() -> None:
            results[name] = _run_lips(kernel, main, [(p, extra, new) for p in prompts])

        return go

    constrained = each("engine", engine_lip, GRAMMAR)
    by_logits = each("logits", logits_lip, grammars)
    free = each("free", engine_lip, None)
    json_case = side_by_side(constrained, by_logits, runs)
    if results["engine"] != results["logits"]:
        raise AssertionError("engine-side and LIP-side masking wrote different tokens")
    cost_case = side_by_side(constrained, free, runs)
    return {CASES[0]: (json_case, lips * new), CASES[1]: (cost_case, lips * new)}


def latency_row(case: str, model: str, timing: Timing, tokens: int, dtypes: str) -> Row:
    """µs per token, engine against baseline; the pairs' ratios inverted (lower is better)."""
    e, b = (1e6 * t / tokens for t in (timing.engine, timing.baseline))
    q1, q3 = timing.quartiles
    return Row(
        "constrained",
        case,
        model,
        "µs",
        round(e, 1),
        round(b, 1),
        round(1 / timing.speedup, 3),
        (round(1 / q3, 3), round(1 / q1, 3)),
        dtypes,
    )


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
    for name in models:
        loaded = load_model(bench_model(name), device=device, dtype=dtype, show_progress=False)
        label = f"{str(loaded.model.dtype).removeprefix('torch.')}/same"
        measured = measure(loaded, runs)
        for case, (timing, tokens) in measured.items():
            if cases and case not in cases:
                continue
            if case == CASES[0]:
                row = throughput_row(workload, case, name, tokens, "tok/s", timing, label)
            else:
                row = latency_row(case, name, timing, tokens, label)
            report(row)
            rows.append(row)
    return rows
