"""The regression gate's self-test and modes (tools/gate.sh, tools/inject.py,
tools/gate_counts.py) and the kernel cache it relies on; nothing here times anything.

* The injected slowdown lands on what the gated benchmarks time: every gated
  ``time_`` benchmark's timed call does ``inject.PERCENT``% more gemm flops with
  it, counted call by call (plain Python under ``NUMBA_DISABLE_JIT``, where every
  product goes through ``numpy.dot``), with bitwise the same results.
* ``--counts`` runs exactly the benchmarks whose unit is a count.
* numba's on-disk cache survives asv's alternating reinstalls of two versions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import inject  # noqa: E402


def _copy_package(dest: Path) -> Path:
    shutil.copytree(ROOT / "deqbench", dest / "deqbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "PYTHON"))}
    env.update(extra)
    return env


# --------------------------------------------------------------------------
# the injection
# --------------------------------------------------------------------------


def test_inject_routes_every_kernel_product(tmp_path):
    tree = _copy_package(tmp_path)
    kdir = tree / "deqbench" / "_kernels"
    before = {p.name: len(inject._calls(__import__("ast").parse(p.read_text())))
              for p in kdir.glob("*.py")}
    done = inject.inject(tree)
    assert done == {k: v for k, v in before.items() if v}
    # the row-block gemms: Picard's and every solve's products go through blocks.gemm
    assert "blocks.py" in done
    for mod in kdir.glob("*.py"):
        text = mod.read_text()
        if mod.name in done:
            assert text.count(inject.MARK) == 1
            assert not inject._calls(__import__("ast").parse(text))  # none left unrouted
    assert f"PERCENT = {inject.PERCENT}" in (kdir / "_injected.py").read_text()
    with pytest.raises(ValueError, match="already"):
        inject.inject(tree)
    with pytest.raises(ValueError, match="already"):
        inject.inject_source((kdir / "blocks.py").read_text())
    bare = tmp_path / "bare" / "deqbench" / "_kernels"
    bare.mkdir(parents=True)
    (bare / "k.py").write_text("import numpy as np\n\n\ndef f(a, b):\n    return a @ b\n")
    with pytest.raises(ValueError, match="update tools/inject.py"):
        inject.inject(tmp_path / "bare")
    with pytest.raises(ValueError, match="no deqbench/_kernels"):
        inject.inject(tmp_path / "nowhere")


# Runs the gated time_ benchmarks' setup and then their timed body once, counting the
# flops of every numpy.dot the body calls. Plain Python (NUMBA_DISABLE_JIT=1), so sizes
# are cut down; the SIMD activations have no Python fallback, so their cases report the
# reason instead of a count.
COUNT_SCRIPT = r"""
import importlib, inspect, itertools, json, sys
import numpy as np

flops = [0]
_dot = np.dot


def dot(a, b, out=None):
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2 and b.ndim == 2:
        flops[0] += 2 * a.shape[0] * a.shape[1] * b.shape[1]
    else:
        flops[0] += 2 * max(a.size, b.size)
    return _dot(a, b) if out is None else _dot(a, b, out)


np.dot = dot
import deqbench as db
import benchmarks.common as C

C.N_AT.update({m: (256 if m <= 64 else 48) for m in C.N_AT})
_problem = C.problem


def small(model, m, n, d=None, **kw):
    return _problem(model, m, min(n, 128), d, **kw)


out = {"deqbench": db.__file__}
for name in sys.argv[1:]:
    mod = importlib.import_module(f"benchmarks.{name}")
    if hasattr(mod, "problem"):
        mod.problem = small
    for cname, cls in sorted(vars(mod).items()):
        if not inspect.isclass(cls) or cls.__module__ != mod.__name__:
            continue
        timed = sorted(m for m in dir(cls) if m.startswith("time_"))
        if not timed:
            continue
        params = cls.params if cls.params and isinstance(cls.params[0], list) else [cls.params]
        for combo in itertools.product(*params):
            key = f"{name}.{cname}.{timed[0]}{combo}"
            try:
                obj = cls()
                obj.setup(*combo)
                flops[0] = 0
                getattr(obj, timed[0])(*combo)
                row = {"flops": flops[0]}
                if cname == "FixedPoint":
                    res = db.fixed_point(obj.p.X, obj.p.A, obj.p.B, **obj.kw)
                    row["evaluations"] = len(res.history)
                    row["n"], row["m"] = obj.p.n, obj.p.m
                    row["z"] = res.z.tobytes().hex()[:4096]
                out[key] = row
            except Exception as exc:
                out[key] = {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
print(json.dumps(out))
"""

GATED = ("bench_fixed_point", "bench_gradients", "bench_training", "bench_memory",
         "bench_theory")


def _gate_modules():
    """The modules of the gate's default --bench (tools/gate.sh, DEFAULT_BENCH)."""
    text = (ROOT / "tools" / "gate.sh").read_text()
    regex = re.search(r"^DEFAULT_BENCH='([^']+)'", text, flags=re.M).group(1)
    mods = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")
                  if re.search(regex, f"{p.stem}.X.time_x"))
    assert mods == sorted(GATED), mods
    return mods


@pytest.mark.slow
def test_injection_adds_its_share_to_every_gated_time_benchmark(tmp_path):
    """With the injection, the timed call of every gated ``time_`` benchmark that
    runs as plain Python does ``PERCENT``% more gemm flops (a quarter of every
    product, exact on row blocks of a multiple of 4 rows), the forward solves'
    products cover every map evaluation of the cost model (``2 n m^2`` each), and
    the fixed points are bitwise the same."""
    mods = _gate_modules()
    injected = _copy_package(tmp_path / "injected")
    inject.inject(injected)
    procs = {}
    for label, path in (("plain", str(ROOT)), ("injected", f"{injected}{os.pathsep}{ROOT}")):
        procs[label] = subprocess.Popen(
            [sys.executable, "-c", COUNT_SCRIPT, *mods], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env=_env(NUMBA_DISABLE_JIT="1", PYTHONPATH=path))
    out = {}
    for label, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=1800)
        assert proc.returncode == 0, stderr[-3000:]
        out[label] = json.loads(stdout.strip().splitlines()[-1])
    assert out["injected"].pop("deqbench").startswith(str(injected))
    assert out["plain"].pop("deqbench").startswith(str(ROOT))
    plain, inj = out["plain"], out["injected"]
    assert plain.keys() == inj.keys()
    counted = {k for k, v in plain.items() if "flops" in v}
    assert {k for k, v in inj.items() if "flops" in v} == counted, (
        {k: (plain[k], inj[k]) for k in plain if ("flops" in plain[k]) != ("flops" in inj[k])})
    for key in set(plain) - counted:  # only the SIMD activations may be missing
        assert "not usable in pure-python" in plain[key]["skipped"], (key, plain[key])
    # every gated class that times something is counted at least once
    classes = {k.split("(")[0].rsplit(".", 1)[0] for k in plain}
    assert classes == {k.split("(")[0].rsplit(".", 1)[0] for k in counted}
    assert len(counted) >= 10
    share = 1 + inject.PERCENT / 100
    for key in sorted(counted):
        ratio = inj[key]["flops"] / plain[key]["flops"]
        assert plain[key]["flops"] > 0 and abs(ratio - share) < 0.01, (key, ratio)
        if "evaluations" in plain[key]:
            p = plain[key]
            assert p["flops"] >= p["evaluations"] * 2 * p["n"] * p["m"] ** 2, key
            assert inj[key]["z"] == p["z"] and inj[key]["evaluations"] == p["evaluations"]


# --------------------------------------------------------------------------
# the count-only gate
# --------------------------------------------------------------------------


def test_count_regex_selects_the_exact_counts_only():
    pytest.importorskip("asv", reason="tools/gate_counts.py reads asv's results")
    from benchmarks.common import COUNT_UNITS
    from tools import gate_counts

    names = gate_counts.count_benchmarks()
    assert "bench_fixed_point.FixedPointMetrics.track_map_evaluations" in names
    assert "bench_fixed_point.FixedPointMetrics.track_nrt_allocations" in names
    assert "bench_training.TrainIterations.track_fp_iters_per_step" in names
    regex = gate_counts.count_regex(names)
    for name in names:
        mod, *rest = name.split(".")
        owner = __import__(f"benchmarks.{mod}", fromlist=["x"])
        for part in rest:
            owner = getattr(owner, part)
        assert owner.unit in COUNT_UNITS
        assert re.search(regex, name) and re.search(regex, f"{name}('picard', 32)")
    for other in ("bench_fixed_point.FixedPointMetrics.track_efficiency",
                  "bench_fixed_point.FixedPointMetrics.track_bytes_allocated",
                  "bench_fixed_point.FixedPoint.time_fixed_point",
                  "bench_fixed_point.FixedPointMetrics.track_map_evaluations_x"):
        assert not re.search(regex, other), other
    within = gate_counts.count_benchmarks(r"^bench_memory\.")
    assert within and all(n.startswith("bench_memory.") for n in within)
    with pytest.raises(ValueError, match="at least one"):
        gate_counts.count_regex([])


def test_counts_only_skips_the_time_ratios():
    env = _env(DEQBENCH_COUNTS_ONLY="1", PYTHONPATH=str(ROOT))
    script = ("import math\nfrom benchmarks import common as c\n"
              "assert c.COUNTS_ONLY\n"
              "assert math.isnan(c.cost_ratio(lambda: 1 / 0, []))\n"
              "assert math.isnan(c.best_time(lambda: 1 / 0))\n")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    from benchmarks import common

    assert not common.COUNTS_ONLY  # not set for the test run itself


