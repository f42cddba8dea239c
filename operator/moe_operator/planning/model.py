"""Model facts from a Hugging Face ``config.json``: parameters (total, active per token), experts, attention, KV size.

Supported layouts (``model_type`` in config.json, or ``spec.model.architecture``):

- ``mixtral``: every layer MoE; ``num_local_experts`` routed experts, ``num_experts_per_tok`` per token, no shared expert.
- ``qwen2_moe``: ``num_experts`` routed experts of width ``moe_intermediate_size`` plus one gated shared expert of width
  ``shared_expert_intermediate_size``; q/k/v biases; ``decoder_sparse_step`` / ``mlp_only_layers`` pick the MoE layers.
- ``qwen3_moe``: like qwen2_moe without the shared expert and biases, with per-head q/k norms and an explicit ``head_dim``.
- ``deepseek_v2`` / ``deepseek_v3``: MLA attention (``q_lora_rank``, ``kv_lora_rank``, ``qk_nope_head_dim``,
  ``qk_rope_head_dim``, ``v_head_dim``), ``n_routed_experts`` + ``n_shared_experts``, the first
  ``first_k_dense_replace`` layers dense, then every ``moe_layer_freq``-th layer MoE; V3 adds a per-expert router bias.
- ``tiny``: our own test model. It uses the qwen2_moe keys when ``num_experts`` is present, else the mixtral keys;
  without a config it is ``TINY_MOE_CONFIG`` (what ``builtin://tiny-moe`` means for planning).

Counting rule (matches the published figures: Mixtral-8x7B 46.7B/12.9B, DeepSeek-V3 671B/37B, Qwen1.5-MoE-A2.7B
14.3B/2.7B, Qwen3-30B-A3B 30.5B/3.3B): every weight matrix, bias, norm and router; the input embedding and the output
head both count (once when tied); active = everything except the routed experts a token does not pick. DeepSeek's
multi-token-prediction module (``num_nextn_predict_layers``) is not counted: serving does not load it by default.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict

from moe_operator.errors import SpecInvalid

Architecture = Literal["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "tiny"]
ARCHITECTURES: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "tiny")

# builtin://tiny-moe for planning when the spec carries no config: the shape of the checkpoint the runtime generates
# (moe_runtime/checkpoint/tiny.py CONFIG; copied, not imported: the operator image has no torch). vocab_size is the
# runtime's trained BPE vocabulary rounded up to a multiple of 64. tests/planning/test_tiny_matches_runtime.py checks.
TINY_MOE_CONFIG: dict[str, Any] = {
    "model_type": "qwen2_moe",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "moe_intermediate_size": 256,
    "shared_expert_intermediate_size": 512,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 768,
    "tie_word_embeddings": False,
}


class ModelFacts(BaseModel):
    """What planning needs to know about a model. Counts are parameters (not bytes); widths are elements."""

    model_config = ConfigDict(frozen=True)

    architecture: str
    hidden_size: int
    num_layers: int
    num_moe_layers: int
    num_experts: int                   # routed experts per MoE layer
    experts_per_token: int             # routed experts each token picks (top-k)
    num_shared_experts: int            # always-on experts per MoE layer (qwen2_moe's one gated shared expert counts 1)
    expert_intermediate_size: int      # width of one routed expert's FFN
    num_attention_heads: int
    num_kv_heads: int                  # KV heads stored per layer (1 latent "head" for MLA)
    head_dim: int                      # q.k dimension per head (nope + rope for MLA)
    v_head_dim: int
    attention: Literal["gqa", "mla"]
    kv_lora_rank: Optional[int] = None
    qk_rope_head_dim: Optional[int] = None
    n_group: Optional[int] = None      # DeepSeek expert groups (group-limited routing)
    topk_group: Optional[int] = None
    scoring_func: str = "softmax"
    vocab_size: int
    embedding_params: int              # input embedding + output head (once when tied)
    params_per_expert: int             # one routed expert (gate, up, down)
    total_params: int
    active_params: int                 # per token
    kv_elements_per_token: int         # KV-cache elements per token over all layers

    @property
    def routed_expert_params(self) -> int:
        """All routed experts in all MoE layers."""
        return self.params_per_expert * self.num_experts * self.num_moe_layers

    @property
    def always_active_params(self) -> int:
        """Parameters every token uses: everything but the routed experts."""
        return self.total_params - self.routed_expert_params

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> float:
        """KV-cache bytes one token occupies (bf16 cache by default; MLA stores the compressed latent + rope key)."""
        return self.kv_elements_per_token * bytes_per_element

    def attention_flops_per_token(self, context_tokens: float) -> float:
        """FLOPs of score and value products for one token attending to ``context_tokens`` earlier tokens."""
        return 2.0 * self.num_layers * self.num_attention_heads * (self.head_dim + self.v_head_dim) * context_tokens


def model_facts(config: Mapping[str, Any] | None, architecture: str | None = None) -> ModelFacts:
    """Facts for a model from its config.json dict; ``architecture`` (spec.model.architecture) wins over model_type.

    Raises SpecInvalid(UnsupportedModel | ModelConfigInvalid) with the missing key or unknown type named.
    """
    if config is None:
        if architecture == "tiny":
            config = TINY_MOE_CONFIG
        else:
            raise SpecInvalid(
                f"planning needs the model's config.json for architecture {architecture or 'unknown'}: set "
                "spec.model.catalogName to a catalog model (moectl models lists them), use its hf:// id as "
                "spec.model.source, or paste its config.json (or the keys docs/capacity-model.md lists) under "
                "spec.model.config",
                reason="ModelConfigMissing",
            )
    model_type = str(config.get("model_type") or "")
    arch = architecture or model_type
    if arch not in ARCHITECTURES:
        raise SpecInvalid(
            f"model type {arch!r} is not supported; use one of {', '.join(ARCHITECTURES)} "
            "(set spec.model.architecture or model_type in spec.model.config)",
            reason="UnsupportedModel",
        )
    if arch == "tiny":
        layout = "qwen2_moe" if "num_experts" in config else "mixtral"
    else:
        layout = arch
    reader = _Reader(config, arch)
    if layout.startswith("deepseek"):
        return _deepseek(reader, arch)
    return _gqa_moe(reader, arch, layout)


class _Reader:
    """Typed access to config keys with a SpecInvalid naming the key when it is missing or wrong."""

    def __init__(self, config: Mapping[str, Any], arch: str):
        self.config, self.arch = config, arch

    def int(self, key: str, default: Any = ..., minimum: int = 1) -> Any:
        value = self.config.get(key, default)
        if value is ...:
            raise SpecInvalid(
                f"{self.arch} config.json is missing {key!r}; paste the model's full config.json under spec.model.config",
                reason="ModelConfigInvalid",
            )
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SpecInvalid(
                f"{self.arch} config.json {key!r} is {value!r}; expected an integer >= {minimum}",
                reason="ModelConfigInvalid",
            )
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


def _embedding_params(r: _Reader, hidden: int) -> tuple[int, int]:
    vocab = r.int("vocab_size")
    tied = bool(r.get("tie_word_embeddings", False))
    # input embedding, output head (unless tied), final norm
    return vocab, vocab * hidden * (1 if tied else 2) + hidden


def _gqa_moe(r: _Reader, arch: str, layout: str) -> ModelFacts:
    hidden = r.int("hidden_size")
    layers = r.int("num_hidden_layers")
    heads = r.int("num_attention_heads")
    kv_heads = r.int("num_key_value_heads", heads)
    head_dim = r.int("head_dim", None) or hidden // heads
    if layout == "mixtral":
        experts = r.int("num_local_experts")
        expert_width = r.int("intermediate_size")
        shared_width = 0
        moe_layer = [True] * layers
    else:
        experts = r.int("num_experts")
        expert_width = r.int("moe_intermediate_size")
        shared_width = r.int("shared_expert_intermediate_size", 0, minimum=0) if layout == "qwen2_moe" else 0
        step = r.int("decoder_sparse_step", 1)
        mlp_only = set(r.get("mlp_only_layers") or [])
        moe_layer = [i not in mlp_only and (i + 1) % step == 0 for i in range(layers)]
    top_k = r.int("num_experts_per_tok")
    _check_top_k(arch, top_k, experts)
    dense_width = r.int("intermediate_size")
    attn_bias = bool(r.get("attention_bias", layout == "qwen2_moe"))  # qwen2 always has q/k/v biases

    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    if attn_bias:
        attention += (heads + 2 * kv_heads) * head_dim
    if layout == "qwen3_moe":
        attention += 2 * head_dim  # q_norm, k_norm
    norms = 2 * hidden
    per_expert = 3 * hidden * expert_width
    shared = (3 * hidden * shared_width + hidden) if shared_width else 0  # shared expert + its sigmoid gate
    router = hidden * experts
    moe_layers = sum(moe_layer)
    dense_layers = layers - moe_layers
    vocab, embedding = _embedding_params(r, hidden)

    total, active = _totals(layers * (attention + norms) + dense_layers * 3 * hidden * dense_width + embedding,
                            moe_layers, router + shared, per_expert, experts, top_k)
    return ModelFacts(
        architecture=arch,
        hidden_size=hidden,
        num_layers=layers,
        num_moe_layers=moe_layers,
        num_experts=experts,
        experts_per_token=top_k,
        num_shared_experts=1 if shared_width else 0,
        expert_intermediate_size=expert_width,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        v_head_dim=head_dim,
        attention="gqa",
        vocab_size=vocab,
        embedding_params=embedding - hidden,
        params_per_expert=per_expert,
        total_params=total,
        active_params=active,
        kv_elements_per_token=layers * 2 * kv_heads * head_dim,
    )



def _totals(base: int, moe_layers: int, always_on: int, per_expert: int, experts: int, top_k: int) -> tuple[int, int]:
    """Total and active parameters: every MoE layer holds all experts, a token runs top_k of them.

    ``always_on`` is what each MoE layer runs for every token besides its routed experts (router, shared experts).
    """
    return (base + moe_layers * (always_on + experts * per_expert),
            base + moe_layers * (always_on + top_k * per_expert))

def _deepseek(r: _Reader, arch: str) -> ModelFacts:
    hidden = r.int("hidden_size")
    layers = r.int("num_hidden_layers")
    heads = r.int("num_attention_heads")
    q_lora = r.int("q_lora_rank", None)
    kv_lora = r.int("kv_lora_rank")
    nope = r.int("qk_nope_head_dim")
    rope = r.int("qk_rope_head_dim")
    v_dim = r.int("v_head_dim")
    experts = r.int("n_routed_experts")
    shared_count = r.int("n_shared_experts", 0, minimum=0) or 0
    top_k = r.int("num_experts_per_tok")
    _check_top_k(arch, top_k, experts)
    expert_width = r.int("moe_intermediate_size")
    dense_width = r.int("intermediate_size")
    first_dense = r.int("first_k_dense_replace", 0, minimum=0)
    freq = r.int("moe_layer_freq", 1)
    moe_layers = sum(1 for i in range(layers) if i >= first_dense and i % freq == 0)
    dense_layers = layers - moe_layers

    qk_dim = nope + rope
    if q_lora:
        q_proj = hidden * q_lora + q_lora + q_lora * heads * qk_dim  # q_a_proj, q_a_layernorm, q_b_proj
    else:
        q_proj = hidden * heads * qk_dim
    kv_proj = hidden * (kv_lora + rope) + kv_lora + kv_lora * heads * (nope + v_dim)  # kv_a (+rope key), norm, kv_b
    attention = q_proj + kv_proj + heads * v_dim * hidden
    norms = 2 * hidden
    per_expert = 3 * hidden * expert_width
    shared = shared_count * per_expert
    router = hidden * experts + (experts if arch == "deepseek_v3" else 0)  # V3: e_score_correction_bias
    vocab, embedding = _embedding_params(r, hidden)

    total, active = _totals(layers * (attention + norms) + dense_layers * 3 * hidden * dense_width + embedding,
                            moe_layers, router + shared, per_expert, experts, top_k)
    return ModelFacts(
        architecture=arch,
        hidden_size=hidden,
        num_layers=layers,
        num_moe_layers=moe_layers,
        num_experts=experts,
        experts_per_token=top_k,
        num_shared_experts=shared_count,
        expert_intermediate_size=expert_width,
        num_attention_heads=heads,
        num_kv_heads=1,
        head_dim=qk_dim,
        v_head_dim=v_dim,
        attention="mla",
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=rope,
        n_group=r.int("n_group", None),
        topk_group=r.int("topk_group", None),
        scoring_func=str(r.get("scoring_func") or "softmax"),
        vocab_size=vocab,
        embedding_params=embedding - hidden,
        params_per_expert=per_expert,
        total_params=total,
        active_params=active,
        kv_elements_per_token=layers * (kv_lora + rope),
    )


def _check_top_k(arch: str, top_k: int, experts: int) -> None:
    if top_k > experts:
        raise SpecInvalid(
            f"{arch} config.json routes each token to {top_k} experts but has only {experts}",
            reason="ModelConfigInvalid",
        )
