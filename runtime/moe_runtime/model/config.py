"""MoEConfig: the architecture facts the decoder needs, read from a Hugging Face config.json.

Supported layouts (by ``architectures`` / ``model_type``): Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moe_runtime.checkpoint.errors import CheckpointError

ARCH_BY_NAME = {
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
}
ARCH_BY_MODEL_TYPE = {"mixtral": "mixtral", "qwen2_moe": "qwen2_moe", "qwen3_moe": "qwen3_moe",
                      "deepseek_v2": "deepseek_v2", "deepseek_v3": "deepseek_v3"}


@dataclass
class MoEConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP layers
    moe_intermediate_size: int  # one routed expert
    num_experts: int
    top_k: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False  # Qwen3
    scoring: str = "softmax"  # softmax | sigmoid
    norm_topk_prob: bool = True
    topk_method: str = "greedy"  # greedy | group_limited_greedy | noaux_tc
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    score_correction_bias: bool = False  # DeepSeek-V3 e_score_correction_bias
    shared_intermediate_size: int = 0  # 0 = no shared expert
    shared_expert_gate: bool = False  # Qwen2-MoE sigmoid gate on the shared expert
    moe_layers: list[int] = field(default_factory=list)  # decoder layer indices with a routed MoE block
    # DeepSeek MLA
    mla: bool = False
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    eos_token_id: int | list[int] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    def moe_index(self, layer: int) -> int:
        """Position of decoder layer ``layer`` among MoE layers (the placement's layer index)."""
        return self.moe_layers.index(layer)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], *, source: str = "config.json") -> "MoEConfig":
        """Parse a config.json; unknown architectures and missing keys are CheckpointErrors naming the key."""
        arch = None
        for a in cfg.get("architectures") or []:
            arch = ARCH_BY_NAME.get(a) or arch
        arch = arch or ARCH_BY_MODEL_TYPE.get(cfg.get("model_type", ""))
        if arch is None:
            raise CheckpointError(
                f"unsupported architecture {cfg.get('architectures')} / model_type {cfg.get('model_type')!r}; "
                f"expected one of {sorted(ARCH_BY_NAME)}", file=source)

        def need(key: str) -> Any:
            if key not in cfg:
                raise CheckpointError(f"config.json lacks required key {key!r} for {arch}", file=source)
            return cfg[key]

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        n_layers = int(need("num_hidden_layers"))
        common = dict(
            arch=arch,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            eos_token_id=cfg.get("eos_token_id"),
            raw=cfg,
        )
        if arch == "mixtral":
            return cls(**common, intermediate_size=int(need("intermediate_size")),
                       moe_intermediate_size=int(need("intermediate_size")), num_experts=int(need("num_local_experts")),
                       top_k=int(need("num_experts_per_tok")), scoring="softmax", norm_topk_prob=True,
                       moe_layers=list(range(n_layers)))
        if arch in ("qwen2_moe", "qwen3_moe"):
            n_exp = int(need("num_experts"))
            step = int(cfg.get("decoder_sparse_step", 1)) or 1
            dense_only = set(cfg.get("mlp_only_layers") or [])
            moe_layers = [i for i in range(n_layers) if i not in dense_only and n_exp > 0 and (i + 1) % step == 0]
            q2 = arch == "qwen2_moe"
            shared = int(cfg.get("shared_expert_intermediate_size", 0) or 0) if q2 else 0
            return cls(**common, intermediate_size=int(cfg.get("intermediate_size", 0)),
                       moe_intermediate_size=int(need("moe_intermediate_size")), num_experts=n_exp,
                       top_k=int(need("num_experts_per_tok")), scoring="softmax",
                       norm_topk_prob=bool(cfg.get("norm_topk_prob", not q2)),
                       attention_bias=bool(cfg.get("qkv_bias", True)) if q2 else bool(cfg.get("attention_bias", False)),
                       qk_norm=not q2, shared_intermediate_size=shared, shared_expert_gate=shared > 0,
                       moe_layers=moe_layers)
        # DeepSeek-V2 / V3
        n_exp = int(need("n_routed_experts"))
        first_dense = int(cfg.get("first_k_dense_replace", 0))
        freq = int(cfg.get("moe_layer_freq", 1)) or 1
        moe_i = int(need("moe_intermediate_size"))
        v3 = arch == "deepseek_v3"
        topk_method = cfg.get("topk_method") or ("noaux_tc" if v3 else "greedy")
        q_nope, q_rope = int(need("qk_nope_head_dim")), int(need("qk_rope_head_dim"))
        common["head_dim"] = q_nope + q_rope
        common["num_kv_heads"] = heads  # MLA expands the latent into one K/V per head
        return cls(**common, intermediate_size=int(need("intermediate_size")), moe_intermediate_size=moe_i,
                   num_experts=n_exp, top_k=int(need("num_experts_per_tok")),
                   scoring=cfg.get("scoring_func", "sigmoid" if v3 else "softmax"),
                   norm_topk_prob=bool(cfg.get("norm_topk_prob", v3)), topk_method=topk_method,
                   n_group=int(cfg.get("n_group") or 1), topk_group=int(cfg.get("topk_group") or 1),
                   routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
                   score_correction_bias=topk_method == "noaux_tc",
                   shared_intermediate_size=moe_i * int(cfg.get("n_shared_experts") or 0),
                   attention_bias=bool(cfg.get("attention_bias", False)),
                   moe_layers=[i for i in range(n_layers) if n_exp > 0 and i >= first_dense and i % freq == 0],
                   mla=True, q_lora_rank=cfg.get("q_lora_rank"), kv_lora_rank=int(need("kv_lora_rank")),
                   qk_nope_head_dim=q_nope, qk_rope_head_dim=q_rope, v_head_dim=int(need("v_head_dim")))

    def weight_prefix(self, layer: int) -> str:
        """Name prefix of the MoE block of decoder layer ``layer`` in the published checkpoints."""
        return f"model.layers.{layer}.block_sparse_moe" if self.arch == "mixtral" else f"model.layers.{layer}.mlp"

    def expert_names(self, layer: int, expert: int) -> tuple[str, str, str]:
        """(gate, up, down) weight names of one routed expert."""
        p = f"{self.weight_prefix(layer)}.experts.{expert}"
        if self.arch == "mixtral":
            return f"{p}.w1.weight", f"{p}.w3.weight", f"{p}.w2.weight"
        return f"{p}.gate_proj.weight", f"{p}.up_proj.weight", f"{p}.down_proj.weight"
