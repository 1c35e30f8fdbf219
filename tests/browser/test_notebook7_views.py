"""The views that later lessons added, in Jupyter Notebook 7: the token view's speculative
drafts and grammar masks, the prefix-sharing table and two timelines side by side.

test_notebook7.py runs lesson 02's views there; the lessons that show these (04, 06, 10, 11)
are checked against the engine in JupyterLab (test_speculative_lesson.py,
test_structured_lesson.py, test_scheduler_lab.py, tests/notebooks). Here a short notebook of
this test's own shows each once in Notebook 7, and what was drawn is checked against what the
cells computed: the accepted drafts the library counted, the steps the grammar masked, the
files compared, the two processes' lanes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fork_and_share import figure, view
from lab_harness import (
    TOKEN_ROWS,
    Lab,
    cell_outputs,
    cell_text,
    make_notebook,
    open_notebook,
    output_errors,
    run_command,
    settle,
    wait_idle,
)
from test_notebook7 import NOTEBOOK7_OWN_ERRORS

from workbench.widgets.style import ACCEPTED_COLOUR
from workbench.widgets.timeline import BATCHES, TRACES

NOTEBOOK = "nb7-views.ipynb"
SETUP = "import workbench"
DRAFTS = "%%lip --name drafts"
MASKS = "%%lip --name masks"
PREFIX = "prefix = PrefixView("
COMPARE = "comparison = TimelineComparison("
GRAMMAR = 5  # the token view's grammar column (step, chosen, p, rank, top tokens, grammar)

CELLS = [
    "%load_ext workbench",
    f"""{SETUP}
from engine.wire.records import Grammar, Logits, TopK
from workbench.lib import speculative_decode
from workbench.widgets import PrefixView, TimelineComparison, TimelineView, TokenView
from workbench.widgets.trace_data import family, window

client = await workbench.connect()
home = f"/home/{{client.user}}"
pids = {{}}""",
    f"""{DRAFTS}
pids["drafts"] = (await whoami()).pid
drafts = TokenView(detokenize)
display(drafts)
text = "red green blue, red green blue, red green blue, red green"
spec = await speculative_decode(lip, await kv.create(), text, 16, on_step=drafts.add_verification)
print(f"accepted {{spec.accepted}} of {{spec.drafted}}")""",
    f"""{MASKS}
pids["masks"] = (await whoami()).pid
masks = TokenView(detokenize)
display(masks)
ids = tokenize("The year the first moon landing happened:")
f = await kv.create()
await forward(f, ids[:-1], outputs=[])
g = await kv.fork(f)  # the same text without the grammar: what the model wanted
await kv.constrain(f, Grammar.regex(r"[0-9]{{4}}"), start=len(ids))
t = ids[-1]
for _ in range(3):
    masked = await forward(f, [t], returns=Logits())
    before = await forward(g, [t], returns=TopK(5))
    t = max(range(len(masked)), key=masked.__getitem__)
    masks.add_masked(masked, before, t)
print(f"steps {{len(masks.steps)}} vocabulary {{len(masked)}}")""",
    """%%lip --name prefix-files
for name in ("a", "b"):
    f = await kv.create(f"{home}/nb7-{name}")
    await forward(f, tokenize("Shared words before the split. " * 8))""",
    f"""{PREFIX}[f"{{home}}/nb7-a", f"{{home}}/nb7-b"], client)
await prefix.refresh()
display(prefix)
print("b:", prefix.data.rows[1].reason)""",
    f"""timeline = TimelineView(client, live=False)
await timeline.refresh()
data = timeline.builder.data()
{COMPARE}{{k: window(data, family(data, pid)) for k, pid in pids.items()}})
comparison""",
]


def test_the_later_lessons_views_render_in_notebook_7(
    page: Any, notebook7: Lab, artifacts: Path
) -> None:
    make_notebook(notebook7.root / NOTEBOOK, CELLS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    open_notebook(page, notebook7, NOTEBOOK)
    assert page.evaluate("() => window.jupyterapp.name") == "Jupyter Notebook"
    run_command(page, "notebook:run-all-cells")
    wait_idle(page, timeout=150)
    cells = cell_outputs(page)
    assert not output_errors(cells), output_errors(cells)
    assert all(c["count"] for c in cells), [c["source"][:40] for c in cells if not c["count"]]

    # speculative drafts: a green row per draft token the library counted as accepted
    said = re.search(r"accepted (\d+) of (\d+)", cell_text(cells, DRAFTS))
    assert said, cell_text(cells, DRAFTS)
    accepted = int(said.group(1))
    assert accepted > 0  # the text repeats: prompt lookup drafts what follows, and it holds
    drafts = view(page, DRAFTS)

    def drafts_drawn() -> None:
        rows = drafts.evaluate(TOKEN_ROWS)
        assert len(rows) == 16
        green = [r for r in rows if f"background:{ACCEPTED_COLOUR}" in r["style"]]
        assert len(green) == accepted, [r["style"] for r in rows]

    settle("the token view's drafts", drafts_drawn)
    drafts.screenshot(path=str(artifacts / "nb7-drafts.png"))

    # grammar masks: a row per step, each saying how many tokens the grammar masked out
    said = re.search(r"steps (\d+) vocabulary (\d+)", cell_text(cells, MASKS))
    assert said, cell_text(cells, MASKS)
    steps, vocab = int(said.group(1)), int(said.group(2))
    masks = view(page, MASKS)

    def masks_drawn() -> None:
        rows = masks.evaluate(TOKEN_ROWS)
        assert len(rows) == steps == 3
        for r in rows:
            m = re.fullmatch(r"masked ([\d,]+) of ([\d,]+); wanted .*", r["text"][GRAMMAR].strip())
            assert m, r["text"]
            refused, of = (int(x.replace(",", "")) for x in m.groups())
            assert of == vocab and 0 < refused < vocab, r["text"]
            assert r["text"][1].strip().isdigit(), r["text"]  # the grammar allows only digits

    settle("the token view's masks", masks_drawn)
    masks.screenshot(path=str(artifacts / "nb7-masks.png"))

    # the prefix view: a row per file, the second one's reason as the cell printed it
    reason = cell_text(cells, PREFIX).split("b: ", 1)[1].strip()
    prefix = view(page, PREFIX)

    def prefix_drawn() -> None:
        table = prefix.locator("table").inner_text()
        assert "nb7-a" in table and "nb7-b" in table, table
        assert reason in table.replace("\xa0", " "), (reason, table)

    settle("the prefix view", prefix_drawn)

    # two timelines side by side: a column per process, each with its batches
    comparison = view(page, COMPARE)

    def comparison_drawn() -> None:
        fig = figure(comparison)
        assert len(fig["traces"]) == 2 * TRACES, len(fig["traces"])
        for col in range(2):
            assert fig["traces"][col * TRACES + BATCHES]["x"], col
        table = comparison.locator("table").inner_text()
        assert "drafts" in table and "masks" in table, table

    settle("the timelines compared", comparison_drawn)
    comparison.screenshot(path=str(artifacts / "nb7-comparison.png"))
    assert [e for e in errors if e not in NOTEBOOK7_OWN_ERRORS] == []
