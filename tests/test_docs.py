"""The documentation stays short where it is read first, and points at things that exist.

The README is the page a new user reads: it stays under 12,000 characters, and the details live
in docs/*.md, each linked from it. Every relative link and every repository path quoted in the
docs must name a file that is there (a renamed module or test is caught here), and the exit
statuses are listed in one place only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_CHARS = 12_000
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *DOCS]

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_QUOTED_PATH = re.compile(r"`((?:x3d|worker|cluster|jobs|bench|tests|docs|\.ci)/[\w./-]*|submit\.py|pyproject\.toml)(?:::\w+)?`")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to '-'."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_short():
    size = len((ROOT / "README.md").read_text())
    assert size <= README_MAX_CHARS, f"README.md is {size} characters; move details to docs/*.md"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    orphans = [_rel(page) for page in DOCS if f"]({_rel(page)})" not in readme]
    assert not orphans, f"not linked from README.md: {orphans}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert not broken, f"{_rel(page)}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_quoted_repository_paths_exist(page):
    missing = sorted({p for p in _QUOTED_PATH.findall(page.read_text()) if not (ROOT / p).exists()})
    assert not missing, f"{_rel(page)} names paths that are not in the repository: {missing}"


def test_exit_statuses_are_listed_in_one_place():
    listed = [_rel(page) for page in PAGES if re.search(r"^\| 130, 143 \|", page.read_text(), flags=re.M)]
    assert listed == ["docs/exit-codes.md"], listed
    linked_from = [_rel(page) for page in PAGES if "exit-codes.md" in page.read_text()]
    assert "README.md" in linked_from
