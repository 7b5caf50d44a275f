"""docs/extending.md stays true to the code it walks through."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
SOURCE = re.compile(r"^# ((?:fedsk|tests|party_server)/[\w/]+\.py)$")


def excerpts():
    for block in BLOCK.findall(DOC.read_text()):
        first, _, body = block.partition("\n")
        m = SOURCE.match(first)
        if m:
            yield m.group(1), body


@pytest.mark.parametrize(("path", "body"), list(excerpts()))
def test_excerpt_is_copied_from_the_code(path, body):
    """Each excerpt's pieces (cut at lines of '...') appear in the file, in order."""
    text = (ROOT / path).read_text()
    pos = 0
    chunks = re.split(r"^\s*\.\.\.\n", body, flags=re.M)
    for chunk in chunks:
        chunk = chunk.rstrip("\n")
        found = text.find(chunk, pos)
        assert found >= 0, f"{path}: this excerpt is not in the code:\n{chunk}"
        pos = found + len(chunk)


def test_has_excerpts_and_named_files_exist():
    assert len(list(excerpts())) >= 10
    named = set(
        re.findall(r"\b((?:fedsk|tests|party_server|docs)/[\w/]+\.(?:py|md))", DOC.read_text())
    )
    missing = [p for p in sorted(named) if not (ROOT / p).exists()]
    assert not missing, f"docs/extending.md names files that do not exist: {missing}"
