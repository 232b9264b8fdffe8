"""W5: sweep throughput, 2 workers vs 1, three run lengths at m = d = 16, n = 512:
200 short runs (500 steps, ~10 ms each), 40 runs of 20000 steps with every step
recorded (~0.2 s each; 220000 history values a run), and 40 runs of 200000 steps
recorded every 100th (~1.7 s each, long enough to amortise a worker's start).

Each measurement is a fresh ``deqbench sweep GRID --out DIR --workers W``
(a new sweep directory, so nothing is resumed), timed end to end in wall
clock: worker start-up, numba cache loading, the runs and the consolidation of
``runs.csv``. Parallel efficiency = T(1 worker) / (2 T(2 workers)). The order
of the two is alternated over the repetitions; medians are reported.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = """# W5 of issue 6
[sweep]
name = "w5"
run = "train"
seed = 6
replicates = {replicates}

[fixed]
model = "linear"
m = 16
d = 16
n = 512
steps = {steps}
record_every = {every}
scale_A = 0.5
scale_B = 1.0
solver = "picard"
sufficient_stats = {ss}

[grid]
lr = [0.05]
"""


def _sweep_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("deqbench")
    if exe.exists():
        return [str(exe), "sweep"]
    return [sys.executable, "-m", "deqbench.cli", "sweep"]


def _time(grid: Path, workers: int, tmp: Path) -> float:
    out = tmp / f"sweep-{workers}-{time.monotonic_ns()}"
    cmd = _sweep_cmd() + [str(grid), "--out", str(out), "--workers", str(workers), "--no-progress"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()[-300:]}")
    shutil.rmtree(out, ignore_errors=True)
    return dt


def run(*, log, quick: bool, reps: int = 2, per_sample: bool = False):
    import numpy as np

    rows, tg = [], []
    cases = [("auto", "defaults: sufficient statistics", 200, 500, 1),
             ("auto", "long runs: 20000 steps", 40, 20000, 1),
             ("auto", "longer runs: 200000 steps, every 100th recorded", 40, 200000, 100)]
    if per_sample:
        cases.append(("false", "per-sample solves", 200, 500, 1))
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for ss, label, runs, steps, every in cases:
            grid = tmp / f"w5-{ss}-{steps}.toml"
            grid.write_text(GRID.format(replicates=runs, steps=steps, every=every,
                                        ss='"auto"' if ss == "auto" else ss))
            times = {1: [], 2: []}
            try:
                for r in range(reps):
                    for w in (1, 2) if r % 2 == 0 else (2, 1):
                        times[w].append(_time(grid, w, tmp))
            except (RuntimeError, OSError) as e:
                log(f"  W5 ({label}): not measured: {e}")
                rows.append(
                    dict(
                        workload="W5",
                        m=16,
                        n=512,
                        d=16,
                        peer=label,
                        note=f"not measured: {e}"[:200],
                    )
                )
                tg.append(
                    (f"W5 ({label}): parallel efficiency >= 90%", "not measured", str(e)[:120])
                )
                continue
            t1, t2 = float(np.median(times[1])), float(np.median(times[2]))
            eff = t1 / (2 * t2)
            log(f"  W5 ({label}): 1 worker {t1:.1f} s, 2 workers {t2:.1f} s, efficiency {eff:.2f}")
            for w, t in ((1, t1), (2, t2)):
                rows.append(
                    dict(
                        workload="W5",
                        m=16,
                        n=512,
                        d=16,
                        peer=f"deqbench sweep, {label}, {w} worker(s)",
                        median_s=t,
                        rounds=reps,
                        fp_evals="",
                        adj_evals="",
                        gflops="",
                        ratio=t / t1,
                        speedup=t1 / t,
                        rel_err="",
                        note="",
                    )
                )
            tg.append(
                (
                    f"W5 ({label}): parallel efficiency >= 90%",
                    "met" if eff >= 0.9 else "missed",
                    f"T1 = {t1:.1f} s, T2 = {t2:.1f} s, efficiency {100 * eff:.0f}% "
                    f"({runs / t1:.1f} vs {runs / t2:.1f} runs/s)",
                )
            )
    return rows, tg
