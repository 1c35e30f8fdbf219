"""gallery/10-scheduler-lab.ipynb in JupyterLab: it runs top to bottom without an error, every
view renders, and what the views drew is what the lab's engines reported.

The lab's engines run inside the notebook's kernel and stop with its last cell, so the test
runs a copy of the notebook with one cell more, before that last one: it asks both engines,
through their public client calls, for their whole trace, and keeps the page-pool reply the
page map drew; it writes them to a file. What the browser drew (plotly's `gd.data` and layout)
is then checked against those replies, computed here without the workbench's data layer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fork_and_share import view
from lab_harness import (
    ROOT,
    Lab,
    cell_outputs,
    open_notebook,
    output_errors,
    run_command,
    settle,
    wait_idle,
)

from workbench.widgets.timeline import BATCHES, SUSPENDED, SWAPS, TRACES

NOTEBOOK = "gallery/10-scheduler-lab.ipynb"
ANSWERS = "scheduler-lab-answers.json"
ASK_THE_ENGINES = f"""
import json as _json
_json.dump(
    {{
        "runs": {{name: pid for name, (pid, _) in runs.items()}},
        "roomy": roomy_pid,
        "tight": tight_pid,
        "lab_trace": [list(e) for e in await client.trace(limit=1_000_000)],
        "tight_trace": [list(e) for e in await tight_client.trace(limit=1_000_000)],
        "pressure_pages": pages.fetched.pages._asdict(),
    }},
    open({ANSWERS!r}, "w"),
)
"""
# the cells that show views, by a piece of their first lines (an editor out of sight shows only
# its first lines in the page)
TIMELINE = "PROMPTS = ["
COMPARE = "compared = {name: window("
MINE = "class AsFullAsLast(BatchPolicy)"
PAGES = "LONG = 24"
PRESSURE = 'TimelineComparison({"256 pages"'

# plotly's figure: each trace's type, x, y, text, and each y axis's categories, by axis name
FIGURE = """gd => {
    const list = v => (v === undefined || v === null) ? [] : Array.from(v);
    const traces = (gd.data || []).map(t => ({
        type: t.type, x: list(t.x), y: list(t.y), text: list(t.text),
        z: t.z ? Array.from(t.z, row => Array.from(row)) : []}));
    const axes = {};
    for (const [k, v] of Object.entries(gd._fullLayout || {})) {
        if (k.startsWith('yaxis') && v && v._categories) axes[k] = [...v._categories];
    }
    return {traces, axes, drawn: !!gd._fullLayout};
}"""


class Trace:
    """One engine's trace as it replied: processes with their parents, batches, swaps."""

    def __init__(self, events: list[list[Any]]) -> None:
        self.events = events
        self.procs = {
            pid: (data["name"], data.get("parent"))
            for _, _, kind, pid, data in events
            if kind == "process" and data.get("old") is None
        }

    def family(self, pid: int) -> list[int]:
        """pid, then each child right under its parent (children by pid), depth first."""
        out = [pid]
        for child in sorted(p for p, (_, parent) in self.procs.items() if parent == pid):
            out += self.family(child)
        return out

    def labels(self, pid: int) -> list[str]:
        depth = {pid: 0}
        for p in self.family(pid)[1:]:
            depth[p] = depth[self.procs[p][1]] + 1
        return [f"{'↳ ' * depth[p]}{p} {self.procs[p][0]}" for p in self.family(pid)]

    def batches(self, pids: list[int]) -> list[dict[str, Any]]:
        return [
            d for _, _, kind, _, d in self.events if kind == "batch" and set(d["pids"]) & set(pids)
        ]

    def swaps(self, pids: list[int]) -> list[str]:
        """The swap marks in time order: ↓n where n pages went out, ↑n where they came back."""
        marks = []
        for _, _, kind, pid, d in self.events:
            if kind != "process" or pid not in pids:
                continue
            if d.get("old") == "suspended" and d.get("pages_swapped_in"):
                marks.append(f"↑{d['pages_swapped_in']}")
            if d.get("new") == "suspended" and d.get("pages_swapped"):
                marks.append(f"↓{d['pages_swapped']}")
        return marks

    def suspensions(self, pids: list[int]) -> int:
        return sum(
            1
            for _, _, kind, pid, d in self.events
            if kind == "process" and pid in pids and d.get("new") == "suspended"
        )


