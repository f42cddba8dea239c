"""The jinja2 environment over the templates shipped in the package (moe_operator/templates/*.j2)."""
from __future__ import annotations

from functools import lru_cache

import jinja2


@lru_cache(maxsize=1)
def env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("moe_operator", "templates"),
        undefined=jinja2.StrictUndefined,   # a missing value is a bug, never an empty string
        keep_trailing_newline=True,
        autoescape=False,
    )
