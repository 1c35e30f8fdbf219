"""`symphony bench speculative`: speculative decoding with prompt-lookup drafts (the library's
`speculative_decode`) against plain greedy decoding, on a repetitive workload.

The library is the notebook side's (`workbench.lib`), which the engine never imports: its
programs run in a process of their own, `engine.programs.library_bench` (what it measures is
described there), which reports each case's side-by-side timing. Two rows per model:
- `repetitive 4x96` (tok/s, higher is better): speculative against greedy decoding;
- `repetitive 4x96 forwards` (forwards per LIP, lower is better): the forwards each made, the
  prompt's included (greedy: one per token). A model that repeats the listing accepts most
  drafts; one that does not (a random checkpoint) accepts few and saves nothing.
The same two rows for `draft LIP 4x96` (drafts from a draft LIP, a child process decoding with
the same model), and a third, `draft LIP 4x96 all forwards`: the verifier's and the drafter's
forwards together, against greedy's. With one model the drafter's forwards cost what the
verifier saved, which this row shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from engine.bench.common import Row, Timing, throughput_row

WORKLOADS = ("speculative",)
PROGRAM = "engine.programs.library_bench"


def measure(model: str, runs: int, dtype: str | None, device: str) -> dict:
    """What the measuring program reports (it raises if the two sides' tokens differ)."""
    cmd = [sys.executable, "-m", PROGRAM, model, str(runs), dtype or "auto", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{PROGRAM} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
        measured = measure(name, runs, dtype, device)
        label = f"{measured['dtype']}/same"
        for case, m in measured["cases"].items():
            engine, baseline, speedup, (q1, q3) = m["timing"]
            timing = Timing(engine, baseline, speedup, (q1, q3))
            fwd = m["forwards"]
            made = [
                throughput_row(workload, case, name, m["tokens"], "tok/s", timing, label),
                Row(
                    workload,
                    f"{case} forwards",
                    name,
                    "forwards",
                    round(fwd["engine"], 2),
                    round(fwd["baseline"], 2),
                    round(fwd["engine"] / fwd["baseline"], 3),
                    dtypes=label,
                ),
            ]
            if m["draft_forwards"]:
                both = fwd["engine"] + m["draft_forwards"]
                made.append(
                    Row(
                        workload,
                        f"{case} all forwards",
                        name,
                        "forwards",
                        round(both, 2),
                        round(fwd["baseline"], 2),
                        round(both / fwd["baseline"], 3),
                        dtypes=label,
                    )
                )
            for row in made:
                if cases and row.case not in cases:
                    continue
                report(row)
                rows.append(row)
    return rows
