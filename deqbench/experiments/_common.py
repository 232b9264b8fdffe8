"""What every reproduce experiment shares: the context it records into, checks, figures."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Seeds of the experiments: SeedSequence(ROOT_SEED).spawn(...) per experiment.
ROOT_SEED = 20251121


@dataclass
class Check:
    """One row of summary.md: a prediction of docs/theory.md next to its measurement.

    ``holds`` is True / False, or None for quantities the theory does not
    predict (reported only).
    """

    experiment: str
    claim: str
    predicted: str
    measured: str
    holds: bool | None

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "**NO**", None: "reported"}[self.holds]


@dataclass
class Context:
    """Collects the runs, checks and figures of one experiment."""

    name: str
    quick: bool
    fig_dir: Path
    rows: list = field(default_factory=list)
    hists: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    figures: list = field(default_factory=list)

    def seed(self, *key: int) -> np.random.SeedSequence:
        """A SeedSequence for this experiment: ``SeedSequence(ROOT_SEED, spawn_key=(E, *key))``."""
        e = int(self.name.lstrip("E"))
        return np.random.SeedSequence(ROOT_SEED, spawn_key=(e, *key))

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(self.seed(*key))

    def record(self, label: str, params: dict, *, status: str = "ok", metrics=None,
               history=None, keep: int = 400) -> str:
        """Add one run to runs.csv (and its history, thinned to about ``keep`` rows)."""
        rid = hashlib.sha256(json.dumps([self.name, label, params], sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
        row = {"run_id": rid, "experiment": self.name, "label": label, "status": status}
        row.update({k: _plain(v) for k, v in params.items()})
        row.update({k: _plain(v) for k, v in (metrics or {}).items()})
        self.rows.append(row)
        if history:
            h = {k: np.asarray(v, dtype=float) for k, v in history.items()}
            n = len(next(iter(h.values())))
            idx = thin(n, keep)
            self.hists[rid] = {k: v[idx].tolist() for k, v in h.items()}
        return rid

    def check(self, claim: str, predicted: str, measured: str, holds: bool | None) -> None:
        self.checks.append(Check(self.name, claim, predicted, measured,
                                 None if holds is None else bool(holds)))

    def save(self, fig, name: str) -> Path:
        import matplotlib.pyplot as plt

        path = self.fig_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        tmp = path.with_name(f".{path.stem}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        self.figures.append(path.name)
        return path


def thin(n: int, keep: int) -> np.ndarray:
    """Indices of about ``keep`` log-and-linearly spaced entries of ``range(n)``, ends included."""
    if n <= keep:
        return np.arange(n)
    lin = np.linspace(0, n - 1, keep // 2)
    log = np.geomspace(1, n, keep // 2) - 1
    return np.unique(np.concatenate([lin, log, [0, n - 1]]).round().astype(int))


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def fmt(x, digits: int = 3) -> str:
    """Short number: ``1.23e-05``, ``0.123``, ``12``; ``nan`` / ``inf`` spelt out."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.{digits}g}"


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
