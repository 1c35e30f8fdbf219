"""What the browser tests share: the running JupyterLab or Notebook 7 (`Lab`), notebooks, and the
page helpers that wait for the app's own state (`window.jupyterapp`) rather than for what the
toolbar says. Notebook 7 is built from JupyterLab's pieces: the same helpers serve both.
"""

from __future__ import annotations

import contextlib
import html
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from engine.cli_client import SyncClient
from workbench.widgets.style import piece

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
USER = "tester"  # the server's (and so its kernels') $SYMPHONY_USER
TOKEN = "symphony-browser-test-token"
START_TIMEOUT = 120.0
T = TypeVar("T")


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    runtime: Path
    proc: subprocess.Popen
    log: Path
    app: str = "lab"  # the front end it serves by default: "lab" (JupyterLab), "notebook" (7)

    def api(
        self, endpoint: str, body: Any = None, token: str | None = "", method: str | None = None
    ) -> tuple[int, Any]:
        """(status, JSON) of a request to /symphony/<endpoint>; token None sends none."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"token {token or self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/symphony/{endpoint}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            with contextlib.suppress(ValueError):
                return e.code, json.loads(raw or b"null")
            return e.code, raw.decode(errors="replace")

    def get(self, endpoint: str) -> Any:
        """The JSON of a GET that must succeed; a failure shows what the server said."""
        code, doc = self.api(endpoint)
        assert code == 200, (endpoint, code, doc)
        return doc

    def status(self) -> dict[str, Any]:
        return self.get("status")

    def wait_for(self, what: str, check: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not happen in {timeout:g}s")
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_notebook(path: Path, cells: list[str]) -> Path:
    """A notebook of code cells (no outputs), as nbformat 4 JSON."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell-{i}",
                "metadata": {},
                "outputs": [],
                "source": src,
            }
            for i, src in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))
    return path


# ---- JupyterLab in the page ---------------------------------------------------------------------

KERNEL_READY = """() => {
    const app = window.jupyterapp;
    if (!app || !app.started) return false;
    const panel = app.shell.currentWidget;
    if (!panel || !panel.sessionContext || !panel.context || !panel.content) return false;
    if (!panel.context.isReady || panel.content.widgets.length === 0) return false;
    const ctx = panel.sessionContext;
    if (!ctx.isReady || ctx.hasNoKernel || ctx.isTerminating || ctx.isRestarting) return false;
    const kernel = ctx.session && ctx.session.kernel;
    return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

NOTEBOOK_OUTPUTS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cells = panel.content.model.cells;
    const out = [];
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        out.push({source: cell.sharedModel.getSource(), count: cell.executionCount,
                  outputs: cell.outputs.toJSON()});
    }
    return out;
}"""

BUSY = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const pending = panel.node.querySelectorAll('.jp-InputPrompt');
    const running = [...pending].some(p => p.textContent.includes('*'));
    return running || !kernel || kernel.status !== 'idle';
}"""


def open_notebook(page: Any, lab: Lab, relpath: str) -> None:
    """Open a notebook in the server's front end and wait until its kernel is connected and idle.

    JupyterLab: each page gets a workspace of its own, so that no tab of an earlier test is
    restored. Notebook 7: the notebook's own page (`/notebooks/...`), a JupyterLab-built app
    whose `shell.currentWidget` is the notebook panel, so the same checks apply.
    """
    if lab.app == "notebook":
        page.goto(f"{lab.url}/notebooks/{relpath}?token={lab.token}")
    else:
        workspace = f"w{uuid.uuid4().hex[:12]}"
        page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{relpath}?token={lab.token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.started", timeout=60_000)
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget && "
        "window.jupyterapp.shell.currentWidget.sessionContext",
        timeout=60_000,
    )
    deadline = time.monotonic() + 90
    ready = 0
    while ready < 3:  # connected and idle, and still so a moment later
        assert time.monotonic() < deadline, "the notebook's kernel did not become ready"
        ready = ready + 1 if page.evaluate(KERNEL_READY) else 0
        time.sleep(0.25)


def run_command(page: Any, command: str, args: dict[str, Any] | None = None) -> None:
    page.evaluate(
        "([id, args]) => { window.jupyterapp.commands.execute(id, args); }", [command, args or {}]
    )


def wait_idle(page: Any, timeout: float = 120) -> None:
    """Until no cell is queued or running and the kernel is idle (seen twice in a row)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2:
        assert time.monotonic() < deadline, "the notebook did not finish running"
        quiet = 0 if page.evaluate(BUSY) else quiet + 1
        time.sleep(0.3)


def cell_outputs(page: Any) -> list[dict[str, Any]]:
    return page.evaluate(NOTEBOOK_OUTPUTS)


