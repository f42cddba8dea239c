"""The tiny MoE checkpoint (Qwen2-MoE layout) that tests, benchmarks and ``moectl up`` use: generated locally,
deterministically, into a cache directory; never downloaded.

Shape: hidden 256, 4 layers (all MoE), 8 routed experts top-2 (expert FFN 256) + a gated shared expert (512),
8 query / 4 KV heads of 32, a byte-level BPE vocabulary trained with ``tokenizers`` on the built-in text below.
About 8.6 M parameters: small enough for fast CPU tests, big enough that a 1000-token prefill takes measurable time.
Weights are random (seeded), so generated text is gibberish but exactly reproducible.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .writer import save_checkpoint

TINY_VERSION = 1
DEFAULT_DIR = Path(os.environ.get("MOE_CACHE_DIR", Path.home() / ".cache" / "moe-operator")) / "models" / "tiny-moe"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TEXT = """
A mixture of experts model routes every token to a few expert networks chosen by a small router. Only the chosen
experts run, so a model with many parameters costs little compute per token. DeepSeek, Qwen and Mixtral use this
design. The router scores each expert, keeps the top k, and the outputs are summed with the router weights.
Serving such a model is a fleet problem: which accelerators to buy, how many replicas to run, where each expert
lives, and what each million tokens really costs. The operator reads a MoEDeployment, plans the placement of the
experts across devices, renders a RayService and scales every pool from live token throughput and latency.
Context caching stores the keys and values of a prompt prefix so that a repeated prefix is read back instead of
recomputed. Quantization stores weights in eight or four bits to save memory and bandwidth. The quick brown fox
jumps over the lazy dog. Hello world! How are you today? I am fine, thank you. What is the capital of France?
Paris is the capital of France. One, two, three, four, five, six, seven, eight, nine, ten. 0123456789.
def forward(self, x): return self.down(silu(self.gate(x)) * self.up(x))  # {"role": "user", "content": "hi"}
Kubernetes schedules pods onto nodes; Ray runs actors and tasks; Serve deploys applications of deployments.
"""

CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2MoeForCausalLM"],
    "model_type": "qwen2_moe",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "moe_intermediate_size": 256,
    "shared_expert_intermediate_size": 512,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "norm_topk_prob": False,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "moe_operator_tiny_version": TINY_VERSION,
}


def train_tokenizer():
    """Byte-level BPE over the built-in text (deterministic: one thread, fixed corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([line for line in _TEXT.splitlines() if line.strip()] * 4, trainer=trainer)
    return tok


def tiny_tensors(config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with Qwen2-MoE names; scaled so activations stay O(1) through the residual stream."""
    g = torch.Generator().manual_seed(seed)
    h, L = config["hidden_size"], config["num_hidden_layers"]
    nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = h // nh
    ei, si, v = config["moe_intermediate_size"], config["shared_expert_intermediate_size"], config["vocab_size"]

    def w(out: int, inp: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(out, inp, generator=g) * (scale / inp ** 0.5)

    out_scale = 1.0 / (2 * L) ** 0.5
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(v, h, generator=g),
                                  "model.norm.weight": torch.ones(h), "lm_head.weight": w(v, h, 2.0)}
    for i in range(L):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = torch.ones(h)
        t[f"{p}.post_attention_layernorm.weight"] = torch.ones(h)
        for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            t[f"{p}.self_attn.{n}_proj.weight"] = w(rows, h)
            t[f"{p}.self_attn.{n}_proj.bias"] = torch.randn(rows, generator=g) * 0.02
        t[f"{p}.self_attn.o_proj.weight"] = w(h, nh * hd, out_scale)
        t[f"{p}.mlp.gate.weight"] = w(config["num_experts"], h, 2.0)
        for e in range(config["num_experts"]):
            q = f"{p}.mlp.experts.{e}"
            t[f"{q}.gate_proj.weight"] = w(ei, h)
            t[f"{q}.up_proj.weight"] = w(ei, h)
            t[f"{q}.down_proj.weight"] = w(h, ei, out_scale)
        t[f"{p}.mlp.shared_expert.gate_proj.weight"] = w(si, h)
        t[f"{p}.mlp.shared_expert.up_proj.weight"] = w(si, h)
        t[f"{p}.mlp.shared_expert.down_proj.weight"] = w(h, si, out_scale)
        t[f"{p}.mlp.shared_expert_gate.weight"] = w(1, h)
    return t


def write_tiny_checkpoint(
    directory: str | Path, *, shards: int = 1, seed: int = 0, overrides: dict[str, Any] | None = None
) -> Path:
    """Write the tiny checkpoint into ``directory`` (sharded with an index when shards > 1)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    config = dict(CONFIG, **(overrides or {}))
    config["vocab_size"] = (tok.get_vocab_size() + 63) // 64 * 64
    config["eos_token_id"] = tok.token_to_id("<|im_end|>")
    config["bos_token_id"] = tok.token_to_id("<|endoftext|>")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": None, "pad_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE,
         "model_max_length": config["max_position_embeddings"]}, indent=2))
    save_checkpoint(d, config, tiny_tensors(config, seed), shards=shards)
    return d


def ensure_tiny_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """The tiny checkpoint's directory, generating it on first use (atomically: a half-written one is never used)."""
    d = Path(cache_dir) if cache_dir else DEFAULT_DIR
    cfg = d / "config.json"
    if cfg.is_file():
        try:
            if (
                json.loads(cfg.read_text()).get("moe_operator_tiny_version") == TINY_VERSION
                and (d / "model.safetensors").is_file()
            ):
                return d
        except ValueError:
            pass
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-moe-", dir=d.parent))
    try:
        write_tiny_checkpoint(tmp)
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return d


def resolve_source(source: str) -> Path:
    """A RuntimeConfig.model_source as a local directory.

    builtin://tiny-moe -> the generated tiny checkpoint; /local/path or file://path -> itself;
    pvc://<claim>/<path> -> $MOE_MODEL_MOUNT/<path> (default /models: where the rendered RayService mounts the claim).
    s3:// and hf:// are not fetched by the engine (nothing is downloaded at run time): mount them as a volume.
    """
    from .errors import CheckpointError

    if source in ("builtin://tiny-moe", "builtin://tiny"):
        return ensure_tiny_checkpoint()
    if source.startswith("file://"):
        return Path(source[len("file://"):])
    if source.startswith("pvc://"):
        rest = source[len("pvc://"):]
        claim, _, sub = rest.partition("/")
        if not claim:
            raise CheckpointError(f"model source {source!r} names no claim; expected pvc://<claim>/<path>", file=source)
        return Path(os.environ.get("MOE_MODEL_MOUNT", "/models")) / sub
    if "://" in source:
        raise CheckpointError(
            f"model source {source!r} is not readable by the engine: it loads local directories "
            "(builtin://tiny-moe, /path, file://, pvc:// mounted at /models); download s3:// or hf:// "
            "models into a volume first",
            file=source,
        )
    return Path(source)
