"""gallery/06-structured-output.ipynb: a regex, a JSON schema, and inside the grammar's mask."""

from __future__ import annotations

import json
import re

import jsonschema
from runner import IDLE_EXIT, wait_gone

VOCAB = 49152  # SmolLM2's vocabulary: the width of a row of logits
SAMPLES = 3


def numbers(pattern: str, text: str) -> list[int]:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return [int(g) for g in match.groups()]


def test_structured_output_notebook(run_notebook) -> None:  # type: ignore[no-untyped-def]
    nb = run_notebook("06-structured-output.ipynb")

    setup = nb.text("setup")
    schema_line = re.search(r"^schema: (.*)$", setup, re.M)
    assert schema_line, setup
    schema = json.loads(schema_line.group(1))
    source = "".join(nb.cell("setup").source)
    pattern = re.search(r'^DATE = r"(.*?)"', source, re.M)
    assert pattern, source

    regex = nb.text("regex")
    date = re.search(r"^with the regex: '(.*)'$", regex, re.M)
    assert date and re.fullmatch(pattern.group(1), date.group(1)), regex
    assert "the regex matches it in full: True" in regex

    out = nb.text("json")
    people = [json.loads(p) for p in re.findall(r"^seed \d: (.*)$", out, re.M)]
    assert len(people) == SAMPLES, out
    for person in people:
        jsonschema.validate(person, schema)
    assert len({json.dumps(p) for p in people}) > 1  # the seeds draw different people
    assert f"all {SAMPLES} parse and validate against the schema" in out

    inside = nb.text("inside")
    head = re.search(r"prompt: (\d+) tokens; (\d+) steps, the last a stop token: (\w+)", inside)
    assert head and head.group(3) == "True", inside
    steps = int(head.group(2))
    low, high, vocab = numbers(r"masked out (\d+) to (\d+) of (\d+) tokens", inside)
    assert vocab == VOCAB and 0 < low <= high < VOCAB  # every step refuses some, allows some
    (overruled,) = numbers(r"first choice at (\d+) steps", inside)
    listed = re.findall(r"^  step (\d+): the model wanted .+, took .+$", inside, re.M)
    assert len(listed) == overruled <= steps
    greedy = re.search(r"^greedy under the grammar: (.*)$", inside, re.M)
    assert greedy, inside
    jsonschema.validate(json.loads(greedy.group(1)), schema)
    assert "the same as generate_json's greedy output: True" in inside
    outputs = nb.cell("inside").get("outputs", [])
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)

    choice = nb.text("try")
    assert re.search(r"choose: '(positive|negative|neutral)' one of the options: True", choice)
    assert wait_gone(nb.engine_pid(), IDLE_EXIT + 30)
