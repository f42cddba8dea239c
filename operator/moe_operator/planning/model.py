"""Model facts from a Hugging Face ``config.json``: parameters (total, active per token), experts, attention, KV size.

Supported layouts (``model_type`` in config.json, or ``spec.model.architecture``):

- ``mixtral``: every layer MoE; ``num_local_experts`` routed experts, ``num_experts_per_tok`` per token, no shared
  expert.
- ``qwen2_moe``: ``num_experts`` routed experts of width ``moe_intermediate_size`` plus one gated shared expert of width
  ``shared_expert_intermediate_size``; q/k/v biases; ``decoder_sparse_step`` / ``mlp_only_layers`` pick the MoE layers.
- ``qwen3_moe``: like qwen2_moe without the shared expert and biases, with per-head q/k norms and an explicit
  ``head_dim``.
- ``deepseek_v2`` / ``deepseek_v3``: MLA attention (``q_lora_rank``, ``kv_lora_rank``, ``qk_nope_head_dim``,
  ``qk_rope_head_dim``, ``v_head_dim``), ``n_routed_experts`` + ``n_shared_experts``, the first
  ``first_k_dense_replace`` layers dense, then every ``moe_layer_freq``-th layer MoE; V3 adds a per-expert router bias.
- ``tiny``: our own test model. It uses the qwen2_moe keys when ``num_experts`` is present, else the mixtral keys;
  without a config it is ``TINY_MOE_CONFIG`` (what ``builtin://tiny-moe`` means for planning).

Counting rule (matches the published figures: Mixtral-8x7B 46.7B/12.9B, DeepSeek-V3 671B/37B, Qwen1.5-MoE-A2.7B
14.3B/2.7B, Qwen3-30B-A3B 30.5B/3.3B): every weight matrix, bias, norm and router; the input embedding and the output
head both count (once when tied); active = everything except the routed experts a token does not pick. DeepSeek's
multi-token-prediction module (``num_nextn_predict_layers``) is not counted: serving does not load it by default.

Bounds (issue 14): a config comes from a spec, so every integer planning reads has a ceiling (``LIMITS``), the whole
config has a size and depth ceiling, and MoE layers are counted arithmetically, never by a list over layers. Out of
bounds is SpecInvalid(ModelConfigInvalid) naming the key, before any arithmetic runs.
"""
from __future__ import annotations

from typing import Any, Iterable, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict

from moe_operator.errors import SpecInvalid

Architecture = Literal["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "tiny"]
ARCHITECTURES: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "tiny")

# Ceilings on the config.json integers planning reads. Each sits one to three orders of magnitude above the largest
# published model (figures in the comments), and together they keep planning's own work small: counts are arithmetic,
# the placement is one list of at most LIMITS["num_experts"] expert ids shared by all layers, and a model at every
# ceiling at once is ~1e21 parameters, a float planning handles (it just does not fit).
_LAYERS = 1024          # 126 (Llama-3.1-405B), 61 (DeepSeek-V3), 94 (Qwen3-235B)
_WIDTH = 1 << 20        # hidden 7168 (DeepSeek-V3), 18432 (PaLM); FFN widths 53248 (Llama-3.1-405B)
_HEADS = 1 << 16        # 128 attention heads (DeepSeek-V3, Llama-3.1-405B)
_EXPERTS = 1 << 16      # 256 (DeepSeek-V3), 384 (Kimi K2), 512 (Qwen3-Next)
LIMITS: dict[str, int] = {
    "num_hidden_layers": _LAYERS,
    "first_k_dense_replace": _LAYERS,
    "moe_layer_freq": _LAYERS,
    "decoder_sparse_step": _LAYERS,
    "hidden_size": _WIDTH,
    "intermediate_size": _WIDTH,
    "moe_intermediate_size": _WIDTH,
    "shared_expert_intermediate_size": _WIDTH,
    "q_lora_rank": _WIDTH,
    "kv_lora_rank": _WIDTH,
    "num_attention_heads": _HEADS,
    "num_key_value_heads": _HEADS,
    "head_dim": _HEADS,
    "qk_nope_head_dim": _HEADS,
    "qk_rope_head_dim": _HEADS,
    "v_head_dim": _HEADS,
    "num_local_experts": _EXPERTS,
    "num_experts": _EXPERTS,
    "n_routed_experts": _EXPERTS,
    "num_experts_per_tok": _EXPERTS,
    "n_shared_experts": 1024,   # 2 (DeepSeek-V2)
    "n_group": _EXPERTS,
    "topk_group": _EXPERTS,
    "vocab_size": 1 << 24,      # 262144 (Gemma 3), 151936 (Qwen)
}
# A whole config.json: real ones are 1-5 KiB (DeepSeek-V3's, quantization_config included, is ~1.7 KiB).
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_DEPTH = 32

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
    checkpoint_quantization: str = "none"   # how the published weights are stored: none (16-bit), fp8, int8, int4

    @property
    def routed_expert_params(self) -> int:
        """All routed experts in all MoE layers."""
        return self.params_per_expert * self.num_experts * self.num_moe_layers

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
    _check_size(config)
    model_type = str(config.get("model_type") or "")[:64]
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
    facts = _deepseek(reader, arch) if layout.startswith("deepseek") else _gqa_moe(reader, arch, layout)
    stored = checkpoint_quantization(config)
    return facts if stored == "none" else facts.model_copy(update={"checkpoint_quantization": stored})


