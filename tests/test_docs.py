"""The documentation stands alone: the files it links to or names are files of the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/results/*.md")])
SOURCES = sorted([*ROOT.glob("src/softdistill/**/*.py"), *ROOT.glob("benchmarks/*.py")])  # tests name scratch files
MARKDOWN_FILES = {p.name for p in ROOT.rglob("*.md") if ".git" not in p.parts}
WRITTEN = re.compile(r"(table|report)\.md|.*\.generated\.md")  # what compare, inspect and benchmarks write


def _inside(page: Path, target: str) -> bool:
    path = (page.parent / target).resolve()
    return path.is_relative_to(ROOT.resolve()) and path.exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(page):
    targets = re.findall(r"\]\(([^)#\s]+)", page.read_text())
    broken = [t for t in targets if not re.match(r"[a-z]+:", t) and not _inside(page, t)]  # not http:, mailto:
    assert not broken, f"{page.name} links to {broken}"


@pytest.mark.parametrize("path", PAGES + SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_markdown_files_exist_in_the_repository(path):
    named = set(re.findall(r"[\w./-]*[A-Za-z]\.md\b", path.read_text()))
    missing = sorted(n for n in named if Path(n).name not in MARKDOWN_FILES and not WRITTEN.fullmatch(Path(n).name))
    assert not missing, f"{path.relative_to(ROOT)} names {missing}, which the repository does not hold"


def table_rows_outside_tables(text: str) -> list[int]:
    """Line numbers of table rows (``| ...``) that no table holds: a row after a paragraph line
    rather than after a header and its ``|---|`` line or another row renders as plain text."""
    lines, stray, fenced = text.splitlines(), [], False
    for number, line in enumerate(lines, start=1):
        fenced ^= line.startswith("```")
        if fenced or not line.startswith("|"):
            continue
        previous = lines[number - 2] if number > 1 else ""
        following = lines[number] if number < len(lines) else ""
        if not previous.startswith("|") and not re.match(r"\|\s*:?-", following):
            stray.append(number)
    return stray


def test_a_paragraph_inside_a_table_is_found():
    table = "| key | meaning |\n|---|---|\n| a | b |\n"
    assert table_rows_outside_tables(table + "\n" + table) == []
    assert table_rows_outside_tables(table + "a paragraph\n| c | d |\n") == [5]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_tables_are_not_broken_by_paragraphs(page):
    assert not table_rows_outside_tables(page.read_text()), f"{page.name}: rows outside a table (a paragraph above?)"
