"""The warning classes of deqbench: failed solves and runs, tolerances
below the reach of the data's dtype, and calibration files that do not apply."""

from __future__ import annotations

import warnings

__all__ = ["CalibrationWarning", "ConvergenceWarning", "PrecisionWarning"]


class ConvergenceWarning(RuntimeWarning):
    """A solve or a training run ended without meeting its tolerance or target.

    Raised by :func:`deqbench.fixed_point`, :func:`deqbench.implicit_grad`,
    :func:`deqbench.loss_and_grad`, :func:`deqbench.train` and
    :func:`deqbench.flow` whenever the result's status is a failure
    (``"max_iter"``, ``"diverged"``, ``"underflow"``, ``"inaccurate"``, ``"fixed_point_failed"``,
    ``"step_too_small"``, ``"read_error"`` for data on disk). The result still
    carries the last good values and the status; filter this class on its own, e.g.
    ``warnings.simplefilter("ignore", deqbench.ConvergenceWarning)``, to treat
    failure as data (sweeps and experiments do).
    """


class PrecisionWarning(UserWarning):
    """A tolerance below what the data's dtype can resolve (``tol`` under
    :func:`deqbench.tol_floor`, e.g. ``tol < 9.5e-7`` in float32). Issued before
    any work; the call then runs with the tolerance as given."""


class CalibrationWarning(UserWarning):
    """The calibration file (``deqbench calibrate``) was not used: it is corrupt,
    or it was measured on another machine or with other software, or a
    ``DEQBENCH_<SETTING>`` variable does not parse. One line, once per change
    of the file or the environment; the built-in defaults run instead (no
    result depends on the settings: ``deqbench info`` shows them)."""


def warn(message: str, stacklevel: int = 3) -> None:
    """Emit a :class:`ConvergenceWarning` attributed to the user's call."""
    warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel + 1)
