"""The model's text calls (chat template, special tokens, vocabulary size, context length) and
the context-length limit, the same in process and over RPC (a real `symphony serve`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from engine_process import EngineProcess, engine_process
from test_library import run

from engine.wire.errors import ContextTooLong, InvalidArgument
from engine.wire.records import SpecialTokens
from workbench.client import Client
from workbench.names import CALLS

CHAT = [{"role": "system", "content": "w1"}, {"role": "user", "content": "w2 w3"}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    args = ("--num-pages", "64", "--page-size", "4", "--dtype", "float32")
    with engine_process(tmp_path_factory.mktemp("model-calls"), *args) as e:
        yield e


async def model_calls(sys: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "chat": await sys.chat_template(CHAT),
        "chat_open": await sys.chat_template(CHAT, add_generation_prompt=False),
        "special": await sys.special_tokens(),
        "vocab": await sys.vocab_size(),
        "context": await sys.context_length(),
    }
    f = await sys.kv.create()
    last = out["context"] - 1
    out["at_last"] = len((await sys.forward(f, [3], positions=[last])).ids)
    errors = []
    for bad in (
        lambda: sys.forward(f, [3, 4], positions=[last - 1, last + 1]),
        lambda: sys.chat_template("w1"),
        lambda: sys.chat_template([{"content": "no role"}]),
    ):
        try:
            await bad()
        except (ContextTooLong, InvalidArgument) as e:
            errors.append((type(e).__name__, str(e), getattr(e, "position", None)))
    out["errors"] = errors
    return out


def check(out: dict[str, Any], loaded: Any) -> None:
    tok = loaded.tokenizer
    assert out["chat"] == tok.encode(tok.apply_chat_template(CHAT))
    assert out["chat_open"] == tok.encode(tok.apply_chat_template(CHAT, False))
    assert tok.apply_chat_template(CHAT).endswith("<|assistant|>")  # the assistant's turn
    assert not tok.apply_chat_template(CHAT, False).endswith("<|assistant|>")
    assert out["special"] == SpecialTokens(
        bos=tok.bos_id, eos=tok.eos_id, stop=tuple(loaded.stop_ids), pad=None, unk=None
    )
    assert tok.eos_id in out["special"].stop
    assert isinstance(out["special"].stop, tuple)
    assert out["vocab"] == tok.vocab_size == 256
    assert out["context"] == loaded.config.max_position_embeddings == 512
    assert out["at_last"] == 20  # the last position is fine
    past, not_a_list, no_role = out["errors"]
    assert past[0] == "ContextTooLong" and past[2] == 512
    assert "position 512 is past the model's context length (512 positions" in past[1]
    assert not_a_list[0] == "BadArgument"  # refused by the call's declaration, which names
    assert "chat_template: messages must be a list" in not_a_list[1]  # the op and the argument
    assert no_role[0] == "InvalidArgument"


def test_model_calls_in_process(tiny_loaded) -> None:  # noqa: ANN001
    out, _ = run(tiny_loaded, model_calls)
    check(out, tiny_loaded)


def test_model_calls_over_rpc_equal_in_process(engine: EngineProcess, tiny_loaded) -> None:  # noqa: ANN001
    async def remote() -> dict[str, Any]:
        client = await Client.connect(engine.conn, user="alice")
        async with client, await client.attach("model-calls") as lip:
            return await model_calls(lip)

    out = asyncio.run(remote())
    check(out, tiny_loaded)
    here, _ = run(tiny_loaded, model_calls)
    assert out == here


def test_a_lip_cell_gets_the_model_calls_as_names() -> None:
    for name in ("chat_template", "special_tokens", "vocab_size", "context_length"):
        assert name in CALLS
