"""Accelerator catalog: what each device type is, costs, and how Kubernetes and Ray name it.

The defaults ship in ``data/accelerators.yaml`` (documented in docs/catalog.md). A cluster admin overrides them with a
ConfigMap (``Catalog.with_overrides``): prices, the Ascend resource-naming scheme of the cluster, extra accelerators,
and models (``model_catalog``: the planning facts of well-known MoE models, carried here as ``Catalog.models``).
A pool overrides its price with ``pricePerDeviceHour``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

from moe_operator.catalog_data import configmap_data, packaged_yaml, parse_entries
from moe_operator.errors import SpecInvalid, UserError
from moe_operator.model_catalog import ModelCatalog

Vendor = Literal["nvidia", "huawei", "cpu"]
AscendScheme = Literal["mindcluster", "hami"]
Dtype = Literal["bf16", "fp16", "fp8", "int8"]
ASCEND_SCHEMES = ("mindcluster", "hami")
# Per vendor, kept here once (planning and render read them): devices one node holds (HGX/DGX boards and Atlas 800
# servers carry 8; a CPU "pool" is one process per pod), and the torch device type the runtime runs on.
DEVICES_PER_NODE: dict[str, int] = {"nvidia": 8, "huawei": 8, "cpu": 1}
TORCH_DEVICE: dict[str, str] = {"nvidia": "cuda", "huawei": "npu", "cpu": "cpu"}


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
        description="Kubernetes extended resource per naming scheme: 'default' (NVIDIA), or 'mindcluster'/'hami' "
        "(Ascend).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    memory_gib: float = Field(gt=0)
    tflops: Throughput
    memory_bandwidth_gbps: float = Field(gt=0)
    interconnect_gbps: float = Field(gt=0)
    step_overhead_seconds: float = Field(
        default=0.00002, ge=0, description="Framework/launch time per layer per forward step."
    )
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
    """The accelerators a cluster offers, keyed as in a pool's ``accelerator`` field, and the models it knows."""

    def __init__(self, accelerators: Mapping[str, Accelerator], ascend_scheme: AscendScheme = "mindcluster",
                 models: ModelCatalog | None = None):
        self.accelerators = dict(accelerators)
        self.ascend_scheme: AscendScheme = ascend_scheme
        self.models = models if models is not None else ModelCatalog.default()

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "Catalog":
        """The shipped catalog (data/accelerators.yaml)."""
        return cls(_default_accelerators())

    def with_overrides(self, config: Mapping[str, Any] | None) -> "Catalog":
        """A new catalog with a cluster admin's overrides applied.

        ``config`` is a ConfigMap (``{"data": {...}}``) or its data: keys ``prices`` (``{key: $/device-hour}``),
        ``ascendResourceScheme`` (``mindcluster`` | ``hami``), ``accelerators`` (``{key: {fields}}``: new types,
        or fields replacing those of a known type) and ``models`` (the same for the model catalog).
        ConfigMap values are strings, so each may be YAML text. Unknown keys or bad values raise UserError naming the
        key.
        """
        if not config:
            return Catalog(self.accelerators, self.ascend_scheme, self.models)
        data = configmap_data(config)
        unknown = set(data) - {"prices", "ascendResourceScheme", "accelerators", "models"}
        if unknown:
            raise UserError(
                f"catalog config has unknown key(s) {sorted(unknown)}; "
                "use prices, ascendResourceScheme, accelerators, models"
            )
        scheme = data.get("ascendResourceScheme") or self.ascend_scheme
        if scheme not in ASCEND_SCHEMES:
            raise UserError(f"catalog config ascendResourceScheme is {scheme!r}; use one of {list(ASCEND_SCHEMES)}")
        accelerators = dict(self.accelerators)
        accelerators.update(parse_entries(data.get("accelerators") or {}, accelerators, Accelerator, "accelerator"))
        prices = data.get("prices") or {}
        if not isinstance(prices, Mapping):
            raise UserError("catalog config prices must map accelerator keys to US$ per device-hour")
        for key, price in prices.items():
            if key not in accelerators:
                raise UserError(
                    f"catalog config prices names unknown accelerator {key!r}; known: {sorted(accelerators)}"
                )
            try:
                value = float(price)
            except (TypeError, ValueError):
                raise UserError(
                    f"catalog config price for {key!r} is {price!r}, not a number of US$ per device-hour"
                ) from None
            if value < 0:
                raise UserError(f"catalog config price for {key!r} is negative ({value})")
            accelerators[key] = accelerators[key].model_copy(
                update={"price_per_device_hour": value, "price_source": "cluster catalog ConfigMap", "price_date": None}
            )
        return Catalog(accelerators, scheme, self.models.with_overrides(data.get("models")))  # type: ignore[arg-type]

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
                f"set pricePerDeviceHour on {where} (US$ per device-hour) or a price in the cluster's catalog "
                "ConfigMap",
                reason="NoPrice",
            )
        return acc.price_per_device_hour


@lru_cache(maxsize=1)
def _default_accelerators() -> dict[str, Accelerator]:
    return parse_entries(packaged_yaml("accelerators.yaml")["accelerators"], {}, Accelerator, "accelerator")
