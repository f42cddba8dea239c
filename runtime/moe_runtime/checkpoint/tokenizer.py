"""The checkpoint's tokenizer.json (via ``tokenizers``) plus what serving needs: eos id and the chat template."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .errors import CheckpointError


class ModelTokenizer:
    """A ``tokenizers.Tokenizer`` (``.inner``) with ``eos_token_id``, ``eos_token``, ``bos_token`` and
    ``chat_template`` (a Jinja string from tokenizer_config.json, or None). encode/decode work on id lists."""

    def __init__(self, inner: Tokenizer, eos_token: str | None, bos_token: str | None, chat_template: str | None):
        self.inner = inner
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.eos_token_id = inner.token_to_id(eos_token) if eos_token else None
        self.chat_template = chat_template

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "ModelTokenizer":
        """The engine's tokenizer rebuilt in the Serve ingress from its ``describe`` (tokenizer.json text and the
        special tokens), so prompts are tokenized there and text never crosses to the engine. The engine's own
        eos id is kept as it reported it; absent special tokens are "" (what the chat template gets)."""
        tok = cls(Tokenizer.from_str(info["tokenizer_json"]), info.get("eos_token") or "",
                  info.get("bos_token") or "", info.get("chat_template"))
        tok.eos_token_id = info.get("eos_token_id")
        return tok

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.inner.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)

    def get_vocab_size(self) -> int:
        return self.inner.get_vocab_size()

    def __getattr__(self, name: str) -> Any:  # anything else: the tokenizers.Tokenizer's own API
        inner = self.__dict__.get("inner")   # not self.inner: an instance copy or pickle is rebuilding has none yet
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


def _token_str(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v


def load_tokenizer(directory: str | Path, config: dict[str, Any] | None = None) -> ModelTokenizer:
    d = Path(directory)
    path = d / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError("tokenizer.json is missing", file=str(path))
    try:
        inner = Tokenizer.from_file(str(path))
    except Exception as e:
        raise CheckpointError(f"tokenizer.json cannot be loaded: {e}", file=str(path)) from None
    tc: dict[str, Any] = {}
    tcp = d / "tokenizer_config.json"
    if tcp.is_file():
        try:
            tc = json.loads(tcp.read_text())
        except ValueError as e:
            raise CheckpointError(f"tokenizer_config.json is not valid JSON: {e}", file=str(tcp)) from None
    eos = _token_str(tc.get("eos_token"))
    if eos is None and config and isinstance(config.get("eos_token_id"), int):
        eos = inner.id_to_token(config["eos_token_id"])
    template = tc.get("chat_template")
    if isinstance(template, list):  # newer configs: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
    return ModelTokenizer(inner, eos, _token_str(tc.get("bos_token")), template)
