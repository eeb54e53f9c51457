"""The README's Python examples run, and print what the README shows.

A ```python block with ``>>>`` lines is a doctest (each output line is checked); any other block is executed.
Each block runs on its own (its own imports, a fresh namespace, seed 0). A block right after the HTML comment
``<!-- readme-test: skip (REASON) -->`` is skipped: those download weights or need the reader's files.
"""

import doctest
import re
from pathlib import Path

import pytest
import torch

from deformvision.recipes import list_recipes

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCK = re.compile(r"(?:<!-- readme-test: skip \((?P<reason>[^)]*)\) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL)
BLOCKS = [
    (TEXT.count("\n", 0, match.start("code")) + 1, match["code"], match["reason"]) for match in BLOCK.finditer(TEXT)
]


def test_the_readme_has_examples_and_few_skipped_ones():
    skipped = [reason for _, _, reason in BLOCKS if reason is not None]
    assert len(BLOCKS) >= 8 and len(skipped) <= 4, skipped
    assert all(reason.strip() for reason in skipped)
    assert TEXT.count("<!-- readme-test: skip") == len(skipped)  # no marker that misses its block


@pytest.mark.parametrize(("line", "code", "reason"), BLOCKS, ids=[f"line{line}" for line, _, _ in BLOCKS])
def test_readme_block(line, code, reason):
    if reason is not None:
        pytest.skip(reason)
    torch.manual_seed(0)
    name = f"README.md:{line}"
    if ">>>" not in code:
        exec(compile(code, name, "exec"), {})
        return
    test = doctest.DocTestParser().get_doctest(code, {}, name, str(README), line - 1)
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    with torch.no_grad():
        result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)


def test_readme_commands_name_shipped_recipes():
    """Every `deformvision train|eval NAME` of the README names a recipe (or is a placeholder or a file)."""
    named = re.findall(r"deformvision(?:\.cli)? (?:train|eval|recipes) ([a-z0-9_]+)\b(?!\.yaml)", TEXT)
    assert "dat_digits" in named
    assert set(named) - {"CONFIG"} <= set(list_recipes()), set(named) - set(list_recipes())
    assert "configs/" not in TEXT  # the recipes left the checkout's configs/ folder
