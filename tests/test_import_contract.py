"""DESIGN section 1, checked statically: the source of engine/ and tui/ is parsed with `ast`, never
imported, so the contract holds (and this test runs) on a machine without torch.

- engine/ never imports textual, rich or tui, anywhere (also inside functions);
- only the modules in HEAVY_MODULES import a heavy library; every other module is light;
- a light module's module-level imports, followed through other engine/tui modules' module-level
  imports, never reach a heavy module: importing any light module, the CLI or the app loads no torch;
- tui/ (app and CLI) never imports a heavy module or library anywhere: it runs them as subprocesses.

test_tui_imports.py checks the same at run time for the app's screens; this one covers every module,
every code path, and imports hidden inside functions.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from heavy_libraries import HEAVY_LIBRARIES

ROOT = Path(__file__).resolve().parents[1]
UI_LIBRARIES = ("textual", "rich", "tui")
# The modules allowed to import heavy libraries: each runs in its own process (or builds test models).
HEAVY_MODULES = ("engine.models.load", "engine.models.anatomy", "engine.training.worker", "engine.training.distributed",
                 "engine.training.plumbing", "engine.training.callback", "engine.training.checkpoints",
                 "engine.training.ranks", "engine.training.samples", "engine.training.recipes.*",
                 "engine.evaluation.run",
                 "engine.evaluation.sample_pairs", "engine.evaluation.preference",
                 "engine.chat.server", "engine.export.weights", "engine.export.verify", "engine.testing")

RULES = {
    "ui-in-engine": "engine/ never imports textual, rich or tui",
    "heavy-library-in-light-module": "only the modules in HEAVY_MODULES import torch & co.",
    "heavy-module-at-import": "a light module imports heavy modules only inside functions",
    "heavy-in-tui": "tui/ never imports a heavy module or library: run it as a subprocess",
    "stale-heavy-entry": "each HEAVY_MODULES entry names a module that imports something heavy",
}


@dataclass(frozen=True)
class Import:
    target: str  # a dotted name: a library or one of the tree's modules
    line: int
    at_import: bool  # runs when the module is imported (not inside a function)


def module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(name: str, is_package: bool, source: str, modules: set[str]) -> list[Import]:
    """Every import one module writes; `from package import module` counts as importing that module."""
    found: list[Import] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, child.lineno, at_import) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package this module is in
                    package = name.split(".")[: name.count(".") + 1 - child.level + is_package]
                    base = ".".join(package + ([base] if base else []))
                found.append(Import(base, child.lineno, at_import))
                found.extend(Import(f"{base}.{alias.name}", child.lineno, at_import) for alias in child.names
                             if f"{base}.{alias.name}" in modules)
            visit(child, at_import and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(source), True)
    return list(dict.fromkeys(found))


def runs(target: str) -> list[str]:
    """What importing a dotted name executes: `import a.b.c` runs a/__init__.py and a/b/__init__.py first."""
    parts = target.split(".")
    return [".".join(parts[:i + 1]) for i in range(len(parts))]


def loaded_at_import(name: str, imports: list[Import], modules: set[str]) -> set[str]:
    """The tree's modules that importing `name` runs directly: its parent package and its module-level imports."""
    targets = [name.rpartition(".")[0]] + [imp.target for imp in imports if imp.at_import]
    return {m for target in targets for m in runs(target) if m in modules}


def contract_violations(sources: dict[str, str], heavy_modules=HEAVY_MODULES) -> list[str]:
    """One line per broken rule: `path:line: rule: what`, for a tree given as {relative path: source}."""
    paths = {module_name(p): p for p in sources}
    modules = set(paths)
    imports = {m: imports_of(m, paths[m].endswith("__init__.py"), sources[paths[m]], modules) for m in modules}
    loaded_by = importers_at_import({m: loaded_at_import(m, imports[m], modules) for m in modules})

    def is_heavy_module(m: str) -> bool:
        return any(fnmatchcase(m, pattern) for pattern in heavy_modules)

    def library(target: str) -> str:
        return target.split(".")[0]

    problems = []
    for pattern in heavy_modules:
        matched = [m for m in sorted(modules) if fnmatchcase(m, pattern)]
        if not matched:
            problems.append(f"{pattern}: stale-heavy-entry: no such module; remove it from HEAVY_MODULES")
        for m in matched:
            if not any(library(i.target) in HEAVY_LIBRARIES or is_heavy_module(i.target) for i in imports[m]):
                problems.append(f"{paths[m]}: stale-heavy-entry: {m} imports nothing heavy; "
                                f"drop it from HEAVY_MODULES, it is light")

    for m in sorted(modules):
        room = library(m)
        for imp in imports[m]:
            where, heavy_library = f"{paths[m]}:{imp.line}", library(imp.target) in HEAVY_LIBRARIES
            if room == "engine" and library(imp.target) in UI_LIBRARIES:
                problems.append(f"{where}: ui-in-engine: {m} imports {imp.target}; {RULES['ui-in-engine']}")
            if room == "tui" and (heavy_library or is_heavy_module(imp.target)):
                problems.append(f"{where}: heavy-in-tui: {m} imports {imp.target}; {RULES['heavy-in-tui']}")
            elif is_heavy_module(m):
                continue
            elif heavy_library:
                problems.append(f"{where}: heavy-library-in-light-module: {m} imports {imp.target}"
                                f"{consequence(imp, loaded_by[m])}; {RULES['heavy-library-in-light-module']}")
            elif imp.at_import and is_heavy_module(imp.target):
                problems.append(f"{where}: heavy-module-at-import: {m} imports {imp.target}"
                                f"{consequence(imp, loaded_by[m])}; {RULES['heavy-module-at-import']}")
    return problems


def importers_at_import(loads: dict[str, set[str]]) -> dict[str, list[list[str]]]:
    """For each module, a shortest chain of module-level imports from each other module that loads it."""
    reverse: dict[str, set[str]] = {}
    for m, loaded in loads.items():
        for target in loaded:
            reverse.setdefault(target, set()).add(m)
    chains = {}
    for start in loads:
        chain = {start: [start]}
        queue = deque([start])
        while queue:
            current = queue.popleft()
            for importer in sorted(reverse.get(current, ())):
                if importer not in chain:
                    chain[importer] = [importer, *chain[current]]
                    queue.append(importer)
        chains[start] = [chain[m] for m in sorted(chain) if m != start]
    return chains


def consequence(imp: Import, chains: list[list[str]]) -> str:
    if not imp.at_import:
        return " inside a function"
    if not chains:
        return " at module level"
    example = max(chains, key=len)
    return (f" at module level, so importing {len(chains)} more module(s) loads it too, e.g. "
            f"{' -> '.join([*example, imp.target])}")


def tree_sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
            for p in sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("tui/**/*.py")])}


def test_engine_and_tui_keep_the_import_contract():
    problems = contract_violations(tree_sources())
    assert problems == [], "\n".join(problems)


# ---- the checker itself: each rule, broken on purpose in a small tree ----------------------

LIGHT_TREE = {
    "engine/__init__.py": "",
    "engine/data/__init__.py": "",
    "engine/data/stats.py": "import numpy as np\nfrom engine.core import files\n",
    "engine/core/__init__.py": "",
    "engine/core/files.py": "import os\n",
    "engine/core/paths.py": "from pathlib import Path\n",
    "engine/training/__init__.py": "",
    "engine/training/worker.py": "def main():\n    import torch\n    from engine.training.recipes.sft import Recipe\n",
    "engine/training/recipes/__init__.py": "",
    "engine/training/recipes/sft.py": "import torch\nfrom transformers import Trainer\n",
    "engine/runs/__init__.py": "",
    "engine/runs/launch.py": "def spawn():\n    from engine.training import worker\n",
    "tui/__init__.py": "",
    "tui/app.py": "from textual.app import App\nfrom engine.data.stats import np\n",
    "tui/cli/__init__.py": "",
    "tui/cli/main.py": "import subprocess\nfrom . import common\n",
    "tui/cli/common.py": "import json\n",
}
HEAVY = ("engine.training.worker", "engine.training.recipes.*")


