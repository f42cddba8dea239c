"""Planning's copy of the tiny model's shape must match what the runtime generates (builtin://tiny-moe)."""
from __future__ import annotations

import importlib.util

from require import need
from moe_operator.planning.model import TINY_MOE_CONFIG, model_facts


def test_tiny_config_matches_the_runtime_generator():
    if importlib.util.find_spec("torch") is None:
        need("torch", "the runtime's tiny checkpoint generator imports torch")
    from moe_runtime.checkpoint import tiny

    runtime = dict(tiny.CONFIG)
    runtime["vocab_size"] = (tiny.train_tokenizer().get_vocab_size() + 63) // 64 * 64  # as write_tiny_checkpoint does
    for key, value in TINY_MOE_CONFIG.items():
        assert runtime.get(key) == value, f"{key}: planning has {value!r}, runtime generates {runtime.get(key)!r}"
    assert model_facts(runtime, "tiny") == model_facts(None, "tiny")
