"""A whole MoEDeployment manifest (as in a YAML file), and loading one with a clear error."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moe_operator.errors import UserError

from .spec import MoEDeploymentSpec
from .status import MoEDeploymentStatus

GROUP = "serving.moe-operator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MoEDeployment"
PLURAL = "moedeployments"
SHORT_NAME = "moed"


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    namespace: Optional[str] = None


class MoEDeployment(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: MoEDeploymentSpec
    status: Optional[MoEDeploymentStatus] = None


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, with the camelCase path a person would look for in their YAML."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
        where = f"{prefix}.{loc}" if loc else prefix
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse_manifest(doc: Any, source: str = "<input>") -> MoEDeployment:
    if not isinstance(doc, dict):
        raise UserError(f"{source}: expected a MoEDeployment mapping, got {type(doc).__name__}")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise UserError(
            f"{source}: expected apiVersion {API_VERSION} and kind {KIND}, "
            f"got {doc.get('apiVersion')!r} / {doc.get('kind')!r}"
        )
    try:
        return MoEDeployment.model_validate(doc)
    except ValidationError as exc:
        raise UserError(f"{source}: {format_validation_error(exc, prefix='')}".replace(": .", ": ")) from None


def load_manifest(path: str | Path) -> MoEDeployment:
    """Read the first MoEDeployment in a YAML file; every failure is a UserError naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == KIND:
            return parse_manifest(doc, str(p))
    raise UserError(f"{p}: no {KIND} in the file")
