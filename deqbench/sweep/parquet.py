"""The columnar store, the default: runs and histories in Parquet (pyarrow, imported lazily).

While a sweep runs, finished runs are buffered and committed in batches: every
flush writes one history part and then one runs part
(``DIR/parts/hist-SEQ.parquet``, ``DIR/parts/runs-SEQ.parquet``), each
atomically; the runs part is the commit point. When the sweep ends the parts
are compacted into ``DIR/runs.parquet`` (one row per run, grid order) and
``DIR/histories.parquet`` (one row per run and recorded step), and removed.
After a SIGKILL at any moment a resume finds every committed run once and runs
again at most what finished since the last flush. A table that cannot be read
(truncated or corrupted after it was written) is never trusted: an unreadable
``runs.parquet`` (or runs part) leaves its runs to be done again, an unreadable
or missing history table or part the runs whose history it held; the damaged
file is set aside as ``NAME.damaged`` (parts: removed) and counted in
``damaged`` (:func:`scan`, shared by the resume and ``--status``). Every row carries ``_seq``,
the flush that stored it: a run stored twice (``--retry-failed``) counts by
its latest flush. Read it in one line::

    pyarrow.parquet.read_table("DIR/runs.parquet")   # or pandas.read_parquet, polars, DuckDB
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .store import HEAD, HIST_PQ, RUNS_PQ, TAIL, Store, SweepError, _flat, _slim, temporary_name

__all__ = ["ParquetStore", "parquet_status", "read_parquet_status", "scan"]

PARTS = "parts"
#: History rows sorted in memory at once when the parts are compacted (a bucket of the
#: external sort in :meth:`ParquetStore._merge_histories`).
SORT_ROWS = 1 << 18
_PART = re.compile(r"^(runs|hist)-(\d+)\.parquet$")


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise SweepError("the Parquet store needs pyarrow, a dependency of deqbench: "
                         "pip install pyarrow (or use --format csv)") from None
    return pa, pc, pq


def _column(values):
    """An Arrow array for a NumPy array of numbers or booleans (as it is), or for a list
    of Python scalars: bool, int64, float64, else strings."""
    pa, _, _ = _pa()
    if isinstance(values, np.ndarray) and values.dtype.kind in "bif":
        return pa.array(values)
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {bool}:
        return pa.array(values, pa.bool_())
    if kinds <= {int}:
        return pa.array(values, pa.int64())
    if kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def _table(rows: list[dict], columns: list[str]):
    pa, _, _ = _pa()
    return pa.table({c: _column([r.get(c) for r in rows]) for c in columns})


def _unified(schemas: list):
    """One schema for tables whose schemas differ: columns in order of first appearance,
    numbers widened; a column that is a number in one table and text in another is text."""
    pa, _, _ = _pa()
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        kinds: dict[str, set] = {}
        for schema in schemas:
            for f in schema:
                kinds.setdefault(f.name, set()).add(str(f.type))
        text = {c for c, k in kinds.items() if len(k - {"null"}) > 1}
        return pa.unify_schemas([pa.schema([(f.name, pa.string()) if f.name in text else f
                                            for f in schema]) for schema in schemas],
                                promote_options="permissive")


def _conform(table, schema):
    """``table`` with the columns and types of ``schema`` (missing columns are null)."""
    pa, _, _ = _pa()
    n = len(table)
    names = set(table.column_names)
    return pa.Table.from_arrays(
        [table.column(f.name).cast(f.type) if f.name in names else pa.nulls(n, f.type)
         for f in schema], schema=schema)


def _concat(tables: list):
    """One table from parts whose schemas differ (see :func:`_unified`)."""
    pa, _, _ = _pa()
    tables = [t for t in tables if t is not None]
    schema = _unified([t.schema for t in tables])
    return pa.concat_tables([_conform(t, schema) for t in tables])


@contextlib.contextmanager
def _atomic_path(path: Path):
    """A temporary path (named for this process) that replaces ``path``, synced, when the
    block ends without error; removed otherwise."""
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _dictionary_columns(schema) -> list[str]:
    """The columns worth dictionary-encoding: text (run ids, statuses repeat). Numbers are
    not: a history's floats are nearly all distinct, so a dictionary costs writing time
    for little space (``results/calibrate/README.md``)."""
    pa, _, _ = _pa()
    return [f.name for f in schema if pa.types.is_string(f.type)]


def _write(table, path: Path) -> None:
    """Write ``table`` to ``path`` atomically."""
    _, _, pq = _pa()
    with _atomic_path(path) as tmp:
        pq.write_table(table, tmp, use_dictionary=_dictionary_columns(table.schema))


def _latest(table) -> list[int]:
    """Row numbers of the latest row (highest ``_seq``) of each run, in grid order."""
    ids = table.column("run_id").to_pylist()
    seqs = table.column("_seq").to_pylist()
    index = table.column("index").to_pylist()
    best: dict[str, int] = {}
    for i, (rid, seq) in enumerate(zip(ids, seqs, strict=True)):
        j = best.get(rid)
        if j is None or seq >= seqs[j]:
            best[rid] = i
    return sorted(best.values(), key=lambda i: (index[i], ids[i]))


def _readable(path: Path) -> bool:
    """Whether ``path`` is a Parquet file whose footer reads (a truncated file's does not)."""
    _, _, pq = _pa()
    try:
        pq.read_metadata(path)
    except Exception:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        return False
    return True


def scan(out: Path, columns=None) -> tuple[list, list]:
    """The runs tables of a Parquet sweep directory that can be trusted, read without
    writing anything: ``(tables, damaged)``.

    ``damaged`` lists ``(path, rows)`` of what cannot be trusted: ``runs.parquet`` or
    a runs part that does not read (``rows`` None: its runs are unknown), and a
    history table or part that is missing or does not read while its runs table
    says it holds history rows (``rows``: the runs left out of ``tables`` for it).
    """
    pa, pc, pq = _pa()
    cols = None if columns is None else list(dict.fromkeys([*columns, "history_rows"]))
    tables, damaged = [], []

    def with_history(t):
        return pc.fill_null(pc.greater(pc.fill_null(t.column("history_rows"), 0), 0), False)

    runs_pq, hist_pq = out / RUNS_PQ, out / HIST_PQ
    if runs_pq.exists():
        try:
            t = pq.read_table(runs_pq, columns=cols, use_threads=False)
        except Exception:  # noqa: BLE001
            damaged.append((runs_pq, None))
        else:
            has = with_history(t)
            n = pc.sum(has).as_py() or 0
            if n and not (hist_pq.exists() and _readable(hist_pq)):
                damaged.append((hist_pq, n))
                t = t.filter(pc.invert(has))
            tables.append(t)
    parts = out / PARTS
    found = {}
    if parts.is_dir():
        for p in parts.iterdir():
            if m := _PART.match(p.name):
                found[(m.group(1), int(m.group(2)))] = p
    for (kind, seq), path in sorted(found.items(), key=lambda kv: kv[0][1]):
        if kind != "runs":
            continue
        try:
            t = pq.read_table(path, columns=cols, use_threads=False)
        except Exception:  # noqa: BLE001
            damaged.append((path, None))
            continue
        n = pc.sum(with_history(t)).as_py() or 0
        hist = found.get(("hist", seq))
        if n and not (hist is not None and _readable(hist)):
            damaged.append((path, len(t)))
            continue
        tables.append(t)
    if columns is not None:
        tables = [t.select(columns) for t in tables]
    return tables, damaged


class ParquetStore(Store):
    """A sweep directory in Parquet (see the module docstring); locked like :class:`Store`."""

    format = "parquet"

    def __init__(self, out):
        _pa()  # fail early, with the install hint
        self.parts = Path(out) / PARTS
        super().__init__(out)
        # flushes are numbered on from the last one stored, also across compactions (a
        # run's latest row is the one of its highest ``_seq``)
        last = max((int(m.group(2)) for p in self.parts.iterdir()
                    if (m := _PART.match(p.name))), default=0)
        for table in (RUNS_PQ, HIST_PQ):
            if (self.out / table).exists():
                with contextlib.suppress(Exception):  # unreadable: reported by records()
                    last = max(last, _pa()[1].max(self._read(self.out / table, ["_seq"])
                                                  .column("_seq")).as_py() or 0)
        self._seq = last + 1

    def _dirs(self):
        return (self.parts,)

    # -- reading -----------------------------------------------------------

    def _part_paths(self, kind: str) -> dict[int, Path]:
        return {int(m.group(2)): p for p in self.parts.iterdir()
                if (m := _PART.match(p.name)) and m.group(1) == kind}

    def _read(self, path: Path, columns=None):
        _, _, pq = _pa()
        return pq.read_table(path, columns=columns, use_threads=False)

    def _runs_tables(self, columns=None) -> list:
        """The runs tables that can be trusted (:func:`scan`). What cannot is listed in
        :attr:`damaged` once: a damaged part is removed with its history part; a damaged
        ``runs.parquet`` or history table is set aside as ``NAME.damaged`` (an unreadable
        ``runs.parquet`` takes ``histories.parquet`` with it: its rows belong to runs
        that are done again)."""
        tables, damaged = scan(self.out, columns)
        for path, _ in damaged:
            if path.name not in self.damaged:
                self.damaged.append(path.name)
            if path.parent == self.parts:
                path.unlink(missing_ok=True)
                path.with_name(path.name.replace("runs-", "hist-")).unlink(missing_ok=True)
                continue
            aside = [path] + ([self.out / HIST_PQ] if path.name == RUNS_PQ else [])
            for p in aside:
                if p.exists():
                    os.replace(p, p.with_name(p.name + ".damaged"))
        return tables

    def records(self) -> dict[str, dict]:
        """The latest stored row of every run: ``run_id, status, index, attempts, _seq``
        (read once)."""
        cols = ["run_id", "status", "index", "attempts", "_seq"]
        tables = self._runs_tables(cols)
        if not tables:
            return {}
        t = _concat(tables)
        rows = t.take(_latest(t)).to_pylist()
        return {r["run_id"]: r for r in rows}

    # -- writing -----------------------------------------------------------

    def write(self, record: dict) -> dict:
        """Buffer one finished run until the next :meth:`flush`; returns what
        :meth:`records` gives for it (the rest stays on disk only)."""
        self._pending.append(record)
        return _slim(record)

    def flush(self) -> None:
        """Commit the buffered runs: one history part, then one runs part."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        seq, self._seq = self._seq, self._seq + 1
        pa = _pa()[0]
        parts = []  # one table per run; _concat fills a column a run lacks with nulls
        for r in batch:
            h = r.get("history") or {}
            n = len(next(iter(h.values()))) if h else 0
            if n:
                parts.append(pa.table({"run_id": pa.array([r["run_id"]] * n, pa.string()),
                                       "_seq": pa.array(np.full(n, seq, np.int64)),
                                       **{k: _column(v) for k, v in h.items()}}))
        if parts:
            _write(_concat(parts), self.parts / f"hist-{seq}.parquet")
        rows, cols = [], {}
        for r in batch:
            row = _flat(r)
            row.update(index=r.get("index"), _seq=seq,
                       history_rows=len(next(iter(r["history"].values())))
                       if r.get("history") else 0)
            rows.append(row)
        for r in batch:
            cols.update(dict.fromkeys(HEAD))
            cols.update(dict.fromkeys(r.get("params", {})))
            cols.update(dict.fromkeys(k for k in r.get("metrics", {}) if k not in cols))
        cols.update(dict.fromkeys((*TAIL, "index", "history_rows", "_seq")))
        _write(_table(rows, list(cols)), self.parts / f"runs-{seq}.parquet")
        self.stored += len(batch)

    def finish(self, records: Mapping[str, dict]) -> None:
        """Flush, then compact every part into ``runs.parquet`` and ``histories.parquet``
        (memory: the runs table, and at most :data:`SORT_ROWS` history rows at a time)."""
        self.flush()
        runs_parts = self._part_paths("runs")
        hist_parts = self._part_paths("hist")
        for seq in set(hist_parts) - set(runs_parts):  # killed between the two writes
            hist_parts.pop(seq).unlink(missing_ok=True)
        if not runs_parts:
            return
        tables = self._runs_tables()
        if not tables:  # every part damaged (and removed)
            return
        runs = _concat(tables)
        runs = runs.take(_latest(runs))
        sources = [hist_parts[s] for s in sorted(hist_parts)]
        if (self.out / HIST_PQ).exists():
            sources.insert(0, self.out / HIST_PQ)
        if sources:
            self._merge_histories(runs, sources, set(hist_parts))
        _write(runs, self.out / RUNS_PQ)
        for p in [*runs_parts.values(), *hist_parts.values()]:
            p.unlink(missing_ok=True)

    def _merge_histories(self, runs, sources: list[Path], part_seqs: set[int]) -> None:
        """Write ``histories.parquet``: the history rows of each run's latest flush (the
        ``run_id`` and ``_seq`` of a row of ``runs``), in the order of ``runs``.

        An external sort, so that memory does not grow with the sweep: each source
        is read in batches, its kept rows go to one of several bucket files by
        their run's rank (a bucket holds whole runs, about :data:`SORT_ROWS` rows),
        then each bucket is sorted in memory (stable: a run's rows keep their
        order) and appended to the table. Rows of the old ``histories.parquet``
        whose flush still has its part are skipped (written there by a compaction
        killed before it removed the parts).
        """
        pa, pc, pq = _pa()
        schema = _unified([pq.read_schema(p) for p in sources])
        keep = pc.binary_join_element_wise(runs.column("run_id"), pc.cast(
            runs.column("_seq"), pa.string()), ":").combine_chunks()  # "run_id:seq", ranked
        rows = pc.fill_null(runs.column("history_rows"), 0).to_numpy().astype(np.int64)
        before = np.cumsum(rows) - rows  # history rows of the runs ranked before each run
        bucket_of = (before // SORT_ROWS).astype(np.int64)
        n_buckets = int(bucket_of[-1]) + 1 if len(bucket_of) else 1
        ranked = schema.append(pa.field("__rank", pa.int64()))
        buckets = [temporary_name(self.parts / f"bucket-{b}.arrow") for b in range(n_buckets)]
        writers = []
        try:
            writers = [pa.ipc.new_stream(str(p), ranked) for p in buckets]
            for path in sources:  # one file open at a time
                old = path == self.out / HIST_PQ
                with pq.ParquetFile(path) as f:
                    for batch in f.iter_batches(batch_size=1 << 16, use_threads=False):
                        t = _conform(pa.Table.from_batches([batch]), schema)
                        rank = pc.index_in(pc.binary_join_element_wise(
                            t.column("run_id"), pc.cast(t.column("_seq"), pa.string()), ":"),
                            value_set=keep)
                        mask = pc.is_valid(rank)
                        if old and part_seqs:
                            mask = pc.and_(mask, pc.invert(pc.is_in(
                                t.column("_seq"), value_set=pa.array(sorted(part_seqs),
                                                                     pa.int64()))))
                        t = t.filter(mask).append_column(
                            "__rank", pc.cast(rank.filter(mask), pa.int64()))
                        if not len(t):
                            continue
                        b = bucket_of[t.column("__rank").to_numpy()]
                        order = np.argsort(b, kind="stable")
                        t, b = t.take(order), b[order]
                        cuts = np.flatnonzero(np.diff(b)) + 1
                        for lo, hi in zip([0, *cuts], [*cuts, len(b)], strict=True):
                            writers[b[lo]].write_table(t.slice(lo, hi - lo))
            for w in writers:
                w.close()
            writers = []
            with _atomic_path(self.out / HIST_PQ) as tmp, \
                    pq.ParquetWriter(str(tmp), schema,
                                     use_dictionary=_dictionary_columns(schema)) as out:
                for p in buckets:
                    with pa.OSFile(str(p), "rb") as src:  # read into memory (not mapped)
                        t = pa.ipc.open_stream(src).read_all()
                    if len(t):
                        order = np.argsort(t.column("__rank").to_numpy(), kind="stable")
                        out.write_table(t.take(order).drop_columns(["__rank"]))
                    del t
                    p.unlink()
        finally:
            for w in writers:
                with contextlib.suppress(Exception):
                    w.close()
            for p in buckets:
                p.unlink(missing_ok=True)


def read_parquet_status(out: Path) -> dict[str, int]:
    """Counts by status of the runs stored in a Parquet sweep directory (reads, writes nothing)."""
    return parquet_status(out)[0]


def parquet_status(out: Path) -> tuple[dict[str, int], int]:
    """``(counts by status, damaged)`` of a Parquet sweep directory, as a resume would
    find them (:func:`scan`; reads, writes nothing). ``damaged`` counts the runs left
    out for a missing or unreadable history, plus one per table that does not read."""
    tables, damaged = scan(Path(out), ["run_id", "status", "index", "_seq"])
    counts: dict[str, int] = {}
    if tables:
        t = _concat(tables)
        for s in t.take(_latest(t)).column("status").to_pylist():
            counts[s] = counts.get(s, 0) + 1
    return counts, sum(1 if n is None else n for _, n in damaged)
