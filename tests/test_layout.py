"""The layout rules a newcomer relies on (README "Layout"): rooms with a docstring saying what they hold,
few loose engine modules, no module named like the standard library's, no module too long to read."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for top in ("engine", "tui") for p in (ROOT / top).rglob("*.py"))
MAX_TOP_LEVEL_ENGINE_MODULES = 6  # beside the subpackages: hardware, demo, testing and __init__ today
MAX_LINES = 450  # "about 400": a module longer than this holds more than one concern


def test_no_module_is_named_like_a_standard_library_module():
    # engine/tokenize.py once shadowed `tokenize`: with engine/ on sys.path, linecache broke
    shadowing = [str(p.relative_to(ROOT)) for p in MODULES if p.stem in sys.stdlib_module_names]
    assert shadowing == []


def test_every_package_says_what_belongs_in_it():
    packages = [p for p in MODULES if p.name == "__init__.py"]
    assert len(packages) >= 10
    undocumented = [str(p.relative_to(ROOT)) for p in packages if not ast.get_docstring(ast.parse(p.read_text()))]
    assert undocumented == []


def test_engine_keeps_its_loose_modules_few():
    loose = sorted(p.name for p in (ROOT / "engine").glob("*.py"))
    assert len(loose) <= MAX_TOP_LEVEL_ENGINE_MODULES, loose


def test_no_module_is_too_long_to_read():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
