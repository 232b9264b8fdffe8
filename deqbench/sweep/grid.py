"""Grid files: validation, lazy expansion into runs, stable run ids and grid hashes.

A grid is the Cartesian product of the lists in ``[grid]``, times
``replicates`` seeds. It is never materialised: :attr:`Grid.specs` computes
the run at any index from the list lengths (mixed radix), so a 10^7-run grid
costs no memory until it runs and ``len(grid)`` is a product of lengths.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Grid",
    "GridError",
    "RunSpec",
    "grid_hash",
    "load_grid",
    "parse_grid",
    "resolve_run",
    "run_id_of",
]

#: Built-in run functions by name.
RUN_FUNCTIONS = {
    "train": "deqbench.sweep.run_functions:run_train",
    "gd": "deqbench.sweep.run_functions:run_gd",
    "paper_a4": "deqbench.experiments.paper_sweep:run_a4",  # the paper's Appendix A.4
}


class GridError(ValueError):
    """A grid file that cannot be run; the message is one line naming the key."""


def _toml():
    """``tomllib`` (Python >= 3.11) or its backport ``tomli`` (imported on first use)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise GridError("reading TOML on Python 3.10 needs the backport: pip install tomli"
                            ) from None
    return tomllib


# ---------------------------------------------------------------------------
# value checkers ("must be ..." messages; the caller prefixes the key)
# ---------------------------------------------------------------------------


def _int(minimum):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"must be an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value!r}")
        return int(value)

    return check


def _float(low, *, strict=True, high=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"must be finite, got {value!r}")
        if (v <= low) if strict else (v < low):
            raise ValueError(f"must be {'>' if strict else '>='} {low:g}, got {value!r}")
        if high is not None and v > high:
            raise ValueError(f"must be <= {high:g}, got {value!r}")
        return v

    return check


def _choice(options):
    def check(value):
        if value not in options:
            raise ValueError(f"must be one of {list(options)}, got {value!r}")
        return value

    return check


def _scalar(value):
    if isinstance(value, (dict, list)):
        raise ValueError(f"must be a number, string or boolean, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be finite, got {value!r}")
    return value


def _checked(key: str, value, check):
    try:
        return check(value)
    except (TypeError, ValueError) as exc:
        raise GridError(f"{key}: {exc}") from None


# ---------------------------------------------------------------------------
# run functions by name
# ---------------------------------------------------------------------------


def resolve_run(name: str) -> Callable:
    """The run function named ``name``: ``"train"``, ``"gd"`` or ``"package.module:function"``."""
    target = RUN_FUNCTIONS.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"must be one of {sorted(RUN_FUNCTIONS)} or 'package.module:function', got {name!r}"
        )
    mod_name, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {mod_name!r} ({exc})") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{name!r} is not callable")
    return fn


