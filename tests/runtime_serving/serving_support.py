"""Helpers of the serving tests: free ports, waiting, process-tree memory (Linux /proc), holding an engine."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def alive(pids: list[int]) -> list[int]:
    """The pids that still exist and are not zombies."""
    out = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.append(p)
    return out


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, bytes."""
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def wait_for(predicate, timeout_s: float = 30.0, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def own_rss_bytes() -> int:
    return tree_rss_bytes(os.getpid())


class EngineGate:
    """Holds a TorchEngine's worker thread at the start of its next ``step`` ("_decode" or "_prefill") until
    ``release()``, so that "a request is mid-generation" or "the queue is full" is a state a test reaches instead of
    a race it hopes to win. The worker waits outside the engine's lock: meanwhile requests still arrive (and are
    queued or refused), cancellations land, and a placement move can be staged. ``when(engine)`` says which steps
    may be held (default: any). Use as a context manager; the engine gets its own method back on exit."""

    def __init__(self, engine, step: str = "_decode", when=lambda engine: True):
        self.engine, self.step, self.when = engine, step, when
        self.held = threading.Event()   # set while (or once) the worker waits at the gate
        self._open = threading.Event()
        self._open.set()
        self._run = getattr(engine, step)

    def __enter__(self) -> "EngineGate":
        setattr(self.engine, self.step, self._gated)
        return self

    def __exit__(self, *exc) -> None:
        self._open.set()
        delattr(self.engine, self.step)   # the class's method again

    def hold(self) -> None:
        """Close the gate: the next step (that ``when`` allows) waits there."""
        self.held.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _gated(self, *args):
        if not self._open.is_set() and self.when(self.engine):
            self.held.set()
            self._open.wait()
        return self._run(*args)


def mid_generation(engine) -> bool:
    """A decode step may be held: some running sequence has a token behind it and will still be running after the
    step (two or more tokens to go)."""
    return any(len(s.out) < s.params.max_tokens - 1 for s in engine._running)


def serve_uvicorn(app, timeout_s: float = 60.0):
    """Serve an ASGI ``app`` with uvicorn on a free loopback port in a daemon thread; (base URL, server, thread)
    once it accepts connections. Stop it with ``server.should_exit = True`` and ``thread.join``."""

    import pytest
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread
