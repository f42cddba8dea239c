"""Issue 14 item 2: a full disk never takes a replica down. Disk-tier writes are best effort (a failure is counted,
in EngineStats and /metrics, and its temp file removed), temp files left by a crash are removed at start, the
byte budget leaves filesystem headroom, and the files are written by the tier's own thread, not the engine's."""
from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections import namedtuple

import pytest

from runtime_core.rc_helpers import greedy
from moe_runtime.cache import PrefixCache
from moe_runtime.cache import disk as disk_mod
from moe_runtime.engine import SamplingParams
from moe_runtime.engine.core import TorchEngine
from moe_runtime.metrics import RuntimeMetrics

PROMPT = "A disk tier keeps prompt prefixes across restarts, until the volume it lives on is full. " * 2


def _run(tiny, cache, prompts, n=6):
    async def main():
        e = TorchEngine(tiny, model_name="tiny-moe", prefix_cache=cache, max_batch_size=4, max_queue=4)
        streams = [await e.generate(p, SamplingParams(max_tokens=n), f"r{i}") for i, p in enumerate(prompts)]
        await e.start()
        out = []
        for s in streams:
            evs = [ev async for ev in s]
            out.append(([ev.token_id for ev in evs if ev.token_id is not None], evs[-1]))
        _drain(cache)
        await e.stop()
        return out, e.stats()

    return asyncio.run(main())


def _drain(cache):
    """Wait until the tier's writer has written (or failed) what it was given, where it has a queue."""
    drain = getattr(cache.disk, "drain", None)
    if drain:
        assert drain(60)


def test_a_full_disk_fails_no_request_and_is_counted(tiny, tmp_path, monkeypatch):
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, _data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk_mod.os, "fdopen", lambda fd, *a, **kw: Full(real(fd, *a, **kw)))
    cache = PrefixCache(tiny.fingerprint, block_tokens=16, disk_dir=str(tmp_path))
    prompts = [tiny.tokenizer.encode(PROMPT), tiny.tokenizer.encode("Hello world! How are you today?")]
    out, stats = _run(tiny, cache, prompts)
    for p, (toks, last) in zip(prompts, out):
        assert last.finish_reason == "length" and toks == greedy(tiny.model, p, 6)[0]
    assert list(tmp_path.iterdir()) == []  # no .kvb, no leaked .tmp
    assert cache.disk.write_failures >= 1 and cache.bytes()["disk"] == 0
    assert stats.prefix_cache_disk_write_failures == cache.disk.write_failures
    m = RuntimeMetrics("tiny-moe", {"pool": "cpu"})
    m.update({"cpu": stats})
    assert f'moe_prefix_cache_disk_write_failures_total{{model="tiny-moe",pool="cpu"}} ' \
           f'{float(cache.disk.write_failures)}' in m.render().decode()


def test_temp_files_left_by_a_crash_are_removed_at_start(tmp_path):
    (tmp_path / "abc.tmp").write_bytes(b"x" * 1000)
    (tmp_path / "tmpq1w2e3.tmp").write_bytes(b"half a block")
    PrefixCache("fp", disk_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("configured", [0, 10_000, 1_000_000])
def test_the_budget_leaves_filesystem_headroom(tmp_path, monkeypatch, configured):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(disk_mod.shutil, "disk_usage", lambda _p: Usage(10_000, 0, 10_000))
    tier = PrefixCache("fp", disk_dir=str(tmp_path), disk_bytes=configured).disk
    assert 0 < tier.budget <= 10_000 * (1 - disk_mod.HEADROOM_FRACTION)
    if configured and configured < 10_000 * (1 - disk_mod.HEADROOM_FRACTION):
        assert tier.budget == configured


def test_a_shared_volume_at_its_headroom_refuses_writes_without_touching_it(tmp_path, monkeypatch, caplog):
    """Other replicas' slots share the volume (cache/slots.py): free space, not this writer's own bytes, decides."""
    import torch

    Usage = namedtuple("Usage", "total used free")
    block = [(torch.zeros(2, 16, 4), torch.zeros(2, 16, 4))]
    tier = PrefixCache("fp", disk_dir=str(tmp_path), disk_bytes=2**30).disk
    monkeypatch.setattr(disk_mod.shutil, "disk_usage", lambda _p: Usage(2**40, 2**40 - 2**30, 2**30))  # < 10% free
    tier.put("k1", block)
    assert tier.drain(30)
    assert tier.write_failures == 1 and not list(tmp_path.glob("*.kvb")) and not list(tmp_path.glob("*.tmp"))
    assert "headroom" in caplog.text
    monkeypatch.setattr(disk_mod.shutil, "disk_usage", lambda _p: Usage(2**40, 0, 2**40))   # room again
    tier.put("k2", block)
    assert tier.drain(30) and (tmp_path / "k2.kvb").exists() and tier.write_failures == 1


def test_blocks_are_written_off_the_engine_thread(tiny, tmp_path, monkeypatch):
    writers: list[str] = []
    real = disk_mod.encode_block

    def encode(*a, **kw):
        writers.append(threading.current_thread().name)
        return real(*a, **kw)

    monkeypatch.setattr(disk_mod, "encode_block", encode)
    cache = PrefixCache(tiny.fingerprint, block_tokens=16, disk_dir=str(tmp_path))
    _run(tiny, cache, [tiny.tokenizer.encode(PROMPT)])
    assert writers and not any(w.startswith("engine-") for w in writers)
    assert len(list(tmp_path.glob("*.kvb"))) == len(writers)
