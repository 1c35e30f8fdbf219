"""The `run_notebook` fixture: execute a gallery notebook with nbclient (see runner.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from runner import GALLERY, IDLE_EXIT, Executed, silent_cells, wait_gone


@pytest.fixture
def run_notebook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], Executed]]:
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("SYMPHONY_IDLE_EXIT", str(IDLE_EXIT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("SYMPHONY_CONNECTION_FILE", raising=False)
    started: list[int] = []

    def run(name: str) -> Executed:
        nb = nbformat.read(GALLERY / name, as_version=4)
        NotebookClient(nb, timeout=300, kernel_name="python3").execute(
            cwd=str(GALLERY)
        )  # raises CellExecutionError, naming the cell, when one fails
        assert not silent_cells(nb), f"{name}: cells that showed nothing: {silent_cells(nb)}"
        executed = Executed(nb, runtime)
        if executed.started_engine:  # (a lab notebook may run engines of its own instead)
            started.append(executed.engine_pid())
        return executed

    yield run
    for pid in started:  # nobody else uses these engines: make sure they are gone
        wait_gone(pid, IDLE_EXIT + 30)
