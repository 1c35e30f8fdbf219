"""JupyterLab in Chromium: notebooks run their `%%lip` cells against the server's engine, and the
sidebar lists a running LIP, kills it, and shows its pages come back.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from lab_harness import (
    ROOT,
    Lab,
    cell_outputs,
    make_notebook,
    open_notebook,
    run_command,
    wait_idle,
)
from lab_harness import output_errors as _errors
from lab_harness import output_text as _text

GALLERY_FIRST = ROOT / "gallery" / "01-first-lip.ipynb"
SIDEBAR_TAB = '.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="symphony-workbench-sidebar"]'
NOTES = """%%lip --name notes
f = await kv.create("/shared/notes", mode=0o644)
await forward(f, tokenize("Notes that outlive the cell that wrote them."))
"""
LOOP = """%%lip --name looper
f = await kv.create()
await forward(f, tokenize("Python is a programming language that lets you work quickly. " * 6))
print("holding", (await kv.stat(f)).num_pages, "pages", flush=True)
for i in range(3000):
    await sleep(0.1)
"""


def open_sidebar(page: Any) -> Any:
    """The workbench's sidebar, opened (its tab toggles it: a click on an open one closes it)."""
    panel = page.locator("#symphony-workbench-sidebar")
    if not panel.is_visible():
        page.locator(SIDEBAR_TAB).click()
    panel.wait_for(state="visible")
    return panel


def test_a_notebook_runs_its_lip_cells_in_jupyterlab(page: Any, lab: Lab, artifacts: Path) -> None:
    make_notebook(
        lab.root / "hello.ipynb",
        [
            "%load_ext workbench",
            "%%lip --name hello\nf = await kv.create()\n"
            "d = await forward(f, tokenize('The return value of'))\n"
            "print('next:', repr(detokenize([d.argmax()])), 'tokens:', (await kv.stat(f)).tokens)",
            "print(6 * 7)",
        ],
    )
    open_notebook(page, lab, "hello.ipynb")
    run_command(page, "notebook:run-all-cells")
    wait_idle(page)
    cells = cell_outputs(page)
    page.screenshot(path=str(artifacts / "notebook-hello.png"))
    assert not _errors(cells)
    assert all(c["count"] for c in cells), cells
    assert "next:" in _text(cells[1]["outputs"]) and "tokens: 4" in _text(cells[1]["outputs"])
    assert "exited" in _text(cells[1]["outputs"])  # the LIP's status line: it ended cleanly
    assert _text(cells[2]["outputs"]).strip() == "42"
    # the status bar shows the engine the kernel just used
    item = page.locator(".jp-Symphony-statusItem")
    assert item.inner_text().startswith("Symphony: running")


@pytest.mark.skipif(not GALLERY_FIRST.exists(), reason="gallery/01-first-lip.ipynb not there yet")
def test_the_first_gallery_notebook_runs_all_cells(page: Any, lab: Lab, artifacts: Path) -> None:
    shutil.copytree(ROOT / "gallery", lab.root / "gallery", dirs_exist_ok=True)
    open_notebook(page, lab, "gallery/01-first-lip.ipynb")
    run_command(page, "notebook:run-all-cells")
    wait_idle(page, timeout=150)
    cells = cell_outputs(page)
    page.screenshot(path=str(artifacts / "gallery-01-first-lip.png"), full_page=True)
    assert not _errors(cells), _errors(cells)
    assert all(c["count"] for c in cells), [c["source"][:40] for c in cells if not c["count"]]
    lips = [c for c in cells if c["source"].startswith("%%lip")]
    assert lips and all(c["outputs"] for c in lips)  # every LIP cell printed something
    assert all("exited" in _text(c["outputs"]) for c in lips)


