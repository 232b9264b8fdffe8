"""Compiled kernels are cached per version of the kernel sources (deqbench/_jit.py)."""

import gc
import importlib.util
import os
import sys
import time

import pytest

from deqbench import _jit
from deqbench._jit import KernelCacheLocator, jit, kernel_digest, prune_caches


def _tree(tmp_path):
    (tmp_path / "_kernels").mkdir()
    (tmp_path / "_jit.py").write_text("a")
    (tmp_path / "activations.py").write_text("b")
    (tmp_path / "_kernels" / "fixed_point.py").write_text("c")
    (tmp_path / "cli.py").write_text("not a kernel module")
    return tmp_path


def test_digest_follows_the_kernel_sources_only(tmp_path):
    pkg = _tree(tmp_path)
    d0 = kernel_digest(pkg)
    (pkg / "cli.py").write_text("edited")
    assert kernel_digest(pkg) == d0
    os.utime(pkg / "_kernels" / "fixed_point.py", (1, 1))  # a reinstall's new file times
    assert kernel_digest(pkg) == d0
    (pkg / "_kernels" / "fixed_point.py").write_text("c, edited")
    d1 = kernel_digest(pkg)
    assert d1 != d0
    (pkg / "_kernels" / "fixed_point.py").write_text("c")
    assert kernel_digest(pkg) == d0


def test_prune_keeps_the_most_recent_and_the_current(tmp_path):
    now = time.time()
    for i, name in enumerate("abcdef"):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (now - 100 * i, now - 100 * i))  # a newest, f oldest
    prune_caches(tmp_path, keep=3, current="f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "f"]


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package folder with one module, the locator pointed at it."""
    pkg = tmp_path / "pkg"
    (pkg / "_kernels").mkdir(parents=True)
    src = pkg / "_kernels" / "mod.py"
    src.write_text("def f(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location("deqbench_cache_probe", src)
    mod = importlib.util.module_from_spec(spec)
    # importable by name, as a real module is: a kernel loaded from the cache
    # rebuilds its environment by importing its module
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(KernelCacheLocator, "package", pkg)
    monkeypatch.setattr(KernelCacheLocator, "root", tmp_path / "cache")
    return mod, src, tmp_path / "cache"


def _compile(mod):
    """A fresh dispatcher (a new process would make one): ``(hits, misses)``."""
    gc.collect()  # no environment of an earlier compilation left alive to reuse
    d = jit(mod.f)
    assert d(1) == 2
    return sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values())


def test_two_versions_keep_their_kernels_side_by_side(package, monkeypatch):
    mod, src, root = package
    monkeypatch.setattr(KernelCacheLocator, "digest", "a" * 64)
    assert _compile(mod) == (0, 1)
    assert _compile(mod) == (1, 0)
    assert (root / ("a" * 20) / "_kernels").is_dir()
    monkeypatch.setattr(KernelCacheLocator, "digest", "b" * 64)  # another kernel source
    assert _compile(mod) == (0, 1)  # never the kernel compiled against version a
    monkeypatch.setattr(KernelCacheLocator, "digest", "a" * 64)  # back: a gate's next round
    assert _compile(mod) == (1, 0)
    os.utime(src, (1, 1))  # reinstalled, same sources: file times play no part
    assert _compile(mod) == (1, 0)


def test_functions_outside_the_package_use_numbas_locators(tmp_path, monkeypatch):
    monkeypatch.setattr(KernelCacheLocator, "package", tmp_path / "elsewhere")
    monkeypatch.setattr(KernelCacheLocator, "root", tmp_path / "cache")
    assert KernelCacheLocator.from_function(_compile, __file__) is None


def test_the_package_installs_its_locator():
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    assert impl._locator_classes[0] is KernelCacheLocator
    assert KernelCacheLocator.digest == kernel_digest()
    assert KernelCacheLocator.root == _jit.cache_root()


_ONE_SPECIALISATION = r"""
import collections, json
from numba import types
from numba.core import event

seen = collections.defaultdict(list)


class Listener(event.Listener):
    def on_start(self, ev):
        disp = ev.data["dispatcher"]
        if disp.py_func.__module__.startswith("deqbench"):
            seen[disp.py_func.__qualname__].append(tuple(ev.data["args"]))

    def on_end(self, ev):
        pass


event.register("numba:compile", Listener())
import deqbench as db

X, Y, _ = db.data.linear_teacher(n=64, d=4, m=4, seed=0)
A, B = db.data.init_params(4, 4, scale_A=0.5, scale_B=1.0, seed=1)
db.loss_and_grad("linear", X, Y, A, B)
db.fixed_point(X, A, B, method="anderson")
twice = {name: [str(a) for a in sigs] for name, sigs in seen.items()
         if len({tuple(types.unliteral(t) for t in s) for s in sigs}) < len(sigs)}
print(json.dumps({"compiled": sorted(seen), "twice": twice}))
"""


def test_no_kernel_compiles_twice_for_a_literal(tmp_path):
    """A kernel called from a kernel with an integer constant (``f(..., 0)``, or a
    loop counter that starts at ``0``, which type inference first sees as the
    constant) compiles a ``Literal[int](0)`` specialisation besides the
    ``int64`` one: Picard's parallel round and its history were compiled twice
    each (``j0 = 0``), Anderson's stopping rule twice (``k = 0``). Cold, in a
    fresh interpreter with an empty kernel cache (a warm one would type
    nothing), no kernel may have two specialisations that differ only in
    literal arguments."""
    import json
    import subprocess

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _ONE_SPECIALISATION], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "_picard_lane" in report["compiled"] and "anderson" in report["compiled"]
    assert report["twice"] == {}
