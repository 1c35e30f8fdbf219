"""`symphony bench decode` and `symphony bench prefill`: the engine beside transformers.

Both sides load the same checkpoint onto the same device (--device): the engine in its default
dtype (the checkpoint's where the machine computes it natively, else float32: see
`engine.loader.default_dtype`) unless --dtype says otherwise, transformers in the
checkpoint's own dtype unless --baseline-dtype does. On CUDA every timed run ends with a
device synchronize, so a side's time includes all of its GPU work.
Decode: 128-token prompts, 128 new tokens, greedy, throughput over the whole generation
(prefill included), against `transformers` `generate`. Its last row sets batch-1 decode steps
(prefill excluded) beside the memory-bandwidth bound: the bytes of weights a step reads, over
the read bandwidth this process reaches (measured on the spot, see `read_bandwidth`), and
after it the same step's matrix products alone ("batch 1 matmuls vs bound"): how far the
kernels are from the bound, and how much of a step is spent around them. The
"bytes per step" rows count (not time) what a batch-16 decode step moves, weights and keys and
values, beside the least it must read: each weight and each distinct key and value once; the
"resident vs gathering" row times batch-16 decode steps with the two ways of attending, and
the "packed vs plain" rows batch-1 and batch-16 decode steps with oneDNN-packed weights and
plain ones (bfloat16 models on CPUs with bf16 arithmetic: `engine.model.linear`).
Prefill: forward of the prompts keeping the KV cache and the last logits, against a
`transformers` forward with `logits_to_keep=1`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch

from engine.attention import TorchBackend
from engine.bench.common import Row, Timing, side_by_side, throughput_row, timed
from engine.bench.models import bench_model, checkpoint_dtype, load_transformers
from engine.generate import generate
from engine.loader import LoadedModel, default_dtype, load_model
from engine.model import MATRICES, DecoderLayer
from engine.page_pool import PagePool
from engine.runner import Runner, Sample, Segment
from engine.sequence import KVSequence, pages_for

DECODE_CASES = {"batch 1": 1, "batch 16": 16, "batch 64": 64}
# the "bytes per step" rows: the engine's attention, and gathering every step (the reference)
TRAFFIC_BACKENDS: dict[str, Callable[[], TorchBackend]] = {
    "resident": TorchBackend,
    "gathering": lambda: TorchBackend(resident=False),
}
WEIGHTS_BATCHES = (1, 16)  # the "packed vs plain" rows
PREFILL_CASES = {"1x512": (1, 512), "16x128": (16, 128)}
PROMPT, NEW = 128, 128


def random_prompts(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


class Pair(NamedTuple):
    """The dtypes of one side-by-side comparison."""

    engine: str | None  # None: the engine's default (`engine.loader.default_dtype`)
    baseline: str  # "auto": the checkpoint's dtype, what transformers gives a user
    comparison: str  # "defaults", "like for like", or both when the defaults agree


def comparisons(model: str, device: str, compare: list[str]) -> list[Pair]:
    """The pairs `compare` names ("defaults", "float32", "bfloat16"; the last two like for
    like), a like-for-like pair that the defaults already are measured once."""
    checkpoint = checkpoint_dtype(bench_model(model))
    ours = dtype_name(default_dtype(torch.device(device), checkpoint).dtype)
    same = "defaults" in compare and ours == checkpoint
    pairs = []
    for c in compare:
        if c == "defaults":
            pairs.append(Pair(None, "auto", "defaults, like for like" if same else "defaults"))
        elif not (same and c == ours):
            pairs.append(Pair(c, c, "like for like"))
    return pairs


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtypes(loaded: LoadedModel, hf: Any) -> str:
    """`engine/baseline` as the rows show them."""
    return f"{dtype_name(loaded.model.dtype)}/{dtype_name(hf.dtype) if hf is not None else '-'}"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously to the host)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _runner(loaded: LoadedModel, batch: int, tokens: int, page_size: int = 16) -> Runner:
    pool = PagePool.for_model(
        loaded.config,
        batch * pages_for(tokens, page_size),
        page_size,
        loaded.model.dtype,
        loaded.model.device,
    )
    return Runner(loaded.model, pool)


def load_pair(
    name: str,
    dtype: str | None,
    baseline_dtype: str = "auto",
    need_baseline: bool = True,
    device: str = "cpu",
) -> tuple[LoadedModel, Any]:
    """The engine's model (dtype None: its default) and transformers' (auto: the checkpoint's),
    both on `device`."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    path = bench_model(name)
    loaded = load_model(path, device=device, dtype=dtype, show_progress=False)
    if not need_baseline:
        return loaded, None
    hf_dtype = "auto" if baseline_dtype == "auto" else getattr(torch, baseline_dtype)
    hf: Any = load_transformers(path, hf_dtype)
    return loaded, hf.to(device).eval()


def decode_case(loaded: LoadedModel, hf: Any, batch: int, runs: int) -> Timing:
    ids = random_prompts(batch, PROMPT, loaded.config.vocab_size)
    runner = _runner(loaded, batch, PROMPT + NEW)
    prompts = ids.tolist()
    ids = ids.to(hf.device)

    def engine() -> None:
        generate(runner, prompts, NEW)  # returns host ints: already synchronized

    def baseline() -> None:
        with torch.inference_mode():
            hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW,
                min_new_tokens=NEW,
                do_sample=False,
                pad_token_id=0,
            )
        sync(hf.device)

    return side_by_side(engine, baseline, runs)


