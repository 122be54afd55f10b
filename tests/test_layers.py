"""The package layers (ARCHITECTURE.md): nemu -> mmer -> hhmpn -> baselines -> pipelines, each importing only
itself and the layers below it, with no import circle between modules.

Every import counts, also one inside a function (hiding an import in a function does not remove the
dependency). The only exception is a module's ``if __name__ == "__main__":`` block importing ``pipelines``:
that is how ``python -m baselines.run_all`` / ``python -m hhmpn.train`` / ``python -m hhmpn.predict``, the
documented spellings, run their command.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("nemu", "mmer", "hhmpn", "baselines", "pipelines")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))}


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators))


def _imports(path: Path, module: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a __main__ block) for every import statement of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    guarded = {id(n) for block in tree.body if _is_main_guard(block) for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != module:
                found.append((target, node.lineno, id(node) in guarded))
    return found


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def test_every_layer_has_modules(graph):
    assert {name.split(".")[0] for name in graph} == set(LAYERS)


def test_no_import_climbs_a_layer(graph):
    climbing = [f"{module}:{line} imports {target}" for module, imports in graph.items()
                for target, line, main_block in imports
                if _layer(target) > _layer(module) and not (main_block and target.startswith("pipelines"))]
    assert not climbing, "imports that climb a layer:\n" + "\n".join(climbing)


def test_no_import_circle(graph):
    edges = {module: {target for target, _, main_block in imports if not main_block}
             for module, imports in graph.items()}
    try:
        tuple(TopologicalSorter(edges).static_order())
    except CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def test_main_blocks_import_only_the_command_layer(graph):
    wrong = [f"{module}:{line} imports {target} in its __main__ block" for module, imports in graph.items()
             for target, line, main_block in imports if main_block and not target.startswith("pipelines")
             and _layer(target) > _layer(module)]
    assert not wrong


def test_the_checker_sees_a_climbing_import_inside_a_function(tmp_path):
    # the checker itself: an import hidden in a function still counts
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from baselines import run_all\n", encoding="utf-8")
    found = _imports(source, "nemu.probe", set(_modules()))
    assert [target for target, _, _ in found] == ["baselines.run_all"]


def test_listing_the_models_loads_no_part_of_the_harness():
    code = ("import sys; from mmer.registry import models; names = list(models()); "
            "print(len(names)); print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('baselines', 'pipelines', 'mmer', 'hhmpn', 'nemu'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    count, loaded = out.splitlines()
    assert int(count) >= 16  # the eleven baselines (BR, CC, LP ...) and HHMPN with its four ablations
    harness = {"baselines.run_all", "baselines.tables", "baselines.figures", "baselines.ray_cells",
               "baselines.results", "baselines.cells", "mmer.runner", "mmer.engine"}
    assert not harness & set(loaded.split()), loaded
    assert not any(name.startswith("pipelines") for name in loaded.split()), loaded
