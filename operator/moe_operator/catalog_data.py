"""Loading shared by the packaged catalogs (accelerators, models) and the cluster's catalog ConfigMap.

Each catalog is YAML shipped under ``data/`` plus entries a cluster admin adds or changes in one ConfigMap. ConfigMap
``data`` values are strings, so each key may hold YAML text. Bad input raises UserError naming the key.
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from moe_operator.errors import UserError

Entry = TypeVar("Entry", bound=BaseModel)


def packaged_yaml(name: str) -> Any:
    """The parsed YAML file ``data/<name>`` of the moe_operator package."""
    return yaml.safe_load(resources.files("moe_operator").joinpath("data", name).read_text(encoding="utf-8"))


def configmap_data(config: Mapping[str, Any]) -> dict[str, Any]:
    """The data of a ConfigMap (or of a bare data mapping), with string values parsed as YAML."""
    if not isinstance(config, Mapping):
        raise UserError("catalog config must be a mapping (a ConfigMap or its data)")
    is_configmap = config.get("kind") == "ConfigMap" or "apiVersion" in config or "data" in config
    data = (config.get("data") or {}) if is_configmap else config
    if not isinstance(data, Mapping):
        raise UserError("catalog config must be a mapping (a ConfigMap or its data)")
    return {key: _maybe_yaml(key, value) for key, value in data.items()}


def _maybe_yaml(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise UserError(f"catalog config {key} is not valid YAML: {exc}") from None


def parse_entries(raw: Any, base: Mapping[str, Entry], cls: type[Entry], what: str) -> dict[str, Entry]:
    """Parse ``{key: {camelCase fields}}`` into ``cls``; for a key already in ``base`` the fields given replace its own.

    ``what`` names the kind of entry in messages ("accelerator", "model"); the key is stored in the field ``key``.
    """
    if not isinstance(raw, Mapping):
        raise UserError(f"catalog {what}s must map {what} keys to their fields")
    out: dict[str, Entry] = {}
    for key, fields in raw.items():
        if not isinstance(fields, Mapping):
            raise UserError(f"catalog {what} {key!r} must be a mapping of fields")
        merged: dict[str, Any] = base[key].model_dump(by_alias=True) if key in base else {}
        merged.update(fields)
        merged["key"] = key
        try:
            out[key] = cls.model_validate(merged)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
            )
            raise UserError(f"catalog {what} {key!r} is invalid: {problems}") from None
    return out