def output_text(outputs: list[dict[str, Any]]) -> str:
    """What a cell's outputs say as text: its streams and plain-text results."""
    parts = []
    for o in outputs:
        if o["output_type"] == "stream":
            parts.append(o["text"] if isinstance(o["text"], str) else "".join(o["text"]))
        elif "data" in o and "text/plain" in o["data"]:
            plain = o["data"]["text/plain"]
            parts.append(plain if isinstance(plain, str) else "".join(plain))
    return "".join(parts)


def output_errors(cells: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """(the cell's start, ename, evalue) of each error output."""
    return [
        (c["source"][:60], o.get("ename"), o.get("evalue"))
        for c in cells
        for o in c["outputs"]
        if o["output_type"] == "error"
    ]


# ---- what the widgets drew ----------------------------------------------------------------------

# plotly's figure as the page holds it: its traces' data (typed arrays as lists) and y categories
FIGURE = """gd => {
    const list = v => Array.from(v, x => (x !== null && typeof x === 'object') ? Array.from(x) : x);
    const keys = ['type', 'name', 'mode', 'level', 'x', 'y', 'z', 'text', 'customdata', 'ids',
                  'labels', 'parents', 'values'];
    const traces = (gd.data || []).map(t => {
        const out = {};
        for (const k of keys) {
            const v = t[k];
            if (v === undefined || v === null) continue;
            out[k] = (typeof v === 'object') ? list(v) : v;
        }
        return out;
    });
    const y = gd._fullLayout && gd._fullLayout.yaxis;
    const categories = y && y._categories ? [...y._categories] : [];
    const width = gd._fullLayout ? gd._fullLayout.width : 0;
    return {traces, drawn: !!gd._fullLayout, categories, width, room: gd.clientWidth};
}"""

# the path data of each SVG path a selector finds under an element
D_OF = "(el, sel) => [...el.querySelectorAll(sel)].map(e => e.getAttribute('d') || '')"
# the text of each SVG element a selector finds under an element
TEXTS = "(el, sel) => [...el.querySelectorAll(sel)].map(e => e.textContent)"


def settle(what: str, check: Callable[[], T], timeout: float = 20.0) -> T:
    """check() once its assertions hold; the last AssertionError when they never do."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {e}") from e
            time.sleep(0.5)


# ---- the engine the server started --------------------------------------------------------------


class Engine:
    """The engine the server started, asked as the server's user (the notebook's too).

    A `SyncClient` sends no heartbeats, so the engine forgets it after a moment of silence:
    each question gets a connection of its own.
    """

    def __init__(self, lab: Lab) -> None:
        self.connection_file = lab.runtime / "symphony-engine.json"
        with self._client() as client:
            self.info = client.engine  # hello's reply: page size, tokenizer, ...

    def _client(self) -> SyncClient:
        return SyncClient.connect(self.connection_file, user=USER, name="widget-test")

    def __call__(self, op: str, **args: Any) -> Any:
        with self._client() as client:
            return client.call(op, args)


def tokenizer_of(engine: Engine) -> Any:
    """The engine's tokenizer, rebuilt here from hello's reply."""
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_str(engine.info["tokenizer"])


def shown(text: str) -> str:
    """Text as the views show it (whitespace made visible; &nbsp; read back as a space)."""
    return html.unescape(piece(text)).replace("\xa0", " ")


def run_lesson(page: Any, lab: Lab, notebook: str, timeout: float = 150) -> list[dict[str, Any]]:
    """Open a gallery notebook (copied into the server's root) and run all its cells; their
    outputs, once every cell ran, none with an error and none writing to stderr."""
    shutil.copytree(ROOT / "gallery", lab.root / "gallery", dirs_exist_ok=True)
    open_notebook(page, lab, notebook)
    run_command(page, "notebook:run-all-cells")
    wait_idle(page, timeout=timeout)
    cells = cell_outputs(page)
    assert not output_errors(cells), output_errors(cells)
    assert all(c["count"] for c in cells), [c["source"][:40] for c in cells if not c["count"]]
    stderr = [c["source"][:40] for c in cells for o in c["outputs"] if o.get("name") == "stderr"]
    assert not stderr, stderr  # the engine prints nothing nobody asked for
    return cells


def cell_text(cells: list[dict[str, Any]], start: str) -> str:
    """What the cell whose source starts with `start` printed."""
    return output_text(next(c for c in cells if c["source"].startswith(start))["outputs"])


# the token view's table: each step's row, its style attribute, its cells' text and HTML
TOKEN_ROWS = """el => [...el.querySelectorAll('table tr')].slice(1).map(r => ({
    style: r.getAttribute('style') || '',
    text: [...r.cells].map(c => c.textContent),
    html: [...r.cells].map(c => c.innerHTML)}))"""
