"""Inject a known slowdown into the forward kernel, to check that the gate sees it.

For ``tools/gate.sh --inject`` only, which applies it to a throwaway
commit in a temporary worktree (never to a branch anyone merges). It edits
``evaluate`` in ``deqbench/_kernels/fixed_point.py`` so that at the widths
``m = 32`` and ``m = 256`` every map evaluation first repeats the pass on the
first ``FRACTION`` of the rows: about ``FRACTION`` more time for every Picard
evaluation at those widths (forward and adjoint; Anderson's ``anderson_eval``
is untouched) and bitwise the same results, since the pass that follows
overwrites every row the repeat wrote. No environment variable, no branch in
the code: the commit under test is what runs.

Usage::

    python tools/inject.py PATH/TO/deqbench/_kernels/fixed_point.py
"""

from __future__ import annotations

import re
import sys

FRACTION_PERCENT = 15
WIDTHS = (32, 256)

ANCHOR = re.compile(
    r"(def evaluate\(Z, M, U, code, param, D, T, beta\):\n(?:.*\n)*?"
    r"(    rows = block_rows\(Z\.shape\[0\], Z\.shape\[1\]\)\n))"
)

PATCH = """\
    # INJECTED by tools/inject.py (tools/gate.sh --inject, a throwaway
    # commit): repeat the pass on {pct}% of the rows at widths {widths}; the pass
    # below overwrites every row of T written here.
    if {cond}:
        extra = (Z.shape[0] * {pct} + 99) // 100
        _evaluate_s(Z[:extra], M, U[:extra], code, param, D[:extra], T[:extra], beta, rows)
"""


def inject(source: str) -> str:
    """``source`` of fixed_point.py with the slowdown in ``evaluate``."""
    if "INJECTED by tools/inject.py" in source:
        raise ValueError("the slowdown is already injected")
    match = ANCHOR.search(source)
    if match is None:
        raise ValueError(
            "evaluate() no longer starts with 'rows = block_rows(Z.shape[0], Z.shape[1])': "
            "update tools/inject.py"
        )
    cond = " or ".join(f"Z.shape[1] == {w}" for w in WIDTHS)
    patch = PATCH.format(pct=FRACTION_PERCENT, widths=" and ".join(map(str, WIDTHS)), cond=cond)
    return source[: match.end()] + patch + source[match.end() :]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.split("Usage::")[1].strip(), file=sys.stderr)
        return 2
    path = argv[0]
    with open(path) as fh:
        source = fh.read()
    try:
        patched = inject(source)
    except ValueError as exc:
        print(f"inject: {path}: {exc}", file=sys.stderr)
        return 1
    with open(path, "w") as fh:
        fh.write(patched)
    print(f"inject: {path}: +{FRACTION_PERCENT}% of each pass at m in {WIDTHS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