# ---------------------------------------------------------------------------
# runs and grids
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: everything a worker needs, and nothing else."""

    run_id: str
    index: int
    run: str
    params: dict
    seed: int
    replicate: int

    def seed_sequence(self) -> np.random.SeedSequence:
        """``SeedSequence(seed).spawn(replicate + 1)[replicate]``."""
        return np.random.SeedSequence(self.seed, spawn_key=(self.replicate,))


def run_id_of(run: str, params: Mapping, seed: int, replicate: int) -> str:
    """Stable content hash of a run (16 hex characters)."""
    payload = json.dumps(
        {"run": run, "params": dict(params), "seed": seed, "replicate": replicate},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class GridSpecs(Sequence):
    """The runs of a grid as a lazy sequence: ``len``, indexing and iteration, no list."""

    def __init__(self, grid: Grid):
        self._g = grid
        self._keys = list(grid.axes)
        self._lens = [len(grid.axes[k]) for k in self._keys]

    def __len__(self) -> int:
        return math.prod(self._lens) * self._g.replicates

    def _spec(self, index: int, varied: dict, replicate: int) -> RunSpec:
        g = self._g
        # column order: swept, fixed, defaults (values: swept > fixed > defaults)
        rest = {k: d for k, d in g.defaults.items() if k not in g.fixed and k not in varied}
        params = {**varied, **g.fixed, **rest}
        return RunSpec(run_id_of(g.run, params, g.seed, replicate), index, g.run, params,
                       g.seed, replicate)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"run index {index} out of range for {n} runs")
        combo, replicate = divmod(i, self._g.replicates)
        picks = []
        for length in reversed(self._lens):  # last axis varies fastest
            combo, j = divmod(combo, length)
            picks.append(j)
        varied = {k: self._g.axes[k][j]
                  for k, j in zip(self._keys, reversed(picks), strict=True)}
        return self._spec(i, varied, replicate)

    def __iter__(self) -> Iterator[RunSpec]:
        index = 0
        for combo in itertools.product(*(self._g.axes[k] for k in self._keys)):
            varied = dict(zip(self._keys, combo, strict=True))
            for r in range(self._g.replicates):
                yield self._spec(index, varied, r)
                index += 1


@dataclass(frozen=True)
class Grid:
    """A validated sweep definition (see :func:`load_grid`); its runs are expanded lazily."""

    name: str
    run: str
    seed: int
    replicates: int
    fixed: dict
    axes: dict
    source: str = ""
    defaults: dict = field(default_factory=dict, repr=False)
    timeout: float | None = None

    @property
    def specs(self) -> GridSpecs:
        """Every run, in grid order (last ``[grid]`` key fastest, replicates innermost)."""
        return GridSpecs(self)

    def __len__(self) -> int:
        return math.prod(len(v) for v in self.axes.values()) * self.replicates

    @property
    def hash(self) -> str:
        return grid_hash(self)


def grid_hash(grid: Grid) -> str:
    """16 hex characters that identify the set of runs of ``grid``.

    Independent of the order of keys and values and of where a single value
    is written (``[fixed]``, a one-element list, or left to its default), like
    the run ids; the ``timeout`` is not part of it.
    """
    fixed = {**grid.defaults, **grid.fixed}
    axes = {}
    for k, v in grid.axes.items():
        if len(v) == 1:
            fixed[k] = v[0]
        else:
            axes[k] = sorted(v, key=lambda x: json.dumps(x, default=str))
    payload = json.dumps({"run": grid.run, "seed": grid.seed, "replicates": grid.replicates,
                          "fixed": fixed, "axes": axes},
                         sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


_SWEEP_KEYS = {"name", "run", "seed", "replicates", "timeout"}
_TABLES = {"sweep", "fixed", "grid"}


def load_grid(path) -> Grid:
    """Read and validate a grid TOML file.

    Format::

        [sweep]
        name = "small"       # optional, for humans
        run = "train"        # "train" (default), "gd" or "package.module:function"
        seed = 0             # sweep seed (int >= 0), default 0
        replicates = 2       # seeds per grid point, default 1
        timeout = 600        # optional: seconds a run may take (local and Dask)

        [fixed]              # parameters shared by every run
        model = "linear"
        n = 256
        steps = 200

        [grid]               # lists; the sweep is their Cartesian product
        m = [2, 8]
        lr = [0.02, 0.05]

    Every error is a :class:`GridError` with a one-line message that names the
    key (``grid.lr[1]: must be > 0, got -0.1``), raised before any run starts.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GridError(f"{path}: cannot read grid file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GridError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                        f"{exc.start}); save the grid file as UTF-8") from None
    try:
        return parse_grid(text, source=str(path))
    except GridError as exc:
        raise GridError(f"{path}: {exc}") from None


