"""How an engine is set up: one record, each default stated here once.

`symphony serve` builds it from its options (`add_arguments`, `from_args`); the Jupyter server
extension and a notebook's autostart build one and start `symphony serve` with its options
(`argv`); the engine builds its kernel and its server from it (`Kernel.from_config`,
`engine.server.serve`). Torch-free: the notebook side imports it without the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engine.wire.protocol import HEARTBEAT_TIMEOUT

POLICIES = ("adaptive", "eager")  # the batch policies `symphony serve --policy` names


def _option(default: Any, help: str, aliases: tuple[str, ...] = (), **argparse_kw: Any) -> Any:
    """A field and its `symphony serve` option: `--name-with-dashes`, and `aliases` (older
    spellings kept so that users' commands still work)."""
    return field(default=default, metadata={"help": help, "aliases": aliases, **argparse_kw})


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine is started with."""

    model: str | None = _option(
        None,
        "a model name (`symphony models`), a local HF-layout directory, a .gguf file or an HF"
        " model id in the local cache (default: smollm2-135m-instruct)",
    )
    device: str = _option("cpu", "cpu or cuda")
    dtype: str | None = _option(
        None,
        "float32 or bfloat16 (default: the machine's choice: bfloat16 on GPUs and on CPUs with"
        " bf16 arithmetic for bfloat16 checkpoints, else float32)",
        choices=("float32", "bfloat16"),
    )
    num_pages: int = _option(1024, "KV pages in the pool", aliases=("--pages",))
    page_size: int = _option(16, "tokens per KV page")
    token_budget: int = _option(
        2048, "tokens in one forward at most (longer prefills run in chunks)"
    )
    policy: str = _option("adaptive", "the batch policy", choices=POLICIES)
    trace_capacity: int = _option(200_000, "trace events kept (the oldest go first)")
    prefix_sharing: bool = _option(
        True, "automatic prefix sharing between files (--no-prefix-sharing: compute everything)"
    )
    heartbeat_timeout: float = _option(
        HEARTBEAT_TIMEOUT, "seconds of a client's silence after which its processes end"
    )
    idle_exit: float | None = _option(
        None, "stop after this many seconds without clients or processes (default: never)"
    )
    threads: int = _option(0, "torch CPU threads (0: torch's default)")
    data_dir: str | None = _option(
        None,
        "where saved KV files and users' credentials are kept ($SYMPHONY_DATA_DIR, else"
        " ~/.local/share/symphony)",
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One `--option` per field (and its aliases), with its default and help."""
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            meta = dict(f.metadata)
            flags = (flag, *meta.pop("aliases"))
            if f.type == "bool":
                parser.add_argument(
                    *flags, action=argparse.BooleanOptionalAction, default=f.default, **meta
                )
                continue
            kind = {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)
            parser.add_argument(*flags, dest=f.name, type=kind, default=f.default, **meta)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineConfig:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def argv(self) -> list[str]:
        """The `symphony serve` options that give this config (those that are not defaults)."""
        out: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                out.append(flag if value else "--no-" + f.name.replace("_", "-"))
            else:
                out += [flag, str(value)]
        return out
