"""A tool's measurement under the quiet check (``deqbench quiet``, in-process).

``python -m tools.calibrate`` and ``python -m tools.peers.run_peers`` call
:func:`main`: it takes the options below off the command line, waits for a
quiet machine, runs the tool inside :class:`deqbench._quiet.Meter` and prints
the summary line at the end, so every figure a tool prints comes with how
quiet the machine was. Options (before or after the tool's own):

    --max-load L   start once the 1-minute load is at most L (default 0.5)
    --wait S       wait at most S seconds for it (default 600; then exit 3)
    --strict       exit 4 when the run was NOISY
    --no-quiet     no waiting and no quiet line (a machine you know is idle)

Off Linux the check cannot measure; the tool runs and says so.
"""

from __future__ import annotations

import argparse
import sys

from deqbench import _quiet

_meter: _quiet.Meter | None = None
_strict = False
NOISY_STRICT = _quiet.NOISY_STRICT


def line_so_far() -> str:
    """The summary line of the running measurement up to now (for a tool that
    writes it into its report before it ends), or why there is none."""
    if _meter is None:
        return "quiet: not measured (run without the quiet check)"
    return _meter.summary_now().line()


def refusing() -> bool:
    """Whether the running measurement is NOISY so far under ``--strict`` (a tool
    then writes no results)."""
    return _strict and _meter is not None and not _meter.summary_now().clean


def parse(argv):
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # "--n" is the tool's
    ap.add_argument("--max-load", type=float, default=_quiet.MAX_LOAD)
    ap.add_argument("--wait", type=float, default=_quiet.WAIT_S)
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--no-quiet", action="store_true")
    return ap.parse_known_args(argv)


def main(tool, argv=None, *, err=None) -> int:
    """Run ``tool(rest_of_argv) -> status`` under the quiet check."""
    global _meter, _strict
    err = sys.stderr if err is None else err
    opts, rest = parse(sys.argv[1:] if argv is None else list(argv))
    _strict = opts.strict
    if opts.no_quiet:
        return tool(rest)
    try:
        _quiet.snapshot()
    except _quiet.QuietUnavailable as exc:
        print(f"quiet: not measured: {exc}", file=err)
        return tool(rest)

    def say(text):
        print(text, file=err, flush=True)

    if _quiet.wait_for_quiet(opts.max_load, opts.wait, say=say) is None:
        say(f"quiet: machine busy (load above {opts.max_load:g}) for {opts.wait:.0f} s; "
            "nothing run (--max-load, --wait, or --no-quiet)")
        return _quiet.NEVER_QUIET
    with _quiet.Meter() as meter:
        _meter = meter
        try:
            status = tool(rest)
        finally:
            _meter = None
    say(meter.summary.line())
    if opts.strict and not meter.summary.clean:
        say("quiet: NOISY run refused (--strict)")
        return _quiet.NOISY_STRICT
    return status
