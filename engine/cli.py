"""`symphony`: the engine's command line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from engine import cli_client

if TYPE_CHECKING:
    from engine.bench.runtime import Pair

WORKLOADS = (
    "decode",
    "prefill",
    "plain",
    "shared-prefix",
    "api-overhead",
    "agent",
    "rpc",
    "constrained",
    "speculative",
)
DEMO_PROMPTS = ["The return value of", "A list is", "To open a file", "def "]


def _demo(args: argparse.Namespace) -> int:
    from engine.generate import generate_stream
    from engine.loader import load_model
    from engine.models import DEFAULT_MODEL
    from engine.page_pool import PagePool
    from engine.runner import Runner
    from engine.sampler import SamplingParams
    from engine.wire.errors import ModelNotFound

    try:
        loaded = load_model(args.model or DEFAULT_MODEL, device=args.device)
    except ModelNotFound as e:
        print(f"symphony demo: {e}", file=sys.stderr)
        return 2
    print(
        f"loaded {loaded.name} ({loaded.config.num_params / 1e6:.1f}M parameters, "
        f"{loaded.model.dtype}) in {loaded.load_seconds:.2f}s\n",
        flush=True,
    )
    tok = loaded.tokenizer
    pool = PagePool.for_model(
        loaded.config, 64, dtype=loaded.model.dtype, device=loaded.model.device
    )
    runner = Runner(loaded.model, pool)
    params = SamplingParams(temperature=args.temperature, top_p=0.95 if args.temperature else 1.0)
    stop = tuple(loaded.stop_ids)
    for prompt in args.prompt or DEMO_PROMPTS:
        ids = tok.encode(prompt)
        new: list[int] = []
        shown = ""
        print(f"\033[1m{prompt}\033[0m", end="", flush=True)
        start = time.perf_counter()
        for (t,) in generate_stream(runner, [ids], args.tokens, params, args.seed, stop):
            if t is None or t in stop:
                break
            new.append(t)
            text = tok.decode(ids + new)[len(tok.decode(ids)) :]
            print(text[len(shown) :], end="", flush=True)
            shown = text
        rate = len(new) / (time.perf_counter() - start)
        print(f"\n  [{len(new)} tokens, {rate:.0f} tok/s]\n", flush=True)
    pool.check()
    return 0


def _models(args: argparse.Namespace) -> int:
    """`symphony models`: the models the engine finds by name, and where each one is."""
    from engine.models import DEFAULT_MODEL, available, hf_cache_dir

    for reg, path in available():
        mark = " (default)" if reg.name == DEFAULT_MODEL else ""
        print(f"{reg.name}{mark}: {reg.description}")
        print(f"    {path if path is not None else 'not installed: ' + reg.source}")
    print(
        "\nAlso: --model PATH (an HF-layout directory or a .gguf file), or an HF model id "
        f"(org/name) found in the local Hugging Face cache, {hf_cache_dir()}; nothing is "
        "downloaded."
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from engine.bench import constrained, programs, rpc, runtime, speculative
    from engine.bench.common import print_table, ratio_text, write_json

    bench = programs if args.workload in programs.WORKLOADS else runtime
    bench = rpc if args.workload in rpc.WORKLOADS else bench
    bench = constrained if args.workload in constrained.WORKLOADS else bench
    bench = speculative if args.workload in speculative.WORKLOADS else bench
    rows = []
    for name in args.models.split(","):
        for pair in _pairs(args, name):
            for row in bench.run(
                args.workload,
                [name],
                args.runs,
                pair.engine,
                pair.baseline,
                cases=args.cases.split(",") if args.cases else None,
                device=args.device,
                report=lambda r: print(
                    f"  {r.model} {r.workload} {r.case} {r.dtypes}: engine {r.engine:g} "
                    f"{r.unit}, baseline {r.baseline:g}, ratio {ratio_text(r)}",
                    file=sys.stderr,
                    flush=True,
                ),
            ):
                row.comparison = pair.comparison
                rows.append(row)
    settings = {
        "device": device_name(args.device),
        "compared": args.compare if args.dtype is None else f"engine {args.dtype}",
        "runs": args.runs,
        "threads": torch_threads(),
    }
    print(", ".join(f"{k}: {v}" for k, v in settings.items()))
    print_table(rows)
    if args.json:
        write_json(rows, args.json, settings)
    return 0


def _pairs(args: argparse.Namespace, model: str) -> list[Pair]:
    """The dtype pairs to measure: --dtype/--baseline-dtype if given, else --compare's."""
    from engine.bench.runtime import Pair, comparisons

    if args.dtype is not None or args.baseline_dtype != "auto":
        return [Pair(args.dtype, args.baseline_dtype, "as asked")]
    if args.workload in ("api-overhead", "rpc", "constrained", "speculative"):  # engine both sides
        return [Pair(None, "auto", "defaults")]
    return comparisons(model, args.device, args.compare.split(","))


def device_name(device: str) -> str:
    """The device as the bench header names it: a GPU by its model, a CPU by its model and
    what it offers for bfloat16."""
    import platform

    import torch

    from engine.loader import cpu_capability

    d = torch.device(device)
    if d.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(d)})"
    model = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")),
        platform.processor() or "unknown CPU",
    )
    return f"cpu ({model}, {cpu_capability()})"


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _train_demo(argv: list[str]) -> int:
    from engine.train_demo import main as train_main

    return train_main(argv) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symphony", description="Symphony: a serving OS for LLM inference programs"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate text in the terminal")
    demo.add_argument(
        "--model", help="a model name, directory, .gguf file or cached HF id (`symphony models`)"
    )
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    demo.add_argument("--tokens", type=int, default=40)
    demo.add_argument("--temperature", type=float, default=0.8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    sub.add_parser("models", help="list the models the engine finds, and where").set_defaults(
        func=_models
    )

    bench = sub.add_parser("bench", help="benchmarks: the engine beside a baseline, as ratios")
    bench.add_argument("workload", choices=[*WORKLOADS])
    bench.add_argument("--json", help="write the results here")
    bench.add_argument("--runs", type=int, default=5, help="runs per case; medians are reported")
    bench.add_argument("--models", default="tiny,smollm2-135m-shape")
    bench.add_argument("--cases", help="comma-separated case names (default: all)")
    bench.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="the engine's dtype (default: its own: the checkpoint's where the machine "
        "computes it natively, else float32)",
    )
    bench.add_argument(
        "--device", default="cpu", help="where both sides run: cpu (default) or cuda"
    )
    bench.add_argument(
        "--compare",
        default="defaults,float32,bfloat16",
        help="dtype pairs: defaults (each side as a user gets it), float32 and bfloat16 (like "
        "for like); a like-for-like pair the defaults already are runs once",
    )
    bench.add_argument(
        "--baseline-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="transformers' dtype (default: the checkpoint's, as a user gets it)",
    )
    bench.set_defaults(func=_bench)

    cli_client.add_serve_parser(sub)
    cli_client.add_parsers(sub)

    sub.add_parser(
        "train-demo", help="train the bundled demo model (see engine/train_demo.py)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train-demo"]:
        return _train_demo(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
