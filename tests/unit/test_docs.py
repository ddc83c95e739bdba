"""The docs stay true to the code: excerpts of the example services are verbatim, and every
page the README links to exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# <!-- example: integrations/... --> right before a fenced block marks that block as an excerpt.
EXCERPT = re.compile(r"<!-- example: (?P<path>\S+) -->\n```[a-z]*\n(?P<code>.*?)\n```", re.DOTALL)
PAGES = sorted((ROOT / "docs").glob("*.md"))


def _excerpts() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for match in EXCERPT.finditer(page.read_text()):
            found.append((page.name, match["path"], match["code"]))
    return found


@pytest.mark.parametrize(("page", "path", "code"), _excerpts())
def test_example_excerpts_are_verbatim(page: str, path: str, code: str) -> None:
    source = (ROOT / path).read_text()
    assert code in source, f"{page}: an excerpt of {path} no longer matches the file"


def test_the_example_pages_quote_the_examples() -> None:
    quoted = {path for _, path, _ in _excerpts()}
    for example in sorted((ROOT / "integrations").glob("catalog_*/*_catalog.py")):
        assert str(example.relative_to(ROOT)) in quoted, f"no docs page quotes {example}"


def test_readme_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|integrations)/[^)#]+)", readme):
        assert (ROOT / target).exists(), f"README links to a missing {target}"
