"""The kernels' settings in force: built-in defaults, a per-user calibration
file (``deqbench calibrate``), and the environment.

The row-block kernels read their block rows, small-gemm bound, parallel
crossover and gemm from an int64 vector given at run time
(:mod:`deqbench._kernels.blocks`, ``tune``), so a new calibration recompiles
nothing. :func:`tune` builds that vector for the public calls; :func:`in_force`
says what each setting is and where it came from (``deqbench info``).

Where a setting comes from, last one wins:

1. the built-in default (the constants of :mod:`deqbench._kernels.blocks`,
   and :func:`deqbench._blas.small_gemm_mnk`'s guess from the BLAS build);
2. the calibration file: ``$DEQBENCH_CALIBRATION`` when set (``off``: none),
   else ``$XDG_CACHE_HOME/deqbench/calibration.json`` (``~/.cache/...``). It
   holds the key of the machine and software it was measured on (CPU model,
   vector ISA, the BLAS libraries threadpoolctl sees, package versions); a
   file of another key, or one that does not parse, gives one warning line
   (:class:`~deqbench._warnings.CalibrationWarning`) and the defaults;
3. the environment: ``DEQBENCH_<NAME>`` for each setting, e.g.
   ``DEQBENCH_BLOCK_BYTES=262144`` or ``DEQBENCH_GEMM=mkl``.

No result depends on these settings beyond rounding: Picard's stopping groups
are fixed by the built-in rule (docs/theory.md §3).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _blas
from ._kernels import blocks as _b
from ._warnings import CalibrationWarning

__all__ = ["ENV", "FORMAT", "SETTINGS", "InForce", "cache_path", "in_force", "machine_key",
           "tune", "write"]

ENV = "DEQBENCH_CALIBRATION"
"""Environment variable: the calibration file to read (and ``deqbench
calibrate`` to write), or ``off`` for none."""
FORMAT = "deqbench-calibration/1"
OFF = ("off", "none", "0", "false", "no")
GEMMS = ("blas", "mkl")
"""The gemm backends: numba's ``np.dot`` (SciPy's BLAS, OpenBLAS from the
wheels), and MKL's CBLAS (``pip install deqbench[mkl]``)."""


@dataclass(frozen=True)
class Setting:
    """One setting of the kernels: its name in the file, its slot in the
    kernels' vector, its built-in value, its smallest allowed value (integers),
    and what it means."""

    name: str
    slot: int
    default: int | str
    minimum: int
    doc: str

    @property
    def env(self) -> str:
        return "DEQBENCH_" + self.name.upper()

    def check(self, value):
        """``value`` in the setting's type; ``ValueError`` naming the setting and the rule."""
        if self.name == "gemm":
            if value not in GEMMS:
                raise ValueError(f"gemm must be one of {', '.join(GEMMS)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{self.name} must be an integer, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{self.name} must be an integer, got {value!r}") from None
        if not (np.isfinite(number) and number == int(number)):
            raise ValueError(f"{self.name} must be an integer, got {value!r}")
        if int(number) < self.minimum or int(number) > 1 << 40:
            raise ValueError(f"{self.name} must be in [{self.minimum}, 2^40], got {value!r}")
        return int(number)


SETTINGS = (
    Setting("block_bytes", _b.TUNE_BLOCK_BYTES, _b.BLOCK_BYTES, 8,
            "target bytes of one row block of one array"),
    Setting("min_rows", _b.TUNE_MIN_ROWS, _b.MIN_ROWS, 1, "fewest rows of a block"),
    Setting("max_rows", _b.TUNE_MAX_ROWS, _b.MAX_ROWS, 1, "most rows of a block by bytes"),
    Setting("wide_bytes", _b.TUNE_WIDE_BYTES, _b.WIDE_BYTES, 0,
            "bytes of the m x m matrix past which a width is wide"),
    Setting("wide_rows", _b.TUNE_WIDE_ROWS, _b.WIDE_ROWS, 1,
            "rows of a wide width's blocks (at most half the rows)"),
    Setting("small_gemm_mnk", _b.TUNE_SMALL_GEMM_MNK, _b.SMALL_GEMM_MNK, 0,
            "rows m^2 bound of the BLAS's unpacked small gemm (0: none)"),
    Setting("small_min_rows", _b.TUNE_SMALL_MIN_ROWS, _b.SMALL_MIN_ROWS, 1,
            "fewest rows of a small-gemm block"),
    Setting("pass_parallel_min", _b.TUNE_PASS_PARALLEL_MIN, _b.PASS_PARALLEL_MIN, 0,
            "elements from which element passes run on numba's threads"),
    Setting("gemm", _b.TUNE_GEMM, "blas", 0,
            "the row-block kernels' gemm: blas (numba's np.dot) or mkl"),
)
"""Every setting, in the order ``deqbench info`` prints them."""
_BY_NAME = {s.name: s for s in SETTINGS}


