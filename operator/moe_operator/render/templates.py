"""The jinja2 environment over the templates shipped in the package (moe_operator/templates/*.j2)."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import jinja2

_WIDE = re.compile(r"[^\x00-\x7e]")


def _escape(m: re.Match) -> str:
    code = ord(m.group())
    return "\\u%04x" % code if code <= 0xFFFF else "\\U%08x" % code


def yaml_json(value: Any) -> str:
    """``value`` as a JSON flow value that YAML reads back unchanged: the templates' ``tojson``.

    JSON escapes a character outside the BMP as a UTF-16 surrogate pair, which YAML rejects (it has a 32-bit
    ``\\U`` escape instead). So every character outside printable ASCII is escaped here, the YAML way; none
    stays raw, so no line separator (U+2028, NEL) can fold a quoted scalar. JSON syntax is ASCII: any such
    character is inside a string.
    """
    return _WIDE.sub(_escape, json.dumps(value, sort_keys=True, ensure_ascii=False))


@lru_cache(maxsize=1)
def env() -> jinja2.Environment:
    e = jinja2.Environment(
        loader=jinja2.PackageLoader("moe_operator", "templates"),
        undefined=jinja2.StrictUndefined,   # a missing value is a bug, never an empty string
        keep_trailing_newline=True,
        autoescape=False,
    )
    e.filters["tojson"] = yaml_json
    return e
