"""What a sweep directory holds, read without writing or locking anything:
above both stores (:mod:`.store`, :mod:`.parquet`), which it reads."""

from __future__ import annotations

import os
from pathlib import Path

from .parquet import parquet_status
from .store import (
    HIST_DIR,
    LOCK,
    LOST,
    META,
    RUNS_DIR,
    SweepError,
    _load_record,
    _lock_holder,
    _nonempty,
    read_meta,
    stored_format,
)

__all__ = ["sweep_status"]


def sweep_status(out) -> dict:
    """What a sweep directory holds, read without writing or locking anything.

    Returns ``name``, ``runs`` (the grid's size, from ``sweep.json``; None if
    unknown), ``meta`` (``sweep.json``: ``"ok"``, ``"missing"`` or
    ``"unreadable"``), ``done`` (runs stored with a result), ``lost`` (runs stored
    ``lost``: their worker died and a restart is pending; counted in
    ``remaining``), ``by_status`` (counts), ``damaged`` (records that a resume
    would find damaged and run again: the rules of :meth:`.store.Store.records`
    and :func:`.parquet.scan`), ``remaining`` and ``holder`` (who holds the lock
    now: ``"pid P on host H"``, or None). A directory that holds no sweep is a
    :class:`~.store.SweepError`.
    """
    import fcntl

    out = Path(out)
    if not out.is_dir():
        raise SweepError(f"{out}: no such sweep directory")
    fmt = stored_format(out)
    if fmt is None and not (out / META).exists():
        raise SweepError(f"{out}: not a sweep directory (no {META}, {RUNS_DIR}/ or parts/)")
    meta = read_meta(out) or {}
    by_status: dict[str, int] = {}
    damaged = 0
    if fmt == "parquet":
        by_status, damaged = parquet_status(out)
    for p in (out / RUNS_DIR).glob("*.json"):
        rec = _load_record(p)
        if rec is None or (rec.get("history_rows") and not _nonempty(
                out / HIST_DIR / f"{p.stem}.csv")):  # what Store.records() removes
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
    if isinstance(total, bool) or not isinstance(total, int):
        total = None
    return {"name": meta.get("name"), "runs": total, "done": done, "lost": lost,
            "by_status": by_status, "damaged": damaged,
            "remaining": None if total is None else max(total - done, 0), "holder": holder,
            "meta": "ok" if meta else ("missing" if not (out / META).exists() else
                                       "unreadable")}