def defaults() -> dict:
    """The built-in value of every setting."""
    return {s.name: s.default for s in SETTINGS}


def cache_path() -> Path | None:
    """The calibration file in force: ``$DEQBENCH_CALIBRATION`` (None when it is
    ``off``), else ``$XDG_CACHE_HOME/deqbench/calibration.json``, else
    ``~/.cache/deqbench/calibration.json``."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in OFF or not env.strip() else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deqbench" / "calibration.json"


def machine_key() -> dict:
    """What a calibration is valid for: CPU model and vector ISA, the BLAS
    libraries threadpoolctl sees (API, version, core type, file name; MKL
    loaded by deqbench itself aside), and the versions of the packages whose
    code runs in the kernels."""
    import llvmlite
    import numba
    import scipy
    from threadpoolctl import threadpool_info

    from ._platform import cpu_model, vector_isa
    from ._version import __version__

    _blas.small_gemm_mnk()  # loads SciPy's BLAS, the one numba calls
    blas = sorted({f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '?')} "
                   f"{os.path.basename(str(i.get('filepath', '')))}"
                   for i in _blas.numba_blas(threadpool_info())})
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "isa": vector_isa(),
        "blas": blas,
        "versions": {
            "python": platform.python_version(),
            "deqbench": __version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "numba": numba.__version__,
            "llvmlite": llvmlite.__version__,
            "mkl": _blas.mkl_version(),
        },
    }


def _differences(want: dict, got: dict, prefix: str = "") -> list[str]:
    out = []
    for name in sorted(set(want) | set(got)):
        a, b = want.get(name), got.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, prefix + name + ".")
        elif a != b:
            out.append(f"{prefix}{name} {b!r} here, {a!r} in the file")
    return out


@dataclass(frozen=True)
class InForce:
    """The settings in force.

    Attributes
    ----------
    values : dict
        Every setting's value (:data:`SETTINGS`).
    sources : dict
        Where each came from: ``"default"``, ``"calibration <path>"`` or
        ``"environment DEQBENCH_<NAME>"``.
    path : Path or None
        The calibration file consulted (None: ``DEQBENCH_CALIBRATION=off``).
    state : str
        ``"loaded"``, ``"absent"`` (no file), ``"off"``, ``"foreign"`` (another
        key) or ``"corrupt"``.
    note : str
        One line on the file (why it was not used).
    vector : numpy.ndarray
        The kernels' int64 settings vector (:mod:`deqbench._kernels.blocks`).
    gemm_info : str
        The gemm in force, with the library's path and version.
    """

    values: dict
    sources: dict
    path: Path | None
    state: str
    note: str
    vector: np.ndarray
    gemm_info: str


def _read_file(path: Path, key: dict):
    """``(settings, state, note)`` of a calibration file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, "absent", f"no calibration file at {path} (deqbench calibrate makes one)"
    except OSError as exc:
        return {}, "corrupt", f"calibration file {path} unreadable: {exc.strerror or exc}"
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        if not isinstance(doc.get("key"), dict) or not isinstance(doc.get("settings"), dict):
            raise ValueError("no key or settings")
        settings = {}
        for name, value in doc["settings"].items():
            if name not in _BY_NAME:
                raise ValueError(f"unknown setting {name!r}")
            settings[name] = _BY_NAME[name].check(value)
        _check_bounds({**defaults(), **settings})
    except (ValueError, TypeError) as exc:
        return {}, "corrupt", f"calibration file {path} is corrupt ({exc})"
    diff = _differences(doc["key"], key)
    if diff:
        return {}, "foreign", (f"calibration file {path} is for another machine or software ("
                               f"{'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''})")
    return settings, "loaded", f"calibration file {path}"


