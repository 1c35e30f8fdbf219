"""Gallery notebooks, executed the way a reader runs them: nbclient, a real kernel, and an engine
the notebook starts for itself (no engine is running in the test's Jupyter runtime directory)."""

from __future__ import annotations

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
