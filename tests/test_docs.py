"""The study guide in docs/ runs as written (so it cannot rot).

Every ```python block of a chapter runs here, in order, in one namespace per
chapter: a chapter reads top to bottom like one script, and its ``assert``
lines check what its text claims.  A block fenced ```py is an illustration
and is not run.  A failing block is reported with its chapter and the line
number in the Markdown file.

Also checked: the index links every chapter, each chapter ends with its
"Read in the source" pointers, every relative link and image resolves, and
the figure script draws exactly the figures the chapters show (a quick smoke
run, when matplotlib is installed).
"""

import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHAPTERS = sorted(DOCS.glob("[0-9][0-9]-*.md"))
INDEX = DOCS / "README.md"

_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", flags=re.S | re.M)  # also inside list items
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) for each ```python block."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(2)) + 1, textwrap.dedent(m.group(2)))
            for m in _BLOCK.finditer(text)]


def test_there_are_eleven_chapters():
    assert len(CHAPTERS) == 11, [c.name for c in CHAPTERS]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_code_runs(chapter):
    blocks = python_blocks(chapter)
    assert blocks, f"{chapter.name} has no ```python block"
    namespace = {"__name__": f"docs_{chapter.stem.replace('-', '_')}"}
    for first_line, code in blocks:
        # padded so that a traceback's line number is the line in the .md file
        source = "\n" * (first_line - 1) + code
        exec(compile(source, str(chapter.relative_to(ROOT)), "exec"), namespace)


def test_index_links_every_chapter():
    text = INDEX.read_text(encoding="utf-8")
    linked = {target for target in _LINK.findall(text)}
    missing = [c.name for c in CHAPTERS if c.name not in linked]
    assert not missing, f"docs/README.md does not link {missing}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_ends_with_read_in_the_source(chapter):
    text = chapter.read_text(encoding="utf-8")
    last = text.rsplit("\n## ", 1)[-1]
    assert last.lower().startswith("read in the source"), \
        f"{chapter.name}: the last section must be 'Read in the source'"
    assert "../numtransformer/" in last, f"{chapter.name}: no pointer into the package"


@pytest.mark.parametrize("page", [INDEX, *CHAPTERS], ids=lambda p: p.stem)
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def _figures_shown() -> set[str]:
    shown = set()
    for page in [INDEX, *CHAPTERS]:
        shown |= {pathlib.Path(t).name for t in _LINK.findall(page.read_text(encoding="utf-8"))
                  if t.startswith("figures/") and t.endswith(".png")}
    return shown


def test_every_committed_figure_is_shown():
    committed = {p.name for p in (DOCS / "figures").glob("*.png")}
    assert committed == _figures_shown()


def test_figure_script_draws_every_figure(tmp_path):
    pytest.importorskip("matplotlib")
    proc = subprocess.run([sys.executable, str(DOCS / "make_figures.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    drawn = {p.name for p in tmp_path.glob("*.png")}
    assert drawn == _figures_shown()