def test_the_sidebar_lists_a_running_lip_and_its_kill_button_ends_it(
    page: Any, lab: Lab, artifacts: Path
) -> None:
    make_notebook(lab.root / "kill-me.ipynb", ["%load_ext workbench", NOTES, LOOP])
    open_notebook(page, lab, "kill-me.ipynb")
    baseline = lab.status()["pages_used"]
    run_command(page, "notebook:run-all-cells")

    def looper() -> dict[str, Any] | None:
        doc = lab.get("processes")
        live = [p for p in doc["processes"] if p["name"] == "looper" and p["state"] != "exited"]
        return live[0] if live else None

    proc = lab.wait_for("the looper LIP starting", looper, 60)
    notes = lab.get("kvfs?path=/shared/notes")
    baseline += notes["stat"]["num_pages"]  # kept after the kill: /shared outlives its process
    lab.wait_for("its pages", lambda: lab.status()["pages_used"] > baseline, 30)
    held = lab.status()["pages_used"]

    panel = open_sidebar(page)
    row = panel.locator(f'tr.jp-Symphony-process[data-pid="{proc["pid"]}"]')
    row.wait_for(state="visible", timeout=15_000)
    assert row.get_attribute("data-state") != "exited"
    assert row.locator('[data-col="name"]').inner_text() == "looper"
    assert row.locator('[data-col="notebook"]').inner_text() == "kill-me.ipynb"
    pages_fact = panel.locator('dd[data-fact="pages"]')
    page.wait_for_function(
        "([el, n]) => el.textContent.startsWith(n + ' /')",
        arg=[pages_fact.element_handle(), held],
        timeout=15_000,
    )
    assert panel.locator('dd[data-fact="model"]').inner_text() == "tiny"
    # the KV browser: the shared file, with its stat
    kv = panel.locator(".jp-Symphony-kvfs")
    kv.locator('li[data-path="/shared"] > .jp-Symphony-dirLabel').click()
    notes_item = kv.locator('li[data-path="/shared/notes"]')
    assert f"{notes['stat']['tokens']} tok" in notes_item.inner_text()
    notes_item.click()
    panel.locator(".jp-Symphony-fileInfo dd", has_text="/shared/notes").wait_for()
    page.screenshot(path=str(artifacts / "sidebar-running.png"))

    row.locator("button.jp-Symphony-kill").click()
    page.locator(f'tr.jp-Symphony-process[data-pid="{proc["pid"]}"][data-state="exited"]').wait_for(
        timeout=15_000
    )
    lab.wait_for("the pages coming back", lambda: lab.status()["pages_used"] == baseline, 15)
    page.wait_for_function(
        "([el, n]) => el.textContent.startsWith(n + ' /')",
        arg=[pages_fact.element_handle(), baseline],
        timeout=15_000,
    )
    page.screenshot(path=str(artifacts / "sidebar-killed.png"))

    wait_idle(page)  # the cell ends: its next call found its process gone
    cells = cell_outputs(page)
    errors = _errors(cells)
    assert [e[1] for e in errors] == ["ProcessExited"], errors
    assert "holding" in _text(cells[2]["outputs"])
    doc = lab.get("processes")
    ended = next(p for p in doc["processes"] if p["pid"] == proc["pid"])
    assert ended["state"] == "exited" and ended["error"] == "killed"


PROMPT = "A system prompt that two of one user's processes send, word for word. " * 4
SENDER = """%%lip --name {name}
f = await kv.create()
await forward(f, tokenize({prompt!r}))
print("{name}", (await kv.explain(f)).tokens_cached, "tokens from the cache", flush=True)
"""


def test_the_sidebar_shows_the_prefix_caches_hit_rate_and_each_processs(
    page: Any, lab: Lab, artifacts: Path
) -> None:
    """Two processes of one user send one prompt: the second takes its full pages from the
    cache, and the sidebar says so (the engine's hit rate, and that process's share)."""
    cells = [SENDER.format(name=n, prompt=PROMPT) for n in ("first-sender", "second-sender")]
    make_notebook(lab.root / "prefix.ipynb", ["%load_ext workbench", *cells])
    open_notebook(page, lab, "prefix.ipynb")
    run_command(page, "notebook:run-all-cells")
    wait_idle(page)
    outputs = cell_outputs(page)
    assert not _errors(outputs)
    procs = lab.get("processes")["processes"]
    second = max((p for p in procs if p["name"] == "second-sender"), key=lambda p: p["pid"])
    # tokens_in counts what it computed: at least its last, partly filled page
    assert second["tokens_cached"] > 0 and second["tokens_in"] > 0
    assert lab.status()["prefix_hits"] > 0
    # the second cell's status line counts them too
    line = f"{second['tokens_in']} tokens in ({second['tokens_cached']} more from the cache)"
    assert line in _text(outputs[2]["outputs"])

    panel = open_sidebar(page)
    fact = panel.locator('dd[data-fact="prefix"]')

    def engines_rate() -> str:  # as the engine reports it now (the sidebar polls each second)
        st = lab.status()
        hits, looked = st["prefix_hits"], st["prefix_hits"] + st["prefix_misses"]
        rate = f"{round(100 * hits / looked)}% ({hits} of {looked} pages)"
        return f"{rate}, {st['pages_cached']} pages cached"

    lab.wait_for("the sidebar's hit rate", lambda: fact.inner_text() == engines_rate(), 30)
    row = panel.locator(f'tr.jp-Symphony-process[data-pid="{second["pid"]}"]')
    share = round(100 * second["tokens_cached"] / (second["tokens_in"] + second["tokens_cached"]))
    assert row.locator('[data-col="cached"]').inner_text() == f"{share}% cached"
    page.screenshot(path=str(artifacts / "sidebar-prefix-cache.png"))
