"""The exact half of the gate: every count that rose between two commits.

``asv continuous --factor 1.10`` judges every value by a 10% factor, which
is right for times but lets an iteration count go from 19 to 20 unseen. The
``track_`` values whose unit is a count (``benchmarks.common.COUNT_UNITS``:
map evaluations, iterations, allocations inside compiled code) do not depend
on the machine, so any rise is a regression. This reads the results that the
gate's ``asv continuous`` stored and prints every count that changed; exit
status 1 if one rose, 2 if there is nothing to compare.

Usage (from the repository root; ``tools/gate.sh`` calls it)::

    python tools/gate_counts.py [--config CONF] [--machine NAME] BASE HEAD
    python tools/gate_counts.py --regex [--within REGEX]

``--regex`` prints asv's ``--bench`` regular expression of every benchmark
whose unit is a count (those whose name matches ``--within``), read from
the suite in ``benchmarks/``: what ``tools/gate.sh --counts`` runs.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import subprocess
import sys

#: Kept in step with ``benchmarks.common.COUNT_UNITS`` (a test checks it);
#: not imported from there because that imports deqbench.
COUNT_UNITS = ("evaluations", "iterations", "allocations")


def _hash(name: str) -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--verify", f"{name}^{{commit}}"], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"gate_counts: {name!r} is not a commit")
    return out.stdout.strip()


def _values(conf, machine: str, commit: str, benchmarks) -> dict:
    """``{(name, params): value}`` of the count benchmarks in ``commit``'s results."""
    from asv import results  # noqa: PLC0415

    out = {}
    prefix = commit[: getattr(conf, "hash_length", 8)]
    for res in results.iter_results_for_machine_and_hash(conf.results_dir, machine, prefix):
        for name in res.get_result_keys(benchmarks):
            bench = benchmarks[name]
            if bench.get("unit") not in COUNT_UNITS:
                continue
            values = res.get_result_value(name, bench["params"])
            if not isinstance(values, list):  # a benchmark without parameters
                values = [values]
            combos = list(itertools.product(*bench["params"])) or [()]
            for combo, value in zip(combos, values, strict=True):
                out[(name, combo)] = value
    return out


def compare(base: dict, head: dict) -> tuple[list, bool]:
    """Rows ``(name, params, base, head)`` of the counts that changed, and
    whether one rose (a count present in ``base`` and missing or failed in
    ``head`` counts as risen)."""
    rows, rose = [], False
    for key in sorted(set(base) | set(head)):
        a, b = base.get(key), head.get(key)
        na = a is None or (isinstance(a, float) and math.isnan(a))
        nb = b is None or (isinstance(b, float) and math.isnan(b))
        if na and nb:
            continue
        if na or nb or a != b:
            rows.append((key[0], key[1], a, b))
            rose |= (not na and nb) or (not na and not nb and b > a)
    return rows, rose


def count_benchmarks(within: str | None = None) -> list[str]:
    """Names (``bench_x.Class.track_y``) of the suite's benchmarks whose unit is
    in :data:`COUNT_UNITS`, those matching ``within`` (a regex) if given.
    Imports the suite (and so deqbench)."""
    import importlib  # noqa: PLC0415
    import inspect  # noqa: PLC0415
    import pkgutil  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:  # run as a script: sys.path[0] is tools/
        sys.path.insert(0, root)
    import benchmarks  # noqa: PLC0415

    names = []
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if not info.name.startswith("bench_"):
            continue
        mod = importlib.import_module(f"benchmarks.{info.name}")
        for owner, obj in vars(mod).items():
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj):
                attrs = [(f"{owner}.{a}", getattr(obj, a)) for a in dir(obj)]
            else:
                attrs = [(owner, obj)]
            for name, fn in attrs:
                if (name.split(".")[-1].startswith("track_")
                        and getattr(fn, "unit", None) in COUNT_UNITS):
                    names.append(f"{info.name}.{name}")
    return sorted(n for n in names if within is None or re.search(within, n))


def count_regex(names) -> str:
    """asv's ``--bench`` expression selecting exactly ``names`` (asv matches it
    against ``name`` and ``name(params)``)."""
    if not names:
        raise ValueError("names must hold at least one benchmark, got none")
    return "^(" + "|".join(re.escape(n) for n in names) + r")(\(|$)"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--regex" in argv:
        ap = argparse.ArgumentParser(prog="gate_counts.py --regex")
        ap.add_argument("--regex", action="store_true")
        ap.add_argument("--within", default=None, help="only names matching this regex")
        args = ap.parse_args(argv)
        names = count_benchmarks(args.within)
        if not names:
            print(f"gate_counts: no count benchmark matches {args.within!r}", file=sys.stderr)
            return 2
        print(count_regex(names))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="asv.conf.json")
    ap.add_argument("--machine", default=None, help="asv machine name (default: every machine)")
    ap.add_argument("base")
    ap.add_argument("head")
    args = ap.parse_args(argv)

    from asv.benchmarks import Benchmarks  # noqa: PLC0415
    from asv.config import Config  # noqa: PLC0415
    from asv.util import UserError  # noqa: PLC0415

    try:
        conf = Config.load(args.config)
        benchmarks = Benchmarks.load(conf)
    except UserError as exc:
        print(f"gate_counts: cannot compare: {exc}")
        return 2
    base, head = _hash(args.base), _hash(args.head)
    machines = (
        [args.machine]
        if args.machine
        else sorted(
            d
            for d in os.listdir(conf.results_dir)
            if os.path.isfile(os.path.join(conf.results_dir, d, "machine.json"))
        )
    )
    status = 0
    found = False
    ran = False  # both commits have results, even if the selection holds no count
    for machine in machines:
        try:
            a = _values(conf, machine, base, benchmarks)
            b = _values(conf, machine, head, benchmarks)
        except Exception as exc:  # asv: no results of this commit on this machine
            print(f"gate_counts: {machine}: {exc}")
            continue
        ran |= _has_results(conf, machine, base) and _has_results(conf, machine, head)
        if not a or not b:
            continue
        found = True
        rows, rose = compare(a, b)
        print(
            f"Exact counts ({', '.join(COUNT_UNITS)}), machine {machine}, "
            f"{base[:8]} -> {head[:8]}: {len(a)} values, {len(rows)} changed"
        )
        for name, combo, x, y in rows:
            mark = "+" if (y is None or x is None or y > x) else "-"
            print(f"{mark} {x!s:>10} -> {y!s:<10} {name}{list(combo) if combo else ''}")
        if rose:
            print("COUNTS ROSE: a change in a count is a regression as real as a slowdown.")
            status = 1
    if not found:
        if ran:
            print("gate_counts: the benchmarks run hold no exact counts: nothing to compare")
            return 0
        print("gate_counts: cannot compare: no results of both commits")
        return 2
    return status


def _has_results(conf, machine: str, commit: str) -> bool:
    """Whether asv stored any result of ``commit`` on ``machine``."""
    from asv import results  # noqa: PLC0415

    prefix = commit[: getattr(conf, "hash_length", 8)]
    try:
        return any(True for _ in results.iter_results_for_machine_and_hash(
            conf.results_dir, machine, prefix))
    except Exception:  # noqa: BLE001 - asv raises when nothing was stored
        return False


if __name__ == "__main__":
    sys.exit(main())
