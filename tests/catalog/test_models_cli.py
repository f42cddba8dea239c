"""``moectl models``: the model catalog as a table or JSON, with the cluster's ConfigMap overrides when given."""
from __future__ import annotations

import json

import yaml

from moe_operator.catalog import Catalog
from moe_operator.cli.main import main

KEYS = {"name", "huggingFace", "architecture", "totalParams", "activeParams", "experts", "expertsPerToken", "layers",
        "weightsDtype", "copiedOn", "weightsBytes"}


def test_json_lists_every_model_with_its_sizes(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(Catalog.default().models.keys())
    for name, r in rows.items():
        assert set(r) == KEYS, name
        b = r["weightsBytes"]
        assert set(b) == {"none", "fp8", "int8", "int4"}
        # 16-bit weights are 2 bytes a parameter; quantization shrinks everything but embeddings and head
        assert b["none"] == 2 * r["totalParams"], name
        assert b["int4"] < b["int8"] == b["fp8"] < b["none"], name
        assert r["activeParams"] < r["totalParams"] and r["expertsPerToken"] < r["experts"], name
    v3 = rows["deepseek-v3"]
    assert (v3["experts"], v3["layers"], v3["weightsDtype"]) == (256, 61, "fp8")
    assert 660e9 < v3["totalParams"] < 680e9 and "deepseek-ai/DeepSeek-V3" in v3["huggingFace"]


def test_table_names_every_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in Catalog.default().models.keys():
        assert name in out
    assert "671.0B" in out and "GiB" in out and "hf://deepseek-ai/DeepSeek-V3," in out


def test_catalog_configmap_adds_models(tmp_path, capsys):
    mixtral = Catalog.default().models.get("mixtral-8x7b").model_dump(by_alias=True, exclude={"key"})
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
          "data": {"models": yaml.safe_dump({"our-mixtral": {**mixtral, "huggingFace": ["acme/Mixtral-ft"]}})}}
    path = tmp_path / "cm.yaml"
    path.write_text(yaml.safe_dump(cm))
    assert main(["models", "--json", "--catalog", str(path)]) == 0
    assert "our-mixtral" in {r["name"] for r in json.loads(capsys.readouterr().out)}


def test_bad_catalog_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "cm.yaml"
    path.write_text(yaml.safe_dump({"data": {"models": "x: {huggingFace: [a/b]}"}}))
    assert main(["models", "--catalog", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "catalog model 'x'" in err and err.count("\n") == 1


def _spec_file(tmp_path, source: str):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment", "metadata": {"name": "ds"},
        "spec": {"model": {"source": source},   # only the source and the pool, as the issue asks
                 "pools": [{"name": "h800", "accelerator": "nvidia-h800", "devicesPerReplica": 16}]}}))
    return str(path)


def test_plan_from_the_hf_id_alone(tmp_path, capsys):
    assert main(["plan", "--json", "-f", _spec_file(tmp_path, "hf://deepseek-ai/DeepSeek-V3")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["architecture"] == "deepseek_v3" and out["pools"][0]["fit"]["fits"]


def test_plan_of_a_typo_names_the_nearest_models(tmp_path, capsys):
    assert main(["plan", "-f", _spec_file(tmp_path, "hf://deepseek-ai/DeepSeek-V4-typo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "deepseek-v3 (deepseek-ai/DeepSeek-V3)" in err and err.count("\n") == 1
