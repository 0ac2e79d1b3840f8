"""Every ```python block of README.md runs as written, each in a fresh namespace with a temporary folder as cwd."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line of the block's first code line, code)`` for every fenced ```python block, in order."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_its_python_blocks():
    # Guards the parametrisation below: a README whose fences the pattern misses must not pass by running nothing.
    fences = len(re.findall(r"^```python", README.read_text(encoding="utf-8"), flags=re.MULTILINE))
    assert len(BLOCKS) == fences >= 5


def test_the_extractor_finds_blocks_and_their_lines():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = 2\nz = 3\n")]


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # whatever the block writes (logs, data) lands in the temporary folder
    # Compiled at its own line of README.md, so a traceback points at the README line that broke.
    compiled = compile("\n" * (line - 1) + code, str(README), "exec")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's hints about workers and logging intervals
        exec(compiled, {"__name__": "__readme__"})
