"""Disk tier: one file per block in a directory that survives restarts. A file is served only if its checksum
(over header and payload), model fingerprint, key, runtime version and tensor shapes/dtypes (``spec``, the
model's, set by the engine) all match. Anything else is a miss, never an error: the file is removed (a bad file
must not fail the same prefix forever; the request rewrites it) and counted in ``corrupt`` or ``foreign``.
Oldest files (by mtime) are evicted beyond the byte budget.

Best effort, never in the way: blocks are encoded and written by the tier's own writer thread (the engine's step
only queues them; a full queue drops the block), a failed write (ENOSPC, EIO, ...) is counted in
``write_failures`` and its temp file removed, temp files a crash left behind are removed at start, and the budget
is at most the filesystem's size less HEADROOM_FRACTION, so the tier does not fill the volume it shares; on a volume
shared by several writers (cache/slots.py) a write is refused while the free space is within that headroom."""
from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path

from .blocks import BadBlock, Block, Spec, decode_block, encode_block

log = logging.getLogger(__name__)

HEADROOM_FRACTION = 0.1  # of the filesystem's size, never used by the tier
WRITE_QUEUE_BLOCKS = 64  # blocks waiting for the writer; more are dropped (a cache, not a log)


class DiskTier:
    def __init__(self, directory: str | Path, fingerprint: str, budget_bytes: int = 0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.spec: Spec | None = None  # the shapes/dtypes of this model's blocks (None: any well-formed ones)
        cap = int(shutil.disk_usage(self.dir).total * (1 - HEADROOM_FRACTION))
        self.budget = min(budget_bytes, cap) if budget_bytes else cap
        self.corrupt = 0  # files rejected as unreadable, truncated, failing the checksum or malformed
        self.foreign = 0  # intact files for another model, prefix, runtime version or block shape
        self.write_failures = 0  # writes that failed (counted, never raised)
        self.dropped = 0  # blocks not written because the writer was behind
        for tmp in self.dir.glob("*.tmp"):  # a crash between mkstemp and rename
            tmp.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._keys = {p.stem: p.stat().st_size for p in self.dir.glob("*.kvb")}
        self.bytes = sum(self._keys.values())
        self._queue: queue.Queue[tuple[str, Block]] = queue.Queue(WRITE_QUEUE_BLOCKS)
        self._pending: set[str] = set()
        self._writer: threading.Thread | None = None

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.kvb"

    def has(self, key: str) -> bool:
        """Written or queued (no disk access: the engine's step asks this)."""
        with self._lock:
            return key in self._keys or key in self._pending

    def get(self, key: str) -> Block | None:
        """The block, or None (absent or rejected). Never raises: the engine's step calls this."""
        p = self.path(key)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            return self._reject(key, "corrupt", f"unreadable: {e}")
        try:
            block = decode_block(data, self.fingerprint, key, self.spec)
        except BadBlock as e:
            return self._reject(key, e.kind, str(e))
        except Exception as e:  # noqa: BLE001 (whatever else goes wrong decoding is this file's problem too)
            return self._reject(key, "corrupt", f"{type(e).__name__}: {e}")
        try:
            os.utime(p)  # recently used: evicted last
        except OSError:
            pass
        return block

    def _reject(self, key: str, kind: str, why: str) -> None:
        if kind == "foreign":
            self.foreign += 1
        else:
            self.corrupt += 1
        log.warning("prefix cache: disk block %s rejected (%s: %s); removed", key[:12], kind, why)
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError:
            pass
        self._forget(key)
        return None

    def put(self, key: str, block: Block) -> None:
        """Queue ``block`` for the writer thread; returns at once. Tensors must not change afterwards (the engine
        hands over copies)."""
        with self._lock:
            if key in self._keys or key in self._pending:
                return
            try:
                self._queue.put_nowait((key, block))
            except queue.Full:
                self.dropped += 1
                return
            self._pending.add(key)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="kv-disk-writer", daemon=True)
                self._writer.start()

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued block is written or has failed (at most ``timeout_s``); True when none is left."""
        q = self._queue
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: q.unfinished_tasks == 0, timeout_s)

    def _write_loop(self) -> None:
        while True:
            key, block = self._queue.get()
            try:
                self._write(key, block)
            except Exception as e:  # noqa: BLE001 (best effort: a failed write is a miss later, never an error)
                self.write_failures += 1
                log.warning("prefix cache: disk write of block %s failed (%d so far): %s", key[:12],
                            self.write_failures, e)
            finally:
                with self._lock:
                    self._pending.discard(key)
                self._queue.task_done()

    def _write(self, key: str, block: Block) -> None:
        data = encode_block(block, self.fingerprint, key)
        # the volume may be shared (one writer slot per replica, cache/slots.py): whatever the others hold, a write
        # that would eat into the filesystem's headroom is refused here rather than by ENOSPC halfway through
        usage = shutil.disk_usage(self.dir)
        if usage.free - len(data) < usage.total * HEADROOM_FRACTION:
            raise OSError(errno.ENOSPC, f"{usage.free} bytes free is within the volume's headroom")
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path(key))  # readers never see a half-written block
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._keys[key] = len(data)
            self.bytes += len(data)
        if self.bytes > self.budget:
            self._evict()

    def _forget(self, key: str) -> None:
        with self._lock:
            self.bytes -= self._keys.pop(key, 0)

    def _evict(self) -> None:
        files = []
        for q in self.dir.glob("*.kvb"):
            try:
                files.append((q.stat().st_mtime, q))
            except OSError:
                pass
        for _, q in sorted(files):
            if self.bytes <= self.budget:
                break
            try:
                q.unlink()
                self._forget(q.stem)
            except OSError:
                pass
