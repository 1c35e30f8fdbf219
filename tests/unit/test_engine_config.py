"""The engine's one configuration record: the CLI, the server extension and the autostart build
it; the kernel and the server take their settings and defaults from it."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

from engine.kernel import Kernel
from engine.scheduler import Eager, Scheduler
from engine.trace import Trace
from engine.wire.engine_config import EngineConfig
from workbench.server_extension import SymphonyWorkbench

CHANGED = EngineConfig(
    model="tiny",
    device="cuda",
    dtype="float32",
    num_pages=64,
    page_size=8,
    token_budget=512,
    policy="eager",
    trace_capacity=1000,
    prefix_sharing=False,
    heartbeat_timeout=2.5,
    idle_exit=3.0,
    threads=1,
    data_dir="/tmp/symphony-data",
)


def parse(argv: list[str]) -> EngineConfig:
    parser = argparse.ArgumentParser()
    EngineConfig.add_arguments(parser)
    return EngineConfig.from_args(parser.parse_args(argv))


def test_every_setting_travels_as_serve_options_and_back() -> None:
    assert all(
        getattr(CHANGED, f.name) != f.default for f in dataclasses.fields(EngineConfig)
    )  # the test changes every field
    assert parse(CHANGED.argv()) == CHANGED
    assert EngineConfig().argv() == [] and parse([]) == EngineConfig()


def test_the_engine_takes_its_defaults_from_the_record() -> None:
    kernel = inspect.signature(Kernel.__init__).parameters
    config = EngineConfig()
    assert kernel["num_pages"].default == config.num_pages
    assert kernel["page_size"].default == config.page_size
    assert kernel["token_budget"].default == config.token_budget
    assert kernel["trace_capacity"].default == config.trace_capacity
    assert kernel["prefix_sharing"].default is config.prefix_sharing
    assert Scheduler().token_budget == config.token_budget
    assert Trace().events.maxlen == config.trace_capacity


def test_a_kernel_is_set_up_as_the_record_says(tiny_loaded) -> None:  # noqa: ANN001
    config = dataclasses.replace(CHANGED, device="cpu", data_dir=None)
    kernel = Kernel.from_config(tiny_loaded, config)
    assert (kernel.pool.num_pages, kernel.pool.page_size) == (64, 8)
    assert kernel.scheduler.token_budget == 512 and isinstance(kernel.scheduler.policy, Eager)
    assert kernel.trace.events.maxlen == 1000 and kernel.pool.index is None


def test_the_server_extension_starts_engines_with_the_records_options() -> None:
    ext = SymphonyWorkbench()
    ext.model, ext.num_pages, ext.threads = "tiny", 128, 2
    ext.engine_args = ["--no-prefix-sharing"]
    assert ext.engine_config() == EngineConfig(model="tiny", num_pages=128, threads=2)
    assert parse(ext.serve_args()) == EngineConfig(
        model="tiny", num_pages=128, threads=2, prefix_sharing=False
    )


def test_the_old_names_of_the_pool_size_still_work() -> None:
    """`--pages` and the extension's `pages` were the pool size's names before `num_pages`:
    users' commands and configs that say them keep working."""
    assert parse(["--pages", "96"]) == EngineConfig(num_pages=96)
    ext = SymphonyWorkbench()
    ext.pages = 96
    assert ext.engine_config() == EngineConfig(num_pages=96)
    ext.num_pages = 48  # the new name wins
    assert ext.engine_config() == EngineConfig(num_pages=48)
