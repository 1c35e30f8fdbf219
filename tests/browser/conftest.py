"""A real JupyterLab on localhost (with the workbench's server extension and its engine), and
Debian's Chromium driven by Python Playwright.

One server for the whole directory (`lab`): a free port, a temporary root, runtime and config
directory, a token, and `--LabApp.expose_app_in_browser=True` so a test can wait for the
session's kernel through `window.jupyterapp`. `notebook7` is the same for Jupyter Notebook 7
(`python -m notebook`, a server and engine of its own, for the module that asks for it).
Screenshots go to `artifacts/browser/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_harness import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_FLAGS,
    START_TIMEOUT,
    TOKEN,
    USER,
    Lab,
    free_port,
)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab serving a temporary root; its engine started by the server extension."""
    yield from _serve(tmp_path_factory, "lab")


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Jupyter Notebook 7 (`python -m notebook`), as `lab` is JupyterLab: an engine of its own."""
    pytest.importorskip("notebook", minversion="7", reason="needs notebook 7: pip install notebook")
    yield from _serve(tmp_path_factory, "notebook")


def _serve(tmp_path_factory: pytest.TempPathFactory, app: str) -> Iterator[Lab]:
    """A Jupyter server (`app` "lab": JupyterLab, "notebook": Notebook 7) until the generator
    ends; then it is stopped, and so is the engine its server extension started."""
    base = tmp_path_factory.mktemp(app)
    root, runtime, config = base / "root", base / "runtime", base / "config"
    for d in (root, runtime, config):
        d.mkdir()
    settings = config / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    no_news = {"fetchNews": "false", "checkForUpdates": False}  # no toast over the page
    (settings / "notification.jupyterlab-settings").write_text(json.dumps(no_news))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "SYMPHONY_"))}
    env.update(
        JUPYTER_RUNTIME_DIR=str(runtime),
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTER_DATA_DIR=str(base / "data"),
        SYMPHONY_USER=USER,
        SYMPHONY_IDLE_EXIT="30",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    starter = {"lab": "jupyterlab", "notebook": "notebook"}[app]
    cmd = [sys.executable, "-m", starter, "--no-browser", "--allow-root"]
    cmd += [f"--port={port}", "--ip=127.0.0.1", f"--ServerApp.root_dir={root}"]
    cmd += [f"--IdentityProvider.token={TOKEN}", "--LabApp.expose_app_in_browser=True"]
    cmd += ["--JupyterNotebookApp.expose_app_in_browser=True"] if app == "notebook" else []
    cmd += ["--ServerApp.port_retries=0", "--LabApp.news_url=None"]
    cmd += ["--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    cmd += ["--SymphonyWorkbench.num_pages=256", "--SymphonyWorkbench.threads=1"]
    # The demo model: fast, and the views' expectations (token counts, page maps) are its.
    cmd += ["--SymphonyWorkbench.model=tiny"]
    log = base / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    lab = Lab(f"http://127.0.0.1:{port}", TOKEN, root, runtime, proc, log, app)

    def running() -> bool:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(OSError):
            code, doc = lab.api("status")
            assert doc is None or doc.get("state") != "error", doc
            return code == 200 and doc["state"] == "running"
        return False

    engine_pid = None
    suffix = "" if app == "lab" else f"-{app}"
    try:
        lab.wait_for("the server and its engine starting", running, START_TIMEOUT)
        engine_pid = lab.status()["engine_pid"]
        yield lab
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.copy(log, _artifacts() / f"server{suffix}.log")
        engine_log = runtime / "symphony-engine.log"
        if engine_log.exists():
            shutil.copy(engine_log, _artifacts() / f"engine{suffix}.log")
    # the engine the server started stops with it, and takes its connection file along
    assert not (runtime / "symphony-engine.json").exists()
    assert engine_pid is not None and not _alive(engine_pid), f"engine {engine_pid} outlived"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False  # a zombie reaped just now
    return True


def _artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def artifacts() -> Path:
    return _artifacts()


def _chromium() -> str:
    """Debian's chromium; installed with apt when missing and allowed, else the tests skip."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for args in (["update", "-qq"], ["install", "-y", "-qq", "chromium"]):
            subprocess.run([apt, *args], env=env, capture_output=True, timeout=900, check=False)
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"browser tests need Debian's chromium at {CHROMIUM}: "
            "`apt-get install chromium` could not install it here"
        )
    return CHROMIUM


@pytest.fixture(scope="module")  # playwright's loop must end before other modules run asyncio
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="browser tests need playwright (pip install playwright)"
    )
    executable = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=False, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, artifacts: Path) -> Iterator[Any]:
    """A fresh page; its last screenshot is kept under artifacts/browser/ (also on failure)."""
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.screenshot(path=str(artifacts / f"{request.node.name}-final.png"))
        context.close()
        if errors:
            (artifacts / f"{request.node.name}-page-errors.txt").write_text("\n".join(errors))
