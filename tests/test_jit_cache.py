"""The package drops its cached kernels when any kernel source changes."""

from deqbench._jit import _drop_stale_cache


def _tree(tmp_path):
    (tmp_path / "_kernels" / "__pycache__").mkdir(parents=True)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "_jit.py").write_text("a")
    (tmp_path / "activations.py").write_text("b")
    (tmp_path / "_kernels" / "fixed_point.py").write_text("c")
    (tmp_path / "cli.py").write_text("not a kernel module")
    return tmp_path


def _cached(tmp_path):
    files = [tmp_path / "_kernels" / "__pycache__" / "fp.evaluate-1.py311.nbi",
             tmp_path / "_kernels" / "__pycache__" / "fp.evaluate-1.py311.1.nbc",
             tmp_path / "__pycache__" / "activations._apply-3.py311.nbi"]
    for f in files:
        f.write_text("x")
    return files


def test_cache_survives_until_a_kernel_source_changes(tmp_path):
    pkg = _tree(tmp_path)
    _drop_stale_cache(pkg)  # first import: no stamp yet
    files = _cached(pkg)
    _drop_stale_cache(pkg)
    assert all(f.exists() for f in files)
    (pkg / "cli.py").write_text("edited")  # not a kernel module: cache kept
    _drop_stale_cache(pkg)
    assert all(f.exists() for f in files)
    (pkg / "_kernels" / "fixed_point.py").write_text("c, edited")
    _drop_stale_cache(pkg)
    assert not any(f.exists() for f in files)
    files = _cached(pkg)
    _drop_stale_cache(pkg)
    assert all(f.exists() for f in files)
