"""Seeded problem builders (docs/theory.md §2 and §7).

Every builder takes ``seed`` (int or ``numpy.random.SeedSequence``) and is
deterministic given it. Data rows are i.i.d. standard normal, so
``Sigma = X^T X / n`` is well-conditioned for ``n >> d``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path

import numpy as np

from . import _validate as v
from .activations import Activation, get_activation

__all__ = [
    "init_params",
    "linear_teacher",
    "problem",
    "read_teacher",
    "single_index_teacher",
    "symmetric_with_spectrum",
    "with_spectral_radius",
    "write_teacher",
]


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(v.seed("seed", seed))


def memory_bytes() -> int:
    """This machine's physical memory (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _finite_result(name: str, value, out) -> None:
    """A ``ValueError`` naming ``name`` when ``value`` made entries of ``out`` overflow."""
    if not np.isfinite(out).all():
        raise ValueError(f"{name}={value!r} is too large: the data it scales overflow float64")


def _fits(names: str, elements: int) -> None:
    """The in-memory builders' bound, checked before they allocate: ``elements``
    float64 values at most half the physical memory; a ``ValueError`` naming the
    sizes otherwise (:func:`write_teacher` writes any size to disk)."""
    limit = memory_bytes() // 2
    if limit and elements * 8 > limit:
        raise ValueError(f"{names} ask for {elements * 8 / 2**30:.3g} GiB of float64 arrays, "
                         f"more than half of this machine's {2 * limit / 2**30:.3g} GiB; write "
                         "data that large to disk with write_teacher")


def linear_teacher(n: int, d: int, m: int, *, noise: float = 0.0, seed=0):
    """Linear teacher ``Y = X W*^T + noise``.

    Returns
    -------
    X : (n, d), Y : (n, m), W_star : (m, d)
        ``W_star`` has i.i.d. ``N(0, 1/d)`` entries; ``noise`` is the standard
        deviation of i.i.d. Gaussian label noise (``noise > 0`` makes the
        problem non-realizable: ``L* > 0``).
    """
    n = v.integer("n", n, minimum=1)
    d = v.integer("d", d, minimum=1)
    m = v.integer("m", m, minimum=1)
    noise = v.positive("noise", noise, allow_zero=True)
    _fits("n, d, m", n * (d + 2 * m) + m * d)
    rng = _rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((m, d)) / np.sqrt(d)
    Y = X @ W.T
    if noise > 0:
        with np.errstate(over="ignore"):
            Y += noise * rng.standard_normal((n, m))
        _finite_result("noise", noise, Y)
    return X, Y, W


def single_index_teacher(n: int, d: int, *, activation: str | Activation, noise: float = 0.0,
                         seed=0):
    """Single-index teacher ``y = sigma(theta* . x) + noise`` with ``||theta*|| = 1``.

    Returns
    -------
    X : (n, d), y : (n,), theta_star : (d,)
    """
    n = v.integer("n", n, minimum=1)
    d = v.integer("d", d, minimum=1)
    noise = v.positive("noise", noise, allow_zero=True)
    _fits("n, d", n * (d + 3) + d)
    act = get_activation(activation)
    rng = _rng(seed)
    X = rng.standard_normal((n, d))
    theta = rng.standard_normal(d)
    theta /= np.linalg.norm(theta)
    y = act(X @ theta)
    if noise > 0:
        with np.errstate(over="ignore"):
            y += noise * rng.standard_normal(n)
        _finite_result("noise", noise, y)
    return X, y, theta


