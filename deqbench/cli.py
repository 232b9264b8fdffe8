"""The ``deqbench`` console script: ``info``, ``calibrate``, ``reproduce``, ``sweep``, ``plot``, ``quiet``.

Run ``deqbench SUBCOMMAND --help`` for the options of each.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

__all__ = ["main"]


def info_lines() -> list[str]:
    """What ``deqbench info`` prints: versions, BLAS, numba threading, CPU."""
    import llvmlite
    import numba
    import numpy as np
    from threadpoolctl import threadpool_info

    import deqbench
    from deqbench.activations import get_activation

    from ._platform import cpu_model, default_workers, vector_isa

    lines = [
        f"deqbench      {deqbench.__version__}  ({Path(deqbench.__file__).parent})",
        f"python        {platform.python_version()}  ({sys.executable})",
        f"numpy         {np.__version__}",
        f"numba         {numba.__version__}",
        f"llvmlite      {llvmlite.__version__}",
    ]
    for name in ("scipy", "matplotlib", "threadpoolctl", "dask", "distributed"):
        try:
            mod = __import__(name)
            lines.append(f"{name:<13} {mod.__version__}")
        except ImportError:
            lines.append(f"{name:<13} not installed")
    # run one parallel kernel so numba picks (and reports) its threading layer
    get_activation("tanh")(np.zeros(8))
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not initialised"
    lines.append(f"numba threading layer {layer}, {numba.get_num_threads()} threads "
                 f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS})")
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not blas:
        lines.append("BLAS          none found by threadpoolctl")
    for i in blas:
        extra = f", {i['threading_layer']}" if i.get("threading_layer") else ""
        lines.append(
            f"BLAS          {i.get('internal_api')} {i.get('version')} "
            f"({i.get('architecture', '?')}{extra}), {i.get('num_threads')} threads: "
            f"{i.get('filepath')}"
        )
    for i in threadpool_info():
        if i.get("user_api") == "openmp":
            lines.append(f"OpenMP        {i.get('internal_api')} {i.get('num_threads')} threads: "
                         f"{i.get('filepath')}")
    from ._calibration import in_force
    from ._calibration import info_lines as settings_lines
    from ._kernels import blocks

    now = in_force().values
    lines.append(f"thread policy numba's {numba.get_num_threads()} threads split the samples into "
                 f"row blocks of {now['block_bytes'] >> 10} KiB per array "
                 f"({now['min_rows']}-{now['max_rows']} rows; at least {now['wide_rows']} "
                 f"once the m x m matrix exceeds {now['wide_bytes'] >> 10} KiB); BLAS runs "
                 "single-threaded inside each block while a deqbench call runs")
    example = blocks.block_rows(1 << 20, 256, in_force().vector)
    if now["small_gemm_mnk"]:
        lines.append(f"small gemm    BLAS multiplies unpacked while rows m^2 <= "
                     f"{now['small_gemm_mnk']}: blocks of the most rows (a multiple of 4, at "
                     f"least {now['small_min_rows']}) that keep it, e.g. {example} rows at "
                     "m = 256")
    else:
        lines.append("small gemm    no unpacked small-matrix path in force: blocks by bytes "
                     f"alone ({example} rows at m = 256)")
    lines.append(f"crossovers    element passes parallel from {now['pass_parallel_min']} "
                 f"elements; gemm_tn: one share of the rows per thread, up to "
                 f"{blocks.MAX_PARTS} while partials fit {blocks.PARTS_BYTES >> 10} KiB, "
                 f"{blocks.MIN_ROWS} rows at least")
    lines.extend(settings_lines())
    lines.append(f"CPU           {cpu_model()} ({vector_isa()}); {os.cpu_count()} logical CPUs, "
                 f"{default_workers()} usable by this process")
    lines.append(f"platform      {platform.platform()}")
    return lines


def cmd_info(args) -> int:
    print("\n".join(info_lines()))
    return 0


def cmd_calibrate(args) -> int:
    from . import _calibrate
    from ._blas import MklUnavailable
    from ._calibration import cache_path, write

    if args.gemm_table:
        print(f"row-block gemm (n, m) x (m, m) by backend, numba's {_threads()} threads, "
              "BLAS on one thread in each; numpy's matmul on its BLAS's threads")
        _calibrate.gemm_table(args.widths or _calibrate.WIDTHS, args.n or _calibrate.N,
                              args.budget or 20.0)
        return 0
    out = Path(args.out) if args.out else cache_path()
    if out is None and not args.dry_run:
        raise RuntimeError("DEQBENCH_CALIBRATION=off: give --out PATH, or --dry-run")
    opts = dict(_calibrate.QUICK) if args.quick else {}
    if args.widths:
        opts["widths"] = args.widths
    if args.n:
        opts["n"] = args.n
    if args.budget is not None:
        opts["budget"] = args.budget
    try:
        found = _calibrate.calibrate(gemm=args.gemm, **opts)
    except MklUnavailable as exc:
        raise RuntimeError(f"--gemm mkl: {exc}") from exc
    settings = found["settings"]
    print("settings      " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    if args.dry_run:
        print("not written (--dry-run)")
        return 0
    command = "deqbench calibrate " + " ".join(args.argv)
    path = write(out, settings, found["measured"], command.strip())
    print(f"wrote         {path} (deqbench info shows the settings in force)")
    return 0


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def cmd_sweep(args) -> int:
    from .sweep import load_grid, run_sweep

    if args.status:
        return _print_status(args.status)
    if args.grid is None:
        raise SweepUsage("give a grid file, or --status DIR")
    grid = load_grid(args.grid)  # GridError: one line, before any run
    out = Path(args.out) if args.out else Path("sweeps") / grid.name
    if args.dry_run:
        print(f"{args.grid}: {len(grid)} runs ({grid.replicates} replicate(s) of "
              f"{len(grid) // grid.replicates} grid points), run function {grid.run!r} -> {out}")
        return 0
    if len(grid) > CONFIRM_ABOVE and not args.yes and not _confirm(len(grid)):
        raise SweepUsage(f"{args.grid}: {len(grid)} runs (more than {CONFIRM_ABOVE}); pass "
                         "--yes to run them, or --dry-run to count")
    print(f"sweep {grid.name!r}: {len(grid)} runs -> {out} (executor {args.executor})",
          file=sys.stderr)
    res = run_sweep(grid, out, executor=args.executor, workers=args.workers,
                    scheduler=args.scheduler, progress=not args.no_progress,
                    retry_failed=args.retry_failed, retries=args.retries, force=args.force,
                    connect_timeout=args.connect_timeout, format=args.format)
    ext = res.format  # "parquet" or "csv": the tables' suffix
    print(f"{res.summary()}; tables: {out / ('runs.' + ext)}, {out / ('histories.' + ext)}",
          file=sys.stderr)
    if args.plot:
        from .plots import plot_dir

        for path in plot_dir(out):
            print(path)
    return 0 if res.complete else 3


#: Grids with more runs than this need --yes (or an answer on a terminal).
CONFIRM_ABOVE = 100_000


def _confirm(n: int) -> bool:
    """Ask on a terminal whether to start ``n`` runs; False when stdin is not a terminal."""
    if not sys.stdin.isatty():
        return False
    answer = input(f"{n} runs: start them? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _print_status(path) -> int:
    """``deqbench sweep --status DIR``: counts, read without touching the directory."""
    from .sweep import FAILED, sweep_status

    st = sweep_status(path)
    total = "?" if st["runs"] is None else st["runs"]
    failed = sum(n for k, n in st["by_status"].items() if k in FAILED)
    lost = f"{st['lost']} lost (their worker died; they run again), " if st["lost"] else ""
    name = f"sweep {st['name']!r}" if st["meta"] == "ok" else f"sweep.json {st['meta']}"
    print(f"{path}: {name}, {total} runs: {st['done']} done "
          f"({st['done'] - failed} finished, {failed} failed), {lost}"
          f"{'?' if st['remaining'] is None else st['remaining']} remaining"
          + (f", {st['damaged']} damaged record(s) to re-run" if st["damaged"] else ""))
    if st["by_status"]:
        print("statuses: " + ", ".join(f"{k} {n}" for k, n in sorted(st["by_status"].items())))
    print(f"running: {st['holder']}" if st["holder"] else "not running")
    return 0


class SweepUsage(RuntimeError):
    """A sweep command line that names nothing to do."""


def cmd_plot(args) -> int:
    from .plots import plot_dir

    paths = plot_dir(args.dir, out=args.out)
    for path in paths:
        print(path)
    if not paths:
        print(f"{args.dir}: nothing to plot", file=sys.stderr)
    return 0


def cmd_reproduce(args) -> int:
    from .experiments import reproduce

    # "--only E11,E12 E13" is "--only E11 E12 E13"
    only = None if args.only is None else [e for a in args.only for e in a.split(",") if e]
    summary = reproduce(args.out, quick=args.quick, only=only, workers=args.workers,
                        progress=not args.no_progress)
    print(summary.read_text())
    return 0


def cmd_quiet(args) -> int:
    from ._quiet import main_quiet

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    try:
        return main_quiet(cmd, max_load=args.max_load, wait=args.wait, noise=args.noise,
                          strict=args.strict)
    except ValueError as exc:  # bad options: one line, as argparse would
        print(f"deqbench quiet: error: {exc}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, exit status 2 (the usage
    is one ``--help`` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="deqbench",
        description="Benchmarks and theory checks for deep equilibrium models.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("info", help="versions, BLAS, numba threading layer, CPU",
                       description="Print deqbench, numba, numpy, llvmlite versions, the BLAS "
                       "library and its threads (threadpoolctl), numba's threading layer and "
                       "the CPU.")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("calibrate", help="measure the kernels' settings on this machine",
                       description="Time the block-resident Picard iteration by block rows at "
                       "several widths (with each gemm backend: numba's np.dot, and MKL's where "
                       "libmkl_rt loads) and the element passes on one thread against all, pick "
                       "the block rule, small-gemm bound, parallel crossover and gemm, and write "
                       "them to the per-user calibration file (about two minutes; run it on a "
                       "quiet machine). No result depends on them: they only make the kernels "
                       "faster. 'deqbench info' shows the settings in force.")
    s.add_argument("--quick", action="store_true",
                   help="tiny sizes in a few seconds (a check of the machinery, not a "
                   "measurement)")
    s.add_argument("--widths", type=_widths, default=None, metavar="M1,M2,...",
                   help="widths m to time (default: 16,32,64,128,256,512,1024)")
    s.add_argument("--n", type=_positive_int, default=None,
                   help="rows of the timed problems (default: 8192)")
    s.add_argument("--budget", type=_positive_float, default=None, metavar="SECONDS",
                   help="seconds of timing (default: 90)")
    s.add_argument("--gemm", choices=("auto", "blas", "mkl"), default="auto",
                   help="gemm backends to time: every one that loads (auto), or one")
    s.add_argument("--out", default=None, metavar="PATH",
                   help="calibration file to write (default: $DEQBENCH_CALIBRATION, else "
                   "$XDG_CACHE_HOME/deqbench/calibration.json)")
    s.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    s.add_argument("--gemm-table", action="store_true",
                   help="only print the row-block gemm's GFLOP/s with each backend next to "
                   "numpy's matmul at the widths (--n rows, --budget seconds), write nothing")
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("reproduce", help="run the validation experiments E1-E13",
                       description="Run the validation experiments (docs/theory.md §3-§12: "
                       "E11-E13 rerun the paper's Appendix A with model 'single_index' against "
                       "the authors' saved numbers) and write runs.csv, histories.csv, PNG "
                       "figures and summary.md (one row per prediction: predicted, measured, "
                       "holds).")
    s.add_argument("--quick", action="store_true",
                   help="small sizes (under 3 minutes on 2 cores)")
    s.add_argument("--out", default="results/reproduce", help="output directory "
                   "(default: %(default)s)")
    s.add_argument("--only", nargs="+", metavar="E", default=None,
                   help="run only these experiments, e.g. --only E1 E5 or --only E11,E12")
    s.add_argument("--workers", type=_positive_int, default=None,
                   help="processes for the independent runs (default: usable CPUs)")
    s.add_argument("--no-progress", action="store_true", help="no progress output")
    s.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("sweep", help="run a resumable parameter sweep from a TOML grid",
                       description="Run the Cartesian product of a TOML grid (see "
                       "docs/sweeps.md). Finished runs are committed to DIR in batches and "
                       "compacted into DIR/runs.parquet and DIR/histories.parquet (or, with "
                       "--format csv, DIR/runs.csv and DIR/histories.csv); "
                       "re-running the same command skips finished runs. DIR is locked while "
                       "a sweep runs and remembers its grid. Models: linear, readout (the "
                       "linear DEQ read out through sigma(u^T z)), nonlinear, single_index "
                       "(the paper's y = sigma(<w, x> + b y): m = 1, solver = 'newton'); "
                       "parameters include solver, grad_solver, neumann_terms and "
                       "neumann_damping.")
    s.add_argument("grid", nargs="?", default=None, help="grid file (TOML)")
    s.add_argument("--out", default=None, help="sweep directory (default: sweeps/<name>)")
    s.add_argument("--executor", choices=("local", "dask", "serial"), default="local",
                   help="local process pool (default), a Dask cluster, or serial in this "
                   "process (debugging)")
    s.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes (default: usable CPUs)")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler, e.g. tcp://host:8786 (with --executor dask; without "
                   "it a local Dask cluster is started)")
    s.add_argument("--retry-failed", action="store_true",
                   help="also re-run stored runs that failed")
    s.add_argument("--dry-run", action="store_true",
                   help="validate the grid and print the number of runs")
    s.add_argument("--retries", type=_nonnegative_int, default=2,
                   help="start a run whose worker process died (stored 'lost' meanwhile) again "
                   "this many times, then record it 'crashed' (default: %(default)s)")
    s.add_argument("--force", action="store_true",
                   help="add the runs to a directory that holds a different grid")
    s.add_argument("--connect-timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                   help="seconds to reach --scheduler (default: %(default)s)")
    s.add_argument("--format", choices=("parquet", "csv"), default=None,
                   help="store: Parquet (runs.parquet/histories.parquet) or CSV (per-run "
                   "files and runs.csv/histories.csv) (default: the directory's, else "
                   "parquet)")
    s.add_argument("--status", default=None, metavar="DIR",
                   help="print what sweep directory DIR holds (done, failed, lost, remaining, "
                   "who is running it) without touching it, and exit")
    s.add_argument("--yes", action="store_true",
                   help="start a grid of more than 100000 runs without asking")
    s.add_argument("--plot", action="store_true", help="write figures when done")
    s.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none when stderr is not a terminal)")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("plot", help="figures from a sweep or reproduce directory",
                       description="Loss curves with theory envelopes, invariant drift, "
                       "log-log scaling with fitted slopes and iteration counts, from DIR/"
                       "runs.parquet and DIR/histories.parquet, or their CSV twins.")
    s.add_argument("dir", help="sweep or reproduce output directory")
    s.add_argument("--out", default=None, help="figure directory (default: DIR/figures)")
    s.set_defaults(func=cmd_plot)

    s = sub.add_parser("quiet", help="run a command on a quiet machine and say how quiet it "
                       "stayed", description="Wait for a quiet machine (1-minute load), run "
                       "CMD, print one line: wall time, CPUs, CMD's own CPU time, the CPU time "
                       "other processes took (and its share of the machine), steal, load at "
                       "start and peak, CLEAN or NOISY. Exit: CMD's status; 3 when the machine "
                       "stayed busy; 4 for a NOISY run with --strict. Linux (/proc) only.",
                       usage="deqbench quiet [options] -- CMD [ARGS ...]")
    s.add_argument("--max-load", type=float, default=0.5,
                   help="start once the 1-minute load average is at most this "
                   "(default: %(default)s)")
    s.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="wait at most this long for it (default: %(default)s)")
    s.add_argument("--noise", type=float, default=0.05, metavar="SHARE",
                   help="largest share of the machine other processes or steal may take in a "
                   "CLEAN run (default: %(default)s)")
    s.add_argument("--strict", action="store_true", help="exit 4 when the run was NOISY")
    s.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    s.set_defaults(func=cmd_quiet)
    return p


def _widths(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be integers separated by commas, got "
                                         f"{text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"widths must be >= 1, got {text!r}")
    return values


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (0.0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


#: Set to 1 to see the traceback of an error the command line reports in one line.
TRACEBACK_ENV = "DEQBENCH_TRACEBACK"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deqbench`` console script.

    Exit status: 0 done; 2 an error, reported in one line on stderr (bad arguments,
    an unusable grid, directory or file, a failed write); 3 a sweep that ended with
    runs left to do; 130 Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]
    if getattr(args, "scheduler", None) and args.executor != "dask":
        parser.error("--scheduler needs --executor dask")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error is one line (issue 31)
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"deqbench {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """What went wrong, on one line: the message (with the file of an ``OSError``); for
    an exception that is not one of the kinds deqbench reports, its type and how to see
    more."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    if not isinstance(exc, (RuntimeError, OSError, ValueError, TypeError, LookupError)):
        text = (f"{type(exc).__name__}: {text} (unexpected: run with {TRACEBACK_ENV}=1 for "
                "the traceback, and please report it)")
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
