"""The gallery as committed: lessons numbered in course order, without outputs, each ending with
a "Try it" exercise, and each listed in the README and executed by a test."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LESSONS = sorted((ROOT / "gallery").glob("*.ipynb"))


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def test_the_lessons_are_numbered_one_after_another() -> None:
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == list(range(1, len(LESSONS) + 1)), [p.name for p in LESSONS]


def test_every_lesson_is_committed_without_outputs() -> None:
    for path in LESSONS:
        for c in cells(path):
            if c["cell_type"] == "code":
                assert not c["outputs"] and c["execution_count"] is None, path.name


def test_every_lesson_ends_with_a_try_it_exercise() -> None:
    for path in LESSONS:
        heads = [
            i
            for i, c in enumerate(cells(path))
            if c["cell_type"] == "markdown"
            and re.search(r"^#+ Try it", "".join(c["source"]), re.M | re.I)
        ]
        assert heads and heads[-1] >= len(cells(path)) - 2, path.name


def test_every_lesson_is_in_the_readme_and_run_by_a_notebook_test() -> None:
    readme = (ROOT / "README.md").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests" / "notebooks").glob("test_*.py"))
    for path in LESSONS:
        assert f"`{path.name}`" in readme, path.name
        assert re.search(rf"\b{re.escape(path.name)}\b", tests), path.name
