"""Issue 14 item 5: the disk tier trusts nothing it reads. A block file whose header or payload is corrupt or
truncated, whose tensors do not have this model's shapes and dtype, or that another runtime version wrote is a
miss: the request completes with the tokens it would have had without the cache, the file is removed (so it
does not fail the same prefix forever) and the rejection is counted in /metrics. The checksum covers header and
payload. (The model fingerprint the keys start from: test_fingerprint.py.)"""
from __future__ import annotations

import asyncio
import shutil

import pytest

import moe_runtime
from runtime_core.rc_archs import BUILDERS
from runtime_core.rc_helpers import greedy
from moe_runtime.cache import PrefixCache, block_keys
from moe_runtime.cache.blocks import BadBlock, block_spec, decode_block, encode_block
from moe_runtime.engine import SamplingParams
from moe_runtime.engine.core import TorchEngine
from moe_runtime.metrics import RuntimeMetrics
from moe_runtime.model.load import load_model

PROMPT = "Each block of a prompt prefix is read back from disk only if every byte of it is the one written. " * 2
BT = 16  # block tokens
N = 6  # generated tokens


def _run(tiny, cache, prompt):
    async def main():
        e = TorchEngine(tiny, model_name="tiny-moe", prefix_cache=cache, max_batch_size=2, max_queue=2)
        await e.start()
        stream = await e.generate(prompt, SamplingParams(max_tokens=N), "r")
        evs = [ev async for ev in stream]
        cache.drain(60)
        await e.stop()
        return [ev.token_id for ev in evs if ev.token_id is not None], evs[-1], e.stats()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def golden(tiny, tmp_path_factory):
    """A disk tier written by one request, its first block's key and file bytes, and the reference tokens."""
    prompt = tiny.tokenizer.encode(PROMPT)
    disk = tmp_path_factory.mktemp("golden")
    cache = PrefixCache(tiny.fingerprint, block_tokens=BT, disk_dir=str(disk))
    toks, last, _ = _run(tiny, cache, prompt)
    ref = greedy(tiny.model, prompt, N)[0]
    assert toks == ref and last.finish_reason == "length"
    key = block_keys(tiny.fingerprint, prompt, BT)[0]
    return {"dir": disk, "prompt": prompt, "ref": ref, "key": key, "data": (disk / f"{key}.kvb").read_bytes()}


def _disk_with(golden, tmp_path, first: bytes):
    """A copy of the golden tier whose first block's file holds ``first``."""
    d = tmp_path / "kv"
    shutil.copytree(golden["dir"], d)
    (d / f"{golden['key']}.kvb").write_bytes(first)
    return d


def _assert_rejected(tiny, golden, disk, reason):
    """Through the engine: the bad first block is a miss, the request completes with the reference tokens, the
    rejection is counted once under ``reason`` in the stats and /metrics; the request's blocks are written afresh,
    so the next request over the same directory is served from disk again."""
    cache = PrefixCache(tiny.fingerprint, block_tokens=BT, disk_dir=str(disk))
    toks, last, stats = _run(tiny, cache, golden["prompt"])
    assert last.finish_reason == "length" and last.error is None and toks == golden["ref"]
    assert last.usage.prompt_cache_hit_tokens == 0 and cache.hits["disk"] == 0
    assert stats.prefix_cache_disk_bad_blocks == {"corrupt": int(reason == "corrupt"),
                                                  "foreign": int(reason == "foreign")}
    m = RuntimeMetrics("tiny-moe", {"pool": "cpu"})
    m.update({"cpu": stats})
    text = m.render().decode()
    assert f'moe_prefix_cache_disk_bad_blocks_total{{model="tiny-moe",pool="cpu",reason="{reason}"}} 1.0' in text
    again = PrefixCache(tiny.fingerprint, block_tokens=BT, disk_dir=str(disk))
    toks2, last2, _ = _run(tiny, again, golden["prompt"])
    assert toks2 == golden["ref"] and last2.usage.prompt_cache_hit_tokens > 0


def _check_miss_and_removal(tiny, golden, disk, bad, reason):
    """Read directly: a miss, the file removed, counted; then the same file through the engine."""
    path = disk / f"{golden['key']}.kvb"
    cache = PrefixCache(tiny.fingerprint, block_tokens=BT, disk_dir=str(disk))
    cache.set_block_spec(tiny.model.kv_block_spec(BT))  # what an engine does with the cache it is given
    assert cache.disk.get(golden["key"]) is None and not path.exists()
    assert (cache.disk.corrupt, cache.disk.foreign) == ((1, 0) if reason == "corrupt" else (0, 1))
    path.write_bytes(bad)
    _assert_rejected(tiny, golden, disk, reason)


def _flip(data: bytes, i: int) -> bytes:
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


def _header_offset(data: bytes, needle: bytes) -> int:
    i = data.find(needle)
    assert i > 0
    return i


