"""The asv suite cannot rot unnoticed: import every benchmark module and run
each benchmark's setup and body once.

Numeric parameters take their first value (the suite lists the smallest first);
categorical ones (methods, models, flags) run every value, since each selects
different code. Classes with a ``setup_cache`` run their first combination only
(their cache is expensive by design: compile probes, training runs). A setup
that raises ``NotImplementedError`` is asv's "skip" (an optional API or peer
library missing) and is reported as a pytest skip, never a pass.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import numbers
import sys
from pathlib import Path

import numba
import pytest
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PREFIXES = ("time_", "timeraw_", "track_", "mem_", "peakmem_")
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))


def _attr(name, *sources, default=None):
    for src in sources:
        if src is not None and hasattr(src, name):
            return getattr(src, name)
    return default


def _param_lists(params) -> list[list]:
    if not params:
        return []
    params = list(params)
    if not isinstance(params[0], (list, tuple)):  # asv: a single parameter
        params = [params]
    return [list(p) for p in params]


def _is_numeric(values) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def combinations(params, *, first_only: bool) -> list[tuple]:
    lists = _param_lists(params)
    if first_only:
        return [tuple(v[0] for v in lists)]
    chosen = [v if not _is_numeric(v) else [v[0]] for v in lists]
    return list(itertools.product(*chosen))


def collect():
    """``(module, owner, methods)`` for every benchmark class and function."""
    cases = []
    for name in MODULES:
        mod = importlib.import_module(f"benchmarks.{name}")
        for attr, obj in sorted(vars(mod).items()):
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj):
                methods = sorted(m for m in dir(obj) if m.startswith(PREFIXES))
                if methods:
                    cases.append(pytest.param(name, attr, methods, id=f"{name}.{attr}"))
            elif inspect.isfunction(obj) and attr.startswith(PREFIXES):
                cases.append(pytest.param(name, attr, None, id=f"{name}.{attr}"))
    return cases


@pytest.fixture(autouse=True)
def _one_thread():
    """Run single-threaded, as asv.conf.json pins it (thread pools on a busy
    2-core machine make these kernels 10-100x slower)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        numba.set_num_threads(previous)


def _call(fn, args):
    out = fn(*args)
    if isinstance(out, str) and fn.__name__.startswith("timeraw_"):
        exec(compile(out, fn.__name__, "exec"), {})  # noqa: S102
    return out


def _check_track(name, value):
    if name.split(".")[-1].startswith("track_"):
        assert isinstance(value, numbers.Real) and not isinstance(value, bool), (name, value)


def _run_function(mod, fn):
    params = _attr("params", fn, default=[])
    ran, skipped = 0, []
    setup = _attr("setup", fn, mod)
    teardown = _attr("teardown", fn, mod)
    for combo in combinations(params, first_only=False):
        try:
            if setup is not None:
                setup(*combo)
        except NotImplementedError as exc:
            skipped.append(f"{combo}: {exc}")
            continue
        try:
            _check_track(fn.__name__, _call(fn, combo))
            ran += 1
        finally:
            if teardown is not None:
                teardown(*combo)
    return ran, skipped


def _run_class(cls, methods):
    cache_fn = getattr(cls, "setup_cache", None)
    combos = combinations(getattr(cls, "params", []), first_only=cache_fn is not None)
    lead = ()
    if cache_fn is not None:
        # setup_cache sees the class's params: restrict them to the combination run here
        holder = cls()
        lists = _param_lists(cls.params)
        if lists:
            holder.params = [[v] for v in combos[0]]
        lead = (cache_fn.__get__(holder)(),)
    ran, skipped = 0, []
    for combo in combos:
        obj = cls()
        args = lead + combo
        try:
            if hasattr(obj, "setup"):
                obj.setup(*args)
        except NotImplementedError as exc:
            skipped.append(f"{combo}: {exc}")
            continue
        try:
            for name in methods:
                _check_track(f"{cls.__name__}.{name}", _call(getattr(obj, name), args))
            ran += 1
        finally:
            if hasattr(obj, "teardown"):
                obj.teardown(*args)
    return ran, skipped


def test_suite_found():
    names = set(MODULES)
    for expected in (
        "bench_fixed_point",
        "bench_gradients",
        "bench_training",
        "bench_scaling",
        "bench_memory",
        "bench_theory",
        "bench_compile",
    ):
        assert expected in names


@pytest.mark.parametrize(("module", "owner", "methods"), collect())
def test_benchmark_runs(module, owner, methods):
    mod = importlib.import_module(f"benchmarks.{module}")
    obj = getattr(mod, owner)
    if methods is None:
        ran, skipped = _run_function(mod, obj)
    else:
        ran, skipped = _run_class(obj, methods)
    if ran == 0:
        pytest.skip("; ".join(skipped) or "no parameter combination")
