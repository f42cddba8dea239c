"""Accelerator catalog: what each device type is, costs, and how Kubernetes and Ray name it.

The defaults ship in ``data/accelerators.yaml`` (documented in docs/catalog.md). A cluster admin overrides them with a
ConfigMap (``Catalog.with_overrides``): prices, the Ascend resource-naming scheme of the cluster, extra accelerators.
A pool overrides its price with ``pricePerDeviceHour``.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any, Literal, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moe_operator.errors import SpecInvalid, UserError

Vendor = Literal["nvidia", "huawei", "cpu"]
AscendScheme = Literal["mindcluster", "hami"]
Dtype = Literal["bf16", "fp16", "fp8", "int8"]
ASCEND_SCHEMES = ("mindcluster", "hami")


def _camel(name: str) -> str:
    """memory_gib -> memoryGiB, memory_bandwidth_gbps -> memoryBandwidthGBps, node_selector -> nodeSelector."""
    head, *rest = name.split("_")
    return (head + "".join(part.title() for part in rest)).replace("Gib", "GiB").replace("Gbps", "GBps")


class Throughput(BaseModel):
    """Peak dense TFLOP/s (int8: TOP/s) per device by operand type; None where the device has no native support."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    bf16: Optional[float] = Field(default=None, gt=0)
    fp16: Optional[float] = Field(default=None, gt=0)
    fp8: Optional[float] = Field(default=None, gt=0)
    int8: Optional[float] = Field(default=None, gt=0)

    def for_dtype(self, dtype: Dtype) -> Optional[float]:
        return getattr(self, dtype)

    @property
    def sixteen_bit(self) -> float:
        """TFLOP/s for 16-bit work: bf16, or fp16 on devices without bf16 (Ascend 310P)."""
        value = self.bf16 or self.fp16
        if value is None:
            raise ValueError("accelerator has neither bf16 nor fp16 throughput")
        return value


