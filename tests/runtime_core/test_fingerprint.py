"""Issue 14 item 5: the model fingerprint (the seed of every prefix-cache key, so of the disk tier's file names)
hashes whole weight files, not their ends, and includes the runtime version: blocks are never shared between
checkpoints that differ anywhere, nor between runtime versions."""
from __future__ import annotations

import shutil

import moe_runtime
from moe_runtime.checkpoint.reader import CheckpointReader
from moe_runtime.model.load import fingerprint


class _Reader:
    def __init__(self, files, config):
        self._files, self.config = files, config

    def files(self):
        return self._files


def test_weight_files_differing_only_in_the_middle_have_different_fingerprints(tmp_path):
    size = 3 * 2**20
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors"  # same name and size
    a.write_bytes(bytes(size))
    mid = bytearray(size)
    mid[size // 2] = 1
    b.write_bytes(bytes(mid))
    cfg = {"model_type": "x"}
    fa, fb = fingerprint(_Reader([a], cfg), "float32", "none"), fingerprint(_Reader([b], cfg), "float32", "none")
    assert fa != fb
    assert fa == fingerprint(_Reader([a], cfg), "float32", "none")


def test_the_tiny_checkpoint_fingerprint_covers_its_whole_weight_file(tiny_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tiny_dir, d)
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01
    w.write_bytes(bytes(data))
    assert fingerprint(CheckpointReader(d), "float32", "none") != fingerprint(CheckpointReader(tiny_dir),
                                                                            "float32", "none")


def test_the_fingerprint_includes_the_runtime_version(tiny_dir, monkeypatch):
    before = fingerprint(CheckpointReader(tiny_dir), "float32", "none")
    monkeypatch.setattr(moe_runtime, "__version__", "9.9.9")
    assert fingerprint(CheckpointReader(tiny_dir), "float32", "none") != before
