"""Inject a known slowdown into every gemm of the kernels, to check that the gate sees it.

For ``tools/gate.sh --inject`` only, which applies it to a throwaway commit in
a temporary worktree (never to a branch anyone merges). Every product
``np.dot(a, b, out)`` in ``deqbench/_kernels/*.py`` becomes
``_injected_dot(a, b, out)`` (``deqbench/_kernels/_injected.py``, written
here), which first multiplies ``PERCENT``% of the problem into ``out`` (the
first quarter of ``a``'s rows into the same rows of ``out``; for a transposed
``a``, the first quarter of the inner dimension into all of ``out``) and then
makes the product itself, which overwrites everything the first one wrote.

So every row-block gemm of every solve, adjoint, gradient and training step
does ``PERCENT``% more flops, whichever kernel a change makes hot, with
bitwise the same results, the same iteration counts and no allocation
(``tests/test_gate.py`` counts the flops of each gated ``time_`` benchmark's
timed call with and without it). A quarter is exact on the row blocks
(multiples of 4 rows); where the gemm is 80-96% of a solve (``python -m
tools.picard_parts``) the solve takes about 20-24% longer, twice the gate's 10%
threshold: a gate that misses it is broken, not unlucky. No environment
variable, no branch in the code: the commit under test is what runs.

Usage::

    python tools/inject.py PATH        # PATH: a checkout, or its deqbench/ folder
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PERCENT = 25
MARK = "INJECTED by tools/inject.py"
NAME = "_injected_dot"

MODULE = '''\
"""{mark} (tools/gate.sh --inject, a throwaway commit: NOT FOR MERGE).

Every ``np.dot(a, b, out)`` of the kernels calls :func:`dot`: {pct}% of the
product first, then the product, which overwrites it."""

import numpy as np
from numba import types
from numba.extending import overload

from .._jit import jit

PERCENT = {pct}


def extra(a, b, out):
    """The extra product (this body runs under NUMBA_DISABLE_JIT; compiled code
    takes the overload below, chosen by the arrays' layouts)."""
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        return
    if a.flags.c_contiguous:
        e = a.shape[0] * PERCENT // 100
        if e > 0:
            np.dot(a[:e], b, out[:e])
    elif a.flags.f_contiguous and b.flags.c_contiguous:
        e = a.shape[1] * PERCENT // 100
        if e > 0:
            np.dot(a.T[:e].T, b[:e], out)


@overload(extra)
def _extra(a, b, out):
    arrays = all(isinstance(x, types.Array) and x.ndim == 2 for x in (a, b, out))
    if arrays and a.layout == "C":
        def rows(a, b, out):
            e = a.shape[0] * PERCENT // 100
            if e > 0:
                np.dot(a[:e], b, out[:e])
        return rows
    if arrays and a.layout == "F" and b.layout == "C":
        def inner(a, b, out):  # a transposed view: a.T[:e] keeps it contiguous
            e = a.shape[1] * PERCENT // 100
            if e > 0:
                np.dot(a.T[:e].T, b[:e], out)
        return inner
    return lambda a, b, out: None


@jit
def dot(a, b, out):
    extra(a, b, out)
    return np.dot(a, b, out)
'''


def _calls(tree: ast.AST) -> list[ast.Call]:
    """Every ``np.dot(a, b, out)`` (three positional arguments) in ``tree``."""
    return [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "dot" and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "np" and len(node.args) == 3 and not node.keywords
    ]


def inject_source(source: str) -> tuple[str, int]:
    """``source`` of one kernel module with its products routed through
    ``_injected_dot``, and how many there were (0: unchanged)."""
    if MARK in source or NAME in source:
        raise ValueError("the slowdown is already injected")
    tree = ast.parse(source)
    calls = _calls(tree)
    if not calls:
        return source, 0
    lines = source.splitlines(keepends=True)
    for call in sorted(calls, key=lambda c: (c.func.lineno, c.func.col_offset), reverse=True):
        f = call.func
        i = f.lineno - 1
        line = lines[i]
        # col offsets count UTF-8 bytes
        raw = line.encode()
        lines[i] = (raw[: f.col_offset] + NAME.encode() + raw[f.end_col_offset:]).decode()
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    last_import = max(n.end_lineno for n in imports)
    lines.insert(last_import, f"from ._injected import dot as {NAME}  # {MARK}\n")
    return "".join(lines), len(calls)


def kernels_dir(path) -> Path:
    """``deqbench/_kernels`` under ``path`` (a checkout or its ``deqbench/``)."""
    path = Path(path)
    for cand in (path / "deqbench" / "_kernels", path / "_kernels"):
        if cand.is_dir():
            return cand
    raise ValueError(f"{path}: no deqbench/_kernels folder here")


def inject(path) -> dict[str, int]:
    """Inject into the kernels under ``path``; ``{module: products}``."""
    kdir = kernels_dir(path)
    if (kdir / "_injected.py").exists():
        raise ValueError("the slowdown is already injected")
    done = {}
    for mod in sorted(kdir.glob("*.py")):
        patched, count = inject_source(mod.read_text())
        if count:
            done[mod.name] = count
            mod.write_text(patched)
    if not done:
        raise ValueError("no np.dot(a, b, out) in deqbench/_kernels: the kernels no longer "
                         "multiply through np.dot; update tools/inject.py")
    (kdir / "_injected.py").write_text(MODULE.format(mark=MARK, pct=PERCENT))
    return done


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.split("Usage::")[1].strip(), file=sys.stderr)
        return 2
    try:
        done = inject(argv[0])
    except ValueError as exc:
        print(f"inject: {argv[0]}: {exc}", file=sys.stderr)
        return 1
    where = ", ".join(f"{name} {n}" for name, n in done.items())
    print(f"inject: +{PERCENT}% of every gemm of the kernels ({sum(done.values())} products: "
          f"{where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
