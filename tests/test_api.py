"""The public API: one argument order, one result type per call family, one
warning class, no ``**options``, and the README's examples run as written."""

import importlib
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import deqbench as db

ROOT = Path(__file__).resolve().parents[1]


def _problem(seed=0, n=30, d=4, m=3):
    X, Y, _ = db.data.linear_teacher(n, d, m, seed=seed)
    A, B = db.data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=seed + 1)
    return X, Y, A, B


def test_init_params_takes_sizes_in_data_order():
    X, Y, A, B = _problem(n=10, d=5, m=2)
    assert X.shape == (10, 5) and Y.shape == (10, 2)
    assert A.shape == (2, 2) and B.shape == (2, 5)


def test_loss_and_grad_result_unpacks_and_names_its_fields():
    X, Y, A, B = _problem()
    res = db.loss_and_grad("linear", X, Y, A, B, solver="anderson", tol=1e-12)
    assert isinstance(res, db.LossAndGrad)
    loss, gA, gB, info = res
    assert loss == res.loss and gA is res.grad_A and gB is res.grad_B
    assert set(info) == {"fp_iters", "adj_iters", "fp_residual", "adj_residual", "fp_status",
                         "adj_status", "converged", "z", "adjoint", "fp_blocks", "adj_blocks"}
    for key, value in info.items():
        assert getattr(res, key) is value
    assert res.converged and res.fp_status == res.adj_status == "converged"
    # the same numbers as the separate forward and adjoint calls
    fp = db.fixed_point(X, A, B, method="anderson", tol=1e-12)
    np.testing.assert_allclose(res.z, fp.z, rtol=0, atol=1e-12)
    grad = db.implicit_grad(X, A, B, fp.z, (fp.z - Y) / len(X), method="anderson", tol=1e-12)
    np.testing.assert_allclose(res.grad_A, grad.grad_A, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(res.grad_B, grad.grad_B, rtol=1e-9, atol=1e-14)


def test_convergence_warning_is_one_filterable_class():
    assert issubclass(db.ConvergenceWarning, RuntimeWarning)
    X, _, A, B = _problem()
    with pytest.warns(db.ConvergenceWarning, match="did not converge"):
        db.fixed_point(X, A, B, tol=1e-14, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", db.ConvergenceWarning)
        res = db.fixed_point(X, A, B, tol=1e-14, max_iter=2)
    assert res.status == "max_iter" and not res.converged


@pytest.mark.parametrize("name", ["fixed_point", "implicit_grad", "loss_and_grad", "train", "flow"])
def test_no_public_call_takes_var_keywords(name):
    import inspect

    params = inspect.signature(getattr(db, name)).parameters.values()
    assert not [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]


@pytest.mark.parametrize("module", ["deqbench", "deqbench.data", "deqbench.theory",
                                    "deqbench.activations", "deqbench.sweep", "deqbench.plots"])
def test_public_modules_declare_all(module):
    mod = importlib.import_module(module)
    assert mod.__all__, module
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name!r}"


def test_public_functions_are_not_shadowed_by_modules():
    import types

    for name in ("fixed_point", "flow", "train", "loss_and_grad", "implicit_grad"):
        assert not isinstance(getattr(db, name), types.ModuleType), name


def _readme_blocks():
    """The python blocks of the README and of the docs/ pages it sends readers to."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_python_examples():
    assert len(_readme_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_example_runs_as_written(index, capsys):
    code = _readme_blocks()[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


def test_blas_threads_are_restored_after_a_call():
    """deqbench runs BLAS single-threaded inside its calls and gives the user's
    setting back afterwards (also when the call raises)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    X, Y, A, B = _problem()
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        db.loss_and_grad("linear", X, Y, A, B)
        assert blas_threads() == before
        with pytest.raises(ValueError):
            db.fixed_point(X, A, B, tol=-1.0)
        assert blas_threads() == before
