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


def crash(params, seed):
    """``params['crash'] = true``: the worker process dies (SIGKILL, as a segfault or the
    out-of-memory killer would end it); ``params['hang'] = true`` (or ``params['a']`` equal
    to ``params['hang_a']``): sleeps a minute; otherwise :func:`draw`."""
    import os
    import signal

    if params.get("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    if params.get("hang") or params.get("a") == params.get("hang_a", -1):
        time.sleep(60)
    return draw(params, seed)


def scripted(params, seed):
    """The run with ``a = 0`` follows ``params['plan']``: its attempt k (counted by marker
    files in ``params['dir']``) does the k-th word, or the last one once the plan runs out:
    ``kill`` (SIGKILL its worker), ``hang`` (sleep a minute) or ``ok``; then :func:`draw`."""
    import os
    import signal
    from pathlib import Path

    if params["a"] == 0:
        marks = Path(params["dir"])
        k = len(list(marks.glob("attempt-*")))
        (marks / f"attempt-{k}").touch()
        plan = params["plan"].split()
        step = plan[min(k, len(plan) - 1)]
        if step == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if step == "hang":
            time.sleep(60)
    return draw(params, seed)
