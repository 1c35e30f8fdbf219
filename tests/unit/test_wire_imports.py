"""The notebook side loads the wire layer of the engine and nothing else of it: no torch.

Each check runs in a fresh interpreter, so what this test process imported does not count.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WIRE = {
    "engine",
    "engine.wire",
    "engine.wire.arguments",
    "engine.wire.calls",
    "engine.wire.connection",
    "engine.wire.engine_config",
    "engine.wire.errors",
    "engine.wire.events",
    "engine.wire.protocol",
    "engine.wire.records",
    "engine.wire.stops",
    "engine.wire.tables",
}
LOADED = """
import importlib, json, pkgutil, sys
import {package}
for m in pkgutil.walk_packages({package}.__path__, "{package}."):
    importlib.import_module(m.name)
names = sorted(m for m in sys.modules if m == "engine" or m.startswith("engine."))
print(json.dumps({{"engine": names, "torch": "torch" in sys.modules}}))
"""


def loaded_by(package: str) -> dict[str, object]:
    """The engine modules (and whether torch) that importing every module of package loads."""
    code = LOADED.format(package=package)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
    return json.loads(out.stdout.decode().splitlines()[-1])


def test_every_workbench_module_loads_exactly_the_wire_layer_of_the_engine() -> None:
    assert loaded_by("workbench") == {"engine": sorted(WIRE), "torch": False}


def test_the_wire_layer_imports_nothing_else_of_the_engine() -> None:
    assert loaded_by("engine.wire") == {"engine": sorted(WIRE), "torch": False}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_engines_client_programs_import_workbench() -> None:
    """The engine starts its client programs (engine.programs) by module name; nothing else of
    the engine imports the notebook side."""
    importers = {
        str(path.relative_to(REPO))
        for path in (REPO / "engine").rglob("*.py")
        if any(n == "workbench" or n.startswith("workbench.") for n in _imports(path))
    }
    assert importers == {
        "engine/programs/worker.py",
        "engine/programs/rpc_probe.py",
        "engine/programs/library_bench.py",
    }
