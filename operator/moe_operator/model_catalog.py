"""Model catalog: the planning facts (config.json keys) of well-known MoE models, matched by name or Hugging Face id.

The defaults ship in ``data/models.yaml`` (documented in docs/catalog.md "Model catalog"). A cluster admin adds
models or replaces fields of a shipped one under the ``models`` key of the catalog ConfigMap (``Catalog.with_overrides``
passes it to ``ModelCatalog.with_overrides``). Planning resolves ``spec.model`` against it
(``planning.plan.facts_for``): ``spec.model.config`` if given, else the entry named by ``spec.model.catalogName``, else
the entry whose Hugging Face ids contain the ``hf://`` source, else SpecInvalid(UnknownModel) naming the nearest
entries.
"""
from __future__ import annotations

import difflib
from functools import lru_cache
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from moe_operator.catalog_data import packaged_yaml, parse_entries
from moe_operator.errors import SpecInvalid, UserError

WeightsDtype = Literal["bf16", "fp16", "fp8", "int8", "int4"]
HF_SCHEME = "hf://"


class CatalogModel(BaseModel):
    """One model: the Hugging Face ids it matches, the config.json keys planning reads, and where they came from."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)

    key: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)
    hugging_face: list[str] = Field(min_length=1, description="Hugging Face ids (org/name) whose config this is.")
    description: str = ""
    weights_dtype: WeightsDtype = Field(description="dtype of the published checkpoint's expert weights.")
    config_source: str = Field(min_length=1, description="Where the config values were copied from.")
    copied_on: str = Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$", description="When they were copied (YYYY-MM[-DD]).")
    config: dict[str, Any] = Field(description="The config.json keys planning reads (docs/capacity-model.md).")

    @property
    def architecture(self) -> str:
        return str(self.config.get("model_type") or "")


def hf_id(source: str) -> Optional[str]:
    """``hf://Org/Name/`` -> ``org/name`` (Hugging Face ids are case-insensitive); None for other schemes."""
    if not source.startswith(HF_SCHEME):
        return None
    return source[len(HF_SCHEME):].strip("/").lower()


class ModelCatalog:
    """The models a cluster can plan by name, keyed as in ``spec.model.catalogName``."""

    def __init__(self, models: Mapping[str, CatalogModel]):
        self.models = dict(models)
        self._by_hf: dict[str, str] = {}
        for key, entry in self.models.items():
            for ident in entry.hugging_face:
                other = self._by_hf.setdefault(ident.lower(), key)
                if other != key:
                    raise UserError(f"catalog models {other!r} and {key!r} both claim Hugging Face id {ident!r}")

    @classmethod
    def default(cls) -> "ModelCatalog":
        """The shipped catalog (data/models.yaml)."""
        return cls(_default_models())

    def with_overrides(self, raw: Any) -> "ModelCatalog":
        """A new catalog with the ConfigMap's ``models`` (``{key: {fields}}``) added or replacing shipped fields.

        Every changed entry's config is planned once here, so a bad one fails when the ConfigMap is read (UserError
        naming the model), not when a MoEDeployment first uses it.
        """
        if not raw:
            return ModelCatalog(self.models)
        changed = parse_entries(raw, base=self.models, cls=CatalogModel, what="model")
        for entry in changed.values():
            _check_plannable(entry)
        return ModelCatalog({**self.models, **changed})

    def keys(self) -> list[str]:
        return sorted(self.models)

    def __contains__(self, key: object) -> bool:
        return key in self.models

    def get(self, key: str) -> CatalogModel:
        """The entry named ``key``; SpecInvalid(UnknownModel) naming the nearest entries otherwise."""
        try:
            return self.models[key]
        except KeyError:
            raise SpecInvalid(self._unknown(f"catalogName {key!r}", key), reason="UnknownModel") from None

    def for_source(self, source: str) -> Optional[CatalogModel]:
        """The entry an ``hf://org/name`` source matches; None for other schemes; SpecInvalid for an unknown id."""
        ident = hf_id(source)
        if ident is None:
            return None
        if ident in self._by_hf:
            return self.models[self._by_hf[ident]]
        raise SpecInvalid(self._unknown(f"model {source}", ident), reason="UnknownModel")

    def nearest(self, text: str, n: int = 3) -> list[str]:
        """Entry names closest to ``text`` (a name, an ``org/name`` id or its last part), best first."""
        text = text.lower()
        tail = text.rsplit("/", 1)[-1]
        scores: dict[str, float] = {}
        for key, entry in self.models.items():
            names = (
                [key]
                + [i.lower() for i in entry.hugging_face]
                + [i.lower().rsplit("/", 1)[-1] for i in entry.hugging_face]
            )
            scores[key] = max(
                difflib.SequenceMatcher(None, probe, name).ratio() for name in names for probe in (text, tail)
            )
        ranked = sorted(scores, key=lambda k: (-scores[k], k))
        return ranked[:n]

    def _unknown(self, what: str, text: str) -> str:
        near = ", ".join(f"{k} ({self.models[k].hugging_face[0]})" for k in self.nearest(text))
        return (
            f"{what} is not in the model catalog; nearest: {near}. Set spec.model.catalogName to one of them "
            "(moectl models lists the catalog), add the model under models in the cluster's catalog ConfigMap, "
            "or paste its config.json under spec.model.config"
        )


def _check_plannable(entry: CatalogModel) -> None:
    from moe_operator.planning.model import model_facts  # planning depends on the catalog, not the other way

    try:
        facts = model_facts(entry.config)
    except SpecInvalid as exc:
        raise UserError(f"catalog model {entry.key!r} config is not plannable: {exc}") from None
    stored = STORED_AS.get(entry.weights_dtype)
    if facts.checkpoint_quantization != stored:
        raise UserError(f"catalog model {entry.key!r}: weightsDtype {entry.weights_dtype} disagrees with its config's "
                        f"quantization_config ({facts.checkpoint_quantization}); planning sizes the weights from "
                        "the config, so make them agree")


# weightsDtype -> how planning sees the checkpoint (planning.model.checkpoint_quantization)
STORED_AS = {"bf16": "none", "fp16": "none", "fp8": "fp8", "int8": "int8", "int4": "int4"}


@lru_cache(maxsize=1)
def _default_models() -> dict[str, CatalogModel]:
    models = parse_entries(packaged_yaml("models.yaml")["models"], base={}, cls=CatalogModel, what="model")
    for entry in models.values():
        _check_plannable(entry)
    return models
