"""Every citation of bench/RESULTS.md names a section that is there.

Comments and docs state what is true and why; the measured figure behind a claim lives in
bench/RESULTS.md, and the comment cites its section: ``(bench/RESULTS.md, "<section title or a
unique prefix of it>")``. A citation is a mention of bench/RESULTS.md (bare or as a Markdown
link) followed, within a few words, by a quoted title; it resolves when the quoted text is a
case-insensitive substring of one of RESULTS.md's headings (``#``, ``##``, ``###``, outside code
fences). A renamed section, or a figure cited to the whole file, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt"}

#: Mentions that point at the whole file on purpose (the file's index entry, the page on how
#: measurements are taken), told by a phrase within 200 characters of the mention.
WHOLE_FILE = {
    "README.md": ("every measurement",),
    "docs/benchmark.md": ("Measurements taken with it",),
}

_MENTION = re.compile(r"\[[^\]]*\]\(([^)\s]*bench/RESULTS\.md[^)\s]*)\)|bench/RESULTS\.md")
_SECTION = re.compile(r'[^".]{0,40}?"([^"]+)"')


def _sources() -> list[Path]:
    files = [ROOT / "submit.py", ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
    for package in ("x3d", "worker", "cluster", "jobs"):
        files += sorted(p for p in (ROOT / package).rglob("*")
                        if p.is_file() and (p.suffix in SUFFIXES or p.name == "Dockerfile"))
    return files


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def headings(text: str) -> list[str]:
    """RESULTS.md's headings of every level, leaving out '#' lines inside code fences."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,3} (.+)", line)):
            found.append(m.group(1).strip())
    return found


def _flat(text: str) -> str:
    """One line: comment markers at line starts dropped, so a citation wrapped over lines reads whole."""
    text = re.sub(r"\n[ \t]*(?:#:?|//|\*)?[ \t]*", " ", text)
    return re.sub(r"[ \t]+", " ", text)


def citations(rel: str, text: str) -> list[tuple[str, str | None]]:
    """(what follows the mention, the section it names or None) for each mention of RESULTS.md."""
    flat, found = _flat(text), []
    for m in _MENTION.finditer(flat):
        if m.group(1) and "#" in m.group(1):
            continue  # a link to an anchor: tests/test_docs.py checks it resolves
        before, after = flat[max(0, m.start() - 200):m.start()], flat[m.end():m.end() + 200]
        if any(phrase in before + after for phrase in WHOLE_FILE.get(rel, ())):
            continue
        section = _SECTION.match(after)
        found.append((after[:60], section.group(1) if section else None))
    return found


def problems(rel: str, text: str, titles: list[str]) -> list[str]:
    lowered = [t.lower() for t in titles]
    bad = []
    for context, section in citations(rel, text):
        if section is None:
            bad.append(f'{rel}: cites bench/RESULTS.md without a section: "...RESULTS.md{context}"')
        elif not any(section.lower() in t for t in lowered):
            bad.append(f'{rel}: cites bench/RESULTS.md, "{section}": no such section')
    return bad


def test_the_checker_tells_good_citations_from_bad():
    titles = ["Driver CPU per video: calls of two groups, a longer wake-up (issue 23) — 2026-12-05",
              "Decode workers without torch — 2026-11-25"]
    good = ('# costs ~2 s (bench/RESULTS.md, "Decode workers\n    # without torch").\n'
            '[bench/RESULTS.md](../bench/RESULTS.md) ("driver cpu per video: calls")\n')
    assert problems("x.py", good, titles) == []
    no_section = "# 3.1x the videos/s (bench/RESULTS.md).\n"
    wrong = '#: ~10% less (bench/RESULTS.md, "calls of three groups").\n'
    assert len(problems("x.py", no_section, titles)) == 1
    assert "no such section" in problems("x.py", wrong, titles)[0]
    assert len(headings("```\n# not a heading\n```\n## Real\n")) == 1


def test_results_has_headings():
    assert len(headings(RESULTS.read_text())) > 10


@pytest.mark.parametrize("path", _sources(), ids=_rel)
def test_every_citation_names_a_section_of_results(path):
    titles = headings(RESULTS.read_text())
    bad = problems(_rel(path), path.read_text(errors="replace"), titles)
    assert not bad, "\n".join(bad)
