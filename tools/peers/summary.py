"""The performance table of docs/performance.md from the committed peer results.

``python -m tools.peers.summary [--results results/peers]`` reads
``peers.csv`` of the all-threads runs (``m16-256``, ``m1024``) and the
one-thread runs (``1thread``, ``1thread-m1024``) and prints one Markdown row
per workload and width: deqbench's speed-up over the fastest iterative peer
(named) and its GFLOP/s against the machine's best matmul of the same shapes
(the faster of numpy's and torch's, ``best matmul`` in the CSV; numpy's in runs
without it), measured in the same rounds. A width missing from the results
prints ``-``.

A setting may hold repeated runs, each in its own ``run*/`` folder (a
``peers.csv`` in the setting's folder counts as one more): the machine's
speed drifts between processes by more than the rounds inside one move (other
tenants of the host, invisible to ``quiet``), so one run's ratio is one draw.
With several runs a cell gives the median over runs, the fastest peer of the
median run, and the range: ``1.64x jaxopt (1.27-1.85x, 3 runs)``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

ITERATIVE = ("numpy loop", "pytorch eager", "torchdeq", "jaxopt")
ALL_THREADS = ("m16-256", "m1024")
ONE_THREAD = ("1thread", "1thread-m1024")
WORKLOADS = ("W1", "W2", "W4")
WIDTHS = (16, 32, 64, 256, 1024)
HEADER = ("| workload | m | all threads: speed-up vs fastest peer | GFLOP/s vs matmul "
          "| one thread: speed-up | GFLOP/s vs matmul |\n|---|---|---|---|---|---|")


def run_files(folder: Path) -> list[Path]:
    """The ``peers.csv`` of every run in one setting's folder."""
    own = [folder / "peers.csv"] if (folder / "peers.csv").exists() else []
    return own + sorted(folder.glob("run*/peers.csv"))


def load(results: Path, settings) -> dict:
    """``{(workload, m): [{peer: row} per run]}`` over the settings' runs."""
    rows: dict = {}
    for setting in settings:
        for path in run_files(results / setting):
            with path.open(newline="") as f:
                run: dict = {}
                for r in csv.DictReader(f):
                    run.setdefault((r["workload"], int(r["m"])), {})[r["peer"]] = r
            for key, group in run.items():
                rows.setdefault(key, []).append(group)
    return rows


def _one_run(group) -> tuple:
    """``(speed-up, fastest peer, efficiency %, deqbench GFLOP/s, matmul GFLOP/s)``
    of one run (NaN where the run lacks the figure)."""
    t = float(group["deqbench"]["median_s"])
    peers = [(float(group[p]["median_s"]), p) for p in ITERATIVE
             if p in group and group[p]["median_s"]]
    speed, peer = (min(peers)[0] / t, min(peers)[1]) if peers else (np.nan, "")
    dq = float(group["deqbench"]["gflops"])
    ref = "best matmul" if "best matmul" in group else "numpy matmul"
    mm = float(group[ref]["gflops"]) if ref in group else np.nan
    return speed, peer, 100 * dq / mm, dq, mm


def cells(rows: dict, key) -> tuple[str, str]:
    """``("1.23x jaxopt", "47.6 / 42.4 (112%)")`` for one workload and width.
    Over several runs: the median speed-up with the fastest peer of the median
    run, and the GFLOP/s of the run of median efficiency; each with its range."""
    groups = [g for g in rows.get(key, []) if "deqbench" in g]
    if not groups:
        return "-", "-"
    runs = [_one_run(g) for g in groups]
    return _median_cell(runs, 0, _speed_text), _median_cell(runs, 2, _efficiency_text)


def _speed_text(r) -> str:
    return f"{r[0]:.2f}x {r[1]}"


def _efficiency_text(r) -> str:
    return f"{r[3]:.1f} / {r[4]:.1f} ({r[2]:.0f}%"


def _median_cell(runs, i: int, text) -> str:
    """``text`` of the run whose figure ``i`` is the median (the lower one of an
    even count; the cell's figure itself is the median), with the range and the
    count over several runs; runs without the figure left out, ``-`` if none."""
    have = sorted((r for r in runs if np.isfinite(r[i])), key=lambda r: r[i])
    if not have:
        return "-"
    mid = list(have[(len(have) - 1) // 2])
    vals = np.array([r[i] for r in have])
    mid[i] = float(np.median(vals))
    out = text(mid)
    if i == 0:
        return out if len(have) == 1 else (
            f"{out} ({vals.min():.2f}-{vals.max():.2f}x, {len(have)} runs)")
    return out + (")" if len(have) == 1 else f"; {vals.min():.0f}-{vals.max():.0f}%)")


def table(results: Path) -> str:
    every, one = load(results, ALL_THREADS), load(results, ONE_THREAD)
    lines = [HEADER]
    for w in WORKLOADS:
        for m in WIDTHS:
            lines.append("| {} | {} | {} | {} | {} | {} |".format(w, m, *cells(every, (w, m)),
                                                                  *cells(one, (w, m))))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results/peers"))
    print(table(ap.parse_args(argv).results))


if __name__ == "__main__":
    main()
