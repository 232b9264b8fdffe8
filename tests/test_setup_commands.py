"""What a newcomer runs is what CI runs: the README's set-up commands, ``.ci/run``
and the extras agree; the checks of the asv suite that CI needs run here; no file
of the repository points outside it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
VENV = "python3 -m venv .venv && . .venv/bin/activate && pip install -e "


def setup_commands(readme: str) -> dict[str, str]:
    """``{"main": ..., "test": ...}``: the bash blocks of the README's set-up section."""
    m = re.search(r"^## Set-up on a fresh machine\n(.*?)(?=^## )", readme, flags=re.M | re.S)
    assert m, "README.md has no '## Set-up on a fresh machine' section"
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", m.group(1), flags=re.S)]
    assert len(blocks) == 2 and all("\n" not in b for b in blocks), blocks
    main, test = blocks
    assert "pytest" in test and "pytest" not in main
    return {"main": main, "test": test}


def ci_commands(script: str) -> list[str]:
    """The lines of ``.ci/run`` that install or run anything (comments dropped)."""
    words = re.compile(r"\b(pip|pytest|asv|python3?|venv|conda|uv|apt(-get)?)\b"
                       r"|(?:^|[;&|(]\s*)deqbench\s")
    lines = [ln.split("#", 1)[0].strip() if not ln.lstrip().startswith("#") else ""
             for ln in script.splitlines()]
    return [ln for ln in lines if words.search(ln)]


def extras(command: str) -> list[str]:
    """The extras a ``pip install -e ".[a,b]"`` installs."""
    m = re.search(r'pip install -e "?\.(?:\[([^\]]*)\])?"?', command)
    assert m, command
    return [e.strip() for e in (m.group(1) or "").split(",") if e.strip()]


def test_ci_runs_the_readme_test_command_and_nothing_else():
    readme = (ROOT / "README.md").read_text()
    cmds = setup_commands(readme)
    ci = ci_commands((ROOT / ".ci" / "run").read_text())
    assert ci == [cmds["test"]], (
        f".ci/run must run exactly the README's test command {cmds['test']!r}, "
        f"and install or run nothing else; it has {ci!r}")


def test_the_two_set_up_commands():
    cmds = setup_commands((ROOT / "README.md").read_text())
    assert cmds["main"] == f"{VENV}. && deqbench reproduce --quick"
    assert cmds["test"].startswith(VENV) and cmds["test"].endswith("&& python -m pytest -q")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = declared["optional-dependencies"]
    names = extras(cmds["test"])
    assert names and set(names) <= set(optional), (names, sorted(optional))
    installed = " ".join(r for n in names for r in optional[n])
    # what the suite runs beyond the package: pytest, hypothesis, asv (the gate's dry
    # runs and `asv check`), dask (the cluster test)
    for need in ("pytest", "hypothesis", "asv", "virtualenv", "dask"):
        assert re.search(rf"\b{need}\b", installed), (need, names)


def test_parsers_see_a_disagreement():
    readme = ("## Set-up on a fresh machine\n\n```bash\nA && deqbench reproduce\n```\n\n"
              "```bash\nB && python -m pytest -q\n```\n\n## Next\n")
    assert setup_commands(readme) == {"main": "A && deqbench reproduce",
                                      "test": "B && python -m pytest -q"}
    script = ("#!/bin/bash\nset -e\n# pip install nothing: a comment\ncd x/deqbench\n"
              "python -m pip install asv\nB && python -m pytest -q  # the command\n"
              "deqbench reproduce --quick\n")
    assert ci_commands(script) == ["python -m pip install asv", "B && python -m pytest -q",
                                   "deqbench reproduce --quick"]
    assert extras('pip install -e ".[test,dask]"') == ["test", "dask"]
    assert extras("pip install -e .") == []


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    files = [ROOT / f for f in out.stdout.split()] if out.returncode == 0 else []
    if not files:  # not a git checkout (an sdist): every file
        files = [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts
                 and "__pycache__" not in p.parts and ".venv" not in p.parts]
    return [f for f in files if f.is_file()]


# built so that this file does not name them itself
OUTSIDE = ["../" + "shared", "/" + "work/", "farm-" + "studio"]


CLIMB = re.compile(r"(?<![\w.])(?:\.\./)+[\w.-]*")


def outside_paths(text: str, path: Path) -> list[str]:
    """The paths outside the repository that ``text`` (of the file ``path``) names."""
    found = [needle for needle in OUTSIDE if needle in text]
    for m in CLIMB.finditer(text):
        if not (path.parent / m.group(0)).resolve().is_relative_to(ROOT):
            found.append(m.group(0))
    return found


def test_no_file_names_a_path_outside_the_repository():
    """No committed file sends the reader to a path outside the repository: no
    helper tools of the machine it was written on, no relative path climbing out."""
    bad = {}
    for path in _tracked():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        found = outside_paths(text, path)
        if found:
            bad[str(path.relative_to(ROOT))] = found
    assert not bad, f"paths outside the repository: {bad}"


def test_the_outside_path_check_can_fail():
    readme, page = ROOT / "README.md", ROOT / "docs" / "page.md"
    assert outside_paths("time it with " + OUTSIDE[0] + "/tools/quiet", readme) == [
        OUTSIDE[0], "../" + "shared"]
    assert outside_paths("see " + OUTSIDE[1] + "exp/x.py", readme) == [OUTSIDE[1]]
    climb = "../" * 2 + "elsewhere.md"  # (built: this file must not name it)
    assert outside_paths(f"[x]({climb})", page) == [climb]
    assert outside_paths("[x](../results/README.md) and ../README.md", page) == []


# --------------------------------------------------------------------------
# the asv suite (what .ci/run ran by itself before; a broken benchmark fails CI)
# --------------------------------------------------------------------------


def _asv(*args, home, timeout=900):
    env = dict(os.environ, HOME=str(home))  # asv's machine file, not the user's
    env.setdefault("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env["PYTHONPATH"]) if p)
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_asv_suite_loads_and_runs(tmp_path):
    """``asv check``: the configuration and every benchmark load; a quick dry run of a
    cheap subset against the installed package runs their setups and bodies."""
    pytest.importorskip("asv", reason="the asv checks need asv (the test extra installs it)")
    res = _asv("check", "--python=same", home=tmp_path)
    assert res.returncode == 0 and "No problems found" in res.stdout, res.stdout + res.stderr
    res = _asv("machine", "--yes", "--machine", "ci", home=tmp_path)
    assert res.returncode == 0, res.stderr
    bench = r"FixedPointContraction|NeumannTerms|StepMemory|GDStep\."
    res = _asv("run", "--python=same", "--quick", "--dry-run", "--machine", "ci",
               "--show-stderr", "--bench", bench, home=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "failed" not in out.lower(), out[-4000:]
    for name in ("FixedPointContraction", "NeumannTerms", "StepMemory", "GDStep"):
        assert name in out, name
