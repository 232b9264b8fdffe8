"""The confirming half of the gate: which cases ``asv continuous`` flagged.

On a shared (cloud) machine the speed of the CPU itself drifts, with nothing
to see inside the VM: measured here with ``tools/noise_probe.py`` (2-core
AMD EPYC, quiet: other processes 1.0% of the machine, steal 0.1%), the CPU
time of one unchanged solve drifted from 6.6 to 8.7 ms per call within one
minute of one process (medians of windows of 20 samples), and 12 fresh
processes in a row gave medians from 6.95 to 8.67 ms. asv interleaves the two
commits by rounds, and a round of the suite takes minutes, so BASE's and
HEAD's samples of one case can be minutes apart, and a slow stretch moves all
the cases it covers the same way (the A/A run of f971fdf listed 7 cases, all
faster on the no-op commit). asv's Mann-Whitney U test treats the samples as
independent, which these are not. The gate therefore re-runs every flagged
case, alone, in a fresh interleaved run with twice the processes: BASE and
HEAD then alternate every few seconds, and a real change shows in both runs
while a slow stretch of the machine does not come back for the same case in
the same direction.

The ``track_efficiency`` values (a kernel's time over numpy's matmul of the
same shapes, ``benchmarks/common.py``, ``cost_ratio``) are one number per
process, so asv has no samples to test them with, and for Anderson at m = 32
they are not stable to 10%: its passes stream five history slots of 2 MiB
each through memory, while the matmul it is divided by runs in cache, so the
ratio moves with the memory bandwidth the VM gets at the time. The same code
gave 4.41, 3.91, 3.41 and 3.78 in four processes of two A/A runs, and the
best of 7 solves in one process moved from 18.9 to 31.9 ms with nothing
changed (where the history buffers sit relative to each other, mod 4096
bytes, made no consistent difference). A flagged efficiency therefore counts only when both
runs moved it by more than :data:`EFFICIENCY_FACTOR` the same way.

Even the confirming run's verdict is asv's U test over all its samples,
which treats the samples as independent; they are not (one process's samples
share its page placement, and the machine drifts from round to round). The
confirming run therefore takes a fixed number of samples per process, and a
time it flags counts only when the rounds agree, paired in the order they ran
(BASE's round i beside HEAD's round i, seconds apart): the median over rounds
of HEAD's round median over BASE's must be beyond the factor, and at least
:data:`PAIRED_MIN` of the :data:`PAIRED_ROUNDS` paired ratios must lie on the
flagged side of 1 (a sign test: 7 of 8 by chance has probability 9/256 =
0.035 one-sided). In the A/A run of db7e3c4, Anderson's adjoint at m = 32
was flagged by both runs (1.22, then 1.13); its eight paired ratios were
1.22 1.24 0.90 1.04 1.33 0.88 1.12 1.13: six of eight, noise.

This module reads the tables that ``asv continuous --split`` printed and
prints one ``--bench`` regex per flagged case that can count (anchored, parameters
included, which asv matches against ``name(param, ...)``); ``gate.sh``
passes them to the confirming run.

Usage (``tools/gate.sh`` calls it)::

    python tools/gate_confirm.py FIRST                    # regexes, one per line
    python tools/gate_confirm.py FIRST --confirmed-by SECOND  # "WORSE BETTER FAILED"
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import re
import statistics
import sys

#: asv's marks in the Change column: worse, better, failed in one commit only
MARKS = ("+", "-", "!")
#: The factor a ratio of two times measured in one process (``track_efficiency``,
#: ``CertificateCost.track_time_ratio``) must move by, in both runs, to count
#: (1.10 for everything else: asv's ``--factor``). Unchanged code gave Anderson's
#: efficiency at m = 32 values from 3.41 to 4.66 over six A/A processes (1.37): the
#: second run's agreement, not this factor alone, keeps such a flag out.
EFFICIENCY_FACTOR = 1.25
#: asv's factor, for the paired rounds (``gate.sh`` passes its ``FACTOR`` as ``--factor``).
FACTOR = 1.10
#: Processes per commit of the confirming run (``gate.sh``: ``CONFIRM_ROUNDS``,
#: passed as ``--rounds``), and how many of the paired rounds must agree.
PAIRED_ROUNDS = 8
PAIRED_MIN = 7
#: The ``track_`` methods judged by :data:`EFFICIENCY_FACTOR`.
TIME_RATIOS = (".track_efficiency(", ".track_time_ratio(")


def flagged(text: str) -> list[tuple[str, str]]:
    """``(mark, benchmark)`` of every row of asv's compare tables whose Change
    column holds a mark of :data:`MARKS`, in the order printed."""
    return [(mark, name) for mark, name, _ in _rows(text)]


def _rows(text: str) -> list[tuple[str, str, float]]:
    """``(mark, benchmark, ratio)`` of the flagged rows (ratio NaN when asv printed none)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 5 and cells[0] in MARKS and cells[-1]:
            try:
                ratio = float(cells[-2].lstrip("~"))
            except ValueError:
                ratio = float("nan")
            rows.append((cells[0], cells[-1], ratio))
    return rows


