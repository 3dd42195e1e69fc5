"""The README's and the documentation pages' examples run as written (keeps the docs true).

Every ```python block of README.md and of docs/**/*.md runs, a page's blocks in order in one
namespace (a page may build on its earlier blocks), each page in a fresh working directory.
Blocks tagged ```python torch / ```python torch-qat need PyTorch: tests/test_torch.py and
tests/test_torch_qat.py run them.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(page: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def test_pages_found():
    if not (ROOT / "README.md").is_file():
        pytest.skip("README.md is not next to tests/ (installed-package run)")
    assert (ROOT / "docs" / "index.md").is_file(), "docs/ is missing"
    assert python_blocks(ROOT / "README.md"), "README has no python example"


@pytest.mark.parametrize("page", [p for p in PAGES if p.is_file() and python_blocks(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in python_blocks(page):
        exec(compile(code, str(page), "exec"), namespace)
