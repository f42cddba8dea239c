"""A replica restarted by hand finds its disk-tier prefix cache (issue 13), and replicas sharing one volume each
write their own slot (cache/slots.py). Each replica is its own process here, as on a pod: the engine is built from
its RuntimeConfig (engine/builder.py, the Serve app's path), and a killed process's slot lock goes with it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from moe_runtime.cache import slots

REPLICA = r"""
import asyncio, json, sys
from moe_runtime.config import RuntimeConfig
from moe_runtime.engine import SamplingParams
from moe_runtime.engine.builder import build_engine_from_config

PROMPT = "Context caching stores the keys and values of a prompt prefix so that it is read back. " * 3

async def main():
    cfg = RuntimeConfig(model_name="tiny-moe", model_source="builtin://tiny-moe",
                        cache={"block_tokens": 16, "disk_dir": sys.argv[1]})
    engine = build_engine_from_config(cfg)
    await engine.start()
    stream = await engine.generate(engine.tokenizer.encode(PROMPT), SamplingParams(max_tokens=2), "r")
    last = None
    async for ev in stream:
        last = ev
    cache = engine.cache
    cache.disk.drain(60)
    print(json.dumps({"hit": last.usage.prompt_cache_hit_tokens, "disk_hits": cache.hits["disk"],
                      "dir": str(cache.disk.dir), "files": len(list(cache.disk.dir.glob("*.kvb")))}), flush=True)
    if sys.argv[2] == "hold":
        sys.stdin.read()   # alive (its slot held) until the test closes stdin or kills it
    await engine.stop()

asyncio.run(main())
"""


def replica(root, hold: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", REPLICA, str(root), "hold" if hold else "exit"],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=dict(os.environ))


def answer(p: subprocess.Popen) -> dict:
    line = p.stdout.readline()
    assert line, f"replica exited with {p.wait(timeout=60)} before answering"
    return json.loads(line)


def test_a_replica_killed_and_restarted_hits_the_blocks_it_wrote(tmp_path):
    first = replica(tmp_path, hold=True)
    try:
        a = answer(first)
        assert a["hit"] == 0 and a["files"] > 0 and a["dir"] == str(tmp_path / "writer-0"), a
        second = replica(tmp_path, hold=True)        # a second replica on the same volume, alive at the same time
        try:
            b = answer(second)
            assert b["dir"] == str(tmp_path / "writer-1") and b["hit"] == 0, b   # its own slot, nothing shared
        finally:
            second.stdin.close()
            second.wait(timeout=60)
    finally:
        first.send_signal(signal.SIGKILL)                # killed, as a pod is: no clean shutdown
        first.wait(timeout=30)
    restarted = replica(tmp_path)
    c = answer(restarted)
    assert restarted.wait(timeout=60) == 0
    assert c["dir"] == str(tmp_path / "writer-0"), c      # the dead replica's slot, with its blocks
    assert c["hit"] > 0 and c["disk_hits"] > 0, c         # served from disk: the new process's memory tier is empty


def test_slots_are_exclusive_per_process_and_reused_lowest_first(tmp_path):
    a = slots.writer_dir(tmp_path)
    b = slots.writer_dir(tmp_path)
    try:
        assert (a.name, b.name) == ("writer-0", "writer-1")
        slots.release(a)
        again = slots.writer_dir(tmp_path)
        assert again == a
    finally:
        for s in (a, b):
            slots.release(s)


def test_no_slot_means_no_disk_tier_not_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(slots, "MAX_SLOTS", 1)
    held = slots.writer_dir(tmp_path)
    try:
        assert slots.writer_dir(tmp_path) is None
    finally:
        slots.release(held)
    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert slots.writer_dir(blocked / "sub") is None     # not a directory: off, said in the log


@pytest.mark.parametrize("errno_name", ["ENOLCK"])
def test_a_filesystem_without_locks_turns_the_tier_off(tmp_path, monkeypatch, errno_name):
    import errno

    def no_locks(fd, op):
        raise OSError(getattr(errno, errno_name), "no locks")

    monkeypatch.setattr(slots.fcntl, "flock", no_locks)
    assert slots.writer_dir(tmp_path) is None