def read_bandwidth(device: torch.device, nbytes: int = 1 << 30, runs: int = 7) -> float:
    """Bytes per second one pass over a large buffer reaches (a sum: reads only), median."""
    x = torch.ones(nbytes // 4, device=device)

    def one() -> None:
        x.sum()
        sync(device)

    one()
    return nbytes / statistics.median(timed(one) for _ in range(runs))


def weight_bytes(loaded: LoadedModel) -> int:
    """What one decode step reads of the weights: all of them, but one row of an untied
    embedding table (a tied one is read whole as the LM head)."""
    model = loaded.model
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total if model.lm_head is None else total - model.embed.nbytes


def bound_row(loaded: LoadedModel, runs: int, steps: int = 64) -> Row:
    """Batch-1 decode steps per second (after a 128-token prefill) beside the bandwidth bound."""
    ids = random_prompts(1, PROMPT, loaded.config.vocab_size)[0].tolist()
    runner = _runner(loaded, 1, PROMPT + steps + 1)

    def decode() -> None:
        seq = KVSequence()
        runner.forward([Segment(seq, ids)])
        start = time.perf_counter()
        for _ in range(steps):
            runner.forward([Segment(seq, [1], returns=Sample())])
        times.append(time.perf_counter() - start)
        seq.release(runner.pool)

    times: list[float] = []
    for _ in range(runs + 1):
        decode()
    rate = steps / statistics.median(times[1:])  # the first run warms up
    return _bound_row(loaded, "batch 1 vs bound", rate)


def matmuls_row(loaded: LoadedModel, runs: int, steps: int = 16) -> Row:
    """The matrix products of a batch-1 decode step alone (each layer's `MATRICES` through
    `DecoderLayer.project`, then the final norm and LM head through `LlamaModel.logits`, as a
    step calls them, on one row of zeros) beside the bandwidth bound. Beside "batch 1 vs bound",
    it splits a step's time into the products and everything around them."""
    model = loaded.model
    layers = cast("list[DecoderLayer]", list(model.layers))
    device, dtype = model.device, model.dtype
    rows = {
        n: torch.zeros(1, getattr(layers[0], n).shape[1], dtype=dtype, device=device)
        for n in MATRICES
    }
    hidden = torch.zeros(1, model.cfg.hidden_size, dtype=dtype, device=device)

    def products() -> None:
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(steps):
                for layer in layers:
                    for name in MATRICES:
                        layer.project(name, rows[name])
                model.logits(hidden)
        sync(device)
        times.append(time.perf_counter() - start)

    times: list[float] = []
    for _ in range(runs + 1):
        products()
    rate = steps / statistics.median(times[1:])  # the first run warms up
    return _bound_row(loaded, "batch 1 matmuls vs bound", rate)


def _bound_row(loaded: LoadedModel, case: str, rate: float) -> Row:
    """A row of `rate` (steps per second) beside the memory-bandwidth bound on steps per second:
    the read bandwidth measured now over the bytes of weights a step reads."""
    bound = read_bandwidth(loaded.model.device) / weight_bytes(loaded)
    return Row(
        "decode",
        case,
        "",
        "tok/s",
        round(rate, 2),
        round(bound, 2),
        round(rate / bound, 3),
        None,
        dtype_name(loaded.model.dtype),
    )


def traffic_row(loaded: LoadedModel, backend: TorchBackend, label: str, batch: int = 16) -> Row:
    """Bytes a decode step moves (weights, K/V copied and written, K/V read), averaged over
    NEW steps after PROMPT-token prompts, beside the least it must read."""
    runner = _runner(loaded, batch, PROMPT + NEW)
    runner.backend = backend
    seqs = [KVSequence() for _ in range(batch)]
    prompts = random_prompts(batch, PROMPT, loaded.config.vocab_size).tolist()
    runner.forward([Segment(s, p) for s, p in zip(seqs, prompts, strict=True)])
    moved = needed = 0
    for _ in range(NEW):
        runner.forward([Segment(s, [1], returns=Sample()) for s in seqs])
        assert backend.traffic is not None
        copied, read, least = backend.traffic
        moved += 2 * copied + read  # a copy reads and writes
        needed += least
    for s in seqs:
        s.release(runner.pool)
    per_token, weights = runner.pool.bytes_per_token, weight_bytes(loaded)
    engine = (weights + per_token * moved / NEW) / 1e6
    bound = (weights + per_token * needed / NEW) / 1e6
    case = f"batch {batch} bytes per step ({label})"
    kind = dtype_name(loaded.model.dtype)
    return Row(
        "decode",
        case,
        "",
        "MB/step",
        round(engine, 1),
        round(bound, 1),
        round(engine / bound, 3),
        None,
        kind,
    )


def decode_steps(runner: Runner, batch: int, steps: int) -> Callable[[], None]:
    """A run of `steps` batch-wide decode steps after PROMPT-token prompts (prefilled now);
    each run ends back at the prompts, so that every run times the same steps."""
    prompts = random_prompts(batch, PROMPT, runner.model.cfg.vocab_size).tolist()
    seqs = [KVSequence() for _ in range(batch)]
    runner.forward([Segment(s, p) for s, p in zip(seqs, prompts, strict=True)])

    def decode() -> None:
        for _ in range(steps):
            runner.forward([Segment(s, [1], returns=Sample()) for s in seqs])
        for s in seqs:  # back to the prompts (resident rows keep the prefix the files still have)
            s.truncate(runner.pool, PROMPT)

    return decode


def attention_row(loaded: LoadedModel, runs: int, batch: int = 16, steps: int = 32) -> Row:
    """Decode steps (after PROMPT-token prompts) attending resident copies, beside the same
    steps gathering every file's pages every step: the speed-up `engine.attention.resident`
    exists for, measured side by side in one process."""

    def side(backend: TorchBackend) -> Callable[[], None]:
        runner = _runner(loaded, batch, PROMPT + steps)
        runner.backend = backend
        return decode_steps(runner, batch, steps)

    timing = side_by_side(side(TorchBackend()), side(TorchBackend(resident=False)), runs)
    case = f"batch {batch} attention: resident vs gathering"
    return throughput_row("decode", case, "", batch * steps, "tok/s", timing, dtypes(loaded, None))


def weights_row(loaded: LoadedModel, runs: int, batch: int, steps: int = 32) -> Row | None:
    """Decode steps multiplying by oneDNN-packed weights, beside the same steps with the plain
    ones (a second copy of the model, unpacked): the speed-up `LlamaModel.pack_weights` exists
    for, side by side in one process. None where the model packs nothing (float32, or a CPU
    without bf16 arithmetic)."""
    if loaded.model.head_packed is None:
        return None
    plain = load_model(loaded.path, loaded.model.device, loaded.model.dtype, show_progress=False)
    plain.model.pack_weights(False)
    packed_steps = decode_steps(_runner(loaded, batch, PROMPT + steps), batch, steps)
    plain_steps = decode_steps(_runner(plain, batch, PROMPT + steps), batch, steps)
    timing = side_by_side(packed_steps, plain_steps, runs)
    case = f"batch {batch} weights: packed vs plain"
    return throughput_row("decode", case, "", batch * steps, "tok/s", timing, dtypes(loaded, None))


def prefill_case(loaded: LoadedModel, hf: Any, batch: int, length: int, runs: int) -> Timing:
    ids = random_prompts(batch, length, loaded.config.vocab_size)
    runner = _runner(loaded, batch, length)
    prompts = ids.tolist()
    ids = ids.to(hf.device)

    def engine() -> None:
        seqs = [KVSequence() for _ in prompts]
        runner.forward([Segment(s, p) for s, p in zip(seqs, prompts, strict=True)])
        for s in seqs:
            s.release(runner.pool)
        sync(loaded.model.device)

    def baseline() -> None:
        with torch.inference_mode():
            hf(ids, use_cache=True, logits_to_keep=1)
        sync(hf.device)

    return side_by_side(engine, baseline, runs)


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
    rows = []
    wanted = lambda case: not cases or case in cases  # noqa: E731
    for name in models:
        loaded, hf = load_pair(name, dtype, baseline_dtype, device=device)
        measured: list[tuple[str, Timing, int]] = []
        if workload == "decode":
            for case, batch in DECODE_CASES.items():
                if wanted(case):
                    measured.append((case, decode_case(loaded, hf, batch, runs), batch * NEW))
        else:
            for case, (batch, length) in PREFILL_CASES.items():
                if wanted(case):
                    timing = prefill_case(loaded, hf, batch, length, runs)
                    measured.append((case, timing, batch * length))
        for case, timing, work in measured:
            row = throughput_row(workload, case, name, work, "tok/s", timing, dtypes(loaded, hf))
            report(row)
            rows.append(row)
        if workload == "decode" and (not cases or "batch 1 vs bound" in cases):
            for row in (bound_row(loaded, runs), matmuls_row(loaded, runs)):
                row.model = name
                report(row)
                rows.append(row)
        if workload == "decode" and (not cases or "resident vs gathering" in cases):
            row = attention_row(loaded, runs)
            row.model = name
            report(row)
            rows.append(row)
        for batch in WEIGHTS_BATCHES if workload == "decode" and wanted("packed vs plain") else []:
            packed_row = weights_row(loaded, runs, batch)
            if packed_row is not None:
                packed_row.model = name
                report(packed_row)
                rows.append(packed_row)
        if workload == "decode" and (not cases or "bytes per step" in cases):
            for label, backend in TRAFFIC_BACKENDS.items():
                row = traffic_row(loaded, backend(), label)
                row.model = name
                report(row)
                rows.append(row)
    return rows
