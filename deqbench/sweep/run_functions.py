"""The built-in run functions ``train`` and ``gd``, their parameters and rules.

A run function is ``fn(params, seed_sequence) -> {"status", "metrics", "history"}``;
it may declare ``PARAMS``, ``REQUIRED``, ``CHECK`` and ``CHECK_KEYS`` (see
:func:`deqbench.sweep.parse_grid`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import numpy as np

from .._registry import ADJOINT, FORWARD, MODELS, RENAMED, SOLVERS
from .grid import GridError, _choice, _float, _int

__all__ = ["TRAIN_PARAMS", "build_problem", "run_gd", "run_train", "summarize_history"]


def _activation(value):
    """The canonical spelling of an activation name (a registered one written
    ``"package.module:name"`` keeps its module: each worker imports it)."""
    from ..activations import get_activation

    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    try:
        act = get_activation(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc).removeprefix("activation ").removeprefix("activation: ")
                         ) from None
    module, sep, _ = value.partition(":")
    return f"{module.strip()}:{act}" if sep else str(act)


def _model(value):
    """A model name (one of :data:`deqbench._registry.MODELS`)."""
    return _choice(tuple(MODELS))(value)


#: Parameters of the built-in ``train`` and ``gd`` run functions: name -> (checker, default).
TRAIN_PARAMS: dict[str, tuple[Callable, object]] = {
    "model": (_model, None),
    "m": (_int(1), None),
    "d": (_int(1), None),
    "n": (_int(1), None),
    "lr": (_float(0.0), None),
    "steps": (_int(1), None),
    "scale_A": (_float(0.0, strict=False), 0.5),
    "scale_B": (_float(0.0, strict=False), 1.0),
    "activation": (_activation, "identity"),
    # "picard" for every model, single_index too: a default is part of every stored
    # run's id, so it stays what it was (single_index grids name solver = "newton")
    "solver": (_choice(FORWARD), "picard"),
    "grad_solver": (_choice(("same", *ADJOINT)), "same"),
    # no default stored: runs that do not set them keep their ids (train's defaults apply)
    "neumann_terms": (_int(0), None),
    "neumann_damping": (_float(0.0, high=1.0), None),
    "tol": (_float(0.0), 1e-10),
    "noise": (_float(0.0, strict=False), 0.0),
    "record_every": (_int(1), 1),
    "stop_loss": (_float(0.0, strict=False), 0.0),
    "teacher_scale": (_float(0.0, strict=False, high=0.999), 0.5),
    "sufficient_stats": (_choice(("auto", True, False)), "auto"),
}
REQUIRED_TRAIN = ("model", "m", "d", "n", "lr", "steps")


#: The parameters :func:`_check_train_params` reads.
_CHECK_KEYS = ("model", "m", "activation", "solver", "grad_solver", "sufficient_stats")


def _check_train_params(params: dict) -> None:
    """Rules between parameters of the built-in run functions ("key: message" errors)."""
    model = params["model"]
    kind = MODELS[model]
    if kind.scalar_state and params.get("m") != 1:
        raise GridError(f"model: {RENAMED} (got m = {params.get('m')!r})")
    solver = params["solver"]
    for key in ("solver", "grad_solver"):
        spec = SOLVERS.get(params[key])
        if spec is not None and spec.scalar_kernel and not kind.scalar_state:
            raise GridError(f"{key}: {spec.name!r} trains model 'single_index' only, got "
                            f"model {model!r}")
    if kind.scalar_state:
        gs = params["grad_solver"]
        if solver == "newton" and gs not in ("same", "newton", "direct", "jfb", "neumann"):
            raise GridError(f"grad_solver: {gs!r} is not an adjoint of the scalar loop "
                            "(solver 'newton' takes 'newton', 'direct', 'jfb', 'neumann')")
        if solver != "newton" and gs == "newton":
            raise GridError("grad_solver: 'newton' (the closed-form adjoint) needs solver "
                            f"'newton', got {solver!r}")
    if kind.activation == "identity" and params["activation"] != "identity":
        raise GridError(f"activation: model {model!r} needs activation 'identity', got "
                        f"{params['activation']!r}")
    if not kind.linear_fixed_point:
        for key in ("solver", "grad_solver"):
            spec = SOLVERS.get(params[key])
            exact_scalar = kind.scalar_state and solver == "newton"  # direct: the closed form
            if spec is not None and spec.linear_only and not exact_scalar:
                raise GridError(f"{key}: {spec.name!r} solves linear maps only (model {model!r})")
    pair = [SOLVERS.get(params[key]) for key in ("solver", "grad_solver")]
    if params.get("sufficient_stats") is True and (
        not kind.sufficient_stats or any(s is not None and s.certificate == "none" for s in pair)
    ):
        names = " or ".join(repr(k) for k, s in MODELS.items() if s.sufficient_stats)
        uncertified = ", ".join(repr(k) for k, s in SOLVERS.items() if s.certificate == "none")
        raise GridError(f"sufficient_stats: true needs model {names} and solvers with a "
                        f"certificate on A (not {uncertified}), got model {model!r}, solver "
                        f"{params['solver']!r}, grad_solver {params['grad_solver']!r}")


# ---------------------------------------------------------------------------
# run functions
# ---------------------------------------------------------------------------


def _seeds(seed: np.random.SeedSequence):
    data_seed, init_seed = seed.spawn(2)
    return data_seed, init_seed


def build_problem(params: Mapping, seed: np.random.SeedSequence):
    """Data and initial parameters of a run of the built-in run functions.

    ``linear``: linear teacher; ``readout``: single-index teacher
    ``sigma(theta . x)`` with the run's link; ``single_index`` (``m = 1``): the
    paper's problem, the same teacher ``sigma(<xi, x>)`` with ``|xi| = 1`` and
    the start ``A0 = [[b0]]``, ``B0 = w0^T`` of ``scale_A``, ``scale_B``;
    ``nonlinear``: a realizable teacher DEQ ``Y = phi-fixed point`` of random
    ``A*`` (``||A*||_2 = teacher_scale``), ``B*``.

    Returns ``(X, Y, A0, B0)``.
    """
    from .. import data

    data_seed, init_seed = _seeds(seed)
    return data.problem(params["model"], params["n"], params["d"], params["m"],
                        activation=params["activation"], noise=params.get("noise", 0.0),
                        teacher_scale=params.get("teacher_scale", 0.5),
                        scale_A=params["scale_A"], scale_B=params["scale_B"], seed=data_seed,
                        init_seed=init_seed)


def _final(history: Mapping, key: str) -> float:
    a = np.asarray(history.get(key, ()), dtype=float)
    return float(a[-1]) if a.size else math.nan


_WARMED: set = set()


def _warm_up(params: dict) -> None:
    """Compile (or load from cache) the kernels a run uses, once per process, so that
    ``train_s`` times the run and not the JIT."""
    from .._training import train

    key = (params["model"], params["solver"], params["grad_solver"], params["activation"])
    if key in _WARMED:
        return
    m = 1 if MODELS[params["model"]].scalar_state else 2
    tiny = {**params, "m": m, "d": 2, "n": 4, "noise": 0.0}
    X, Y, A0, B0 = build_problem(tiny, np.random.SeedSequence(0))
    grad_solver = None if params["grad_solver"] == "same" else params["grad_solver"]
    train(params["model"], X, Y, A0, B0, lr=1e-3, steps=2, activation=params["activation"],
          solver=params["solver"], grad_solver=grad_solver, tol=1e-6)
    _WARMED.add(key)


def run_train(params: dict, seed: np.random.SeedSequence) -> dict:
    """Default run function: one compiled training run with :func:`deqbench.train`.

    Returns the final metrics, the theory's predicted per-step factor next to
    the empirical one (docs/theory.md §7), and the run's history. For
    noise-free ``readout`` and ``nonlinear`` runs the teacher is
    realizable and ``L* = 0``.
    """
    from .._training import train

    X, Y, A0, B0 = build_problem(params, seed)
    grad_solver = None if params["grad_solver"] == "same" else params["grad_solver"]
    stop = params["stop_loss"] or None
    L_star = 0.0 if params["model"] != "linear" and params["noise"] == 0 else None
    _warm_up(params)
    t0 = time.perf_counter()
    res = train(
        params["model"], X, Y, A0, B0, lr=params["lr"], steps=params["steps"],
        activation=params["activation"], solver=params["solver"], grad_solver=grad_solver,
        tol=params["tol"], record_every=params["record_every"], stop_loss=stop, L_star=L_star,
        sufficient_stats=params["sufficient_stats"], **_series(params, grad_solver),
    )
    elapsed = time.perf_counter() - t0
    hist = {k: np.asarray(v) for k, v in res.history.items()}
    metrics = summarize_history(hist)
    metrics["train_s"] = elapsed
    metrics["time_per_step_s"] = elapsed / max(res.n_steps, 1)
    metrics["sufficient_stats"] = bool(res.sufficient_stats)
    metrics["L_star"] = float(res.L_star)
    metrics.update(_rate_metrics(params, X, Y, A0, B0, res.A, res.B, hist, res.L_star))
    return {"status": str(res.status), "metrics": metrics, "history": hist}


def _series(params, grad_solver) -> dict:
    """``neumann_terms`` and ``neumann_damping`` of a run whose adjoint reads them."""
    keys = ("neumann_terms", "neumann_damping")
    if grad_solver != "neumann":
        return {}
    return {k: params[k] for k in keys if params.get(k) is not None}


def summarize_history(hist: Mapping) -> dict:
    """Final values and simple aggregates of a training history."""
    out: dict[str, float] = {}
    loss = np.asarray(hist.get("loss", ()), dtype=float)
    last = _final(hist, "step")
    out["steps_done"] = int(last) if math.isfinite(last) else last
    out["loss0"] = float(loss[0]) if loss.size else math.nan
    for key in ("loss", "excess_loss", "grad_norm", "invariant_drift", "drift_trace",
                "sigma_min", "sigma_max", "spectral_radius"):
        if key in hist:
            out[f"final_{key}"] = _final(hist, key)
    for key in ("fp_iters", "adj_iters"):
        if key in hist and len(hist[key]):
            out[f"mean_{key}"] = float(np.mean(np.asarray(hist[key], dtype=float)))
    if "invariant_drift" in hist and len(hist["invariant_drift"]):
        out["max_invariant_drift"] = float(np.nanmax(np.abs(hist["invariant_drift"])))
    return out


def _rate_metrics(params, X, Y, A0, B0, A, B, hist, L_star) -> dict:
    """Predicted and empirical per-step factors (docs/theory.md §7), where defined.

    The smoothness ``beta`` is the larger Hessian norm at the first and the
    last parameters of the run (:func:`deqbench.theory.smoothness`); the
    columns are ``predicted_factor``, ``empirical_factor``, ``factor_ratio``,
    ``lr_beta`` and ``rate_verdict`` (:func:`deqbench.theory.rate_check`;
    for leaky ReLU, whose loss is not globally smooth, marked local).
    """
    from .. import theory

    out = {"predicted_factor": math.nan, "empirical_factor": math.nan, "factor_ratio": math.nan,
           "lr_beta": math.nan, "rate_verdict": "not applicable"}
    model = params["model"]
    loss = np.asarray(hist.get("loss", ()), dtype=float)
    kind = MODELS[model]
    if not kind.linear_fixed_point or not math.isfinite(L_star) or loss.size < 3:
        return out
    act = params["activation"] if kind.readout else "identity"
    beta = max(theory.smoothness(model, X, Y, P, R, activation=act) for P, R in ((A0, B0), (A, B)))
    out["lr_beta"] = params["lr"] * beta
    pred = theory.predicted_factor(model, X, theory.invariant(A0, B0), params["lr"],
                                   smoothness=beta, L0=float(loss[0]), L_star=L_star,
                                   activation=act)
    check = theory.rate_check(loss, L_star, pred, hist["step"])
    out["predicted_factor"] = check["predicted"]
    out["empirical_factor"] = check["empirical"]
    out["rate_verdict"] = check["verdict"]
    if act.startswith("leaky_relu"):  # not globally smooth (docs/theory.md §2)
        out["rate_verdict"] += " (local: leaky_relu has a kink)"
    if pred > 0:
        out["factor_ratio"] = check["empirical"] / pred
    return out


def run_gd(params: dict, seed: np.random.SeedSequence) -> dict:
    """Reference run function: plain Python gradient descent on :func:`deqbench.loss_and_grad`.

    One Python call per step (slow, but it depends only on the core API);
    records ``step, loss, grad_norm, invariant_drift, drift_trace, fp_iters,
    adj_iters``. Statuses as :func:`deqbench.train`.
    """
    from .._gradients import loss_and_grad
    from .._training import DIVERGENCE_FACTOR
    from ..theory import invariant

    X, Y, A, B = build_problem(params, seed)
    grad_solver = None if params["grad_solver"] == "same" else params["grad_solver"]
    Q0 = invariant(A, B)
    nQ0 = np.linalg.norm(Q0)
    rows: dict[str, list] = {k: [] for k in ("step", "loss", "grad_norm", "invariant_drift",
                                              "drift_trace", "fp_iters", "adj_iters")}
    status, z0, adj0 = "max_steps", None, None
    loss0 = None
    for k in range(params["steps"] + 1):
        loss, gA, gB, info = loss_and_grad(
            params["model"], X, Y, A, B, activation=params["activation"],
            solver=params["solver"], grad_solver=grad_solver, tol=params["tol"],
            z0=z0, adj0=adj0, **_series(params, grad_solver),
        )
        loss0 = loss if loss0 is None else loss0
        if not info["converged"]:
            status = "fixed_point_failed"
            break
        # the rule of deqbench.train: non-finite, or above DIVERGENCE_FACTOR x L_0
        if not math.isfinite(loss) or (k > 0 and loss0 > 0 and loss > DIVERGENCE_FACTOR * loss0):
            status = "diverged"
            break
        if k % params["record_every"] == 0 or k == params["steps"]:
            Q = invariant(A, B)
            rows["step"].append(k)
            rows["loss"].append(loss)
            rows["grad_norm"].append(math.sqrt(float(np.sum(gA * gA) + np.sum(gB * gB))))
            rows["invariant_drift"].append(float(np.linalg.norm(Q - Q0) / nQ0))
            rows["drift_trace"].append(float(np.trace(Q - Q0)))
            rows["fp_iters"].append(info["fp_iters"])
            rows["adj_iters"].append(info["adj_iters"])
        if params["stop_loss"] and loss <= params["stop_loss"]:
            status = "converged"
            break
        if k == params["steps"]:
            break
        A = A - params["lr"] * gA
        B = B - params["lr"] * gB
        z0, adj0 = info["z"], info["adjoint"]
    hist = {k: np.asarray(v) for k, v in rows.items()}
    return {"status": status, "metrics": summarize_history(hist), "history": hist}


run_train.PARAMS = TRAIN_PARAMS  # type: ignore[attr-defined]
run_train.REQUIRED = REQUIRED_TRAIN  # type: ignore[attr-defined]
run_train.CHECK = _check_train_params  # type: ignore[attr-defined]
run_gd.PARAMS = TRAIN_PARAMS  # type: ignore[attr-defined]
run_gd.REQUIRED = REQUIRED_TRAIN  # type: ignore[attr-defined]
run_gd.CHECK = _check_train_params  # type: ignore[attr-defined]
run_train.CHECK_KEYS = run_gd.CHECK_KEYS = _CHECK_KEYS  # type: ignore[attr-defined]
