"""The Dockerfiles in images/: they cannot be built here, so check what a build would trip over first.

Every file they COPY exists and passes their .dockerignore; every entry point they call exists; base images are
pinned; each engine's Ray version (and, for vLLM, Python minor) equals the one the operator renders; the operator
image stays free of torch and ray.
"""
from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from chart_tools import ROOT

IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    """ARG defaults, with ${VAR} references to earlier ARGs expanded."""
    args: dict[str, str] = {}
    for word, rest in instructions(path):
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), value)
    return args


def ignored(path: Path, rel: str) -> bool:
    """True when <Dockerfile>.dockerignore (last match wins, '!' re-includes) leaves ``rel`` out of the context."""
    ignore = Path(str(path) + ".dockerignore")
    result = False
    for line in ignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel.split("/")[0], pattern):
            result = not negate
    return result


def test_there_are_six_images():
    assert [p.name for p in DOCKERFILES] == ["operator.Dockerfile", "runtime-cann.Dockerfile",
                                            "runtime-cpu.Dockerfile", "runtime-cuda.Dockerfile",
                                            "vllm-ascend.Dockerfile", "vllm-router.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_files_exist_and_are_in_the_build_context(dockerfile):
    copies = [rest for word, rest in instructions(dockerfile) if word in {"COPY", "ADD"}]
    if not copies:  # an image that copies nothing must send an empty build context
        assert ignored(dockerfile, "pyproject.toml") and ignored(dockerfile, "operator"), dockerfile.name
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        if any(p.startswith("--from") for p in shlex.split(rest)):
            continue
        for src in parts[:-1]:
            rel = src.rstrip("/")
            assert (ROOT / rel).exists(), f"{dockerfile.name}: COPY {src}: no such path in the repository"
            assert not ignored(dockerfile, rel), f"{dockerfile.name}: COPY {src} is excluded by its .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile):
    args = arg_defaults(dockerfile)
    for word, rest in instructions(dockerfile):
        if word != "FROM":
            continue
        ref = rest.split()[0]
        if ref in {"build"}:
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
        name, _, tag = image.rpartition(":")
        assert name and "/" in name, f"{dockerfile.name}: {image} must name its registry/repository"
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{dockerfile.name}: {image} is not pinned"


def test_ray_version_matches_what_the_operator_renders():
    from moe_operator.render.images import Images

    for name in ("runtime-cpu", "runtime-cuda", "runtime-cann"):
        assert arg_defaults(IMAGES / f"{name}.Dockerfile")["RAY_VERSION"] == Images().ray_version, name
    assert arg_defaults(IMAGES / "vllm-ascend.Dockerfile")["RAY_VERSION"] == Images().vllm_ray_version
    assert arg_defaults(IMAGES / "vllm-router.Dockerfile")["RAY_VERSION"] == Images().vllm_ray_version


def test_vllm_images_share_one_ray_version_and_python_minor():
    """Every node of a vLLM cluster runs one Ray and Python.

    The ray-llm head and NVIDIA/CPU workers, and our Ascend workers.
    """
    from moe_operator.render.images import Images

    images = Images()
    args = arg_defaults(IMAGES / "vllm-ascend.Dockerfile")
    py_tag = "py" + args["PYTHON_MINOR"].replace(".", "")
    for key in ("vllm_nvidia", "vllm_cpu"):
        name, _, tag = getattr(images, key).rpartition(":")
        assert name == "rayproject/ray-llm", key
        assert tag.split("-")[:2] == [images.vllm_ray_version, py_tag], f"{key}={getattr(images, key)}"
    assert images.ray_version_for("vllm") == images.vllm_ray_version
    assert images.ray_version_for("torch") == images.ray_version


def test_vllm_ascend_image_is_the_operators_default():
    """vllm_huawei names the image vllm-ascend.Dockerfile builds, tagged with the runtime images' version."""
    from moe_operator.render.images import RUNTIME_VERSION, Images

    assert Images().vllm_huawei == f"ghcr.io/moe-operator/vllm-ascend:{RUNTIME_VERSION}"
    assert f"-t {Images().vllm_huawei} ." in (IMAGES / "vllm-ascend.Dockerfile").read_text()
    assert Images().vllm_huawei in (IMAGES / "README.md").read_text()


def test_vllm_ascend_image_pins_its_ascend_stack_before_installing_ray():
    """ray[llm] pins a CUDA vLLM: the install must run under constraints that hold the base's vLLM and torch."""
    runs = [rest for word, rest in instructions(IMAGES / "vllm-ascend.Dockerfile") if word == "RUN"]
    install = next(r for r in runs if "pip install" in r)
    assert "--constraint /tmp/constraints.txt" in install and '"ray[serve,llm]==${RAY_VERSION}"' in install
    for pinned in ("'vllm'", "'vllm-ascend'", "'torch'", "'torch-npu'"):
        assert pinned in install, pinned
    assert install.index("/tmp/constraints.txt', 'w'") < install.index("pip install")
    guard = runs[0]
    assert "${PYTHON_MINOR}" in guard and "${VLLM_VERSION}" in guard


def test_runtime_images_are_the_operators_default_images():
    """Each torch-engine default image tag ends in the variant its Dockerfile builds."""
    from moe_operator.render.images import Images

    images = asdict(Images())
    assert images["torch_cpu"].endswith("-cpu") and images["torch_nvidia"].endswith("-cuda")
    assert images["torch_huawei"].endswith("-cann")
    for variant in ("cpu", "cuda", "cann"):
        text = (IMAGES / f"runtime-{variant}.Dockerfile").read_text()
        assert f"ghcr.io/moe-operator/runtime:0.1.0-{variant}" in text
        assert f"runtime:0.1.0-{variant}" in (IMAGES / "README.md").read_text()


def test_runtime_images_import_the_serve_app_the_operator_renders():
    """The smoke import in each runtime Dockerfile names the module of the rendered import_path, which defines it."""
    template = (ROOT / "operator/moe_operator/templates/serve_torch.yaml.j2").read_text()
    rendered = re.search(r"moe_runtime\.[\w.]+:\w+", template + (ROOT / "docs/contracts.md").read_text())
    module, attr = rendered.group(0).split(":")
    source = ROOT / "runtime" / (module.replace(".", "/") + ".py")
    assert source.exists(), f"{module} (the Serve import_path) has no file {source}"
    names = {n.name for n in ast.walk(ast.parse(source.read_text()))
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    names |= {t.id for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name)}
    assert attr in names, f"{module} defines no {attr}"
    for variant in ("cpu", "cuda", "cann"):
        assert f"import {module}" in (IMAGES / f"runtime-{variant}.Dockerfile").read_text()


def test_operator_entry_point_is_the_console_script():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["scripts"]["moe-operator"]
    module, func = target.split(":")
    entry = [rest for word, rest in instructions(IMAGES / "operator.Dockerfile") if word == "ENTRYPOINT"][-1]
    cmd = [rest for word, rest in instructions(IMAGES / "operator.Dockerfile") if word == "CMD"][-1]
    assert ast.literal_eval(entry) == ["moe-operator"]
    import importlib

    mod = importlib.import_module(module)
    assert callable(getattr(mod, func))
    # The default CMD parses with the operator's own parser.
    mod.build_parser().parse_args(ast.literal_eval(cmd))


def test_operator_image_runs_as_numeric_non_root_user():
    users = [rest for word, rest in instructions(IMAGES / "operator.Dockerfile") if word == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can verify it without /etc/passwd


def test_operator_image_has_no_torch_or_ray():
    pins = {line.split("==")[0] for line in (IMAGES / "operator-constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")}
    heavy = {p for p in pins if p in {"torch", "ray", "numpy", "scipy", "torch-npu", "vllm"} or p.startswith("nvidia-")}
    assert not heavy
    text = (IMAGES / "operator.Dockerfile").read_text()
    assert "[runtime]" not in text and "[all]" not in text


def test_operator_constraints_pin_the_whole_dependency_closure():
    sys.path.insert(0, str(IMAGES))
    try:
        import pin_operator_deps
    finally:
        sys.path.remove(str(IMAGES))
    lines = [
        line
        for line in (IMAGES / "operator-constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pinned = dict(line.split("==") for line in lines)
    missing = set(pin_operator_deps.closure()) - set(pinned)
    assert not missing, f"not pinned (run .venv/bin/python images/pin_operator_deps.py): {sorted(missing)}"


def test_rendered_ray_version_follows_the_engine_and_its_override():
    """rayVersion is the engine's: vllm_ray_version for a vLLM example, ray_version for torch; both overridable."""
    from moe_operator.api import load_manifest
    from moe_operator.catalog import Catalog
    from moe_operator.errors import UserError
    from moe_operator.render.images import Images
    from moe_operator.render.pipeline import plan_and_render

    def ray_version(example: str, images: Images) -> str:
        m = load_manifest(ROOT / "examples" / example)
        rs = plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), images).rayservice
        return rs["spec"]["rayClusterConfig"]["rayVersion"]

    assert ray_version("mixtral-8x7b-ascend.yaml", Images()) == Images().vllm_ray_version
    assert ray_version("tiny-moe.yaml", Images()) == Images().ray_version != Images().vllm_ray_version
    override = Images.from_source('vllm_ray_version: "2.60.0"')
    assert ray_version("mixtral-8x7b-ascend.yaml", override) == "2.60.0"
    assert ray_version("tiny-moe.yaml", override) == Images().ray_version
    with pytest.raises(UserError, match="unknown image keys"):
        Images.from_mapping({"vllm_ray": "2.60.0"})


def test_docs_list_every_image_key_and_default():
    """docs/operator.md names every --images key; images/README.md and the docs name every default vLLM image."""
    from dataclasses import fields

    from moe_operator.render.images import Images

    operator_doc = (ROOT / "docs/operator.md").read_text()
    keys = re.search(r"keys `([^`]*)`", operator_doc.replace("\n  ", " ")).group(1)
    assert [k.strip() for k in keys.split(",")] == [f.name for f in fields(Images)]
    for image in (Images().vllm_nvidia, Images().vllm_huawei):
        assert image in operator_doc and image in (IMAGES / "README.md").read_text(), image
