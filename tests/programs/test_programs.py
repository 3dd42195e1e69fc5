"""The command-line programs live in takane_kernels.programs, apart from the library: no
library module imports them, and ``python -m takane_kernels`` still reaches every program."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import takane_kernels as tk

pytestmark = pytest.mark.slow  # a program or a training run: deselect with -m 'not slow'

PKG = pathlib.Path(tk.__file__).resolve().parent
PROGRAMS = {"takane_kernels.programs"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("takane_kernels" if node.level else "") + ("." + node.module if node.module and node.level
                                                               else node.module or "")
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_library_modules_import_no_program():
    library = [p for p in PKG.glob("*.py") if p.name != "__main__.py"]
    assert len(library) > 10
    for path in library:
        bad = {name for name in _imports(path) if any(name == p or name.startswith(p + ".") for p in PROGRAMS)}
        assert not bad, f"{path.name} imports {sorted(bad)}"
    # and importing the whole public API loads no program module
    code = ("import sys, takane_kernels, takane_kernels.reference, takane_kernels.isa; "
            "print([m for m in sys.modules if m.startswith('takane_kernels.programs')])")
    cmd = [sys.executable, "-c", code]
    emulator = os.environ.get("TAKANE_TEST_EMULATOR")
    out = subprocess.run(([emulator] if emulator else []) + cmd, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_program_is_reachable_from_the_package_main():
    emulator = os.environ.get("TAKANE_TEST_EMULATOR")
    for program in ("demo", "llm", "lm"):
        cmd = [sys.executable, "-m", "takane_kernels", program, "--help"]
        out = subprocess.run(([emulator] if emulator else []) + cmd, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("usage:") and program in out.stdout.splitlines()[0], out.stdout[:200]
