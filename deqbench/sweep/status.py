"""What a sweep directory holds, read without writing or locking anything:
above both stores (:mod:`.store`, :mod:`.parquet`), which it reads."""

from __future__ import annotations

import os
from pathlib import Path

from .parquet import read_parquet_status
from .store import (
    LOCK,
    LOST,
    RUNS_DIR,
    SweepError,
    _load_record,
    _lock_holder,
    read_meta,
    stored_format,
)

__all__ = ["sweep_status"]


def sweep_status(out) -> dict:
    """What a sweep directory holds, read without writing or locking anything.

    Returns ``name``, ``runs`` (the grid's size, from ``sweep.json``; None if
    unknown), ``done`` (runs stored with a result), ``lost`` (runs stored
    ``lost``: their worker died and a restart is pending; counted in
    ``remaining``), ``by_status`` (counts), ``damaged`` (records that would be
    re-run), ``remaining`` and ``holder`` (who holds the lock now:
    ``"pid P on host H"``, or None).
    """
    import fcntl

    out = Path(out)
    if not out.is_dir():
        raise SweepError(f"{out}: no such sweep directory")
    meta = read_meta(out) or {}
    by_status: dict[str, int] = {}
    damaged = 0
    if stored_format(out) == "parquet":
        by_status = read_parquet_status(out)
    for p in (out / RUNS_DIR).glob("*.json"):
        rec = _load_record(p)
        if rec is None:
            damaged += 1
            continue
        by_status[rec["status"]] = by_status.get(rec["status"], 0) + 1
    lost = by_status.get(LOST, 0)
    done = sum(by_status.values()) - lost
    holder = None
    lock = out / LOCK
    if lock.exists():
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            holder = _lock_holder(lock)
        finally:
            os.close(fd)
    total = meta.get("runs")
    return {"name": meta.get("name"), "runs": total, "done": done, "lost": lost,
            "by_status": by_status, "damaged": damaged,
            "remaining": None if total is None else max(total - done, 0), "holder": holder}
