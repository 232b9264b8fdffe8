"""The Parquet store (the default format): same runs as the CSV store, batches, resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deqbench.cli import main
from deqbench.sweep import SweepError, execute, parse_grid, read_csv, run_sweep, sweep_status

pq = pytest.importorskip("pyarrow.parquet")

from deqbench.sweep import parquet  # noqa: E402
from deqbench.sweep.parquet import ParquetStore  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
VOLATILE = {"time_s", "host", "pid", "finished_at", "_seq", "index", "history_rows"}

GRID = """
[sweep]
run = "sweep_helpers:draw"
seed = 3
replicates = 2
[grid]
a = [0, 1, 2]
fail = [false, true]
"""


def rows_of(path):
    return {r["run_id"]: r for r in pq.read_table(path).to_pylist()}


def same_values(parquet_row: dict, csv_row: dict) -> bool:
    for k, v in csv_row.items():
        if k in VOLATILE:
            continue
        w = parquet_row.get(k)
        if isinstance(w, bool):
            w = str(w)
        if (v, w) != (None, "") and v != w:
            return False
    return True


def test_parquet_store_holds_the_csv_store_rows(tmp_path, monkeypatch):
    g = parse_grid(GRID)
    run_sweep(g, tmp_path / "csv", executor="serial", progress=False, format="csv")
    # one part per run, and the compaction's external sort in buckets of about 4 rows
    monkeypatch.setattr(parquet, "SORT_ROWS", 4)
    res = run_sweep(g, tmp_path / "pq", executor="serial", progress=False,  # the default
                    table_interval=0.0)
    assert (res.ok, res.failed, res.format) == (6, 6, "parquet")
    got = rows_of(tmp_path / "pq" / "runs.parquet")
    want = {r["run_id"]: r for r in read_csv(tmp_path / "csv" / "runs.csv")}
    assert got.keys() == want.keys()
    for rid, row in want.items():
        assert same_values(got[rid], row), (got[rid], row)
    assert [r["index"] for r in pq.read_table(tmp_path / "pq" / "runs.parquet").to_pylist()] \
        == list(range(12))  # grid order
    hist = pq.read_table(tmp_path / "pq" / "histories.parquet").drop_columns(["_seq"])
    assert hist.to_pylist() == read_csv(tmp_path / "csv" / "histories.csv")
    assert not list((tmp_path / "pq" / "parts").iterdir())  # compacted
    assert not (tmp_path / "pq" / "runs").exists()
    st = sweep_status(tmp_path / "pq")
    assert (st["done"], st["remaining"], st["by_status"]) == (12, 0, {"ok": 6, "error": 6})
    # the directory keeps its format
    with pytest.raises(SweepError, match="holds a parquet store"):
        run_sweep(g, tmp_path / "pq", executor="serial", progress=False, format="csv")
    again = run_sweep(g, tmp_path / "pq", executor="serial", progress=False)
    assert again.skipped == 12 and again.format == "parquet"


def test_a_kill_loses_at_most_the_unflushed_batch(tmp_path):
    g = parse_grid(GRID)
    specs = list(g.specs)
    store = ParquetStore(tmp_path)
    for s in specs[:3]:
        store.write(execute(s))
    store.flush()  # committed: one part
    for s in specs[3:5]:
        store.write(execute(s))  # buffered: lost by the "kill" below
    store.close()  # what SIGKILL leaves: parts, no compaction, the lock released
    assert len(list((tmp_path / "parts").glob("runs-*.parquet"))) == 1
    assert sweep_status(tmp_path)["done"] == 3  # read from the parts, nothing written
    res = run_sweep(g, tmp_path, executor="serial", progress=False)
    assert (res.skipped, res.ok + res.failed) == (3, 9)
    rows = pq.read_table(tmp_path / "runs.parquet").to_pylist()
    assert sorted(r["run_id"] for r in rows) == sorted(s.run_id for s in specs)  # once each
    # a re-run of the failed runs replaces their rows (the latest flush wins)
    res = run_sweep(g, tmp_path, executor="serial", progress=False, retry_failed=True)
    assert (res.skipped, res.failed) == (6, 6)
    rows = pq.read_table(tmp_path / "runs.parquet").to_pylist()
    assert len(rows) == 12 and len({r["run_id"] for r in rows}) == 12
    assert len(pq.read_table(tmp_path / "histories.parquet")) == 6 * 3


def test_damaged_part_is_removed_and_its_runs_run_again(tmp_path):
    g = parse_grid(GRID)
    specs = list(g.specs)
    with ParquetStore(tmp_path) as store:
        for s in specs[:4]:
            store.write(execute(s))
        store.flush()
        for s in specs[4:6]:
            store.write(execute(s))
        store.flush()
    (tmp_path / "parts" / "runs-1.parquet").write_bytes(b"not parquet")
    (tmp_path / "parts" / "hist-2.parquet").unlink()  # a run part whose histories vanished
    res = run_sweep(g, tmp_path, executor="serial", progress=False)
    assert res.damaged == 2 and (res.skipped, res.ok + res.failed) == (0, 12)


def test_cli_format_parquet_then_plot(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text("""
[sweep]
run = "gd"
[fixed]
model = "linear"
n = 16
d = 2
steps = 5
[grid]
m = [1, 2, 3]
lr = [0.01]
""")
    out = tmp_path / "out"
    assert main(["sweep", str(grid), "--out", str(out), "--executor", "serial",
                 "--format", "parquet", "--no-progress"]) == 0
    assert "runs.parquet" in capsys.readouterr().err
    assert main(["plot", str(out)]) == 0
    names = {Path(f).name for f in capsys.readouterr().out.split()}
    assert {"loss_curves.png", "invariant_drift.png"} <= names


def mixed(params, seed):
    """A metric that is a number in some runs and text in others."""
    v = 1.5 if params["a"] % 2 == 0 else "n/a"
    return {"metrics": {"v": v}, "history": {"step": [0, 1]}}


def test_a_column_that_changes_type_between_flushes_becomes_text(tmp_path):
    g = parse_grid("[sweep]\nrun = \"sweep_helpers:draw\"\n[grid]\na = [0, 1, 2]\n")
    res = run_sweep(g, tmp_path, executor="serial", progress=False, format="parquet",
                    run_fn=mixed, table_interval=0.0)  # one part per run
    assert res.ok == 3
    t = pq.read_table(tmp_path / "runs.parquet")
    assert t.column("v").to_pylist() == ["1.5", "n/a", "1.5"]
    assert t.column("a").to_pylist() == [0, 1, 2]  # the others keep their type


def _noop_record(spec, rows: int) -> dict:
    rec = execute(spec, run_fn=_noop)
    rec["history"] = {"step": list(range(rows)), "loss": [1.0 / (i + 1) for i in range(rows)]}
    return rec


def _noop(params, seed):
    return {"metrics": {"v": 1.0}}


def _compaction_peak(tmp_path, n: int, rows: int = 21, every: int = 500) -> int:
    """Peak memory (bytes, Python objects + Arrow buffers) of compacting ``n`` runs stored
    in parts of ``every`` runs."""
    import tracemalloc

    import pyarrow as pa

    g = parse_grid(f"[sweep]\nrun = \"sweep_helpers:draw\"\n[grid]\na = {list(range(n))}\n")
    store = ParquetStore(tmp_path / str(n))
    try:
        for i, spec in enumerate(g.specs):
            store.write(_noop_record(spec, rows))
            if i % every == every - 1:
                store.flush()
        pool = pa.proxy_memory_pool(pa.default_memory_pool())
        old = pa.default_memory_pool()
        pa.set_memory_pool(pool)
        tracemalloc.start()
        try:
            store.finish({})
            py = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            pa.set_memory_pool(old)
        assert len(pq.read_table(tmp_path / str(n) / "histories.parquet")) == n * rows
        return py + pool.max_memory()
    finally:
        store.close()


def test_compaction_memory_does_not_grow_with_the_history_rows(tmp_path, monkeypatch):
    # the histories are merged in buckets of SORT_ROWS rows: memory grows with the runs
    # table only (a few hundred bytes a run), not with their 21 history rows (before: the
    # whole histories table, several copies and a Python string per row: ~6 KB a run)
    monkeypatch.setattr(parquet, "SORT_ROWS", 4096)
    small, large = _compaction_peak(tmp_path, 600), _compaction_peak(tmp_path, 2400)
    per_run = (large - small) / 1800
    assert per_run < 1000, (small, large, per_run)  # measured: ~180; one bucket: ~2700


def test_a_compaction_killed_before_its_runs_table_counts_each_history_once(tmp_path,
                                                                             monkeypatch):
    g = parse_grid(GRID)
    with ParquetStore(tmp_path) as store:
        for s in list(g.specs)[:4]:
            store.write(execute(s))
        store.finish({})  # compacted: flush 1
    real = parquet._write

    def killed(table, path):  # histories.parquet written, then the process dies
        if path.name == "runs.parquet":
            raise KeyboardInterrupt
        real(table, path)

    monkeypatch.setattr(parquet, "_write", killed)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(g, tmp_path, executor="serial", progress=False)
    monkeypatch.setattr(parquet, "_write", real)
    res = run_sweep(g, tmp_path, executor="serial", progress=False)
    assert res.skipped == 12 and not list((tmp_path / "parts").iterdir())
    rows = pq.read_table(tmp_path / "runs.parquet").to_pylist()
    assert sorted(r["run_id"] for r in rows) == sorted(s.run_id for s in g.specs)
    assert sorted({r["_seq"] for r in rows}) == [1, 2]  # numbered on after a compaction
    hist = pq.read_table(tmp_path / "histories.parquet").drop_columns(["_seq"]).to_pylist()
    assert len(hist) == 6 * 3  # before: the rows of flush 2 twice
    run_sweep(g, tmp_path / "csv", executor="serial", progress=False, format="csv")
    assert hist == read_csv(tmp_path / "csv" / "histories.csv")  # and in grid order


def typed(params, seed):
    """Histories of several NumPy types; the odd runs record one column more."""
    import numpy as np

    h = {"step": np.arange(4, dtype=np.uint8), "loss": np.linspace(1, 0.25, 4, dtype=np.float32),
         "ok": np.array([True, False, True, True]), "phase": np.array(["a", "b", "b", "c"])}
    if params["a"] % 2:
        h["extra"] = np.full(4, np.nan)
    return {"metrics": {"v": 1.0}, "history": h}


def test_numpy_histories_keep_their_types_in_both_stores(tmp_path):
    # histories travel as NumPy columns (no Python object per value); both stores must
    # read back the same numbers and types as from lists, and a column one run lacks is null
    g = parse_grid("[sweep]\nrun = \"sweep_helpers:draw\"\n[grid]\na = [0, 1, 2]\n")
    spec = next(iter(g.specs))
    h = execute(spec, run_fn=typed)["history"]
    assert [(k, type(v).__name__, getattr(v, "dtype", None)) for k, v in h.items()] == [
        ("step", "ndarray", "int64"), ("loss", "ndarray", "float64"),
        ("ok", "ndarray", "bool"), ("phase", "list", None)]
    for fmt in ("parquet", "csv"):
        res = run_sweep(g, tmp_path / fmt, executor="serial", progress=False, format=fmt,
                        run_fn=typed, table_interval=3600.0)  # the three runs in one flush
        assert res.ok == 3
    t = pq.read_table(tmp_path / "parquet" / "histories.parquet")
    assert [str(t.schema.field(c).type) for c in ("step", "loss", "ok", "phase", "extra")] \
        == ["int64", "double", "bool", "string", "double"]
    got = t.drop_columns(["_seq"]).to_pylist()
    want = read_csv(tmp_path / "csv" / "histories.csv")
    assert len(got) == len(want) == 12
    for p, c in zip(got, want, strict=True):
        assert p["run_id"] == c["run_id"] and p["step"] == c["step"] and p["loss"] == c["loss"]
        assert str(p["ok"]) == c["ok"] and p["phase"] == c["phase"]
        odd = [r for r in want if r["run_id"] == p["run_id"]][0].get("extra") is not None
        assert (p["extra"] is None) == (not odd) and (c.get("extra") is None) == (not odd)
    assert [r["loss"] for r in got[:4]] == [1.0, 0.75, 0.5, 0.25]
