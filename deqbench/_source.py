"""Row-block access to data that may not fit in memory (issue 11).

``X`` and ``Y`` may be in-memory arrays, ``np.memmap`` arrays or paths to
``.npy`` files. :func:`open_source` validates one of them (shape, dtype, file
integrity) before any work; :func:`blocks` yields aligned row blocks of several
sources, reading the next block in a background thread (a queue of one block)
while the caller computes on the current one.

A ``.npy`` path is read with ``readinto`` at the offsets its header gives, not
through ``mmap``: a disk error under a memory map kills the process with
SIGBUS, while a read raises ``OSError``, which :func:`blocks` turns into a
:class:`ReadError` that the callers report as a status. An ``np.memmap`` whose
pages are its file's (modes ``r``, ``r+``, ``w+``) is read the same way, from its
file at the offset of its first byte (a file truncated under a memory map
would be SIGBUS too); a copy-on-write one (mode ``c``) through the map, after a
check of the file's size before each block.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
from pathlib import Path

import numpy as np

from . import _validate as v

__all__ = ["AUTO_CHUNK_BYTES", "BlockSource", "ReadError", "auto_chunk", "blocks",
           "check_chunk", "is_out_of_core", "open_source"]

AUTO_CHUNK_BYTES = 8 << 20
"""Working set of one block under ``chunk="auto"`` (see :func:`auto_chunk`)."""
AUTO_CHUNK_MIN = 512
"""Fewest rows per block under ``chunk="auto"`` (Python overhead per block)."""


class ReadError(OSError):
    """A block of an on-disk source could not be read (after validation)."""

    def __init__(self, name: str, start: int, stop: int, cause: BaseException):
        super().__init__(f"reading rows {start}:{stop} of {name} failed: {cause}")
        self.name, self.start, self.stop, self.cause = name, start, stop, cause


class BlockSource:
    """One validated array, readable by row blocks.

    ``read(start, stop)`` returns rows ``start:stop`` as a C-contiguous array of
    ``dtype`` (float32 or float64): a view for in-memory data, a fresh array for
    on-disk data (whose values are checked to be finite as they are read).
    """

    def __init__(self, name: str, shape: tuple, array=None, path=None, offset: int = 0,
                 dtype=np.float64):
        self.name, self.shape, self.array, self.path, self.offset = (
            name, tuple(shape), array, path, offset)
        self.dtype = np.dtype(dtype)

    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def in_memory(self) -> bool:
        return self.array is not None and not isinstance(self.array, np.memmap)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.in_memory:
            return self.array[start:stop]
        if self.path is None:  # a copy-on-write np.memmap (see the module docstring)
            _check_mapped(self.array, start, stop)
            out = np.array(self.array[start:stop], dtype=self.dtype, order="C")
        else:
            out = np.empty((stop - start,) + self.shape[1:], self.dtype)
            row_bytes = out[:1].nbytes if out.size else 0
            with open(self.path, "rb") as f:
                f.seek(self.offset + start * row_bytes)
                got = f.readinto(memoryview(out).cast("B"))
            if got != out.nbytes:
                raise OSError(f"short read: {got} of {out.nbytes} bytes (file truncated "
                              "after it was opened?)")
        if not np.isfinite(out).all():
            bad = int(out.size - np.count_nonzero(np.isfinite(out)))
            raise ValueError(f"{self.name} must be finite, got {bad} non-finite entries in "
                             f"rows {start}:{stop}")
        return out


def is_out_of_core(x) -> bool:
    """Whether ``x`` is an on-disk source (a path, an ``np.memmap`` or a file-backed source)."""
    if isinstance(x, BlockSource):
        return not x.in_memory
    return isinstance(x, (str, os.PathLike, np.memmap))


def open_source(name: str, x, *, ndim: int = 2, shape=None, dtype=None,
                ref: str = "A") -> BlockSource:
    """Validate ``x`` (array, ``np.memmap`` or ``.npy`` path) as the argument ``name``.

    In-memory arrays follow :func:`deqbench._validate.as_matrix` (float32 kept,
    other floats converted to float64, checked finite). On-disk data must be
    float32 or float64 and C-ordered (it is read as it is, not converted); its
    finiteness is checked block by block as it is read. With ``dtype`` given
    (that of the parameter ``ref``), ``x`` must have it: a ``TypeError`` names
    both otherwise. ``shape`` may hold ``None`` for free axes.
    """
    if isinstance(x, BlockSource):
        v.check_shape(name, x.shape, ndim=ndim, shape=shape)
        if dtype is not None:
            v.same_dtype(name, x.dtype, ref, dtype)
        return x
    if isinstance(x, (str, os.PathLike)):
        return _open_npy(name, Path(x), ndim, shape, dtype, ref)
    if isinstance(x, np.memmap):
        _check_dtype(name, x.dtype, "np.memmap", dtype, ref)
        v.check_shape(name, x.shape, ndim=ndim, shape=shape)
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous memmap (row blocks), got a "
                             "non-contiguous one")
        origin = _memmap_origin(x)
        if origin is None:
            _check_mapped(x, 0, x.shape[0], name)
            return BlockSource(name, x.shape, array=x, dtype=x.dtype)
        path, offset = origin
        _check_size(name, path, offset + x.nbytes, f"its memmap (shape {x.shape}, {x.dtype})")
        return BlockSource(name, x.shape, path=path, offset=offset, dtype=x.dtype)
    a = v.as_matrix(name, x, ndim=ndim, shape=shape, dtype=dtype, ref=ref)
    return BlockSource(name, a.shape, array=a, dtype=a.dtype)


def _check_dtype(name, dtype, what, want, ref):
    if dtype not in v.DTYPES:
        raise TypeError(f"{name} must hold float32 or float64 data, got dtype {dtype} ({what}; "
                        "on-disk data is read as it is, not converted)")
    if want is not None:
        v.same_dtype(f"{name} ({what})", dtype, ref, want)


def _open_npy(name, path: Path, ndim, shape, want, ref) -> BlockSource:
    fmt = np.lib.format
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            read_header = {(1, 0): fmt.read_array_header_1_0,
                           (2, 0): fmt.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            got, fortran, dtype = read_header(f)
        except ValueError as e:
            raise ValueError(f"{name}: {str(path)!r} is not a readable .npy file ({e})") from None
        offset = f.tell()
    _check_dtype(name, dtype, ".npy", want, ref)
    if fortran and len(got) > 1:
        raise ValueError(f"{name}: {str(path)!r} is Fortran-ordered; row blocks need C order "
                         "(save np.ascontiguousarray(X))")
    v.check_shape(name, got, ndim=ndim, shape=shape)
    _check_size(name, path, offset + int(np.prod(got)) * dtype.itemsize,
                f"its header (shape {tuple(got)}, {dtype})")
    return BlockSource(name, got, path=path, offset=offset, dtype=dtype)


def _check_size(name, path: Path, want: int, what: str) -> None:
    size = path.stat().st_size
    if size < want:
        raise ValueError(f"{name}: {str(path)!r} is truncated: {size} bytes, {what} needs "
                         f"{want}")


def _memmap_origin(x, shared: bool = True):
    """``(path, offset)``: the file of a memmap and the file offset of its first byte;
    None when it has none, or (``shared``) when its pages are not the file's (mode
    ``c``, copy-on-write: the file may not hold what the map shows).

    ``np.memmap`` maps its file from ``offset`` rounded down to the allocation
    granularity; a slice keeps the map and that ``offset``, so the position of its
    first byte is the map's start plus its distance from the map's first byte.
    """
    mm = getattr(x, "_mmap", None)
    if mm is None or getattr(x, "filename", None) is None or (
            shared and getattr(x, "mode", None) == "c"):
        return None
    try:
        base = np.frombuffer(mm, np.uint8).ctypes.data
    except (ValueError, TypeError, BufferError):  # a closed map
        return None
    start = x.offset - x.offset % mmap.ALLOCATIONGRANULARITY
    return Path(x.filename), start + (x.ctypes.data - base)


def _check_mapped(x, start: int, stop: int, name: str | None = None) -> None:
    """Whether rows ``start:stop`` of a memmap are still backed by its file (touching a
    page past the end of a truncated file is SIGBUS): an ``OSError`` otherwise, a
    ``ValueError`` naming the argument ``name`` when given."""
    origin = _memmap_origin(x, shared=False)
    if origin is None:
        return
    path, first = origin
    need = first + stop * (x[:1].nbytes if x.size else 0)
    size = path.stat().st_size
    if size < need:
        msg = (f"{str(path)!r} is truncated: {size} bytes, rows {start}:{stop} of its memmap "
               f"need {need}")
        if name is not None:
            raise ValueError(f"{name}: {msg}")
        raise OSError(msg)


def check_chunk(chunk, n: int, row_bytes: int) -> int:
    """The block size: ``chunk`` checked to lie in ``[1, n]``, or :func:`auto_chunk`
    for ``"auto"``."""
    if isinstance(chunk, str):
        v.choice("chunk", chunk, ("auto",))
        return auto_chunk(n, row_bytes)
    chunk = v.integer("chunk", chunk, minimum=1)
    if chunk > n:
        raise ValueError(f"chunk must be <= n = {n} (the number of samples), got {chunk}")
    return chunk


def auto_chunk(n: int, row_bytes: int) -> int:
    """Default block size: ``AUTO_CHUNK_BYTES // row_bytes`` rows, at least
    ``AUTO_CHUNK_MIN`` and at most ``n`` and 1/64 of the physical memory.

    ``row_bytes`` is the number of bytes a block keeps per row (the caller's
    working set: data row, states, work arrays, each in its dtype; a float32
    block of the same shape holds twice the rows of a float64 one). 8 MiB is about the
    last-level cache of one socket of the machines deqbench is tuned on, so a
    block's iterations stay mostly in cache, and large enough that the Python
    overhead per block (tens of microseconds) is well below 1% of its work.
    """
    row_bytes = max(int(row_bytes), 1)
    rows = AUTO_CHUNK_BYTES // row_bytes
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        rows = min(rows, max(1, mem // 64 // row_bytes))
    except (ValueError, OSError, AttributeError):
        pass
    return int(min(n, max(AUTO_CHUNK_MIN, rows)))


def blocks(sources, chunk: int):
    """Yield ``(start, stop, [rows of each source])`` for consecutive blocks of ``chunk`` rows.

    On-disk blocks are read by a background thread one block ahead. A failed
    read raises :class:`ReadError`; non-finite on-disk values a ``ValueError``
    (both in the consumer, at the block where they occur).
    """
    n = sources[0].n
    spans = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    if all(src.in_memory for src in sources):
        for s, e in spans:
            yield s, e, [src.read(s, e) for src in sources]
        return
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        for s, e in spans:
            try:
                item = ("ok", s, e, [_read(src, s, e) for src in sources])
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(("err", s, e, exc))
                return
            if not put(item):
                return

    worker = threading.Thread(target=produce, name="deqbench-prefetch", daemon=True)
    worker.start()
    try:
        for _ in spans:
            kind, s, e, payload = q.get()
            if kind == "err":
                raise payload
            yield s, e, payload
    finally:
        stop.set()
        worker.join()


def _read(src: BlockSource, s: int, e: int):
    try:
        return src.read(s, e)
    except OSError as exc:
        raise ReadError(src.name, s, e, exc) from exc
