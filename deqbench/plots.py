"""Figures from a sweep or ``reproduce`` directory (``runs.csv`` + ``histories.csv``, or
their Parquet twins ``runs.parquet`` + ``histories.parquet``).

:func:`plot_dir` writes, where the columns exist:

* ``loss_curves.png`` - loss (excess loss where known) against step, log scale,
  with the theory envelope ``(L_0 - L*) q^k`` of the predicted per-step factor
  ``q`` (docs/theory.md §7) dashed in the same colour;
* ``invariant_drift.png`` - ``||Q_k - Q_0|| / ||Q_0||`` against step, and the
  final ``tr(Q_K - Q_0)`` against the step size next to the bound
  ``2 lr (L_0 - L_K)`` (valid for ``lr <= 1 / beta``, §5);
* ``scaling.png`` - time per step against each swept size (m, n, d) on log-log
  axes with fitted slopes;
* ``iterations.png`` - fixed-point iterations against the spectral radius of
  ``A``, with the prediction ``ceil(log(tol / (1 - rho)) / log(rho))`` (§3).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .sweep.store import HIST_CSV, HIST_PQ, RUNS_CSV, RUNS_PQ, read_csv
from .theory import loglog_fit

__all__ = ["load_histories", "load_runs", "plot_dir"]

MAX_CURVES = 48
SIZE_KEYS = ("m", "n", "d")
_NOT_PARAMS = {
    "run_id", "status", "error", "replicate", "seed", "time_s", "n_warnings", "warning",
    "host", "pid", "finished_at",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise ValueError(f"{path}: not a readable Parquet table ({exc})") from None


def _csv_rows(path: Path) -> list[dict]:
    try:
        return read_csv(path)
    except (ValueError, csv.Error) as exc:  # undecodable bytes, a malformed line
        raise ValueError(f"{path}: not a readable CSV table ({exc})") from None


def _with_run_id(rows: list[dict], path: Path) -> list[dict]:
    """``rows`` when each has a ``run_id`` (the key that joins runs and histories)."""
    if any(r.get("run_id") is None for r in rows):
        raise ValueError(f"{path}: rows without a run_id (the column that joins runs and "
                         "histories); not a table of deqbench sweep or reproduce")
    return rows


def load_runs(path) -> list[dict]:
    """Rows of ``DIR/runs.csv`` (numbers parsed), or of ``DIR/runs.parquet``."""
    p = Path(path)
    if p.is_dir() and not (p / RUNS_CSV).exists() and (p / RUNS_PQ).exists():
        return _with_run_id(_parquet_rows(p / RUNS_PQ), p / RUNS_PQ)
    p = p / RUNS_CSV if p.is_dir() else p
    return _with_run_id(_csv_rows(p), p) if p.exists() else []


def load_histories(path) -> dict[str, dict[str, np.ndarray]]:
    """``DIR/histories.csv`` (or ``histories.parquet``) as ``{run_id: {column: float array}}``."""
    p = Path(path)
    rows = None
    if p.is_dir() and not (p / HIST_CSV).exists() and (p / HIST_PQ).exists():
        rows = _parquet_rows(p / HIST_PQ)
        for r in rows:
            r.pop("_seq", None)
    p = p / HIST_CSV if p.is_dir() else p
    out: dict[str, dict[str, list]] = {}
    if rows is None and (not p.exists() or p.stat().st_size == 0):
        return {}
    src = p if rows is None else Path(path) / HIST_PQ
    for row in _with_run_id(rows if rows is not None else _csv_rows(p), src):
        h = out.setdefault(str(row.pop("run_id")), {})
        for k, v in row.items():
            h.setdefault(k, []).append(np.nan if v is None or isinstance(v, str) else float(v))
    return {rid: {k: np.asarray(v, dtype=float) for k, v in h.items()} for rid, h in out.items()}


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def swept_keys(path, rows: Sequence[dict]) -> list[str]:
    """The parameters a sweep varied: from ``sweep.json``, else the varying columns."""
    meta = Path(path) / "sweep.json"
    if meta.exists():
        try:
            keys = list(json.loads(meta.read_text()).get("grid", {}))
            if keys:
                return keys
        except ValueError:
            pass
    keys = []
    for k in rows[0] if rows else {}:
        if k in _NOT_PARAMS or k.startswith(("final_", "mean_", "max_")):
            continue
        vals = {r.get(k) for r in rows}
        if 1 < len(vals) <= max(2, len(rows) // 2):
            keys.append(k)
    return keys[:4]


def _label(row: dict, keys: Iterable[str]) -> str:
    return ", ".join(f"{k}={row.get(k)}" for k in keys)


def _subsample(rows: list, limit: int = MAX_CURVES) -> list:
    if len(rows) <= limit:
        return rows
    idx = np.linspace(0, len(rows) - 1, limit).round().astype(int)
    return [rows[i] for i in idx]


def _colors(n: int):
    plt = _pyplot()
    cmap = plt.get_cmap("viridis")
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(n, 1))]


def envelope(steps, start: float, factor: float) -> np.ndarray:
    """``start * factor**step``: the predicted bound on the excess loss."""
    steps = np.asarray(steps, dtype=float)
    return start * np.power(factor, steps - steps[0])


def plot_loss_curves(rows, hists, keys, path) -> Path | None:
    plt = _pyplot()
    rows = [r for r in rows if {"loss", "excess_loss"} & hists.get(r["run_id"], {}).keys()]
    use_excess = all("excess_loss" in hists[r["run_id"]] for r in rows)
    if not use_excess:
        rows = [r for r in rows if "loss" in hists[r["run_id"]]]
    rows = _subsample(rows)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = _colors(len(rows))
    for row, color in zip(rows, colors, strict=True):
        h = hists[row["run_id"]]
        y = h["excess_loss"] if use_excess else h["loss"]
        x = h.get("step", h.get("t", np.arange(y.size)))
        pos = y > 0
        if not pos.any():
            continue
        ax.semilogy(x[pos], y[pos], color=color, lw=1,
                    label=_label(row, keys) if len(rows) <= 12 else None)
        q = _num(row.get("predicted_factor"))
        if 0 < q < 1 and y.size and y[0] > 0:
            ax.semilogy(x, envelope(x, y[0], q), color=color, lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("excess loss L - L*" if use_excess else "loss")
    ax.set_title("loss; dashed: predicted envelope (L0 - L*) q^k")
    if len(rows) <= 12:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_invariant_drift(rows, hists, keys, path) -> Path | None:
    plt = _pyplot()
    rows_h = _subsample([r for r in rows if "invariant_drift" in hists.get(r["run_id"], {})])
    has_lr = any(_num(r.get("lr")) > 0 for r in rows) and "final_drift_trace" in (
        rows[0] if rows else {})
    if not rows_h and not has_lr:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for row, color in zip(rows_h, _colors(len(rows_h)), strict=True):
        h = hists[row["run_id"]]
        y = np.abs(h["invariant_drift"])
        x = h.get("step", h.get("t", np.arange(y.size)))
        pos = y > 0
        if pos.any():
            ax.loglog(x[pos], y[pos], color=color, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("||Q_k - Q_0||_F / ||Q_0||_F")
    ax.set_title("invariant drift (docs/theory.md §5)")
    ax = axes[1]
    if has_lr:
        ok = [r for r in rows if r.get("status") not in ("error", "diverged",
                                                         "fixed_point_failed")]
        lr = np.array([_num(r.get("lr")) for r in ok])
        drift = np.array([_num(r.get("final_drift_trace")) for r in ok])
        bound = np.array([2 * _num(r.get("lr")) * (_num(r.get("loss0"))
                                                   - _num(r.get("final_loss"))) for r in ok])
        good = np.isfinite(drift) & (drift > 0) & (lr > 0)
        ax.loglog(lr[good], drift[good], "o", ms=4, label="tr(Q_K - Q_0) measured")
        gb = good & np.isfinite(bound) & (bound > 0)
        ax.loglog(lr[gb], bound[gb], "_", ms=12, color="k", label="bound 2 lr (L_0 - L_K)")
        slope, _ = loglog_fit(lr[good], drift[good])
        ax.set_title(f"final drift vs step size (fitted slope {slope:.2f})")
        ax.set_xlabel("lr")
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    return _save(fig, path)


def plot_scaling(rows, keys, path) -> Path | None:
    plt = _pyplot()
    ok = [r for r in rows if r.get("status") not in ("error",)]
    ycol = "time_per_step_s" if any(_num(r.get("time_per_step_s")) > 0 for r in ok) else "time_s"
    sizes = [k for k in keys if k in SIZE_KEYS
             and len({r.get(k) for r in ok if _num(r.get(k)) > 0}) >= 3]
    if not sizes:
        return None
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.2), squeeze=False)
    for ax, key in zip(axes[0], sizes, strict=True):
        others = [k for k in sizes if k != key][:1]
        groups: dict = {}
        for r in ok:
            groups.setdefault(tuple(r.get(k) for k in others), []).append(r)
        order = sorted(groups.items(), key=lambda kv: tuple(_num(x) for x in kv[0]))
        for (gkey, grp), color in zip(order[:6],
                                      _colors(min(len(groups), 6)), strict=False):
            xs = sorted({_num(r.get(key)) for r in grp if _num(r.get(key)) > 0})
            ys = [float(np.median([_num(r.get(ycol)) for r in grp if _num(r.get(key)) == x]))
                  for x in xs]
            slope, icpt = loglog_fit(xs, ys)
            name = ", ".join(f"{k}={v}" for k, v in zip(others, gkey, strict=True))
            ax.loglog(xs, ys, "o-", color=color, label=f"{name} slope {slope:.2f}".strip())
        ax.set_xlabel(key)
        ax.set_ylabel(f"{ycol} (median)")
        ax.set_title(f"scaling in {key} (log-log, fitted slopes)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_iterations(rows, hists, keys, path) -> Path | None:
    plt = _pyplot()
    have_rho = [r for r in rows if _num(r.get("final_spectral_radius")) >= 0
                and _num(r.get("mean_fp_iters")) > 0]
    rows_h = _subsample([r for r in rows if "fp_iters" in hists.get(r["run_id"], {})])
    if not have_rho and not rows_h:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for row, color in zip(rows_h, _colors(len(rows_h)), strict=True):
        h = hists[row["run_id"]]
        x = h.get("step", np.arange(h["fp_iters"].size))
        ax.plot(x, h["fp_iters"], color=color, lw=1)
        if "adj_iters" in h:
            ax.plot(x, h["adj_iters"], color=color, lw=0.7, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("iterations per step")
    ax.set_title("forward (solid) and adjoint (dotted) iterations")
    ax = axes[1]
    if have_rho:
        rho = np.array([_num(r["final_spectral_radius"]) for r in have_rho])
        its = np.array([_num(r["mean_fp_iters"]) for r in have_rho])
        ax.plot(rho, its, "o", ms=4, label="mean forward iterations (measured)")
        tol = _num(have_rho[0].get("tol"))
        if 0 < tol < 1:
            grid = np.linspace(max(rho.min(), 1e-3), min(rho.max(), 0.999), 100)
            from .theory import predicted_fp_iters

            ax.plot(grid, [predicted_fp_iters(r, tol) for r in grid], "k--", lw=1,
                    label=f"log(tol/(1-rho))/log(rho), tol={tol:g} (cold start)")
        ax.set_xlabel("spectral radius of A (final)")
        ax.set_ylabel("iterations")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title("iterations against spectral radius (docs/theory.md §3)")
    else:
        ax.axis("off")
    return _save(fig, path)


def _save(fig, path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_dir(path, out=None) -> list[Path]:
    """Write the standard figures for a sweep or reproduce directory; return their paths.

    Parameters
    ----------
    path : directory holding ``runs.parquet`` or ``runs.csv`` (and the histories)
    out : figure directory, default ``path/figures``
    """
    path = Path(path)
    if not (path / RUNS_CSV).exists() and not (path / RUNS_PQ).exists():
        raise RuntimeError(f"{path}: no {RUNS_CSV} or {RUNS_PQ} (not a sweep or reproduce "
                           "directory)")
    out = path / "figures" if out is None else Path(out)
    rows = load_runs(path)
    hists = load_histories(path)
    keys = swept_keys(path, rows)
    written = [
        plot_loss_curves(rows, hists, keys, out / "loss_curves.png"),
        plot_invariant_drift(rows, hists, keys, out / "invariant_drift.png"),
        plot_scaling(rows, keys, out / "scaling.png"),
        plot_iterations(rows, hists, keys, out / "iterations.png"),
    ]
    return [p for p in written if p is not None]