def test_the_scheduler_lab_runs_and_its_views_show_what_its_engines_reported(
    page: Any, lab: Lab, artifacts: Path
) -> None:
    shutil.copytree(ROOT / "gallery", lab.root / "gallery", dirs_exist_ok=True)
    notebook = json.loads((ROOT / NOTEBOOK).read_text())
    last = next(
        i for i, c in enumerate(notebook["cells"]) if "close" in c["metadata"].get("tags", [])
    )
    ask = {"cell_type": "code", "execution_count": None, "id": "ask-the-engines", "metadata": {}}
    notebook["cells"].insert(last, {**ask, "outputs": [], "source": ASK_THE_ENGINES})
    (lab.root / NOTEBOOK).write_text(json.dumps(notebook))

    open_notebook(page, lab, NOTEBOOK)
    run_command(page, "notebook:run-all-cells")
    wait_idle(page, timeout=420)
    cells = cell_outputs(page)
    assert not output_errors(cells), output_errors(cells)
    assert all(c["count"] for c in cells), [c["source"][:40] for c in cells if not c["count"]]
    stderr = [c["source"][:40] for c in cells for o in c["outputs"] if o.get("name") == "stderr"]
    assert not stderr, stderr  # the engines print nothing nobody asked for

    answers = json.loads((lab.root / "gallery" / ANSWERS).read_text())
    roomy, tight = Trace(answers["lab_trace"]), Trace(answers["tight_trace"])
    runs: dict[str, int] = answers["runs"]

    def drawn(needle: str) -> dict[str, Any]:
        box = view(page, needle)
        plot = box.locator(".js-plotly-plot")
        plot.wait_for(state="attached")
        fig = plot.evaluate(FIGURE)
        assert fig["drawn"] and fig["traces"], needle
        return fig

    def columns(fig: dict[str, Any], n: int) -> list[list[dict[str, Any]]]:
        assert len(fig["traces"]) == n * TRACES, len(fig["traces"])
        return [fig["traces"][i * TRACES : (i + 1) * TRACES] for i in range(n)]

    def compared(needle: str, sides: list[tuple[Trace, int]]) -> list[list[dict[str, Any]]]:
        """A comparison's columns, each checked against its run's processes and batches."""
        fig = drawn(needle)
        cols = columns(fig, len(sides))
        for i, ((trace, pid), col) in enumerate(zip(sides, cols, strict=True)):
            axis = "yaxis" if i == 0 else f"yaxis{i + 1}"  # row 1's axes, column by column
            assert fig["axes"][axis] == ["batches", *trace.labels(pid)], (needle, i)
            pids = trace.family(pid)
            assert len(col[BATCHES]["x"]) == len(trace.batches(pids)), (needle, i)
        return cols

    # the live timeline: every process of the roomy lab engine, children under their parent
    def timeline_matches() -> None:
        fig = drawn(TIMELINE)
        coordinators = [p for p, (_, parent) in roomy.procs.items() if parent is None]
        lanes = [label for p in sorted(coordinators) for label in roomy.labels(p)]
        assert fig["axes"]["yaxis"] == ["batches", *lanes]
        (col,) = columns(fig, 1)
        everyone = list(roomy.procs)
        assert len(col[BATCHES]["x"]) == len(roomy.batches(everyone))

    settle("the live timeline", timeline_matches)
    view(page, TIMELINE).screenshot(path=str(artifacts / "gallery-10-timeline.png"))

    # the policies side by side: a column per run, its lanes and its batches
    sides = [(roomy, runs[name]) for name in ("eager", "wait-for-k", "adaptive")]
    settle("the policies compared", lambda: compared(COMPARE, sides))
    table = view(page, COMPARE).locator("table").inner_text()
    for name, pid in list(runs.items())[:3]:
        assert name in table
        assert f"{len(roomy.batches(roomy.family(pid)))}" in table
    view(page, COMPARE).screenshot(path=str(artifacts / "gallery-10-policies.png"))

    mine = [(roomy, runs["eager"]), (roomy, runs["as-full-as-last"])]
    settle("the notebook's policy beside eager", lambda: compared(MINE, mine))
    mine_batches = roomy.batches(roomy.family(runs["as-full-as-last"]))
    assert {b["policy"] for b in mine_batches} == {"as-full-as-last"}

    # memory pressure: the page map caught while a writer was suspended
    pool = answers["pressure_pages"]
    assert pool["swapped_total"] > 0

    def pages_match() -> None:
        fig = drawn(PAGES)
        (heat,) = fig["traces"]
        cells = [c for row in heat["z"] for c in row if c is not None]
        cached = set(pool.get("cached", ()))  # kept for prefix sharing: drawn cached (9)
        held = [9 if p in cached else min(n, 6) for p, n in enumerate(pool["refcount"])]
        want = held + [7] * pool["swapped_total"]
        assert cells == want, (cells, want)

    settle("the page map under pressure", pages_match)
    view(page, PAGES).screenshot(path=str(artifacts / "gallery-10-page-map.png"))

    # and the timelines with room and without: suspensions and swaps in the squeezed one only
    def pressure_matches() -> None:
        room, squeezed = compared(PRESSURE, [(roomy, answers["roomy"]), (tight, answers["tight"])])
        pids = tight.family(answers["tight"])
        assert tight.suspensions(pids) > 0 and len(squeezed[SUSPENDED]["x"]) == tight.suspensions(
            pids
        )
        assert sorted(squeezed[SWAPS]["text"]) == sorted(tight.swaps(pids)) and tight.swaps(pids)
        assert room[SUSPENDED]["x"] == [] and room[SWAPS]["x"] == []

    settle("the timelines with and without room", pressure_matches)
    view(page, PRESSURE).screenshot(path=str(artifacts / "gallery-10-pressure.png"))
