"""The one time format of status fields and Events: RFC 3339, UTC, whole seconds (``2026-11-28T21:25:00Z``)."""
from __future__ import annotations

from datetime import datetime, timezone

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


def rfc3339(t: float) -> str:
    """Unix seconds -> ``2026-11-28T21:25:00Z`` (the operator's every status and Event time)."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime(RFC3339)


def parse_rfc3339(text: str | None) -> float | None:
    """The inverse of ``rfc3339``: Unix seconds, or None for an empty or malformed text."""
    if not text:
        return None
    try:
        return datetime.strptime(text, RFC3339).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
