"""Interleaved timing: every peer once per repetition, order rotated, medians."""

from __future__ import annotations

import gc
import time

import numpy as np


def calibrate(fn, min_batch_s: float) -> int:
    """Calls per timed batch so that one batch lasts about ``min_batch_s``."""
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return max(1, int(np.ceil(min_batch_s / max(dt, 1e-6)))) if dt < min_batch_s else 1


def interleaved(fns: dict, reps: int, min_batch_s: float = 0.2, known: dict | None = None) -> dict:
    """Time each callable in ``fns`` ``reps`` times, rotating the order every repetition.

    Short calls are repeated in a batch of ``inner`` calls (chosen once) and the
    per-call time is batch / inner. ``known``: seconds of an earlier (warm) call
    per name; calls known to last ``min_batch_s`` or more are not re-run to
    calibrate. Returns ``{name: array of per-call seconds}``.
    """
    known = known or {}
    inner = {
        k: 1 if known.get(k, 0.0) >= min_batch_s else calibrate(f, min_batch_s)
        for k, f in fns.items()
    }
    names = list(fns)
    out = {k: [] for k in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            gc.collect()
            f, nin = fns[k], inner[k]
            t = time.perf_counter()
            for _ in range(nin):
                f()
            out[k].append((time.perf_counter() - t) / nin)
    return {k: np.array(v) for k, v in out.items()}
