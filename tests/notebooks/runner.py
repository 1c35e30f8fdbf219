"""Gallery notebooks, executed the way a reader runs them: nbclient, a real kernel, and an engine
the notebook starts for itself (no engine is running in the test's Jupyter runtime directory)."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

GALLERY = Path(__file__).resolve().parents[2] / "gallery"
IDLE_EXIT = 3  # seconds: the started engine stops this long after the notebook's kernel ends


class Executed:
    """An executed notebook: its cells' outputs by tag."""

    def __init__(self, nb: Any, runtime: Path) -> None:
        self.nb, self.runtime = nb, runtime

    def cell(self, tag: str) -> Any:
        return next(c for c in self.nb.cells if tag in c.metadata.get("tags", []))

    def text(self, tag: str) -> str:
        """Everything a tagged cell printed and displayed, as plain text."""
        parts = []
        for out in self.cell(tag).get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                parts.append(out.data.get("text/plain", "") + "\n")
            elif out.output_type == "error":
                parts.append(f"{out.ename}: {out.evalue}\n")
        return "".join(parts)

    @property
    def started_engine(self) -> bool:
        """Whether the notebook started the shared engine (its connection file is there)."""
        return (self.runtime / "symphony-engine.json").is_file()

    def engine_pid(self) -> int:
        return json.loads((self.runtime / "symphony-engine.json").read_text())["pid"]


def shows_something(source: str) -> bool:
    """Whether a code cell is written to show something: it prints, runs a `%lip` line magic
    (`%lip ps`), or (outside a `%%lip` cell) its last statement is a name or a call whose value
    Jupyter displays (a view, say). An awaited last call (`await view.refresh()`) is not
    counted."""
    lines = source.splitlines()
    lip = bool(lines) and lines[0].startswith("%%lip")
    if any(line.startswith("%lip ") for line in lines):
        return True
    code = "\n".join(line for line in lines if not line.lstrip().startswith("%"))
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(code, "<cell>", "exec", flags=flags, dont_inherit=True)
    prints = any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        for n in ast.walk(tree)
    )
    last = tree.body[-1] if tree.body else None
    shown = isinstance(last, ast.Expr) and isinstance(last.value, ast.Name | ast.Call)
    return prints or (shown and not lip)


def silent_cells(nb: Any) -> list[str]:
    """The code cells written to show something that showed nothing (their tags, or their
    first line): a lesson that silently shows nothing fails its test."""
    return [
        ",".join(c.metadata.get("tags", [])) or c.source.splitlines()[0]
        for c in nb.cells
        if c.cell_type == "code" and shows_something(c.source) and not c.get("outputs")
    ]


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process pid ended by itself within timeout seconds (else it is killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    return False
