"""docs/theory.md is in the repository and every citation of it names a section it has."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "theory.md"
CITE = re.compile(r"docs/theory\.md((?:[ ,\-]*(?:and )?§\d+)*)")


def _tracked(*patterns):
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return [ROOT / f for f in out if not f.startswith("results/")] or sorted(
        p for pat in patterns for p in ROOT.rglob(pat) if ".git" not in p.parts)


def _sources():
    return _tracked("*.py", "*.md", "*.toml")


def sections() -> set[int]:
    return {int(s) for s in re.findall(r"^## §(\d+) ", DOC.read_text(), flags=re.M)}


def cited(text: str) -> list[int]:
    out = []
    for group in CITE.findall(text):
        for a, b in re.findall(r"§(\d+)(?:-§(\d+))?", group):
            out.extend(range(int(a), int(b or a) + 1))
    return out


def test_sections_are_numbered_one_to_n():
    s = sections()
    assert s == set(range(1, max(s) + 1)) and len(s) >= 8


def test_every_cited_section_exists():
    have = sections()
    missing = {}
    n_cites = 0
    for path in _sources():
        c = cited(path.read_text())
        n_cites += len(c)
        bad = sorted(set(c) - have)
        if bad:
            missing[str(path.relative_to(ROOT))] = bad
    assert not missing, f"cited sections not in docs/theory.md: {missing}"
    assert n_cites > 50  # the citations are found at all


def test_no_citation_of_a_file_outside_the_repository():
    stale = [str(p.relative_to(ROOT)) for p in _sources()
             if "THEORY" + ".md" in p.read_text()]
    assert not stale


def test_cited_parses_ranges_and_lists():
    assert cited("see docs/theory.md §3 and §5-§7, and docs/theory.md §8.") == [3, 5, 6, 7, 8]
    assert cited("docs/theory.md §3, §5 and §7") == [3, 5, 7]


# --------------------------------------------------------------------------
# the README is the front door; the rest lives in docs/ pages and CHANGELOG.md
# --------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PAGES = ("theory", "training", "precision", "large-data", "sweeps", "benchmarks",
         "performance")


def broken_links(path: Path) -> list[str]:
    """Relative link targets in the Markdown file ``path`` that do not exist."""
    out = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        if not (path.parent / target).exists():
            out.append(target)
    return out


def test_readme_is_the_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for section in ("## Set-up on a fresh machine", "## Ten lines of Python", "## Concepts",
                    "## Where to read on"):
        assert section in text, section
    for page in PAGES:  # every page is linked from the README
        assert f"(docs/{page}.md)" in text, page
        assert (ROOT / "docs" / f"{page}.md").is_file(), page
    assert "(CHANGELOG.md)" in text and (ROOT / "CHANGELOG.md").is_file()


def test_links_of_the_readme_and_the_docs_resolve():
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "results" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
    broken = {str(p.relative_to(ROOT)): b for p in pages if (b := broken_links(p))}
    assert not broken, broken


def test_broken_links_are_found(tmp_path):
    page = tmp_path / "p.md"
    (tmp_path / "there.md").write_text("")
    page.write_text("[a](there.md) [b](missing.md#x) [c](https://x.org/y) [d](there.md#s)")
    assert broken_links(page) == ["missing.md"]
