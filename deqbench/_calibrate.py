"""``deqbench calibrate``: measure the kernels' settings on this machine.

What it times is what the kernels run: the block-resident Picard iteration
(:func:`deqbench._kernels.fixed_point.picard`, identity map, ``tol = 0``, a
fixed number of map evaluations from zero) at each width, for every number of
block rows that some rule of :data:`GRID` gives there, with each gemm backend
(numba's ``np.dot``; MKL's CBLAS where ``libmkl_rt`` loads), BLAS on one
thread inside numba's threads as in every public call; and an element pass
(the squared loss) on one thread against numba's threads, by size.

From those times it picks the block rule (``block_bytes``, ``min_rows``,
``max_rows``, ``wide_bytes``, ``wide_rows``, ``small_gemm_mnk``) that is
fastest over the widths (geometric mean of its time over the best measured at
each width), keeping the built-in rule unless another is more than
:data:`KEEP` faster; the gemm backend by the same measure; and
``pass_parallel_min``, the size from which the parallel pass wins at every
larger size measured. The result goes to the calibration file
(:mod:`deqbench._calibration`); no result of deqbench depends on it.

Timings are the fastest of repeated calls within a time share of
``budget`` each; run it on a quiet machine.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from . import _blas
from . import _calibration as cal
from ._kernels import blocks as bl
from ._kernels import fixed_point as fp
from ._kernels import gradients as g
from ._kernels.activations import IDENTITY
from ._threads import single_threaded_blas

__all__ = ["BUDGET", "GRID", "KEEP", "QUICK", "WIDTHS", "calibrate", "fit_rule", "gemm_table",
           "rule_rows"]

WIDTHS = (16, 32, 64, 128, 256, 512, 1024)
N = 8192
BUDGET = 90.0
"""Seconds of timing (compilation aside: none once the kernel cache is warm)."""
QUICK = {"widths": (8, 16, 32), "n": 256, "budget": 2.0,
         "pass_sizes": tuple(1 << k for k in range(8, 15, 2))}
"""``--quick``: tiny sizes that exercise every step in a few seconds (a test's
calibration, not a measurement)."""
PASS_SIZES = tuple(1 << k for k in range(10, 23, 2))
KEEP = 0.02
"""A rule (or backend) replaces the built-in one only when it is faster by more
than this share over the widths (geometric mean): noise does not move it."""
EVAL_SECONDS = 0.02
"""Target length of one timed call."""

GRID = {
    "block_bytes": tuple(1 << k for k in range(14, 21)),
    "min_rows": (32, 64, 128, 256),
    "max_rows": (512, 1024, 2048, 4096),
    "wide_bytes": (1 << 18, 1 << 19, 1 << 21, 1 << 24),
    "wide_rows": (256, 512, 1024),
    "small_gemm_mnk": (0, 10**6),
}
"""The block rules the fit chooses from (each axis also holds the built-in value)."""
RULE = tuple(GRID)


def rule_rows(n: int, width: int, s: dict) -> int:
    """Rows per block of the kernels' rule (:func:`deqbench._kernels.blocks.block_rows`)
    under settings ``s``, in Python."""
    w = max(width, 1)
    r = max(s["min_rows"], min(s["max_rows"], s["block_bytes"] // (8 * w)))
    if 8 * width * width > s["wide_bytes"]:
        r = max(r, min(s["wide_rows"], (n + 1) // 2))
    r = max(min(r, max(n, 1)), 1)
    if s["small_gemm_mnk"] > 0 and r * w * w > s["small_gemm_mnk"]:
        q = s["small_gemm_mnk"] // (w * w) // 4 * 4
        if q >= s["small_min_rows"]:
            r = min(q, max(n, 1))
    return r


def _grid(base: dict) -> list[dict]:
    axes = [sorted(set(GRID[k]) | {base[k]}) for k in RULE]
    return [{**base, **dict(zip(RULE, combo, strict=True))}
            for combo in itertools.product(*axes)
            if combo[RULE.index("max_rows")] >= combo[RULE.index("min_rows")]]


def _rows_of(n_of: dict, rules: list[dict]) -> dict:
    """Every number of rows some rule gives at each width."""
    return {m: sorted({rule_rows(n, m, r) for r in rules}) for m, n in n_of.items()}


def fit_rule(times: dict, n_of: dict, base: dict, rules: list[dict] | None = None):
    """The rule of ``rules`` (default: :data:`GRID` around ``base``) with the
    smallest ``sum_m log(t_m(rows) / min t_m)``; ``base`` unless another is
    faster by more than :data:`KEEP` over the widths, ties going to the rule
    that differs from ``base`` in the fewest settings. ``times[m][rows]``:
    seconds per evaluation. Returns ``(rule, score, base_score)``, scores in
    log units (0: the best measured rows at every width)."""
    rules = _grid(base) if rules is None else rules

    def score(r):
        return sum(math.log(times[m][rule_rows(n_of[m], m, r)] / min(times[m].values()))
                   for m in times)

    def distance(r):
        return sum(r[k] != base[k] for k in RULE)

    best = min(rules, key=lambda r: (round(score(r), 9), distance(r)))
    s_best, s_base = score(best), score(base)
    if s_base - s_best <= len(times) * math.log1p(KEEP):
        return dict(base), s_base, s_base
    return best, s_best, s_base


def _best(fn: Callable, seconds: float, reps: int = 50) -> float:
    """Fastest of repeated calls of ``fn`` within ``seconds`` (at least two)."""
    fn()
    out = math.inf
    end = time.perf_counter() + seconds
    for i in range(reps):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
        if i >= 1 and time.perf_counter() > end:
            break
    return out


def _vector(gemm: str) -> np.ndarray:
    vec = bl.default_tune()
    if gemm == "mkl":
        lib = _blas.mkl_gemm()
        vec[bl.TUNE_GEMM] = bl.GEMM_CBLAS
        vec[bl.TUNE_DGEMM] = lib["dgemm"]
        vec[bl.TUNE_SGEMM] = lib["sgemm"]
    return vec


def _width_n(m: int, n: int) -> int:
    """Rows measured at width ``m``: ``n``, fewer for wide ``m`` (a few wide blocks)."""
    return min(n, max(2048, (1 << 22) // m))


def _picard_run(Z, M, U, D, T, hist, threads, vec):
    """``run(rows, evals)``: ``evals`` Picard evaluations from zero, blocks of ``rows``."""

    def run(rows, evals):
        Z[:] = 0.0
        fp.picard(Z, M, U, IDENTITY, 0.0, D, T, 0.0, np.int64(evals - 1), 1.0, hist,
                  np.int64(threads), np.int64(rows), vec)

    return run


def measure_picard(widths, n, backends, budget, threads, log) -> tuple[dict, dict]:
    """``(times, n_of)``: ``times[backend][m][rows]`` seconds per map evaluation."""
    base = cal.defaults()
    n_of = {m: _width_n(m, n) for m in widths}
    candidates = _rows_of(n_of, _grid(base))
    share = budget / max(1, len(backends) * sum(len(v) for v in candidates.values()))
    rng = np.random.default_rng(4)
    times: dict = {b: {} for b in backends}
    for m in widths:
        nm = n_of[m]
        M = rng.standard_normal((m, m)) * (0.5 / np.sqrt(m))
        U = rng.standard_normal((nm, m))
        Z, T, D = np.empty_like(U), np.empty_like(U), np.zeros((1, 1))
        hist = np.empty(66)
        for backend in backends:
            run = _picard_run(Z, M, U, D, T, hist, threads, _vector(backend))
            default = rule_rows(nm, m, base)
            with single_threaded_blas():
                t0 = time.perf_counter()
                run(default, 2)
                per = max((time.perf_counter() - t0) / 2, 1e-7)
                evals = int(min(64, max(2, EVAL_SECONDS / per)))
                row = {}
                for rows in candidates[m]:
                    row[rows] = _best(partial(run, rows, evals), share) / evals
            times[backend][m] = row
            flops = 2.0 * nm * m * m
            cells = " ".join(f"{r}:{flops / t / 1e9:.1f}{'*' if r == default else ''}"
                             for r, t in row.items())
            log(f"  {backend:<4} m = {m:<5} n = {nm:<6} GFLOP/s by rows ({evals} evaluations "
                f"a call; * built-in): {cells}")
    return times, n_of


def measure_pass(sizes, threads, budget, log) -> dict:
    """``{elements: (serial s, parallel s)}`` of the squared loss at width 16."""
    out = {}
    rng = np.random.default_rng(1)
    share = budget / max(1, 2 * len(sizes))
    for size in sizes:
        n = max(1, size // 16)
        Z, Y = rng.standard_normal((n, 16)), rng.standard_normal((n, 16))
        G = np.empty_like(Z)
        rows = np.int64(bl.block_rows(n, 16))
        ts = _best(partial(g._residual_loss_s, Z, Y, G, rows), share)
        tp = _best(partial(g._residual_loss_p, Z, Y, G, rows), share)
        out[size] = (ts, tp)
        log(f"  element pass, {size} elements: {ts * 1e6:.1f} us on one thread, "
            f"{tp * 1e6:.1f} us on {threads}")
    return out


def pass_crossover(times: dict, default: int) -> int:
    """The smallest size measured at which the parallel pass is faster, and faster
    at two thirds or more of the larger sizes too (one slow timing does not move
    it); twice the largest size if none. ``default`` where the measurement cannot
    tell them apart (it lies between that size and the one below)."""
    sizes = sorted(times)
    wins = [times[s][1] < times[s][0] for s in sizes]
    cross = 2 * sizes[-1]
    for i, s in enumerate(sizes):
        if wins[i] and 3 * sum(wins[i:]) >= 2 * (len(sizes) - i):
            cross = s
            break
    below = [s for s in sizes if s < cross]
    if (below[-1] if below else 0) < default <= cross:
        return default
    return cross


def gemm_table(widths=WIDTHS, n: int = N, budget: float = 20.0, log=print) -> dict:
    """GFLOP/s of the row-block gemm ``(n, m) x (m, m)`` as the kernels run it
    (:func:`~deqbench._kernels.blocks.gemm_rows`, built-in block rows, BLAS on one
    thread inside numba's threads) with each backend that loads, next to numpy's
    ``matmul`` of the same shapes (its BLAS's own threads): ``{m: {name: GFLOP/s}}``."""
    backends = ["blas"]
    try:
        _blas.mkl_gemm()
        backends.append("mkl")
    except _blas.MklUnavailable as exc:
        log(f"  mkl not measured: {exc}")
    share = budget / max(1, len(widths) * (len(backends) + 1))
    rng = np.random.default_rng(5)
    out = {}
    for m in widths:
        P, Q = rng.standard_normal((n, m)), rng.standard_normal((m, m))
        C = np.empty((n, m))
        flops = 2.0 * n * m * m
        row = {}
        for b in backends:
            with single_threaded_blas():
                row[b] = flops / _best(partial(bl.gemm_rows, P, Q, C, _vector(b)), share) / 1e9
        row["numpy matmul"] = flops / _best(partial(np.matmul, P, Q, out=C), share) / 1e9
        out[m] = row
        log(f"  m = {m:<5} n = {n}: GFLOP/s " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
    return out


def calibrate(*, widths=WIDTHS, n: int = N, budget: float = BUDGET, gemm: str = "auto",
              pass_sizes=PASS_SIZES, log=print) -> dict:
    """Measure and fit the settings; returns ``{"settings": ..., "measured": ...}``
    (:func:`deqbench._calibration.write` stores it). ``gemm``: ``"auto"`` (every
    backend that loads), ``"blas"`` or ``"mkl"`` (an error where it does not load)."""
    import numba

    threads = numba.get_num_threads()
    backends = ["blas"]
    mkl_note = ""
    if gemm in ("auto", "mkl"):
        try:
            lib = _blas.mkl_gemm()
            backends = ["blas", "mkl"] if gemm == "auto" else ["mkl"]
            mkl_note = f"{lib['version']} ({lib['path']})"
        except _blas.MklUnavailable as exc:
            if gemm == "mkl":
                raise
            mkl_note = f"not measured: {exc}"
    elif gemm != "blas":
        raise ValueError(f"gemm must be one of auto, blas, mkl, got {gemm!r}")
    start = time.perf_counter()
    log(f"deqbench calibrate: {threads} numba threads; widths {', '.join(map(str, widths))}; "
        f"gemm {', '.join(backends)}" + (f"; mkl {mkl_note}" if mkl_note else ""))
    base = cal.defaults()
    times, n_of = measure_picard(widths, n, backends, 0.85 * budget, threads, log)
    fits = {b: fit_rule(times[b], n_of, base) for b in backends}

    def total(b):
        rule = fits[b][0]
        return sum(math.log(times[b][m][rule_rows(n_of[m], m, rule)]) for m in widths)

    chosen = "blas"
    if "mkl" in backends and (len(backends) == 1
                              or total("mkl") < total("blas") - len(widths) * math.log1p(KEEP)):
        chosen = "mkl"
    rule, score, base_score = fits[chosen]
    settings = {k: rule[k] for k in RULE}
    settings["small_min_rows"] = base["small_min_rows"]
    settings["gemm"] = chosen
    if threads > 1:
        passes = measure_pass(pass_sizes, threads, 0.15 * budget, log)
        settings["pass_parallel_min"] = pass_crossover(passes, base["pass_parallel_min"])
    else:
        passes = {}
        settings["pass_parallel_min"] = base["pass_parallel_min"]
        log("  element pass: one numba thread, nothing to measure (built-in crossover kept)")
    for b in backends:
        rows = {m: rule_rows(n_of[m], m, fits[b][0]) for m in widths}
        log(f"  {b}: rows by width {rows}; {100 * math.expm1(fits[b][1] / len(widths)):.1f}% "
            f"over the best rows measured (built-in rule "
            f"{100 * math.expm1(fits[b][2] / len(widths)):.1f}%)")
    if len(backends) > 1:
        ratio = math.exp((total("blas") - total("mkl")) / len(widths))
        log(f"  gemm: mkl / blas speed {ratio:.2f} over the widths (geometric mean) -> {chosen}")
    measured = {
        "threads": threads,
        "widths": list(widths),
        "rows_measured": {str(m): n_of[m] for m in widths},
        "picard_s_per_evaluation": {b: {str(m): {str(r): t for r, t in row.items()}
                                        for m, row in times[b].items()} for b in backends},
        "element_pass_s": {str(s): list(v) for s, v in passes.items()},
        "score_over_best": {"chosen": score, "built_in": base_score},
        "mkl": mkl_note,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return {"settings": settings, "measured": measured}
