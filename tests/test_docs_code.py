"""Every ```python block of README.md and docs/ runs, so the docs cannot drift from the code.

A page's blocks run in order in one namespace, as a reader pastes them, in a
fresh temporary folder. Two HTML comments, invisible on the rendered page,
say what a block needs:

- ``<!-- skip: why -->`` right before a block: it cannot run here (network,
  a GPU, long training), and the reason says why;
- ``<!-- setup: CODE -->`` runs CODE at that point: the stand-ins for what
  the prose calls "your models" or "your loaders", kept small so the page
  runs in seconds;
- ``<!-- excerpt: PATH -->`` right before a block: it quotes the file PATH
  (which its own test runs); each of its top-level pieces must be found
  there, indentation aside.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PIECE = re.compile(
    r"<!--\s*(?:skip:[^>]*|excerpt:[^>]*)-->\s*```python\n.*?```"  # a skipped or quoted block: not run
    r"|<!--\s*setup:(?P<setup>.*?)-->"
    r"|```python\n(?P<code>.*?)```",
    re.S,
)
PAGES = sorted(p for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")] if "```python" in p.read_text())


def pieces(page: Path) -> list[tuple[int, str]]:
    """The code a page runs, in order, with the line each piece starts on."""
    text = page.read_text()
    found = []
    for match in PIECE.finditer(text):
        code = match["setup"] if match["setup"] is not None else match["code"]
        if code is not None:
            found.append((text.count("\n", 0, match.start()) + 1, code))
    return found


def _lines(code: str) -> str:
    return "\n".join(line.strip() for line in code.strip().splitlines())


def test_excerpts_quote_their_files() -> None:
    quoted = re.compile(r"<!--\s*excerpt:\s*(\S+)\s*-->\s*```python\n(.*?)```", re.S)
    excerpts = [m for page in PAGES for m in quoted.finditer(page.read_text())]
    assert excerpts
    for match in excerpts:
        source = _lines((ROOT / match[1]).read_text())
        for piece in re.split(r"\n\s*\n\s*\n", match[2]):  # top-level definitions, two blank lines apart
            assert _lines(piece) in source, f"{match[1]} does not contain:\n{piece}"


def test_skips_are_few_and_give_reasons() -> None:
    texts = {page: page.read_text() for page in PAGES}
    skips = [m for text in texts.values() for m in re.finditer(r"<!--\s*skip:\s*(.*?)\s*-->", text, re.S)]
    assert all(m[1] for m in skips) and len(skips) <= 10, [m[1] for m in skips]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPTLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for line, code in pieces(page):
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)  # noqa: S102