def checkpoint_quantization(config: Mapping[str, Any]) -> str:
    """How a checkpoint stores its weights, from config.json ``quantization_config`` (what vLLM reads to load it):
    ``fp8`` (DeepSeek-V3/R1), ``int8``/``int4`` for GPTQ/AWQ at 8/4 bits, else ``none``: sized at 16 bits, an upper
    bound for any other method (compressed-tensors, bitsandbytes, ...), as before this was read."""
    qc = config.get("quantization_config")
    if not isinstance(qc, Mapping):
        return "none"
    method, bits = str(qc.get("quant_method") or "")[:64], qc.get("bits")
    if method == "fp8":
        return "fp8"
    if method in ("gptq", "awq") and bits in (4, 8):
        return "int4" if bits == 4 else "int8"
    return "none"


def _check_size(config: Any) -> None:
    """SpecInvalid when the config's JSON text would exceed MAX_CONFIG_BYTES or nest deeper than MAX_CONFIG_DEPTH.

    Walks iteratively and stops at the first byte over, so a huge or deep config costs at most ~MAX_CONFIG_BYTES steps.
    """
    size, stack = 0, [(config, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise SpecInvalid(
                f"spec.model.config is nested deeper than {MAX_CONFIG_DEPTH} levels; paste the model's config.json, "
                "or only the keys docs/capacity-model.md lists",
                reason="ModelConfigInvalid",
            )
        if isinstance(node, Mapping):
            size += 2
            children: Iterable[Any] = node.items()
        elif isinstance(node, (list, tuple)):
            size += 2
            children = ((None, item) for item in node)
        else:
            children = ()
            size += (
                len(node) + 2
                if isinstance(node, str)
                else 8 + (node.bit_length() // 3 if isinstance(node, int) else 16)
            )
        for key, value in children:
            size += 2 + (len(key) + 4 if isinstance(key, str) else 0)
            if size > MAX_CONFIG_BYTES:
                break
            stack.append((value, depth + 1))
        if size > MAX_CONFIG_BYTES:
            raise SpecInvalid(
                f"spec.model.config is over {MAX_CONFIG_BYTES} bytes (a model's config.json is a few KiB); paste "
                "the model's config.json, or only the keys docs/capacity-model.md lists",
                reason="ModelConfigInvalid",
            )


class _Reader:
    """Typed access to config keys with a SpecInvalid naming the key when it is missing, wrong or out of bounds."""

    def __init__(self, config: Mapping[str, Any], arch: str):
        self.config, self.arch = config, arch

    def int(self, key: str, default: Any = ..., minimum: int = 1) -> Any:
        value = self.config.get(key, default)
        if value is ...:
            raise SpecInvalid(
                f"{self.arch} config.json is missing {key!r}; paste the model's full config.json under "
                "spec.model.config",
                reason="ModelConfigInvalid",
            )
        if value is None:
            return None
        maximum = LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            shown = repr(value) if isinstance(value, (int, float)) and abs(value) < 10**30 else _short(value)
            raise SpecInvalid(
                f"{self.arch} config.json {key!r} is {shown}; expected an integer from {minimum} to {maximum} "
                "(planning's bound, far above any published model)",
                reason="ModelConfigInvalid",
            )
        return value

    def layer_set(self, key: str, layers: int) -> set[int]:
        """A list of layer indices (``mlp_only_layers``) as a set; SpecInvalid unless each is in [0, layers)."""
        value = self.config.get(key) or []
        bad = (value,) if not isinstance(value, list) else [
            i for i in value if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < layers]
        if bad:
            raise SpecInvalid(
                f"{self.arch} config.json {key!r} has {_short(bad[0])}; expected a list of layer indices "
                f"from 0 to {layers - 1}",
                reason="ModelConfigInvalid",
            )
        return set(value)

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


def _short(value: Any) -> str:
    """A bounded repr for messages (a config value may be megabytes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"an integer of {len(hex(value)) - 2} hex digits" if abs(value) >= 10**30 else repr(value)
    text = repr(value) if not isinstance(value, (str, list, dict, tuple)) or len(value) < 40 else (
        f"a {type(value).__name__} of length {len(value)}")
    return text[:60]


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
    kv_heads = _check_kv_heads(r, kv_heads, heads)
    head_dim = r.int("head_dim", None) or _derived_head_dim(r, hidden, heads)
    if layout == "mixtral":
        experts = r.int("num_local_experts")
        expert_width = r.int("intermediate_size")
        shared_width = 0
        moe_layers = layers
    else:
        experts = r.int("num_experts")
        expert_width = r.int("moe_intermediate_size")
        shared_width = r.int("shared_expert_intermediate_size", 0, minimum=0) if layout == "qwen2_moe" else 0
        step = r.int("decoder_sparse_step", 1)
        mlp_only = r.layer_set("mlp_only_layers", layers)
        # layer i is MoE when (i + 1) % step == 0 and i is not in mlp_only_layers
        moe_layers = layers // step - sum(1 for i in mlp_only if (i + 1) % step == 0)
    _check_moe_layers(r, moe_layers)
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
    # layer i is MoE when i >= first_dense and i % freq == 0: the multiples of freq in [first_dense, layers)
    moe_layers = max(0, (layers - 1) // freq - (first_dense - 1) // freq)
    _check_moe_layers(r, moe_layers)
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


def _check_kv_heads(r: _Reader, kv_heads: int, heads: int) -> int:
    if kv_heads > heads:
        raise SpecInvalid(
            f"{r.arch} config.json 'num_key_value_heads' is {kv_heads}, more than 'num_attention_heads' ({heads})",
            reason="ModelConfigInvalid",
        )
    return kv_heads


def _derived_head_dim(r: _Reader, hidden: int, heads: int) -> int:
    if hidden < heads:
        raise SpecInvalid(
            f"{r.arch} config.json has no 'head_dim' and hidden_size {hidden} / num_attention_heads {heads} is below "
            "1; "
            "set head_dim",
            reason="ModelConfigInvalid",
        )
    return hidden // heads


def _check_moe_layers(r: _Reader, moe_layers: int) -> None:
    if moe_layers < 1:
        raise SpecInvalid(
            f"{r.arch} config.json leaves no MoE layer (first_k_dense_replace / moe_layer_freq, or "
            "decoder_sparse_step / mlp_only_layers, make every layer dense); this operator serves MoE models",
            reason="ModelConfigInvalid",
        )


def _check_top_k(arch: str, top_k: int, experts: int) -> None:
    if top_k > experts:
        raise SpecInvalid(
            f"{arch} config.json routes each token to {top_k} experts but has only {experts}",
            reason="ModelConfigInvalid",
        )
