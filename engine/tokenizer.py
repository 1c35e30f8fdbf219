"""Text <-> token ids, through the `tokenizers` library, with the model's chat template."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import jinja2.sandbox
import tokenizers

from engine.wire.errors import InvalidArgument, ModelLoadError


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer configs
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, config: dict[str, Any]) -> None:
        self.backend = backend
        self.config = config
        self.chat_template: str | None = config.get("chat_template")
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.bos_id = backend.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_id = backend.token_to_id(self.eos_token) if self.eos_token else None

    @classmethod
    def from_dir(cls, path: Path) -> Tokenizer:
        file = path / "tokenizer.json"
        if not file.exists():
            raise ModelLoadError(file, "missing tokenizer.json")
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ModelLoadError(file, f"cannot read tokenizer: {e}") from e
        cfg_file = path / "tokenizer_config.json"
        config: dict[str, Any] = {}
        if cfg_file.exists():
            try:
                config = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as e:
                raise ModelLoadError(cfg_file, f"not valid JSON: {e}") from e
        return cls(backend, config)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_of(self, key: str) -> int | None:
        """The id of a special token named in the config (`pad_token`, `unk_token`, ...)."""
        text = _token_text(self.config.get(key))
        return self.backend.token_to_id(text) if text else None

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The model's chat template rendered for messages (as transformers renders it).

        InvalidArgument when the model has no template, or the template refuses the messages.
        """
        if not self.chat_template:
            raise InvalidArgument("this model has no chat template")
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            return env.from_string(self.chat_template).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except jinja2.TemplateError as e:
            raise InvalidArgument(f"the chat template failed: {e}") from e


def _raise(message: str) -> None:
    """`raise_exception(...)` inside a chat template (as in transformers)."""
    raise jinja2.TemplateError(message)
