"""JSON schema generation on the real instruct model (`smollm2-135m-instruct`, its 49k-token
vocabulary): over many seeds, sampled at temperature 1, every output parses and validates."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from test_constrained import many
from test_library import run

from engine.loader import load_model
from engine.models import DEFAULT_MODEL
from engine.syscalls import Syscalls
from engine.wire.records import SamplingParams
from workbench.lib import generate_json

SEEDS = range(16)
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "languages": {
            "type": "array",
            "items": {"enum": ["Python", "Rust", "C", "Go"]},
            "minItems": 1,
            "maxItems": 3,
        },
        "student": {"type": "boolean"},
    },
    "required": ["name", "age", "languages", "student"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def smollm2() -> Any:
    return load_model(DEFAULT_MODEL, dtype="float32", show_progress=False)


def test_json_on_the_real_model_always_parses_and_validates(smollm2) -> None:  # noqa: ANN001
    ask = "Describe a programmer as JSON with name, age, languages and student."

    async def one(sys: Syscalls, seed: int) -> Any:
        prompt = await sys.chat_template([{"role": "user", "content": ask}])
        f = await sys.kv.create()
        params = SamplingParams(temperature=1.0)
        return await generate_json(sys, f, prompt, PERSON, 96, params, seed)

    out, _ = run(smollm2, many(one, SEEDS), num_pages=1024)
    for value in out:
        jsonschema.validate(value, PERSON)
    assert len({json.dumps(v, sort_keys=True) for v in out}) > len(SEEDS) // 2  # sampled
