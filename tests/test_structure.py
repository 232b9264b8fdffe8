"""The package's layers, read from its imports (function-local ones count):
no import circle anywhere in ``deqbench/``, nothing imported upwards from
``deqbench/_kernels`` (only the floor modules below it), and the floor
modules import nothing of deqbench. The solver and model tables are read by
the layers that used to spell the names."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "deqbench"
KERNELS = "deqbench._kernels"
FLOOR = ("deqbench._jit", "deqbench._blas")
"""Modules below the kernels: they import nothing of deqbench."""


def _modules():
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(name, path, mods):
    """Every deqbench module ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in mods else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in mods and m != name}


def _graph():
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_local_imports():
    graph = _graph()
    assert "deqbench._fixed_point" in graph["deqbench.data"]  # imported inside problem()
    assert "deqbench._training" in graph["deqbench.sweep.run_functions"]


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_a_circle_is_found():
    """The check itself: a circle of three modules, as chunking once was with the
    forward and adjoint calls."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_kernels_import_nothing_above_them():
    graph = _graph()
    up = {name: sorted(m for m in deps if not m.startswith(KERNELS) and m not in FLOOR)
          for name, deps in graph.items() if name.startswith(KERNELS)}
    assert {name: deps for name, deps in up.items() if deps} == {}


@pytest.mark.parametrize("floor", FLOOR)
def test_floor_modules_import_nothing_of_deqbench(floor):
    assert _graph()[floor] == set()


def test_every_layer_reads_the_tables():
    """Solver and model names come from ``deqbench._registry`` in every layer that
    lists them."""
    import deqbench as db
    from deqbench import _fixed_point, _flow, _gradients, _registry, theory
    from deqbench.sweep import TRAIN_PARAMS

    assert _fixed_point.METHODS == _registry.FORWARD == ("picard", "anderson", "direct",
                                                         "broyden", "newton")
    assert _gradients.GRAD_METHODS == _registry.ADJOINT
    assert _registry.ADJOINT == ("picard", "anderson", "direct", "jfb", "neumann", "broyden",
                                 "newton")
    assert _flow.EXACT_GRAD == _registry.EXACT_ADJOINT == ("picard", "anderson", "direct",
                                                           "broyden", "newton")
    assert theory.MODELS == ("linear", "readout")
    assert tuple(_registry.MODELS) == ("linear", "readout", "nonlinear", "single_index")
    check = TRAIN_PARAMS["solver"][0]
    assert check("anderson") == "anderson"
    with pytest.raises(ValueError):
        check("jfb")
    assert db.SolverOptions is _fixed_point.SolverOptions


def test_solver_table_agrees_with_the_kernels():
    """Each entry's kernel facts (flags of its dispatch code) say what the calls
    check: which solvers are linear-only, inexact, certified by rate."""
    from deqbench._kernels import solvers as _ks
    from deqbench._registry import SOLVERS, by_code

    assert len({s.code for s in SOLVERS.values()}) == len(SOLVERS) == len(_ks.FLAGS)
    for s in SOLVERS.values():
        assert by_code(s.code) is s
        assert _ks.has(s.code, _ks.TRUNCATED) == s.inexact
        assert set(s.options) <= {"tol", "max_iter", "damping", "anderson_history",
                                  "anderson_ridge", "neumann_terms", "neumann_damping"}
    assert [n for n, s in SOLVERS.items() if s.linear_only] == ["direct"]
    assert [n for n, s in SOLVERS.items() if s.inexact] == ["jfb", "neumann"]
    assert {n: s.certificate for n, s in SOLVERS.items()} == {
        "picard": "rate", "anderson": "rate", "direct": "invertible", "jfb": "none",
        "neumann": "none", "broyden": "none", "newton": "none"}
    assert [n for n, s in SOLVERS.items() if s.keeps_evaluation] == ["picard"]
    assert [n for n, s in SOLVERS.items() if s.scalar_kernel] == ["newton"]
    assert [n for n, s in SOLVERS.items() if s.scalar_state_only] == ["newton"]


def test_a_scalar_state_solver_is_refused_for_wider_states(monkeypatch):
    """Room for a solver of a scalar state only: its registry entry says so and every
    call checks it, naming the argument."""
    import dataclasses

    import numpy as np

    import deqbench as db
    from deqbench._registry import SOLVERS

    monkeypatch.setitem(SOLVERS, "picard",
                        dataclasses.replace(SOLVERS["picard"], scalar_state_only=True))
    X, Y, A, B = db.data.problem("linear", 20, 2, 2, scale_A=0.5, seed=0)
    rule = "solves a scalar state only \\(m = 1\\), got m=2"
    with pytest.raises(ValueError, match="method='picard' " + rule):
        db.fixed_point(X, A, B)
    with pytest.raises(ValueError, match="method='picard' " + rule):
        db.implicit_grad(X, A, B, Y, Y)
    with pytest.raises(ValueError, match="grad_solver='picard' " + rule):
        db.loss_and_grad("linear", X, Y, A, B, solver="direct", grad_solver="picard")
    with pytest.raises(ValueError, match="solver='picard' " + rule):
        db.train("linear", X, Y, A, B, lr=0.1, steps=1)
    x = np.linspace(-1.0, 1.0, 8)[:, None]
    r = db.fixed_point(x, np.array([[0.5]]), np.array([[1.0]]), tol=1e-12)
    np.testing.assert_allclose(r.z, 2.0 * x, rtol=0, atol=1e-11)


def _conflict_markers(text):
    """Lines that a merge left unresolved (``<<<<<<< ``, ``>>>>>>> ``, a bare ``=======``
    between them)."""
    return [i + 1 for i, line in enumerate(text.splitlines())
            if line.startswith(("<<<<<<< ", ">>>>>>> "))]


def test_no_merge_conflict_markers_committed():
    root = PKG.parent
    found = {}
    for pattern in ("deqbench/**/*.py", "tests/**/*.py", "benchmarks/**/*.py", "tools/**/*",
                    "docs/**/*.md", "*.md", "results/**/*.md", "*.toml", ".ci/*"):
        for path in root.glob(pattern):
            if path.is_file() and path.suffix not in (".png", ".npz", ".parquet", ".pyc"):
                lines = _conflict_markers(path.read_text(errors="replace"))
                if lines:
                    found[str(path.relative_to(root))] = lines
    assert not found, f"merge conflict markers left in {found}"


def test_conflict_markers_are_found():
    assert _conflict_markers("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> int\n") == [2, 6]
    assert _conflict_markers("a\n======= not one\n") == []