def init_params(d: int, m: int, *, scale_A: float, scale_B: float, seed=0):
    """Random initial parameters for data of width ``d`` and a model of width ``m``
    (sizes in the order of :func:`linear_teacher`: ``n, d, m``).

    ``A0 = scale_A R / ||R||_2`` with Gaussian ``R``, so ``||A0||_2 = scale_A``
    and hence the spectral radius ``rho(A0) <= scale_A`` (a contraction when
    ``scale_A < 1``; ``scale_A = 0`` gives ``A0 = 0``). ``B0`` has i.i.d.
    ``N(0, scale_B^2 / d)`` entries.

    Returns
    -------
    A0 : (m, m), B0 : (m, d)
    """
    d = v.integer("d", d, minimum=1)
    m = v.integer("m", m, minimum=1)
    scale_A = v.positive("scale_A", scale_A, allow_zero=True)
    scale_B = v.positive("scale_B", scale_B, allow_zero=True)
    _fits("d, m", 4 * m * m + 2 * m * d)
    rng = _rng(seed)
    R = rng.standard_normal((m, m))
    with np.errstate(over="ignore"):
        B0 = scale_B * rng.standard_normal((m, d)) / np.sqrt(d)
    _finite_result("scale_B", scale_B, B0)
    A0 = np.zeros((m, m))
    if scale_A > 0:
        with np.errstate(over="ignore"):
            A0 = scale_A * R / np.linalg.norm(R, 2)
        if not np.isfinite(A0).all():  # scale_A near float64's largest: scale R first
            A0 = R / np.linalg.norm(R, 2) * scale_A
    return A0, B0


def symmetric_with_spectrum(eigenvalues, *, seed=0) -> np.ndarray:
    """``V diag(eigenvalues) V^T`` with a Haar-random orthogonal ``V``: a normal
    ``A`` whose spectral radius and ``||A||_2`` are both ``max |eigenvalue|``, so
    Picard on the linear map contracts at exactly that rate (no transient).

    ``seed``: int, ``SeedSequence`` or ``Generator`` (drawn from in place).
    """
    try:
        lam = np.asarray(eigenvalues, dtype=float)
    except (TypeError, ValueError):
        raise TypeError("eigenvalues must be a sequence of real numbers, got "
                        f"{v._describe(eigenvalues)}") from None
    if lam.ndim != 1 or lam.size == 0 or not np.isfinite(lam).all():
        raise ValueError(f"eigenvalues must be a non-empty finite 1-D sequence, got {lam!r}")
    _fits("eigenvalues", 4 * lam.size * lam.size)
    V, _ = np.linalg.qr(_rng(seed).standard_normal((lam.size, lam.size)))
    return np.ascontiguousarray((V * lam) @ V.T)


def with_spectral_radius(A, rho: float) -> np.ndarray:
    """``A`` rescaled to spectral radius ``rho`` (a Gaussian ``A`` is non-normal:
    its norm is then about ``2 rho``, so Picard sees a transient)."""
    A = v.as_matrix("A", A)
    rho = v.positive("rho", rho, allow_zero=True)
    r = float(np.max(np.abs(np.linalg.eigvals(A))))
    if r == 0.0:
        raise ValueError("A is nilpotent (spectral radius 0): it cannot be rescaled to rho")
    return A * (rho / r)


