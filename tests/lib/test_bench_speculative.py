"""`symphony bench speculative`: its rows, measured by its program on the demo model."""

from __future__ import annotations

import pytest

from engine.bench import speculative
from engine.bench.common import Row
from engine.programs.library_bench import LIPS, NEW


def test_the_speculative_bench_reports_tokens_per_second_and_forwards_saved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # (a loaded machine: one thread each is faster)
    reported: list[Row] = []
    rows = speculative.run("speculative", ["tiny"], 1, None, "auto", reported.append)
    assert rows == reported
    assert [r.unit for r in rows] == ["tok/s", "forwards", "tok/s", "forwards", "forwards"]
    speed, forwards, draft_speed, draft_forwards, all_forwards = rows
    assert speed.case == f"repetitive {LIPS}x{NEW}" and speed.engine > 0 and speed.baseline > 0
    assert forwards.baseline == NEW  # greedy: one forward per token
    assert 1 <= forwards.engine < NEW  # the repetitive listing's drafts were accepted
    assert forwards.ratio == round(forwards.engine / forwards.baseline, 3)
    assert speed.dtypes == forwards.dtypes == "float32/same"
    # the draft LIP: the verifier's forwards drop, the drafter's come on top
    assert draft_speed.case == f"draft LIP {LIPS}x{NEW}" and draft_speed.engine > 0
    assert draft_forwards.baseline == all_forwards.baseline == NEW
    assert 1 <= draft_forwards.engine < NEW
    assert all_forwards.case == f"draft LIP {LIPS}x{NEW} all forwards"
    assert all_forwards.engine > draft_forwards.engine  # the drafter made forwards
