"""The bad-input corpus: each entry is (id, mutation of a good spec, where it must be caught, what the message says).

``where`` is ``api`` (the API server rejects it through the CRD schema / CEL rules) or a SpecInvalid reason the
operator must report (schema-valid but unservable). ``says`` is a fragment the message must contain, so a
person reading it learns what to change.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

GOOD: dict[str, Any] = {
    "model": {"source": "builtin://tiny-moe", "architecture": "tiny"},
    "engine": "torch",
    "pools": [{"name": "cpu", "accelerator": "cpu", "devicesPerReplica": 1, "minReplicas": 1, "maxReplicas": 2}],
}

MIXTRAL = {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
           "vocab_size": 32000, "max_position_embeddings": 32768}


def _pool(**kv) -> Callable[[dict], None]:
    def f(s):
        s["pools"][0].update(kv)
    return f


def _set(path: str, value) -> Callable[[dict], None]:
    def f(s):
        *head, last = path.split(".")
        d = s
        for k in head:
            d = d.setdefault(k, {})
        d[last] = value
    return f


def _mixtral_on(accelerator: str, devices: int, **extra) -> Callable[[dict], None]:
    def f(s):
        s["model"] = {"source": "hf://mistralai/Mixtral-8x7B-v0.1", "architecture": "mixtral", "config": MIXTRAL}
        s["engine"] = "vllm"
        s["pools"] = [{"name": "p", "accelerator": accelerator, "devicesPerReplica": devices, **extra}]
    return f


def _seq(*fs):
    def f(s):
        for g in fs:
            g(s)
    return f


CORPUS: list[tuple[str, Callable[[dict], None], str, str]] = [
    ("wrong-type-devices", _pool(devicesPerReplica="eight"), "api", "devicesPerReplica"),
    ("negative-min-replicas", _pool(minReplicas=-1), "api", "minReplicas"),
    ("inverted-replica-bounds", _pool(minReplicas=3, maxReplicas=1), "api", "minReplicas must not exceed maxReplicas"),
    ("replicas-outside-bounds", _pool(replicas=5), "api", "replicas must lie between"),
    ("zero-devices", _pool(devicesPerReplica=0), "api", "devicesPerReplica"),
    ("zero-max-replicas", _pool(maxReplicas=0), "api", "maxReplicas"),
    ("duplicate-pools", lambda s: s["pools"].append(dict(s["pools"][0])), "api", "pool names must be unique"),
    ("no-pools", _set("pools", []), "api", "pools"),
    ("uppercase-pool-name", _pool(name="CPU"), "api", "name"),
    ("unknown-engine", _set("engine", "tensorrt"), "api", "engine"),
    ("unknown-quantization", _set("quantization", "fp4"), "api", "quantization"),
    ("source-scheme", _set("model.source", "ftp://models/x"), "api", "source"),
    ("unknown-field", _pool(gpuCount=8), "api", "gpuCount"),
    ("torch-fp8", _set("quantization", "fp8"), "api", "use engine vllm for fp8"),
    ("scale-to-zero-without-zero-pool", _set("autoscaling", {"scaleToZero": {"enabled": True}}), "api",
     "scaleToZero needs at least one pool with minReplicas 0"),
    ("two-metrics-sources", _set("autoscaling", {"metrics": {"prometheus": {"url": "http://p:9090"},
                                                            "scrape": {"url": "http://s/metrics"}}}), "api",
     "choose one metrics source"),
    ("utilization-over-one", _set("autoscaling", {"targetUtilization": 1.5}), "api", "targetUtilization"),
    ("tiny-context", _set("model.maxContextTokens", 10), "api", "maxContextTokens"),
    ("bad-disk-size", _set("cache", {"diskTier": {"enabled": True, "size": "lots"}}), "api", "size"),
    ("no-planning-facts", _set("model", {"source": "s3://b/model", "architecture": "mixtral"}), "api",
     "model needs its planning facts"),
    ("catalog-name-and-config", _set("model", {"source": "hf://org/model", "catalogName": "mixtral-8x7b",
                                               "config": MIXTRAL}), "api", "not both"),
    ("unknown-hf-model", _seq(_mixtral_on("nvidia-h800", 4), _set("model", {"source": "hf://deepseek-ai/DeepSeek-V4"})),
     "UnknownModel", "nearest: "),
    ("unknown-catalog-name", _seq(_mixtral_on("nvidia-h800", 4), _set("model", {"source": "s3://b/m",
                                                                             "catalogName": "mixtral-8x7"})),
     "UnknownModel", "mixtral-8x7b"),
    ("negative-price", _pool(pricePerDeviceHour=-1), "api", "pricePerDeviceHour"),
    ("emoji-node-selector-value", _pool(nodeSelector={"zone": "b\U0001F600"}), "api", "nodeSelector"),
    ("image-with-space", _pool(image="repo/img: latest"), "api", "image"),
    ("toleration-key-not-a-label-key", _pool(tolerations=[{"key": "k\u00e9y", "operator": "Exists"}]), "api",
     "tolerations"),
    ("unknown-accelerator", _pool(accelerator="nvidia-b300"), "UnknownAccelerator", "nvidia-h800"),
    ("model-does-not-fit", _mixtral_on("nvidia-l4", 1), "ModelDoesNotFit", "GiB"),
    ("missing-price", _mixtral_on("ascend-910b", 4), "NoPrice", "pricePerDeviceHour"),
    ("devices-do-not-divide-experts", _mixtral_on("nvidia-h800", 3), "DevicesDoNotDivideExperts", "experts"),
    ("vllm-on-cpu", _set("engine", "vllm"), "EngineUnsupported", "engine torch"),
    ("fp8-on-ascend", _seq(_mixtral_on("ascend-910b", 4, pricePerDeviceHour=1.0), _set("quantization", "fp8")),
     "QuantizationUnsupported", "int8"),
    ("config-with-1e15-layers",
     _seq(_mixtral_on("nvidia-h800", 4), _set("model.config", {**MIXTRAL, "num_hidden_layers": 10**15})),
     "ModelConfigInvalid", "num_hidden_layers"),
    ("architecture-mismatch", _seq(_mixtral_on("nvidia-h800", 4), _set("model.architecture", "qwen3_moe")),
     "ArchitectureMismatch", "model_type"),
    ("disk-tier-without-a-class", _set("cache", {"diskTier": {"enabled": True, "size": "1Gi"}}),
     "DiskTierNeedsStorageClass", "ReadWriteMany"),
    ("disk-tier-on-vllm", _seq(_mixtral_on("nvidia-h800", 4),
                               _set("cache", {"diskTier": {"enabled": True, "storageClassName": "nfs"}})),
     "DiskTierUnsupported", "accelerator memory"),
]


def moed_manifest(name: str, spec: dict[str, Any] = GOOD) -> str:
    """A MoEDeployment named ``name`` with ``spec``, as kubectl apply takes it."""
    import json

    return json.dumps({"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
                       "metadata": {"name": name}, "spec": spec})


def bad_spec(mutate: Callable[[dict], None]) -> dict:
    s = copy.deepcopy(GOOD)
    mutate(s)
    return s