def _counts(mark: str, name: str, ratio: float) -> bool:
    """Whether one run's flag of ``name`` is large enough to count (a ratio of times:
    beyond :data:`EFFICIENCY_FACTOR`; a failure, or any other value: always)."""
    if mark == "!" or not any(t in name for t in TIME_RATIOS):
        return True
    return not ratio <= EFFICIENCY_FACTOR if mark == "+" else not ratio >= 1 / EFFICIENCY_FACTOR


def confirmed(first, second) -> list[tuple[str, str]]:
    """The rows of ``second`` (the confirming run) that ``first`` flagged with the same
    mark: a case flagged better, then worse, is two draws of the noise, not a change.
    Either argument: the output text of ``asv continuous --split``."""
    marks = {name: mark for mark, name, ratio in _rows(first) if _counts(mark, name, ratio)}
    return [(mark, name) for mark, name, ratio in _rows(second)
            if marks.get(name) == mark and _counts(mark, name, ratio)]


def round_medians(results_dir: str, commit: str, rounds: int = PAIRED_ROUNDS) -> dict:
    """``{case name: [median of each round's samples]}`` of one commit's stored
    asv results (``results_dir/<machine>/<hash8>-*.json``), rounds in the order
    they ran (asv appends each round's samples). Cases whose sample count is not
    a multiple of ``rounds`` are left out."""
    out = {}
    for path in glob.glob(os.path.join(results_dir, "*", commit[:8] + "-*.json")):
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        cols = data["result_columns"]
        for key, row in data["results"].items():
            row = dict(zip(cols, row, strict=False))
            params = row.get("params") or []
            combos = list(itertools.product(*params)) if params else [()]
            for combo, samples in zip(combos, row.get("samples") or [], strict=False):
                if not samples or len(samples) % rounds:
                    continue
                k = len(samples) // rounds
                name = f"{key}({', '.join(combo)})" if combo else key
                out[name] = [statistics.median(samples[i * k:(i + 1) * k]) for i in range(rounds)]
    return out


def paired(mark: str, base: list, head: list, factor: float = FACTOR) -> bool:
    """Whether the paired rounds (``head[i] / base[i]``) agree with ``mark``:
    :data:`PAIRED_MIN` of :data:`PAIRED_ROUNDS` on its side of 1 (scaled to the
    number of rounds given), their median beyond ``factor``."""
    ratios = [h / b for b, h in zip(base, head, strict=True)]
    need = -(-PAIRED_MIN * len(ratios) // PAIRED_ROUNDS)
    if mark == "+":
        side, beyond = sum(r > 1 for r in ratios), statistics.median(ratios) > factor
    else:
        side, beyond = sum(r < 1 for r in ratios), statistics.median(ratios) < 1 / factor
    return beyond and side >= need


def bench_regex(name: str) -> str:
    """An anchored ``--bench`` regex that selects exactly the case ``name``
    (``module.Class.method(param, ...)`` as asv prints it)."""
    return "^" + re.escape(name) + "$"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/gate_confirm.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="a file holding the output of asv continuous --split")
    p.add_argument("--confirmed-by", metavar="SECOND", default=None,
                   help="the confirming run's output: print the numbers of worse, better and "
                   "failed cases that both runs flagged the same way")
    p.add_argument("--paired", nargs=3, metavar=("RESULTS", "BASE", "HEAD"), default=None,
                   help="the confirming run's results folder and the two commits: a flagged "
                   "time counts only if its paired rounds agree")
    p.add_argument("--factor", type=float, default=FACTOR,
                   help="asv's --factor, for the paired rounds (default %(default)s)")
    p.add_argument("--rounds", type=int, default=PAIRED_ROUNDS,
                   help="processes per commit of the confirming run (default %(default)s)")
    args = p.parse_args(argv)
    if args.confirmed_by is not None:
        both = confirmed(_read(args.output), _read(args.confirmed_by))
        if args.paired:
            results, base, head = args.paired
            rb = round_medians(results, base, args.rounds)
            rh = round_medians(results, head, args.rounds)
            both = [(mark, name) for mark, name in both
                    if mark == "!" or name not in rb or name not in rh
                    or paired(mark, rb[name], rh[name], args.factor)]
        print(*(sum(m == mark for m, _ in both) for mark in MARKS))
    else:
        rows = _rows(_read(args.output))
        for name in dict.fromkeys(name for mark, name, ratio in rows if _counts(mark, name, ratio)):
            print(bench_regex(name))
    return 0


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read()


if __name__ == "__main__":
    sys.exit(main())