def problem(model: str, n: int, d: int, m: int, *, activation="identity", noise: float = 0.0,
            teacher_scale: float = 0.5, scale_A: float = 0.5, scale_B: float = 1.0,
            seed=0, init_seed=None):
    """Data and initial parameters of a seeded problem: ``(X, Y, A0, B0)``.

    The one problem builder of sweeps, experiments and benchmarks.
    ``linear``: :func:`linear_teacher`. ``readout``:
    :func:`single_index_teacher` with the link ``activation``.
    ``single_index`` (``m = 1``): the same teacher ``sigma(<theta*, x>)``, the
    paper's target (``A0 = [[b0]]``, ``B0 = w0^T``, ``Y`` ``(n,)``). ``nonlinear``:
    a realizable teacher DEQ, ``Y`` the fixed point of ``phi = activation`` at
    random ``A*`` (``||A*||_2 = teacher_scale``), ``B*``. ``noise``: Gaussian
    label noise. ``A0, B0`` from :func:`init_params` with ``init_seed``
    (default: spawned from ``seed``, so data and initialization are
    independent streams).
    """
    from ._registry import MODELS, RENAMED, choose_model

    if MODELS[choose_model(model)].scalar_state and m != 1:
        raise ValueError(RENAMED)
    if init_seed is None:
        seed, init_seed = np.random.SeedSequence(seed).spawn(2) if not isinstance(
            seed, np.random.SeedSequence) else seed.spawn(2)
    if model == "linear":
        X, Y, _ = linear_teacher(n, d, m, noise=noise, seed=seed)
    elif model in ("readout", "single_index"):
        X, Y, _ = single_index_teacher(n, d, activation=activation, noise=noise, seed=seed)
    else:
        from ._fixed_point import fixed_point

        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        t_seed, x_seed = seq.spawn(2)
        X = np.random.default_rng(x_seed).standard_normal((n, d))
        As, Bs = init_params(d, m, scale_A=teacher_scale, scale_B=1.0, seed=t_seed)
        Y = fixed_point(X, As, Bs, activation=activation, tol=1e-13).z
        if noise > 0:
            Y = Y + noise * np.random.default_rng(x_seed.spawn(1)[0]).standard_normal(Y.shape)
    A0, B0 = init_params(d, m, scale_A=scale_A, scale_B=scale_B, seed=init_seed)
    return X, Y, A0, B0


TEACHERS = ("linear", "single_index")
TEACHER_JSON = "teacher.json"
_TILE = 4096
"""Rows per product ``X W*^T`` in :func:`write_teacher`: tiles start at multiples of
``_TILE`` whatever the block size, so every BLAS call, and hence every bit of ``Y``,
is the same for any ``block_rows``."""


