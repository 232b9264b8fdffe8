"""Run functions for the sweep tests (importable by worker processes via sys.path)."""

import time

import numpy as np


def draw(params, seed):
    """Sleep ``params['sleep']`` seconds, then report draws from the run's seed.

    ``params['fail'] = true`` raises, to test that a failing run is recorded.
    """
    if params.get("fail"):
        raise RuntimeError(f"boom in run a={params.get('a')}")
    time.sleep(params.get("sleep", 0.0))
    x = np.random.default_rng(seed).standard_normal(3)
    return {
        "status": "ok",
        "metrics": {"x0": float(x[0]), "value": params.get("a", 1) * float(x.sum())},
        "history": {"step": np.arange(3), "x": x},
    }
