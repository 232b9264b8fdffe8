"""The columnar store, the default: runs and histories in Parquet (pyarrow, imported lazily).

While a sweep runs, finished runs are buffered and committed in batches: every
flush writes one history part and then one runs part
(``DIR/parts/hist-SEQ.parquet``, ``DIR/parts/runs-SEQ.parquet``), each
atomically; the runs part is the commit point. When the sweep ends the parts
are compacted into ``DIR/runs.parquet`` (one row per run, grid order) and
``DIR/histories.parquet`` (one row per run and recorded step), and removed.
After a SIGKILL at any moment a resume finds every committed run once and runs
again at most what finished since the last flush. Every row carries ``_seq``,
the flush that stored it: a run stored twice (``--retry-failed``) counts by
its latest flush. Read it in one line::

    pyarrow.parquet.read_table("DIR/runs.parquet")   # or pandas.read_parquet, polars, DuckDB
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path

from .store import HEAD, HIST_PQ, RUNS_PQ, TAIL, Store, SweepError, _flat

__all__ = ["ParquetStore", "read_parquet_status"]

PARTS = "parts"
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


def _column(values: list):
    """An Arrow array for Python scalars: bool, int64, float64, else strings."""
    pa, _, _ = _pa()
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


def _concat(tables: list):
    """One table from parts whose schemas differ (missing columns are null; a column that
    is a number in one part and text in another becomes text)."""
    pa, _, _ = _pa()
    tables = [t for t in tables if t is not None]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        kinds: dict[str, set] = {}
        for t in tables:
            for f in t.schema:
                kinds.setdefault(f.name, set()).add(str(f.type))
        text = {c for c, k in kinds.items() if len(k - {"null"}) > 1}
        tables = [t.cast(pa.schema([(f.name, pa.string()) if f.name in text else f
                                    for f in t.schema])) for t in tables]
        return pa.concat_tables(tables, promote_options="permissive")


def _write(table, path: Path) -> None:
    """Write ``table`` to ``path`` atomically (temporary file named for this process)."""
    _, _, pq = _pa()
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}."
                         f"{secrets.token_hex(4)}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


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


class ParquetStore(Store):
    """A sweep directory in Parquet (see the module docstring); locked like :class:`Store`."""

    format = "parquet"

    def __init__(self, out):
        _pa()  # fail early, with the install hint
        self.parts = Path(out) / PARTS
        super().__init__(out)
        self._seq = 1 + max((int(m.group(2)) for p in self.parts.iterdir()
                             if (m := _PART.match(p.name))), default=0)

    def _dirs(self):
        return (self.parts,)

    # -- reading -----------------------------------------------------------

    def _part_paths(self, kind: str) -> dict[int, Path]:
        return {int(m.group(2)): p for p in self.parts.iterdir()
                if (m := _PART.match(p.name)) and m.group(1) == kind}

    def _read(self, path: Path, columns=None):
        _, _, pq = _pa()
        return pq.read_table(path, columns=columns)

    def _runs_tables(self, columns=None) -> list:
        """The compacted runs table and every intact runs part; a damaged part (unreadable,
        or its history part missing) is removed and listed in :attr:`damaged`."""
        tables = []
        if (self.out / RUNS_PQ).exists():
            tables.append(self._read(self.out / RUNS_PQ, columns))
        hist = self._part_paths("hist")
        for seq, path in sorted(self._part_paths("runs").items()):
            try:
                t = self._read(path, columns and [*columns, "history_rows"])
                broken = seq not in hist and any(n for n in t.column("history_rows")
                                                 .to_pylist() if n)
            except Exception:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
                t, broken = None, True
            if broken:
                self.damaged.append(path.name)
                path.unlink(missing_ok=True)
                if seq in hist:
                    hist[seq].unlink(missing_ok=True)
                continue
            tables.append(t.select(columns) if columns else t)
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
        return {k: record.get(k) for k in ("run_id", "status", "index")}

    def flush(self) -> None:
        """Commit the buffered runs: one history part, then one runs part."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        seq, self._seq = self._seq, self._seq + 1
        hrows, hcols = [], {"run_id": None, "_seq": None}
        for r in batch:
            h = r.get("history") or {}
            hcols.update(dict.fromkeys(h))
            n = len(next(iter(h.values()))) if h else 0
            hrows.extend({"run_id": r["run_id"], "_seq": seq, **{k: h[k][i] for k in h}}
                         for i in range(n))
        if hrows:
            _write(_table(hrows, list(hcols)), self.parts / f"hist-{seq}.parquet")
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
        """Flush, then compact every part into ``runs.parquet`` and ``histories.parquet``."""
        pa, pc, _ = _pa()
        self.flush()
        runs_parts = self._part_paths("runs")
        hist_parts = self._part_paths("hist")
        for seq in set(hist_parts) - set(runs_parts):  # killed between the two writes
            hist_parts.pop(seq).unlink(missing_ok=True)
        if not runs_parts:
            return
        runs = _concat(self._runs_tables())
        runs = runs.take(_latest(runs))
        keep = [f"{r}:{s}" for r, s in zip(runs.column("run_id").to_pylist(),
                                          runs.column("_seq").to_pylist(), strict=True)]
        order = {r: i for i, r in enumerate(runs.column("run_id").to_pylist())}
        htables = [self._read(p) for p in
                   ([self.out / HIST_PQ] if (self.out / HIST_PQ).exists() else [])
                   + [hist_parts[s] for s in sorted(hist_parts)]]
        if htables:
            hist = _concat(htables)
            key = pc.binary_join_element_wise(hist.column("run_id"),
                                              pc.cast(hist.column("_seq"), "string"), ":")
            hist = hist.filter(pc.is_in(key, value_set=pa.array(keep)))
            rank = [order[r] for r in hist.column("run_id").to_pylist()]
            hist = hist.append_column("__order", pa.array(rank, pa.int64()))
            hist = hist.sort_by([("__order", "ascending")]).drop_columns(["__order"])
            _write(hist, self.out / HIST_PQ)
        _write(runs, self.out / RUNS_PQ)
        for p in [*runs_parts.values(), *hist_parts.values()]:
            p.unlink(missing_ok=True)


def read_parquet_status(out: Path) -> dict[str, int]:
    """Counts by status of the runs stored in a Parquet sweep directory (reads, writes nothing)."""
    pa, _, pq = _pa()
    tables = []
    paths = [out / RUNS_PQ] if (out / RUNS_PQ).exists() else []
    if (out / PARTS).is_dir():
        paths += sorted(p for p in (out / PARTS).iterdir()
                        if (m := _PART.match(p.name)) and m.group(1) == "runs")
    for p in paths:
        with contextlib.suppress(Exception):
            tables.append(pq.read_table(p, columns=["run_id", "status", "index", "_seq"]))
    counts: dict[str, int] = {}
    if tables:
        t = _concat(tables)
        for s in t.take(_latest(t)).column("status").to_pylist():
            counts[s] = counts.get(s, 0) + 1
    return counts
