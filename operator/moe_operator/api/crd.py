"""Turn the pydantic models into a structural CustomResourceDefinition.

Kubernetes wants OpenAPI v3 without ``$ref``/``anyOf``-for-null, with ``exclusiveMinimum`` as a boolean, and
``default: {}`` on objects whose members have defaults (so the API server fills nested defaults too).
Output is deterministic: the CRD in ``crds/`` is compared byte for byte by a test.
"""
from __future__ import annotations

from typing import Any

from .manifest import API_VERSION, GROUP, KIND, PLURAL, SHORT_NAME, VERSION
from .spec import MoEDeploymentSpec
from .status import MoEDeploymentStatus

_DROP = {"title", "additionalProperties"}

PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready", "description": "Ready condition status."},
    {
        "name": "Replicas",
        "type": "string",
        "jsonPath": ".status.replicas",
        "description": "Ready/desired replicas per pool.",
    },
    {
        "name": "Tokens/s",
        "type": "number",
        "jsonPath": ".status.tokensPerSecond",
        "description": "Observed demand, tokens/s.",
    },
    {
        "name": "$/1M",
        "type": "number",
        "jsonPath": ".status.costPerMillionTokens",
        "description": "US$ per 1M tokens at observed demand.",
    },
    {
        "name": "$/h",
        "type": "number",
        "jsonPath": ".status.costPerHour",
        "priority": 1,
        "description": "US$ per hour of the fleet.",
    },
    {"name": "Budget", "type": "string", "jsonPath": ".status.budgetState", "description": "Ok, Limited or NoBudget."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "anyOf" in node:  # Optional[X] -> X (absent means null)
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", "x") is None:
            rest.pop("default")
        return _resolve({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _resolve(value, defs)
    return out


def _kubify(node: dict[str, Any], raw_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Post-process one resolved schema node in place, recursively."""
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    if node.get("type") == "object":
        props = node.get("properties")
        if props is None and "additionalProperties" not in node:
            node["x-kubernetes-preserve-unknown-fields"] = True
        required = set(node.get("required", ()))
        for name, sub in (props or {}).items():
            _kubify(sub)
            if name not in required and sub.get("type") == "object" and sub.get("properties") and \
                    "default" not in sub and any("default" in p for p in sub["properties"].values()):
                sub["default"] = {}
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        _kubify(node["items"])
    return node


def object_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="serialization" if model is MoEDeploymentStatus else "validation")
    defs = raw.get("$defs", {})
    schema = _resolve(raw, defs)
    _restore_maps(schema, raw, defs)
    return _kubify(schema)


def _restore_maps(schema: dict[str, Any], raw: dict[str, Any], defs: dict[str, Any]) -> None:
    """additionalProperties was dropped wholesale; put back the typed ones (string maps, int maps)."""
    def walk(res: dict[str, Any], src: dict[str, Any]) -> None:
        src = _resolve_shallow(src, defs)
        ap = src.get("additionalProperties")
        if isinstance(ap, dict):
            res["additionalProperties"] = _resolve(ap, defs)
        for name, sub in (res.get("properties") or {}).items():
            walk(sub, (src.get("properties") or {}).get(name, {}))
        if res.get("type") == "array" and isinstance(res.get("items"), dict):
            walk(res["items"], _resolve_shallow(src, defs).get("items", {}))
    walk(schema, raw)


def _resolve_shallow(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in node:
            node = {**defs[node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        elif "anyOf" in node:
            opts = [o for o in node["anyOf"] if o.get("type") != "null"]
            node = {**opts[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        else:
            return node


def build_crd() -> dict[str, Any]:
    spec_schema = object_schema(MoEDeploymentSpec)
    status_schema = object_schema(MoEDeploymentStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["moe", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"{KIND} ({API_VERSION}) serves a Mixture-of-Experts model on one or more "
                            "accelerator pools through a KubeRay RayService, autoscaled on tokens/s under a cost "
                            "budget.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version of this object."},
                                "kind": {"type": "string", "description": "Kind of this object."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }
