"""Measuring: one case timed across peers in interleaved rounds, memory per
peer in its own process, W3 and W5, and the machine the numbers came from."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.peers import problems as P
from benchmarks.peers.problems import PeerMissing
from benchmarks.peers.registry import DB, MEM_PEERS

from .timing import interleaved

ROOT = Path(__file__).resolve().parents[2]


def bench_case(workload: str, p, factories, *, grads: bool, reps: int, log) -> list[dict]:
    fns, outcomes, errs, notes, warm = {}, {}, {}, {}, {}
    for name, make in factories:
        try:
            fn = make()
        except PeerMissing as e:
            notes[name] = f"not measured: {e}"
            continue
        if fn is None:
            continue
        t = time.perf_counter()
        out = fn()  # warm-up (JIT) and the correctness check
        warm[name] = time.perf_counter() - t  # long calls need no calibration run
        errs[name] = P.check(p, out, what=name, grads=grads)
        fns[name], outcomes[name] = fn, out
    rng = np.random.default_rng(1)
    Zm, Mm, Tm = (
        rng.standard_normal((p.n, p.m)),
        rng.standard_normal((p.m, p.m)),
        np.empty((p.n, p.m)),
    )
    fns["numpy matmul"] = lambda: np.matmul(Zm, Mm, out=Tm)
    fns.update(torch_matmul(Zm, Mm))
    t0 = time.perf_counter()
    times = interleaved(fns, reps, known=warm)
    log(f"  {workload} {p.name}: {time.perf_counter() - t0:.1f} s for {reps} rounds")
    t_db = float(np.median(times[DB])) if DB in times else np.nan
    db = outcomes.get(DB)
    rows = []
    for name in [n for n, _ in factories] + list(MATMULS):
        if name in notes:
            rows.append(dict(workload=workload, m=p.m, n=p.n, d=p.d, peer=name, note=notes[name]))
            continue
        if name not in times:
            continue
        t = times[name]
        med = float(np.median(t))
        if name in MATMULS:
            flops, fe, be = P.flops_map(p), "", ""
        else:
            o = outcomes[name]
            fe, be = o.fp_evals, o.adj_evals
            if name == "numpy direct":
                flops = (
                    P.flops_direct_step(p)
                    if grads
                    else ((2 / 3) * p.m**3 + 2 * p.m * p.m * p.n + 2 * p.m * p.d * p.n)
                )
            else:
                # peers that do not report a count are charged deqbench's count
                fe_ = fe if fe and fe > 0 else db.fp_evals
                be_ = be if be and be > 0 else db.adj_evals
                flops = P.flops_step(p, fe_, be_) if grads else P.flops_forward(p, fe_)
        rows.append(
            dict(
                workload=workload,
                m=p.m,
                n=p.n,
                d=p.d,
                peer=name,
                median_s=med,
                q1_s=float(np.percentile(t, 25)),
                q3_s=float(np.percentile(t, 75)),
                rounds=len(t),
                fp_evals=fe,
                adj_evals=be,
                gflops=flops / med / 1e9,
                ratio=t_db / med,
                speedup=med / t_db,
                rel_err=errs.get(name, ""),
                note="",
            )
        )
    return rows + best_matmul(rows)


#: The gemms of each case's shapes ``(n, m) x (m, m)``, timed in the same rounds:
#: numpy's (its BLAS) and torch's (its own, MKL on x86 wheels) where installed.
MATMULS = ("numpy matmul", "torch matmul")
BEST = "best matmul"


def torch_matmul(Z, M) -> dict:
    """``{"torch matmul": callable}`` on the same arrays (shared memory), or ``{}``
    without torch (its threads as the torch peers set them)."""
    from benchmarks.peers.torch_peers import torch

    if torch is None:
        return {}
    Zt, Mt = torch.from_numpy(Z), torch.from_numpy(M)
    Tt = torch.empty_like(Zt)
    return {"torch matmul": lambda: torch.matmul(Zt, Mt, out=Tt)}


def best_matmul(rows) -> list[dict]:
    """The machine's best gemm for the case: a copy of the faster matmul row (by
    median) as peer ``"best matmul"``, its ``note`` naming which; the efficiency
    reference of the targets, next to numpy's."""
    mm = [r for r in rows if r["peer"] in MATMULS and "median_s" in r]
    if not mm:
        return []
    best = min(mm, key=lambda r: r["median_s"])
    return [dict(best, peer=BEST, note=best["peer"])]


def memory_rows(m: int, n: int, configs, log) -> list[dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    rows = []
    for rho, tol in configs:
        for peer in MEM_PEERS:
            cmd = [
                sys.executable,
                "-m",
                "tools.peers.memory",
                peer,
                str(m),
                str(n),
                str(rho),
                str(tol),
            ]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            if r.returncode != 0 or not lines:
                tail = (r.stderr.strip().splitlines() or ["?"])[-1]
                rows.append(
                    dict(peer=peer, m=m, n=n, rho=rho, tol=tol, note=f"not measured: {tail[:120]}")
                )
                continue
            row = json.loads(lines[-1])
            row["note"] = ""
            rows.append(row)
            log(
                f"  memory {peer} rho={rho} tol={tol}: evals {row['fp_evals']}/{row['adj_evals']}, "
                f"peak extra {row['peak_extra_bytes'] / 2**20:.0f} MiB, "
                f"x{row['ratio_extra']:.2f} of must-hold"
            )
    return rows


def w3_rows(reps: int, log) -> list[dict]:
    from . import w3

    return w3.run(reps=reps, log=log)


def w5_rows(log, quick: bool) -> list[dict]:
    from . import w5

    return w5.run(log=log, quick=quick)


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(
                ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")
            )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["cores"] = os.cpu_count()
    info["load_avg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    import numba

    import deqbench

    info["versions"] = {
        "deqbench": deqbench.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("scipy", "torch", "torchdeq", "jax", "jaxopt"):
        try:
            info["versions"][mod] = version(mod)
        except PackageNotFoundError:
            info["versions"][mod] = "not installed"
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = sorted(
            {
                f"{d['internal_api']} {d['version']} ({d['num_threads']} threads)"
                for d in threadpool_info()
                if d["user_api"] == "blas"
            }
        )
    except ImportError:
        info["blas"] = []
    try:
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        info["git"] = "?"
    info["threads"] = {
        "numba": numba.get_num_threads(),
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "cpus_bound": len(os.sched_getaffinity(0)),
    }
    from deqbench._platform import vector_isa

    info["cpu_flags"] = vector_isa()
    try:  # the kernels' settings in force: built-in, or a calibration (deqbench calibrate)
        from deqbench._calibration import in_force

        now = in_force()
        info["kernel_settings"] = (f"{now.state}, {now.note}: " + ", ".join(
            f"{k}={v}" for k, v in now.values.items()))
    except ImportError:  # a deqbench without calibration
        pass
    return info


#: Environment variables that pin every library's threads (set by ``--threads``).
THREAD_ENV = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "XLA_FLAGS", "DEQBENCH_PEERS_THREADS")