@pytest.mark.parametrize("where", ["magic", "length", "key", "runtime-or-model", "shape", "dtype", "tensors-name"])
def test_a_flipped_header_byte_is_a_removed_counted_miss(tiny, golden, tmp_path, where):
    data = golden["data"]
    i = {"magic": 3, "length": 8, "key": _header_offset(data, golden["key"].encode()) + 5,
         "runtime-or-model": _header_offset(data, tiny.fingerprint.encode()) + 7,
         "shape": _header_offset(data, b"[4, 16, 32]") + 1, "dtype": _header_offset(data, b"float32") + 2,
         "tensors-name": _header_offset(data, b'"tensors"') + 2}[where]
    bad = _flip(data, i)
    disk = _disk_with(golden, tmp_path, bad)
    _check_miss_and_removal(tiny, golden, disk, bad, "corrupt")


@pytest.mark.parametrize("keep", [0, 11, 12, 300, "half", "all-but-one"])
def test_a_truncated_file_is_a_removed_counted_miss(tiny, golden, tmp_path, keep):
    data = golden["data"]
    n = {"half": len(data) // 2, "all-but-one": len(data) - 1}.get(keep, keep)
    bad = data[:n]
    disk = _disk_with(golden, tmp_path, bad)
    _check_miss_and_removal(tiny, golden, disk, bad, "corrupt")


def test_a_flipped_payload_byte_is_a_removed_counted_miss(tiny, golden, tmp_path):
    bad = _flip(golden["data"], len(golden["data"]) - 100)
    disk = _disk_with(golden, tmp_path, bad)
    _check_miss_and_removal(tiny, golden, disk, bad, "corrupt")


WRONG = {
    "head-dim": lambda b: [(k[..., :-1], v[..., :-1]) for k, v in b],
    "fewer-tokens": lambda b: [(k[:, :BT // 2], v[:, :BT // 2]) for k, v in b],
    "kv-heads": lambda b: [(k[:-1], v[:-1]) for k, v in b],
    "fewer-layers": lambda b: b[:-1],
    "more-layers": lambda b: b + b[:1],
    "dtype": lambda b: [(k.half(), v.half()) for k, v in b],
}


@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_a_valid_checksum_block_of_the_wrong_shape_is_a_removed_counted_miss(tiny, golden, tmp_path, wrong):
    good = decode_block(golden["data"], tiny.fingerprint, golden["key"])
    bad = encode_block(WRONG[wrong]([(k.clone(), v.clone()) for k, v in good]), tiny.fingerprint, golden["key"])
    disk = _disk_with(golden, tmp_path, bad)
    _check_miss_and_removal(tiny, golden, disk, bad, "foreign")


def test_a_block_another_runtime_version_wrote_is_a_removed_counted_miss(tiny, golden, tmp_path, monkeypatch):
    good = decode_block(golden["data"], tiny.fingerprint, golden["key"])
    monkeypatch.setattr(moe_runtime, "__version__", "0.0.1-older")
    bad = encode_block(good, tiny.fingerprint, golden["key"])
    monkeypatch.undo()
    disk = _disk_with(golden, tmp_path, bad)
    _check_miss_and_removal(tiny, golden, disk, bad, "foreign")


def test_every_single_byte_flip_of_a_header_is_a_bad_block(golden, tiny):
    """Never another exception (a KeyError, a reshape error...) that would escape into the engine's step."""
    data = golden["data"]
    end = data.find(b"]]}") + 3  # the end of the header JSON
    assert end > 3
    for i in list(range(end)) + [len(data) - 1, len(data) - 40]:
        with pytest.raises(BadBlock):
            decode_block(_flip(data, i), tiny.fingerprint, golden["key"])


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("quant", ["none", "int8"])
def test_the_model_block_spec_is_what_the_model_exports(arch, quant, tmp_path):
    """The shapes and dtypes a disk block must have are the ones the engine stores, for every layout (MLA too);
    a wrong spec would silently turn every disk hit into a rejection."""
    lm = load_model(BUILDERS[arch](tmp_path / arch), tokenizer=False, quant=quant)
    kv = lm.model.new_kv()
    lm.model([list(range(1, 2 * BT + 3))], [kv])
    assert block_spec([(k.cpu(), v.cpu()) for k, v in kv.export(BT, 2 * BT)]) == lm.model.kv_block_spec(BT)


def test_an_unexpected_decode_error_is_a_miss_not_an_exception(tiny, golden, tmp_path, monkeypatch):
    """Whatever goes wrong reading a block (a bug, a torch error) stays inside the tier."""
    from moe_runtime.cache import disk as disk_mod

    disk = _disk_with(golden, tmp_path, golden["data"])

    def boom(*_a, **_kw):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(disk_mod, "decode_block", boom)
    tier = PrefixCache(tiny.fingerprint, block_tokens=BT, disk_dir=str(disk)).disk
    assert tier.get(golden["key"]) is None and tier.corrupt == 1
    assert not (disk / f"{golden['key']}.kvb").exists()