def write_teacher(directory, kind: str, n: int, d: int, m: int | None = None, *,
                  activation: str | Activation = "identity", noise: float = 0.0, seed: int = 0,
                  block_rows: int = 65536, overwrite: bool = False) -> Path:
    """Write a seeded teacher data set of any size to ``directory``, ``block_rows`` rows at a time.

    Files: ``X.npy`` ``(n, d)``, ``Y.npy`` (``(n, m)`` for ``kind="linear"``,
    ``(n,)`` for ``"single_index"``), ``star.npy`` (``W*`` ``(m, d)`` or
    ``theta*`` ``(d,)``) and ``teacher.json`` (the generating parameters and the
    size and SHA-256 of each file, which :func:`read_teacher` checks), all
    float64. Memory is ``O((block_rows + 4096) (d + m) + m d)`` whatever ``n``.
    Each file is written under a temporary name and then renamed into place,
    ``teacher.json`` last: an interrupted write leaves the old data set whole, or
    (killed between the renames) a directory without ``teacher.json``, never files
    that disagree.

    The data are exactly those of :func:`linear_teacher` /
    :func:`single_index_teacher` with the same arguments (one random stream
    consumed in the same order: ``X`` row by row, then the teacher, then the
    noise), so they do not depend on ``block_rows``. Written in two passes:
    ``X`` in blocks of ``block_rows``, then ``Y`` from ``X`` read back in
    tiles of 4096 rows (fixed, so that ``Y`` is bit-for-bit the same for any
    ``block_rows``; it equals the in-memory ``X W*^T`` to rounding).

    Parameters
    ----------
    directory : str or path
        Created if missing; existing files are an error unless ``overwrite``.
    kind : {"linear", "single_index"}
        The teacher (not a model): :func:`linear_teacher` or
        :func:`single_index_teacher`, ``y = sigma(theta* . x)``, the target of
        the models ``readout`` and ``single_index``.
    n, d : int >= 1
    m : int >= 1
        Output width (``linear`` only; must be None for ``single_index``).
    activation : str or Activation
        Link of ``single_index`` (must be identity for ``linear``).
    noise : float >= 0
        Standard deviation of the Gaussian label noise.
    seed : int >= 0
        Stored in ``teacher.json``, hence an int (not a SeedSequence).
    block_rows : int >= 1

    Returns
    -------
    pathlib.Path
        ``directory``; open it with :func:`read_teacher`.
    """
    v.choice("kind", kind, TEACHERS)
    n = v.integer("n", n, minimum=1)
    d = v.integer("d", d, minimum=1)
    if kind == "linear":
        if m is None:
            raise ValueError("m must be given for kind='linear' (the width of Y)")
        m = v.integer("m", m, minimum=1)
    elif m is not None:
        raise ValueError(f"m must be None for kind='single_index' (y is (n,)), got {m!r}")
    act = get_activation(activation)
    if kind == "linear" and not act.is_identity:
        raise ValueError(f"activation must be 'identity' for kind='linear', got {str(act)!r}")
    noise = v.positive("noise", noise, allow_zero=True)
    seed = v.integer("seed", seed, minimum=0)
    block_rows = v.integer("block_rows", block_rows, minimum=1)
    overwrite = v.boolean("overwrite", overwrite)
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a str or path, got {type(directory).__name__}")
    root = Path(directory)
    names = ("X.npy", "Y.npy", "star.npy", TEACHER_JSON)
    if not overwrite:
        present = [f for f in names if (root / f).exists()]
        if present:
            raise FileExistsError(f"directory {str(root)!r} already holds {present}; "
                                  "pass overwrite=True to replace them")
    root.mkdir(parents=True, exist_ok=True)
    tmp = {f: _temporary(root / f) for f in names[:3]}
    try:
        _write_data(tmp, kind, n, d, m, act, noise, seed, block_rows)
        files = {f: _fingerprint(path) for f, path in tmp.items()}
        meta = dict(kind=kind, n=n, d=d, m=m, activation=str(act), noise=noise, seed=seed,
                    dtype="float64", generator="numpy.random.default_rng(seed), as "
                    f"deqbench.data.{kind}_teacher", files=files)
        tmp[TEACHER_JSON] = _temporary(root / TEACHER_JSON)
        with open(tmp[TEACHER_JSON], "w") as fh:
            fh.write(json.dumps(meta, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        # the old teacher stays whole until the new files are written; from here to the
        # new teacher.json the directory has none, so an interrupted overwrite leaves
        # nothing that read_teacher opens
        (root / TEACHER_JSON).unlink(missing_ok=True)
        for f in names:
            os.replace(tmp[f], root / f)
    finally:
        for path in tmp.values():
            with contextlib.suppress(OSError):
                path.unlink()
    return root


def _temporary(path: Path) -> Path:
    """A temporary name beside ``path`` for this process (``.NAME.PID.TOKEN.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _write_data(paths, kind, n, d, m, act, noise, seed, block_rows) -> None:
    """The data of :func:`write_teacher` into ``paths`` (``X.npy``, ``Y.npy``, ``star.npy``)."""
    rng = _rng(seed)
    fmt = np.lib.format
    X = fmt.open_memmap(paths["X.npy"], mode="w+", dtype=np.float64, shape=(n, d))
    for s in range(0, n, block_rows):
        rng.standard_normal(out=X[s:min(s + block_rows, n)])
    if kind == "linear":
        star = rng.standard_normal((m, d)) / np.sqrt(d)
        Y = fmt.open_memmap(paths["Y.npy"], mode="w+", dtype=np.float64, shape=(n, m))
    else:
        star = rng.standard_normal(d)
        star /= np.linalg.norm(star)
        Y = fmt.open_memmap(paths["Y.npy"], mode="w+", dtype=np.float64, shape=(n,))
    for s in range(0, n, _TILE):  # whatever block_rows is: see _TILE
        e = min(s + _TILE, n)
        Y[s:e] = X[s:e] @ star.T if kind == "linear" else act(X[s:e] @ star)
        if noise > 0:
            with np.errstate(over="ignore"):
                Y[s:e] += noise * rng.standard_normal(Y[s:e].shape)
            _finite_result("noise", noise, Y[s:e])
    X.flush()
    Y.flush()
    del X, Y
    with open(paths["star.npy"], "wb") as fh:
        np.save(fh, star)


_HASH_BLOCK = 1 << 23


def _fingerprint(path: Path) -> dict:
    """``{"bytes", "sha256"}`` of a file, read in blocks; the file is synced to disk
    first (it replaces the old one next)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
            size += len(block)
    return {"bytes": size, "sha256": h.hexdigest()}


def read_teacher(directory, *, mmap_mode: str | None = "r", verify: bool = True):
    """Open a data set written by :func:`write_teacher`.

    Parameters
    ----------
    directory : str or path
    mmap_mode : {"r", "r+", "c", None}
        As in ``numpy.load``: memory-mapped (read-only by default), or None to read
        the arrays into memory.
    verify : bool
        Check each file against the SHA-256 that ``teacher.json`` holds for it (one
        read of every file); ``False`` checks sizes and headers only.

    Returns
    -------
    X, Y, star : arrays (memory-mapped read-only by default)
    meta : dict
        The generating parameters of ``teacher.json``.

    Raises
    ------
    FileNotFoundError
        No ``teacher.json``: not a teacher directory, or a write of one that did not
        finish (:func:`write_teacher` writes ``teacher.json`` last).
    ValueError
        Files that are not what ``teacher.json`` says (unreadable, truncated, of
        another shape, or failing their checksum): written by another process, or
        changed since; the message names the file.
    """
    from ._source import open_source

    root = Path(directory)
    meta_path = root / TEACHER_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"directory {str(root)!r} has no {TEACHER_JSON} "
                                "(not written by deqbench.data.write_teacher, or its "
                                "writing did not finish)")
    if mmap_mode not in (None, "r", "r+", "c"):
        raise ValueError(f"mmap_mode must be 'r', 'r+', 'c' or None, got {mmap_mode!r}")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path}: not valid JSON ({exc}); rewrite the directory with "
                         "write_teacher") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: must hold a JSON object (the teacher's parameters), "
                         f"got a {type(meta).__name__}")
    shapes = _teacher_shapes(meta_path, meta)
    files = meta.get("files")
    if verify and not isinstance(files, dict):
        raise ValueError(f"{meta_path}: holds no checksums of the files (written by an older "
                         "deqbench?); rewrite it with write_teacher, or pass verify=False")
    for f, shape in shapes.items():
        open_source(f, root / f, ndim=len(shape), shape=shape)  # header, size, dtype
        want = files.get(f) if isinstance(files, dict) else None
        if want is None:
            continue
        if not isinstance(want, dict):
            raise ValueError(f"{meta_path}: the record of {f} must be a JSON object, got "
                             f"{want!r}")
        got = _fingerprint(root / f) if verify else {"bytes": (root / f).stat().st_size}
        for key, value in got.items():
            if want.get(key) != value:
                raise ValueError(
                    f"{root / f}: {'size' if key == 'bytes' else 'checksum'} does not match "
                    f"{TEACHER_JSON} ({value} != {want.get(key)}): the files of {str(root)!r} "
                    "disagree (replaced or changed since they were written); rewrite it "
                    "with write_teacher")
    arrays = [np.load(root / f, mmap_mode=mmap_mode) for f in shapes]
    return (*arrays, meta)


def _teacher_shapes(meta_path: Path, meta: dict) -> dict:
    """The shape of each file of a teacher, from its ``teacher.json``."""
    def dim(key, none=False):
        x = meta.get(key)
        if none and x is None:
            return None
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise ValueError(f"{meta_path}: {key!r} must be an integer >= 1, got {x!r}")
        return x

    kind = meta.get("kind")
    if kind not in TEACHERS:
        raise ValueError(f"{meta_path}: 'kind' must be one of {list(TEACHERS)}, got {kind!r}")
    n, d = dim("n"), dim("d")
    if kind == "linear":
        m = dim("m")
        return {"X.npy": (n, d), "Y.npy": (n, m), "star.npy": (m, d)}
    return {"X.npy": (n, d), "Y.npy": (n,), "star.npy": (d,)}
