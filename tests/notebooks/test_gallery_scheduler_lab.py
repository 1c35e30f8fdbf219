"""gallery/10-scheduler-lab.ipynb: batch policies side by side on one workload, a policy written
in the notebook, and memory pressure (suspensions, swaps) with every program finishing right."""

from __future__ import annotations

import ast
import re

N, TOKENS = 6, 12  # the notebook's writers and the tokens each writes
POLICIES = ["eager", "wait-for-k", "adaptive"]
TIGHT = 8  # pages of the lab engine under pressure

RUN = (
    r"^([\w-]+): (\d+) processes, (\d+) calls in (\d+) batches \(([\d.]+) calls per batch\), "
    r"(\d+) tokens; calls waited ([\d.]+) s in all, tools ([\d.]+) s$"
)


def widget_shown(nb, tag: str) -> bool:  # type: ignore[no-untyped-def]
    outputs = nb.cell(tag).get("outputs", [])
    return any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_scheduler_lab_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("10-scheduler-lab.ipynb")
    assert not nb.started_engine  # the lab runs engines of its own, in its kernel

    assert "lab engine: smollm2-135m-instruct, 256 pages of 16 tokens" in nb.text("lab")
    code = [c for c in nb.nb.cells if c.cell_type == "code"]
    stderr = [c.source[:40] for c in code for o in c.outputs if o.get("name") == "stderr"]
    assert not stderr, stderr  # loading the model and running engines print nothing unasked

    policies = nb.text("policies")
    assert "every policy, the same texts: True" in policies, policies
    texts = re.findall(r"^  .+?'(.*)'$", policies, re.M)
    assert len(texts) == N and all(t.strip() for t in texts), policies

    runs = {m[0]: m[1:] for m in re.findall(RUN, nb.text("compare"), re.M)}
    assert list(runs) == POLICIES, nb.text("compare")
    tokens = set()
    for name, (procs, calls, batches, per_batch, toks, _waited, tools) in runs.items():
        assert int(procs) == N + 1, name  # the coordinator and its writers
        assert int(calls) == N * TOKENS, name  # a forward call per token
        assert TOKENS <= int(batches) <= int(calls)  # a writer's calls go one per batch
        assert float(per_batch) == round(int(calls) / int(batches), 2)
        assert float(tools) > 0  # the coordinator waited on its tool
        tokens.add(int(toks))
    assert len(tokens) == 1  # the same workload under each policy

    mine = nb.text("mine")
    asked = re.search(r"as-full-as-last: asked (\d+) times, said wait (\d+) times", mine)
    assert asked and int(asked.group(1)) > 0 and int(asked.group(2)) <= int(asked.group(1))
    assert "every batch by this policy: True" in mine, mine
    assert f"as-full-as-last: {N * TOKENS} calls in" in mine, mine
    assert "the same texts as eager: True" in mine, mine

    pressure = nb.text("pressure")
    counts = re.search(r"page map while a writer was suspended: (\{.*\})", pressure)
    assert counts, pressure
    by_state = ast.literal_eval(counts.group(1))
    assert by_state["swapped"] > 0
    # every pool page is in one state; "cached" (held by no file, kept for prefix sharing)
    in_pool = ("free", "private", "shared", "cached")
    assert sum(by_state.get(state, 0) for state in in_pool) == TIGHT, by_state
    swaps = re.search(
        rf"{TIGHT} pages: (\d+) suspensions, (\d+) pages swapped out and in", pressure
    )
    assert swaps and int(swaps.group(1)) > 0, pressure
    assert int(swaps.group(2)) >= 2 * int(swaps.group(1))  # each out and back in
    assert "every writer's text equals its text with 256 pages: True" in pressure, pressure

    for tag in ("workload", "compare", "mine", "pressure", "pressure-timeline"):
        assert widget_shown(nb, tag), tag
    assert "lab engines stopped" in nb.text("close")