def _gate(*args):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("tools/gate.sh needs a git checkout")
    pytest.importorskip("asv", reason="tools/gate.sh needs asv (the test extra installs it)")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               PYTHON=sys.executable)
    return subprocess.run(["bash", str(ROOT / "tools" / "gate.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_count_gate_dry_run_runs_the_counts_alone():
    res = _gate("--dry-run", "--counts", "HEAD", "HEAD")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "continuous" not in out and "confirm" not in out  # no timing, no confirming run
    run = next(line for line in out.splitlines() if " run --bench " in line)
    assert "DEQBENCH_COUNTS_ONLY=1" in run and "-a rounds=1" in run and "HASHFILE:" in run
    assert "track_map_evaluations" in run and "track_efficiency" not in run
    assert "gate_counts.py --config .asv/gate/counts.conf.json" in out
    assert _gate("--counts", "HEAD").returncode == 2  # needs BASE and HEAD


def test_timing_gate_runs_under_the_quiet_check(tmp_path):
    """Outside a dry run the timing modes re-run themselves under ``deqbench
    quiet``; ``--counts`` and ``--no-quiet`` do not (a fake python records it)."""
    fake = tmp_path / "python"
    log = tmp_path / "calls"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexit 0\n')
    fake.chmod(0o755)
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("tools/gate.sh needs a git checkout")
    env = dict(os.environ, PYTHON=str(fake))
    env.pop("DEQBENCH_GATE_QUIET_RUN", None)
    res = subprocess.run(["bash", str(ROOT / "tools" / "gate.sh"), "--strict", "HEAD", "HEAD"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr  # the fake "quiet" exits 0
    first = log.read_text().splitlines()[0].split()
    assert first[:4] == ["-m", "deqbench.cli", "quiet", "--strict"]
    assert first[4] == "--" and first[-3:] == ["--strict", "HEAD", "HEAD"]


# --------------------------------------------------------------------------
# numba's cache across asv's reinstalls
# --------------------------------------------------------------------------


def _wheel(src: Path, out: Path) -> Path:
    """A pure-Python wheel of the ``deqbench`` package under ``src`` (built by hand:
    no build backend, no network)."""
    import base64
    import hashlib
    import zipfile

    out.mkdir(parents=True, exist_ok=True)
    path = out / "deqbench-0.1.0-py3-none-any.whl"
    info = "deqbench-0.1.0.dist-info"
    files = {}
    for f in sorted((src / "deqbench").rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            files[f.relative_to(src).as_posix()] = f.read_bytes()
    files[f"{info}/METADATA"] = b"Metadata-Version: 2.1\nName: deqbench\nVersion: 0.1.0\n"
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n")
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


CACHE_PROBE = r"""
import json, os
import numpy as np
import deqbench as db
from deqbench import _jit
from deqbench._kernels import blocks, fixed_point
from numba.core.registry import CPUDispatcher

X, Y, _ = db.data.linear_teacher(64, 4, 4, seed=0)
A, B = db.data.init_params(4, 4, scale_A=0.5, scale_B=1.0, seed=1)
db.fixed_point(X, A, B)
stats = [v.stats for mod in (blocks, fixed_point) for v in vars(mod).values()
         if isinstance(v, CPUDispatcher)]
root = _jit.cache_root()
print(json.dumps({
    "file": db.__file__,
    "digest": _jit.kernel_digest()[:20],
    "hits": sum(sum(s.cache_hits.values()) for s in stats),
    "misses": sum(sum(s.cache_misses.values()) for s in stats),
    "entries": {d: sum(f.endswith(".nbc") for _, _, fs in os.walk(root / d) for f in fs)
                for d in sorted(os.listdir(root))},
}))
"""


def _asv_commands(key: str) -> list[list[str]]:
    """``install_command`` / ``uninstall_command`` of asv.conf.json as argument lists
    (asv's ``in-dir=`` and ``return-code=`` prefixes dropped)."""
    text = (ROOT / "asv.conf.json").read_text()
    conf = json.loads("\n".join(ln for ln in text.splitlines()
                                if not ln.lstrip().startswith("//")))
    out = []
    for cmd in conf[key]:
        words = [w for w in cmd.split() if not w.startswith(("in-dir=", "return-code="))]
        out.append(words)
    return out


@pytest.mark.slow
def test_kernel_cache_survives_alternating_installs(tmp_path):
    """asv installs BASE and HEAD in turn into one environment with the commands of
    asv.conf.json (uninstall, then install the wheel). Two versions of the kernel
    sources here; the second install of each finds every kernel it compiled the
    first time: no cache miss, no new entry."""
    import site
    import venv

    src_a = _copy_package(tmp_path / "a")
    src_b = _copy_package(tmp_path / "b")
    with open(src_b / "deqbench" / "_kernels" / "blocks.py", "a") as fh:
        fh.write("\n# another version of the kernel sources\n")
    wheels = {"a": _wheel(src_a, tmp_path / "wa"), "b": _wheel(src_b, tmp_path / "wb")}
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
    # numba, numpy, pip ... from this interpreter, after the environment's own packages;
    # never this interpreter's deqbench (pip would see it as installed)
    deps = tmp_path / "deps"
    deps.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            if "deqbench" not in entry.name.lower() and entry.suffix != ".pth" \
                    and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (Path(purelib) / "zz_parent.pth").write_text(f"{deps}\n")
    env = _env(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", NUMBA_NUM_THREADS="1")
    runs = []
    for version in ("a", "b", "a", "b"):
        for cmd in _asv_commands("uninstall_command") + _asv_commands("install_command"):
            cmd = [str(py) if w == "python" else w for w in cmd]
            cmd = [w.replace("{wheel_file}", str(wheels[version]))
                   .replace("{project}", "deqbench") for w in cmd]
            res = subprocess.run(cmd, cwd=env_dir, env=env, capture_output=True, text=True)
            assert res.returncode == 0 or "uninstall" in cmd, (cmd, res.stderr[-2000:])
        res = subprocess.run([str(py), "-c", CACHE_PROBE], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert all(r["file"].startswith(purelib) for r in runs)  # the installed copy ran
    a1, b1, a2, b2 = runs
    assert a1["digest"] == a2["digest"] != b1["digest"] == b2["digest"]
    assert a1["misses"] > 0 and b1["misses"] > 0  # the first install of each compiles
    assert a2["misses"] == 0 and b2["misses"] == 0 and a2["hits"] > 0  # the second loads
    assert a2["entries"] == b1["entries"] == b2["entries"]  # nothing compiled again
    assert a2["entries"][a1["digest"]] == a1["entries"][a1["digest"]] > 0