def _check_bounds(values: dict) -> None:
    if values["max_rows"] < values["min_rows"]:
        raise ValueError(f"max_rows must be >= min_rows, got max_rows={values['max_rows']}, "
                         f"min_rows={values['min_rows']}")


def _build(path: Path | None, env: dict) -> InForce:
    values, sources = defaults(), {s.name: "default" for s in SETTINGS}
    lines = []
    if path is None:
        state, note = "off", f"{ENV}=off: no calibration file"
    else:
        settings, state, note = _read_file(path, machine_key())
        if state in ("foreign", "corrupt"):
            lines.append(note + "; using the built-in defaults (run deqbench calibrate)")
        for name, value in settings.items():
            values[name] = value
            sources[name] = f"calibration {path}"
    for s in SETTINGS:
        if env.get(s.env) is None:
            continue
        try:
            values[s.name] = s.check(env[s.env].strip())
            sources[s.name] = f"environment {s.env}"
        except ValueError as exc:
            lines.append(f"{s.env} ignored: {exc}")
    try:
        _check_bounds(values)
    except ValueError as exc:
        lines.append(f"settings ignored, built-in rows used: {exc}")
        for name in ("min_rows", "max_rows"):
            values[name], sources[name] = _BY_NAME[name].default, "default"
    vector = _b.default_tune()
    for s in SETTINGS:
        if s.name != "gemm":
            vector[s.slot] = values[s.name]
    gemm_info = "blas: numba's np.dot (SciPy's BLAS)"
    if values["gemm"] == "mkl":
        try:
            lib = _blas.mkl_gemm()
            vector[_b.TUNE_GEMM] = _b.GEMM_CBLAS
            vector[_b.TUNE_DGEMM] = lib["dgemm"]
            vector[_b.TUNE_SGEMM] = lib["sgemm"]
            gemm_info = f"mkl: {lib['version']} ({lib['path']})"
        except _blas.MklUnavailable as exc:
            lines.append(f"gemm=mkl ({sources['gemm']}) unavailable, using blas: {exc}")
            values["gemm"], sources["gemm"] = "blas", "default"
    for line in lines:  # one line each: no source line to quote
        warnings.warn_explicit(line, CalibrationWarning, "deqbench", 0, module="deqbench")
    return InForce(values, sources, path, state, note, vector, gemm_info)


_CACHE: dict = {}


def _stamp(path: Path | None):
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def in_force() -> InForce:
    """The settings in force now. Read again only when the file or the
    environment changed; a warning line is given once per change."""
    path = cache_path()
    env = {s.env: os.environ.get(s.env) for s in SETTINGS}
    env[_blas.MKL_ENV] = os.environ.get(_blas.MKL_ENV)
    stamp = (str(path), _stamp(path), tuple(sorted((k, v) for k, v in env.items()
                                                   if v is not None)))
    hit = _CACHE.get("now")
    if hit is not None and hit[0] == stamp:
        return hit[1]
    now = _build(path, env)
    _CACHE["now"] = (stamp, now)
    return now


def tune() -> np.ndarray:
    """The kernels' settings vector in force (:func:`in_force`; shared: do not
    write to it)."""
    return in_force().vector


def write(path: Path, settings: dict, measured: dict | None = None,
          command: str = "") -> Path:
    """Write a calibration file for this machine atomically (a temporary file in
    the same folder, then renamed over ``path``); return ``path``."""
    doc = {
        "format": FORMAT,
        "key": machine_key(),
        "settings": {name: _BY_NAME[name].check(value) for name, value in settings.items()},
        "command": command,
        "measured": measured or {},
    }
    _check_bounds({**defaults(), **doc["settings"]})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _CACHE.clear()
    return path


def info_lines() -> list[str]:
    """``deqbench info``'s lines on the settings: the file, then each setting,
    its value and where it came from."""
    now = in_force()
    head = now.note if now.state != "loaded" else f"in force: {now.note}"
    if now.state != "loaded":
        head += "; built-in defaults"
    lines = [f"calibration   {head}"]
    width = max(len(s.name) for s in SETTINGS)
    for s in SETTINGS:
        lines.append(f"  {s.name:<{width}}  {now.values[s.name]!s:>9}  {now.sources[s.name]}"
                     f"  ({s.doc})")
    lines.append(f"gemm          {now.gemm_info}")
    return lines
