"""Compile time, measured in fresh interpreters (never inside a timed region
of the other benchmarks).

For each public entry point a subprocess imports deqbench with an empty
``NUMBA_CACHE_DIR`` and calls the entry point once on a tiny problem (cold:
every kernel it reaches is compiled), then a second subprocess with the now
filled cache does the same (cached: kernels are loaded from disk). Tracked in
CPU seconds of the subprocess (robust to other
processes on the machine), lower is better.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from .common import grid

SCRIPT = r"""
import json, sys, time
t0 = time.process_time()
import numpy as np
import deqbench as db
t1 = time.process_time()
entry = sys.argv[1]
X, Y, _ = db.data.linear_teacher(n=64, d=4, m=4, seed=0)
A, B = db.data.init_params(4, 4, scale_A=0.5, scale_B=1.0, seed=1)
if entry == "fixed_point":
    db.fixed_point(X, A, B)
elif entry == "loss_and_grad":
    db.loss_and_grad("linear", X, Y, A, B)
elif entry == "train":
    db.train("linear", X, Y, A, B, lr=0.01, steps=2, sufficient_stats=False)
t2 = time.process_time()
print(json.dumps({"import": t1 - t0, "first_call": t2 - t1}))
"""

# Default: loss_and_grad only, whose cold compile covers the fixed-point, adjoint and
# activation kernels (14.8 CPU s in the quiet asv run of 2e0eb9c; 44.1 s at 00ce879,
# while h_row was inlined at numba's IR level); train's (64.8 s, 169.7 s at 00ce879:
# the GD loops on top) is in the full suite, as a second cold compile was the largest
# item of the default run.
ENTRIES = grid(["loss_and_grad"], ["fixed_point", "loss_and_grad", "train"])


def measure(entry: str, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, entry], env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"compile-time probe for {entry!r} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def has_entry(entry: str) -> bool:
    """Whether this commit has the data-first API the probe calls."""
    import deqbench  # noqa: PLC0415

    return hasattr(deqbench, "ConvergenceWarning")


class CompileTime:
    """Cold compile and cache-load time of each public entry point."""

    params = [ENTRIES]
    param_names = ["entry"]
    timeout = 900.0

    def setup_cache(self):
        results = {}
        for entry in self.params[0]:
            if not has_entry(entry):
                results[entry] = None
                continue
            cache_dir = tempfile.mkdtemp(prefix="deqbench-numba-cache-")
            try:
                cold = measure(entry, cache_dir)
                cached = measure(entry, cache_dir)
            finally:
                shutil.rmtree(cache_dir, ignore_errors=True)
            results[entry] = {
                "import": cold["import"],
                "cold": cold["first_call"],
                "cached": cached["first_call"],
            }
        return results

    def setup(self, cache, entry):
        if cache.get(entry) is None:
            raise NotImplementedError(f"{entry!r} is not available in this version")

    def track_cold_compile(self, cache, entry):
        return cache[entry]["cold"]

    track_cold_compile.unit = "seconds"

    def track_cached_load(self, cache, entry):
        return cache[entry]["cached"]

    track_cached_load.unit = "seconds"

    def track_import(self, cache, entry):
        return cache[entry]["import"]

    track_import.unit = "seconds"