def parse_grid(text: str | Mapping, source: str = "<string>") -> Grid:
    """Validate a grid given as TOML text or an already-parsed mapping (see :func:`load_grid`).

    A run function may declare ``PARAMS`` (name -> (checker, default)),
    ``REQUIRED`` (names), ``CHECK`` (a rule between parameters, raising
    ``GridError("key: message")``) and ``CHECK_KEYS`` (the parameters ``CHECK``
    reads: the rule is then checked on the product of those axes only, not on
    every run).
    """
    if isinstance(text, str):
        tomllib = _toml()
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise GridError(f"invalid TOML: {str(exc).splitlines()[0]}") from None
    else:
        doc = dict(text)
    for key in doc:
        if key not in _TABLES:
            raise GridError(f"{key}: unknown table or key (expected tables {sorted(_TABLES)})")
        if not isinstance(doc[key], dict):
            raise GridError(f"{key}: must be a table [{key}]")
    sweep = doc.get("sweep", {})
    for key in sweep:
        if key not in _SWEEP_KEYS:
            raise GridError(f"sweep.{key}: unknown key (expected one of {sorted(_SWEEP_KEYS)})")
    name = sweep.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise GridError(f"sweep.name: must be a string, got {name!r}")
    run = sweep.get("run", "train")
    if not isinstance(run, str):
        raise GridError(f"sweep.run: must be a string, got {run!r}")
    try:
        fn = resolve_run(run)
    except ValueError as exc:
        raise GridError(f"sweep.run: {exc}") from None
    seed = _checked("sweep.seed", sweep.get("seed", 0), _int(0))
    replicates = _checked("sweep.replicates", sweep.get("replicates", 1), _int(1))
    timeout = sweep.get("timeout")
    if timeout is not None:
        timeout = _checked("sweep.timeout", timeout, _float(0.0))

    fixed = dict(doc.get("fixed", {}))
    axes = dict(doc.get("grid", {}))
    if not axes:
        raise GridError("grid: empty grid (give at least one list in [grid], e.g. lr = [0.01])")
    for key in fixed:
        if key in axes:
            raise GridError(f"grid.{key}: given in both [fixed] and [grid]")
    spec: dict | None = getattr(fn, "PARAMS", None)
    required = tuple(getattr(fn, "REQUIRED", ()))
    for table, values in (("fixed", fixed), ("grid", axes)):
        for key in values:
            if spec is not None and key not in spec:
                raise GridError(
                    f"{table}.{key}: unknown parameter for run {run!r} "
                    f"(expected one of {sorted(spec)})"
                )
    for key, value in fixed.items():
        if isinstance(value, list):
            raise GridError(f"fixed.{key}: must be a single value, got a list (move it to [grid])")
        fixed[key] = _checked(f"fixed.{key}", value, spec[key][0] if spec else _scalar)
    for key, values in axes.items():
        if not isinstance(values, list):
            raise GridError(f"grid.{key}: must be a list, got {values!r} (or move it to [fixed])")
        if not values:
            raise GridError(f"grid.{key}: empty list, nothing to sweep")
        check = spec[key][0] if spec else _scalar
        checked = [_checked(f"grid.{key}[{i}]", v, check) for i, v in enumerate(values)]
        seen: set = set()  # scalars: == as in a list, without its quadratic cost
        for i, v in enumerate(checked):
            if v in seen:
                raise GridError(f"grid.{key}[{i}]: duplicate value {values[i]!r}")
            seen.add(v)
        axes[key] = checked
    for key in required:
        if key not in fixed and key not in axes:
            raise GridError(f"fixed.{key}: missing required parameter for run {run!r}")
    defaults = {k: d for k, (_, d) in spec.items() if d is not None} if spec else {}
    grid = Grid(name, run, seed, replicates, fixed, axes, source, defaults, timeout)
    _check_rules(grid, getattr(fn, "CHECK", None), getattr(fn, "CHECK_KEYS", None))
    return grid


def _check_rules(grid: Grid, cross: Callable | None, keys: Sequence[str] | None) -> None:
    """Apply a run function's rule between parameters to every distinct combination it reads."""
    if cross is None:
        return
    if keys is None:
        combos = (spec.params for spec in itertools.islice(grid.specs, 0, None,
                                                           grid.replicates))
    else:
        read = [k for k in grid.axes if k in keys]
        other = {k: v[0] for k, v in grid.axes.items() if k not in keys}
        rest = {k: d for k, d in grid.defaults.items() if k not in grid.fixed}

        def gen():
            for combo in itertools.product(*(grid.axes[k] for k in read)):
                yield {**rest, **grid.fixed, **other, **dict(zip(read, combo, strict=True))}

        combos = gen()
    for params in combos:
        try:
            cross(params)
        except GridError as exc:
            where = "grid" if str(exc).split(":")[0] in grid.axes else "fixed"
            raise GridError(f"{where}.{exc}") from None
