"""One writer directory per live replica on a shared disk-tier volume (issue 13: a durable disk tier).

The operator mounts one ReadWriteMany claim per pool on every worker pod of that pool (docs/operator.md, "Prefix
cache on disk"). Replicas must not evict each other's blocks or count them against their own budget, so each takes
a slot: ``writer-<k>`` under the mount, held by an exclusive ``flock`` on ``writer-<k>.lock`` for the life of the
process. The kernel (or the NFS server, when its lease of the dead client ends) releases the lock when the process
dies, so a replica restarted by hand takes a free slot again, the lowest: usually the one it left, with its blocks
(any slot holds blocks of the same model, checked per file by the disk tier: a hit either way). Slots are reused
lowest first, so their number stays near the peak of replicas alive at once. Never fatal: without a slot the
replica runs without a disk tier and says so.
"""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MAX_SLOTS = 1024
_HELD: dict[str, int] = {}   # slot directory -> the open lock file; kept (never closed) while the process lives


def writer_dir(root: str | Path) -> Path | None:
    """A ``writer-<k>`` directory under ``root`` that no other live process holds, created if needed; None when
    none can be taken (every slot held, or locks unsupported on this filesystem)."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("prefix cache: disk tier off: cannot create %s: %s", root, exc)
        return None
    for k in range(MAX_SLOTS):
        slot = root / f"writer-{k}"
        if str(slot) in _HELD:
            continue
        try:
            fd = os.open(root / f"writer-{k}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("prefix cache: disk tier off: cannot open a slot lock in %s: %s", root, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue   # another live replica writes there
        except OSError as exc:   # ENOLCK: a filesystem without locks; sharing it unlocked would mix budgets
            os.close(fd)
            log.warning("prefix cache: disk tier off: %s does not support file locks: %s", root, exc)
            return None
        _HELD[str(slot)] = fd
        slot.mkdir(exist_ok=True)
        return slot
    log.warning("prefix cache: disk tier off: all %d writer slots of %s are held", MAX_SLOTS, root)
    return None


def release(slot: Path) -> None:
    """Give a slot back (tests, and an engine that is rebuilt in the same process)."""
    fd = _HELD.pop(str(slot), None)
    if fd is not None:
        os.close(fd)
