"""The bench contract: side-by-side medians, a printed table, and `{"results": [...]}` JSON."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple


@dataclass
class Row:
    workload: str
    case: str
    model: str
    unit: str
    engine: float
    baseline: float
    # engine / baseline: for throughputs higher is better, for latencies lower. Throughput
    # rows give the median of back-to-back pairs' ratios (see side_by_side).
    ratio: float
    # throughput rows: the middle half of the pairs' ratios (first and third quartile), how far
    # the machine's noise moves one pair; a ratio near a target is only as sure as this is narrow
    ratio_quartiles: tuple[float, float] | None = None
    dtypes: str = ""  # "engine/baseline", e.g. "float32/bfloat16"
    # "defaults": each side as a user gets it; "like for like": the same dtype on both sides
    comparison: str = ""


LATENCY_UNITS = ("s", "ms", "µs")
LOWER_IS_BETTER = (*LATENCY_UNITS, "MB/step", "forwards")  # latencies, bytes moved, forwards


def lower_is_better(row: Row) -> bool:
    return row.unit in LOWER_IS_BETTER


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def timed_calls(n: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    """Seconds each of n awaited calls took, one after another."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return times


class Timing(NamedTuple):
    """Side-by-side seconds of one case."""

    engine: float  # median
    baseline: float  # median
    speedup: float  # median over the back-to-back pairs of baseline / engine
    quartiles: tuple[float, float]  # first and third quartile of those pairs


def side_by_side(
    engine: Callable[[], object], baseline: Callable[[], object], runs: int, warmup: int = 1
) -> Timing:
    """Alternate engine and baseline runs so noise hits both alike.

    The speedup is the median of each pair's own ratio, not the ratio of the medians: on a noisy
    machine a slow spell then spoils one pair instead of shifting one side's median.
    """
    for _ in range(warmup):
        engine()
        baseline()
    e, b = [], []
    for _ in range(runs):
        e.append(timed(engine))
        b.append(timed(baseline))
    pairs = [bs / es for es, bs in zip(e, b, strict=True)]
    return Timing(
        statistics.median(e), statistics.median(b), statistics.median(pairs), _quartiles(pairs)
    )


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q3


def throughput_row(
    workload: str, case: str, model: str, work: float, unit: str, timing: Timing, dtypes: str = ""
) -> Row:
    e, b = work / timing.engine, work / timing.baseline
    q1, q3 = (round(q, 3) for q in timing.quartiles)
    speedup = round(timing.speedup, 3)
    return Row(workload, case, model, unit, round(e, 2), round(b, 2), speedup, (q1, q3), dtypes)


def print_table(rows: list[Row]) -> None:
    head: tuple[str, ...] = ("workload", "case", "model", "dtypes", "compared", "unit")
    head += ("engine", "baseline", "ratio")
    cells = [head] + [
        (r.workload, r.case, r.model, r.dtypes, r.comparison, r.unit)
        + (f"{r.engine:g}", f"{r.baseline:g}", ratio_text(r))
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for n, c in enumerate(cells):
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)), flush=True)
        if n == 0:
            print("  ".join("-" * w for w in widths))


def ratio_text(row: Row) -> str:
    text = f"{row.ratio:.2f}x"
    if row.ratio_quartiles is not None:
        text += " (middle half of pairs {:.2f}-{:.2f})".format(*row.ratio_quartiles)
    return text + (" (lower is better)" if lower_is_better(row) else "")


def write_json(rows: list[Row], path: str | Path, settings: dict | None = None) -> None:
    doc = {"results": [asdict(r) for r in rows], "settings": settings or {}}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