def broken(path: str, source: str) -> list[str]:
    return contract_violations({**LIGHT_TREE, path: source}, HEAVY)


def test_the_checker_passes_a_tree_that_keeps_the_contract():
    assert contract_violations(LIGHT_TREE, HEAVY) == []


def test_the_checker_reports_each_broken_rule():
    assert broken("engine/core/files.py", "import os\n\ndef f():\n    from rich.text import Text\n") == [
        f"engine/core/files.py:4: ui-in-engine: engine.core.files imports rich.text; {RULES['ui-in-engine']}"]
    assert broken("engine/runs/launch.py", "import tui.app\n") == [
        f"engine/runs/launch.py:1: ui-in-engine: engine.runs.launch imports tui.app; {RULES['ui-in-engine']}"]

    (problem,) = broken("engine/core/files.py", "import os\nimport torch.nn\n")
    assert problem.startswith("engine/core/files.py:2: heavy-library-in-light-module: engine.core.files imports "
                              "torch.nn at module level, so importing 2 more module(s) loads it too, e.g. "
                              "tui.app -> engine.data.stats -> engine.core.files -> torch.nn"), problem
    (problem,) = broken("engine/data/stats.py", "def f():\n    from datasets import load_dataset\n")
    assert problem.startswith("engine/data/stats.py:2: heavy-library-in-light-module: engine.data.stats imports "
                              "datasets inside a function;"), problem

    (problem,) = broken("engine/data/stats.py", "from engine.training.recipes import sft\n")
    assert problem.startswith("engine/data/stats.py:1: heavy-module-at-import: engine.data.stats imports "
                              "engine.training.recipes.sft at module level, so importing 1 more module(s) loads "
                              "it too, e.g. tui.app -> engine.data.stats -> engine.training.recipes.sft"), problem
    # Through a package's __init__: importing engine.runs.launch runs engine/runs/__init__.py first.
    (problem,) = broken("engine/runs/__init__.py", "from engine.training.worker import main\n")
    assert problem.startswith("engine/runs/__init__.py:1: heavy-module-at-import: engine.runs imports "
                              "engine.training.worker at module level, so importing 1 more module(s) loads it "
                              "too, e.g. engine.runs.launch -> engine.runs -> engine.training.worker"), problem
    assert broken("engine/runs/launch.py", "def spawn():\n    import engine.training.worker\n") == []

    (problem,) = broken("tui/cli/main.py", "def run():\n    from engine.training.worker import main\n")
    assert problem.startswith("tui/cli/main.py:2: heavy-in-tui: tui.cli.main imports engine.training.worker;")
    (problem,) = broken("tui/cli/common.py", "def f():\n    import peft\n")
    assert problem.startswith("tui/cli/common.py:2: heavy-in-tui: tui.cli.common imports peft;")

    assert contract_violations(LIGHT_TREE, (*HEAVY, "engine.models.load")) == [
        "engine.models.load: stale-heavy-entry: no such module; remove it from HEAVY_MODULES"]
    assert contract_violations(LIGHT_TREE, (*HEAVY, "engine.core.paths")) == [
        ("engine/core/paths.py: stale-heavy-entry: engine.core.paths imports nothing heavy; "
         "drop it from HEAVY_MODULES, it is light")]


def test_relative_imports_are_resolved():
    (problem,) = broken("engine/runs/launch.py", "from ..training import worker\n")
    assert problem.startswith("engine/runs/launch.py:1: heavy-module-at-import: engine.runs.launch imports "
                              "engine.training.worker at module level"), problem
    (problem,) = broken("tui/cli/common.py", "def f():\n    from ...engine.training import worker\n")
    assert problem.startswith("tui/cli/common.py:2: heavy-in-tui: tui.cli.common imports engine.training.worker;")
