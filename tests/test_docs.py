"""The README and docs/ stand alone for a user who clones the repository: every relative link and
image in them resolves to a file of the checkout, and none leads outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    return [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_checkout(page):
    for target in relative_links(page):
        path = (page.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{page.name}: link {target!r} leads outside the repository"
        assert path.exists(), f"{page.name}: link {target!r} names no file of the repository"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_names_the_development_machines_folders(page):
    text = page.read_text()
    assert "../shared" not in text and "/work/" not in text, f"{page.name} names a folder outside the repository"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("see [a](missing.md) and ![b](img.png), [web](https://example.org), [top](#top)\n```\n[c](no.md)\n```\n")
    assert relative_links(page) == ["missing.md", "img.png"]