class Accelerator(BaseModel):
    """One accelerator type. Units: GiB, GB/s (1e9 bytes/s), TFLOP/s, US$ per device-hour, seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=_camel, populate_by_name=True)

    key: str
    vendor: Vendor
    description: str = ""
    resources: dict[str, str] = Field(
        default_factory=dict,
        description="Kubernetes extended resource per naming scheme: 'default' (NVIDIA), or 'mindcluster'/'hami' (Ascend).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    memory_gib: float = Field(gt=0)
    tflops: Throughput
    memory_bandwidth_gbps: float = Field(gt=0)
    interconnect_gbps: float = Field(gt=0)
    step_overhead_seconds: float = Field(default=0.00002, ge=0, description="Framework/launch time per layer per forward step.")
    sequence_overhead_seconds: float = Field(
        default=0.0, ge=0, description="Extra time per layer per sequence in a step (engines that loop over sequences)."
    )
    price_per_device_hour: Optional[float] = Field(default=None, ge=0)
    price_source: str = ""
    price_date: Optional[str] = None
    ray_resource: str = Field(description="Ray resource a worker advertises for one device: GPU, NPU or CPU.")
    visible_devices_env: Optional[str] = None
    collectives: str = ""

    def resource_name(self, ascend_scheme: AscendScheme = "mindcluster") -> Optional[str]:
        """The extended resource a pod requests for one device (None for cpu: it asks for plain cpu/memory)."""
        if not self.resources:
            return None
        if self.vendor == "huawei":
            return self.resources.get(ascend_scheme) or self.resources.get("default")
        return self.resources.get("default") or next(iter(self.resources.values()))


class Catalog:
    """The accelerators a cluster offers, keyed as in a pool's ``accelerator`` field."""

    def __init__(self, accelerators: Mapping[str, Accelerator], ascend_scheme: AscendScheme = "mindcluster"):
        self.accelerators = dict(accelerators)
        self.ascend_scheme: AscendScheme = ascend_scheme

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "Catalog":
        """The shipped catalog (data/accelerators.yaml)."""
        return cls(_default_accelerators())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], ascend_scheme: AscendScheme = "mindcluster") -> "Catalog":
        """Build from ``{accelerators: {key: {camelCase fields}}}``."""
        return cls(_parse_accelerators(data.get("accelerators") or {}, base={}), ascend_scheme)

    def with_overrides(self, config: Mapping[str, Any] | None) -> "Catalog":
        """A new catalog with a cluster admin's overrides applied.

        ``config`` is a ConfigMap (``{"data": {...}}``) or its data: keys ``prices`` (``{key: $/device-hour}``),
        ``ascendResourceScheme`` (``mindcluster`` | ``hami``) and ``accelerators`` (``{key: {fields}}``: new types,
        or fields replacing those of a known type). ConfigMap values are strings, so each may be YAML text.
        Unknown keys or bad values raise UserError naming the key.
        """
        if not config:
            return Catalog(self.accelerators, self.ascend_scheme)
        if not isinstance(config, Mapping):
            raise UserError("catalog config must be a mapping (a ConfigMap or its data)")
        is_configmap = config.get("kind") == "ConfigMap" or "apiVersion" in config or "data" in config
        data = (config.get("data") or {}) if is_configmap else config
        if not isinstance(data, Mapping):
            raise UserError("catalog config must be a mapping (a ConfigMap or its data)")
        data = {key: _maybe_yaml(key, value) for key, value in data.items()}
        unknown = set(data) - {"prices", "ascendResourceScheme", "accelerators"}
        if unknown:
            raise UserError(
                f"catalog config has unknown key(s) {sorted(unknown)}; use prices, ascendResourceScheme, accelerators"
            )
        scheme = data.get("ascendResourceScheme") or self.ascend_scheme
        if scheme not in ASCEND_SCHEMES:
            raise UserError(f"catalog config ascendResourceScheme is {scheme!r}; use one of {list(ASCEND_SCHEMES)}")
        accelerators = dict(self.accelerators)
        accelerators.update(_parse_accelerators(data.get("accelerators") or {}, base=accelerators))
        prices = data.get("prices") or {}
        if not isinstance(prices, Mapping):
            raise UserError("catalog config prices must map accelerator keys to US$ per device-hour")
        for key, price in prices.items():
            if key not in accelerators:
                raise UserError(f"catalog config prices names unknown accelerator {key!r}; known: {sorted(accelerators)}")
            try:
                value = float(price)
            except (TypeError, ValueError):
                raise UserError(f"catalog config price for {key!r} is {price!r}, not a number of US$ per device-hour") from None
            if value < 0:
                raise UserError(f"catalog config price for {key!r} is negative ({value})")
            accelerators[key] = accelerators[key].model_copy(
                update={"price_per_device_hour": value, "price_source": "cluster catalog ConfigMap", "price_date": None}
            )
        return Catalog(accelerators, scheme)  # type: ignore[arg-type]

    # -- lookups ------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return sorted(self.accelerators)

    def get(self, key: str) -> Accelerator:
        """The accelerator for ``key``; SpecInvalid(UnknownAccelerator) naming the known keys otherwise."""
        try:
            return self.accelerators[key]
        except KeyError:
            raise SpecInvalid(
                f"accelerator {key!r} is not in the catalog; use one of {', '.join(self.keys())} "
                "or add it to the cluster's catalog ConfigMap",
                reason="UnknownAccelerator",
            ) from None

    def __contains__(self, key: object) -> bool:
        return key in self.accelerators

    def resource_name(self, key: str) -> Optional[str]:
        """Kubernetes resource for one device of ``key`` under this cluster's Ascend naming scheme."""
        return self.get(key).resource_name(self.ascend_scheme)

    def price(self, key: str, override: Optional[float] = None, pool: str | None = None) -> float:
        """US$ per device-hour: the pool's override, else the catalog's; SpecInvalid(NoPrice) when neither exists."""
        if override is not None:
            return float(override)
        acc = self.get(key)
        if acc.price_per_device_hour is None:
            where = f"pool {pool!r}" if pool else "the pool"
            raise SpecInvalid(
                f"accelerator {key} has no catalog price ({acc.price_source or 'none recorded'}); "
                f"set pricePerDeviceHour on {where} (US$ per device-hour) or a price in the cluster's catalog ConfigMap",
                reason="NoPrice",
            )
        return acc.price_per_device_hour


def _maybe_yaml(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise UserError(f"catalog config {key} is not valid YAML: {exc}") from None


def _parse_accelerators(raw: Any, base: Mapping[str, Accelerator]) -> dict[str, Accelerator]:
    """Parse ``{key: {camelCase fields}}``; for a key already in ``base`` the fields given replace its own."""
    if not isinstance(raw, Mapping):
        raise UserError("catalog accelerators must map accelerator keys to their fields")
    out: dict[str, Accelerator] = {}
    for key, fields in raw.items():
        if not isinstance(fields, Mapping):
            raise UserError(f"catalog accelerator {key!r} must be a mapping of fields")
        merged: dict[str, Any] = base[key].model_dump(by_alias=True) if key in base else {}
        merged.update(fields)
        merged["key"] = key
        try:
            out[key] = Accelerator.model_validate(merged)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
            )
            raise UserError(f"catalog accelerator {key!r} is invalid: {problems}") from None
    return out


@lru_cache(maxsize=1)
def _default_accelerators() -> dict[str, Accelerator]:
    text = resources.files("moe_operator").joinpath("data/accelerators.yaml").read_text(encoding="utf-8")
    return _parse_accelerators(yaml.safe_load(text)["accelerators"], base={})
