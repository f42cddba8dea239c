"""Checkpoint loading: sharded index == single file; each way a checkpoint can be broken gives one
CheckpointError naming the file and the tensor."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from runtime_core.rc_helpers import greedy
from moe_runtime.checkpoint import CheckpointError
from moe_runtime.checkpoint.tiny import write_tiny_checkpoint
from moe_runtime.checkpoint.writer import save_checkpoint
from moe_runtime.model.load import load_model
from safetensors.torch import load_file


def test_sharded_index_loads_the_same_model(tiny_dir, tiny, tmp_path):
    sharded = write_tiny_checkpoint(tmp_path / "sharded", shards=3)
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) == 3
    lm = load_model(sharded)
    a, la = greedy(tiny.model, [5, 6, 7, 8], 4)
    b, lb = greedy(lm.model, [5, 6, 7, 8], 4)
    assert a == b and torch.allclose(la, lb, atol=1e-5)
    for (n1, p1), (n2, p2) in zip(tiny.model.state_dict().items(), lm.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert lm.tokenizer.encode("Hello world") == tiny.tokenizer.encode("Hello world")
    assert lm.tokenizer.eos_token_id == tiny.tokenizer.eos_token_id is not None
    assert "<|im_start|>" in lm.tokenizer.chat_template


def _copy(tiny_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, d)
    return d


def test_missing_tensor_names_file_and_tensor(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    t = load_file(str(d / "model.safetensors"))
    del t["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_checkpoint(d, json.loads((d / "config.json").read_text()), t)
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    assert e.value.tensor == "model.layers.2.mlp.experts.5.up_proj.weight"
    assert "model.safetensors" in str(e.value) and "missing" in str(e.value)


def test_truncated_file_names_file_and_tensor(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    p = d / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 4096])
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    assert "truncated" in str(e.value) and e.value.file == str(p) and e.value.tensor


def test_config_inconsistent_with_weights(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["moe_intermediate_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    assert "disagrees with config.json" in str(e.value) and ".experts." in e.value.tensor


def test_missing_config_shard_and_unknown_arch(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path)
    sharded = write_tiny_checkpoint(tmp_path / "sharded", shards=2)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        load_model(sharded)
    assert "model-00002-of-00002.safetensors" in str(e.value) and e.value.tensor
    d = _copy(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["LlamaForCausalLM"], "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture"):
        load_model(d)
    d2 = tmp_path / "notok"
    shutil.copytree(tiny_dir, d2)
    (d2 / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        load_model(d2)


def test_model_source_resolution(monkeypatch, tmp_path):
    from moe_runtime.checkpoint.tiny import resolve_source

    monkeypatch.setenv("MOE_MODEL_MOUNT", str(tmp_path))
    assert resolve_source("pvc://models/deepseek-v3") == tmp_path / "deepseek-v3"
    assert resolve_source("file:///data/m") == __import__("pathlib").Path("/data/m")
    assert resolve_source("/data/m") == __import__("pathlib").Path("/data/m")
    with pytest.raises(CheckpointError, match="download s3:// or hf://"):
        resolve_source("hf://org/name")


def test_the_ingress_tokenizer_from_a_replicas_description_tokenizes_as_the_engine_does(tiny_dir):
    """The Serve ingress tokenizes prompts with ``ModelTokenizer.from_info`` over what a replica's ``describe``
    sends (tokenizer.json text, special tokens, the engine's eos id): the same ids both ways, or prefix-cache
    hashes and max_tokens checks would disagree with the engine's."""
    from moe_runtime.checkpoint.tokenizer import ModelTokenizer, load_tokenizer

    engine = load_tokenizer(tiny_dir)
    info = {"tokenizer_json": engine.to_str(), "eos_token_id": engine.eos_token_id, "eos_token": engine.eos_token,
            "bos_token": engine.bos_token, "chat_template": engine.chat_template}
    ingress = ModelTokenizer.from_info(info)
    text = "Count slowly: one, two, three; then Ünïcödé and 12345."
    assert ingress.encode(text) == engine.encode(text) and ingress.encode(text)
    assert ingress.decode(engine.encode(text)) == engine.decode(engine.encode(text))
    assert ingress.eos_token_id == engine.eos_token_id and ingress.get_vocab_size() == engine.get_vocab_size()
    assert ModelTokenizer.from_info({**info, "eos_token_id": None, "bos_token": None}).bos_token == ""
    import copy
    import pickle

    for twin in (copy.copy(ingress), pickle.loads(pickle.dumps(ingress))):   # its __getattr__ once recursed here
        assert twin.encode(text) == engine.encode(text)
