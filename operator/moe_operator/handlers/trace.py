"""Per-object timing marks for the scale benchmark's breakdown (off unless env ``MOE_OPERATOR_TRACE`` names a file).

Each mark is one line ``<time.monotonic() s> <namespace>/<name> <phase>`` (the phase may hold spaces); CLOCK_MONOTONIC
is system-wide on Linux, so the benchmark lines these up with its own create calls and watch events. Off: one dict
lookup.
"""
from __future__ import annotations

import os
import threading
import time

_PATH = os.environ.get("MOE_OPERATOR_TRACE")
_lock = threading.Lock()
_file = open(_PATH, "a", buffering=1) if _PATH else None   # noqa: SIM115 (lives as long as the process)
enabled = _file is not None   # callers guard marks whose text costs something to build


def mark(namespace: str, name: str, phase: str) -> None:
    """Record that ``namespace/name`` reached ``phase`` now (no-op unless tracing is on)."""
    if _file is None:
        return
    line = f"{time.monotonic():.6f} {namespace}/{name} {phase}\n"
    with _lock:
        _file.write(line)
