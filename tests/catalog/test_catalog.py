"""The shipped accelerator catalog and the cluster's overrides (a ConfigMap-shaped dict)."""
from __future__ import annotations

import pytest

from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid, UserError

REQUIRED = {
    "cpu", "nvidia-h100", "nvidia-h800", "nvidia-h200", "nvidia-a100-80gb", "nvidia-l40s", "nvidia-l4",
    "ascend-910b", "ascend-910c", "ascend-310p",
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.default()


def test_every_contract_key_is_present(catalog):
    assert REQUIRED <= set(catalog.keys())


def test_every_price_is_dated_and_sourced_or_explicitly_missing(catalog):
    for key in catalog.keys():
        acc = catalog.get(key)
        assert acc.price_source, key
        if acc.price_per_device_hour is not None:
            assert acc.price_date and len(acc.price_date) >= 7, key  # YYYY-MM at least
    for key in ("ascend-910b", "ascend-910c", "ascend-310p"):
        assert catalog.get(key).price_per_device_hour is None  # no public on-demand list price


def test_vendor_specific_names(catalog):
    h800 = catalog.get("nvidia-h800")
    assert (h800.vendor, h800.ray_resource, h800.visible_devices_env) == ("nvidia", "GPU", "CUDA_VISIBLE_DEVICES")
    assert catalog.resource_name("nvidia-h800") == "nvidia.com/gpu"
    assert h800.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H800"}
    assert catalog.get("nvidia-a100-80gb").node_selector == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    b = catalog.get("ascend-910b")
    assert (b.ray_resource, b.visible_devices_env) == ("NPU", "ASCEND_RT_VISIBLE_DEVICES")
    assert b.node_selector == {"accelerator": "huawei-Ascend910"}
    assert catalog.get("cpu").resource_name() is None


def test_dtype_support_is_none_where_the_hardware_lacks_it(catalog):
    assert catalog.get("nvidia-a100-80gb").tflops.fp8 is None
    assert catalog.get("ascend-910b").tflops.fp8 is None
    assert catalog.get("ascend-310p").tflops.bf16 is None
    assert catalog.get("ascend-310p").tflops.sixteen_bit == catalog.get("ascend-310p").tflops.fp16
    h100 = catalog.get("nvidia-h100").tflops
    assert h100.fp8 == pytest.approx(2 * h100.bf16, rel=0.01)  # Hopper: fp8 dense is twice bf16 dense


def test_ascend_resource_scheme_is_selectable(catalog):
    assert catalog.resource_name("ascend-910b") == "huawei.com/Ascend910"
    assert catalog.resource_name("ascend-310p") == "huawei.com/Ascend310P"
    hami = catalog.with_overrides({"data": {"ascendResourceScheme": "hami"}})
    assert hami.resource_name("ascend-910b") == "huawei.com/Ascend910B3"
    assert hami.resource_name("ascend-910c") == "huawei.com/Ascend910C"
    assert hami.resource_name("nvidia-h100") == "nvidia.com/gpu"  # NVIDIA unaffected
    assert catalog.resource_name("ascend-910b") == "huawei.com/Ascend910"  # the original is unchanged


def test_price_order_pool_then_configmap_then_catalog(catalog):
    assert catalog.price("nvidia-h100") == catalog.get("nvidia-h100").price_per_device_hour
    overridden = catalog.with_overrides({"prices": {"nvidia-h100": 1.5, "ascend-910b": "0.9"}})
    assert overridden.price("nvidia-h100") == 1.5
    assert overridden.price("ascend-910b") == 0.9
    assert overridden.get("ascend-910b").price_source == "cluster catalog ConfigMap"
    assert overridden.price("nvidia-h100", override=0.7) == 0.7


def test_missing_price_says_what_to_set(catalog):
    with pytest.raises(SpecInvalid) as err:
        catalog.price("ascend-910b", pool="npu")
    assert err.value.reason == "NoPrice"
    message = str(err.value)
    assert "pricePerDeviceHour" in message and "'npu'" in message and "ascend-910b" in message


def test_configmap_values_may_be_yaml_strings_and_add_accelerators(catalog):
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "data": {
            "prices": "nvidia-l4: 0.5\n",
            "accelerators": (
                "nvidia-b200:\n"
                "  vendor: nvidia\n"
                "  resources: {default: nvidia.com/gpu}\n"
                "  nodeSelector: {nvidia.com/gpu.product: NVIDIA-B200}\n"
                "  memoryGiB: 180\n"
                "  tflops: {bf16: 2250, fp8: 4500}\n"
                "  memoryBandwidthGBps: 8000\n"
                "  interconnectGBps: 1800\n"
                "  pricePerDeviceHour: 6.0\n"
                "  rayResource: GPU\n"
                "nvidia-h100:\n"
                "  memoryGiB: 79.6\n"
            ),
        },
    }
    c = catalog.with_overrides(cm)
    assert c.get("nvidia-b200").memory_gib == 180
    assert c.resource_name("nvidia-b200") == "nvidia.com/gpu"
    assert c.get("nvidia-h100").memory_gib == 79.6  # a partial override keeps the other fields
    assert c.get("nvidia-h100").tflops.bf16 == catalog.get("nvidia-h100").tflops.bf16
    assert c.price("nvidia-l4") == 0.5


@pytest.mark.parametrize(
    "config, words",
    [
        ({"ascendResourceScheme": "volcano"}, "ascendResourceScheme"),
        ({"prices": {"nvidia-x1": 1.0}}, "nvidia-x1"),
        ({"prices": {"nvidia-h100": "cheap"}}, "not a number"),
        ({"prices": {"nvidia-h100": -1}}, "negative"),
        ({"price": {}}, "unknown key"),
        ({"accelerators": {"npu-x": {"vendor": "huawei"}}}, "npu-x"),
        ({"accelerators": "a: [unclosed"}, "not valid YAML"),
    ],
)
def test_bad_overrides_are_user_errors_naming_the_key(catalog, config, words):
    with pytest.raises(UserError) as err:
        catalog.with_overrides(config)
    assert words in str(err.value)


def test_unknown_accelerator_lists_known_keys(catalog):
    with pytest.raises(SpecInvalid) as err:
        catalog.get("nvidia-h20")
    assert err.value.reason == "UnknownAccelerator"
    assert "nvidia-h800" in str(err.value)


def test_an_empty_configmap_changes_nothing(catalog):
    c = catalog.with_overrides({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "moe-catalog"}})
    assert c.keys() == catalog.keys() and c.ascend_scheme == "mindcluster"


def test_docs_price_table_matches_the_shipped_data(catalog):
    """docs/catalog.md's price table is written from the YAML; a changed price must be changed in both."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text(encoding="utf-8")
    rows: dict[str, str] = {}
    for line in doc.splitlines():
        if line.startswith("| `"):
            rows.setdefault(line.split("|")[1].strip(" `"), line)  # the first table: the figures
    for key in catalog.keys():
        acc = catalog.get(key)
        price_rows = [r for r in doc.splitlines() if r.startswith(f"| `{key}` |") and (acc.price_source in r)]
        assert price_rows, f"docs/catalog.md has no price row for {key} with its source"
        cell = price_rows[0].split("|")[2].strip()
        if acc.price_per_device_hour is None:
            assert cell.startswith("**none")
        else:
            assert float(cell) == acc.price_per_device_hour
        assert f"| {acc.memory_gib:g} |" in rows[key]
