"""The code a benchmark cell was computed by, as digests: a changed model or engine reruns its cells.

A cell's result depends on its data, its settings and its code. The code is the model's registering module
(the factory's ``__module__``) and everything it imports from the project, plus the cell runner
(``mmer.runner``) and everything that imports: engine, metrics, loading, normalisation, ... . The import
closure is found from the AST of the project's files (``import x`` and ``from x import y`` anywhere in a file,
also inside functions, as ``tests/test_layers.py`` counts them; a ``if __name__ == "__main__":`` block is
skipped, it never runs in a cell), restricted to the packages below ``pipelines``; the packages a module
sits in count too, since importing ``baselines.mult`` runs ``baselines/__init__.py``. Each file is digested
(sha256 of its bytes) under its path relative to the project root, and the cell's ``code_digest`` is the
digest of that mapping: editing any file in the closure changes it, editing another model's file does not.

Models registered outside the project (an entry point of another package) have no file here: their module
is recorded by name with the package version, so their cells rerun when that version changes. The package
version and the git commit are recorded beside the digests (best effort: no git, no commit) but are not part
of the digest, which would otherwise rerun every cell at every commit.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path

#: The project's packages whose files enter a cell's code digest (``pipelines`` is the command line only).
CODE_PACKAGES = ("nemu", "mmer", "hhmpn", "baselines")
#: The cell runner: every cell, estimator or neural, runs through it.
RUNNER_MODULE = "mmer.runner"
#: The project root the files are read under; a test may point it at a copy of the tree.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "nemu-hhmpn"


def module_path(module: str, root: Path | None = None) -> Path | None:
    """The file of a project module (``pkg/mod.py`` or ``pkg/mod/__init__.py``), or None outside the project."""
    if module.split(".")[0] not in CODE_PACKAGES:
        return None
    base = Path(root or PROJECT_ROOT).joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators))


def imported_modules(module: str, root: Path | None = None) -> set[str]:
    """The project modules ``module``'s file imports (any import statement outside its ``__main__`` block)."""
    path = module_path(module, root)
    if path is None:
        return set()
    tree = ast.parse(path.read_bytes(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped = {id(n) for block in tree.body if _is_main_guard(block) for n in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: anchored at the module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub where there is one (and pkg itself)
            targets = [base] + [f"{base}.{a.name}" for a in node.names
                                if module_path(f"{base}.{a.name}", root) is not None]
        else:
            continue
        for target in targets:
            # `import a.b.c` runs a, a.b and a.b.c: every prefix that is a project module
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                         if module_path(".".join(parts[:i]), root) is not None)
    found.discard(module)
    return found


def import_closure(modules: Iterable[str], root: Path | None = None) -> set[str]:
    """``modules``, the packages they sit in and everything they import from the project, transitively."""
    seen: set[str] = set()
    stack = list(modules)
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages' __init__
        stack.extend(imported_modules(module, root))
    return seen


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_files(model_module: str, root: Path | None = None) -> dict[str, str]:
    """{path relative to the project root: sha256} of the files a cell of a model in ``model_module`` runs."""
    root = Path(root or PROJECT_ROOT)
    files = {}
    for module in import_closure([model_module, RUNNER_MODULE], root):
        path = module_path(module, root)
        if path is not None:
            files[path.relative_to(root).as_posix()] = sha256_of(path)
    if module_path(model_module, root) is None:  # a model from another package: its name and version stand in
        files[f"<external>/{model_module}"] = f"version {package_version(model_module.split('.')[0])}"
    return dict(sorted(files.items()))


def code_digest(files: Mapping[str, str]) -> str:
    """sha256 (first 16 hex digits) of the per-file digests, keyed by path (order-independent)."""
    text = json.dumps(dict(files), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def package_version(distribution: str = DISTRIBUTION) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_commit(root: Path | None = None) -> str | None:
    """The checkout's HEAD commit, or None (no git, not a checkout, or git failing): never an error."""
    return _git_commit(str(root or PROJECT_ROOT))


@lru_cache(maxsize=8)  # once per process and root: a grid asks for every model, the answer is the same
def _git_commit(root: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def model_code(factory, root: Path | None = None) -> dict:
    """A model's code identity from its registered factory: ``code_files``, ``code_digest``, ``package_version``
    and ``git_commit`` (the record's fields; only the digest enters the cell's identity)."""
    files = code_files(factory.__module__, root)
    return {"code_files": files, "code_digest": code_digest(files), "package_version": package_version(),
            "git_commit": git_commit(root)}


def changed_files(old: Mapping[str, str] | None, new: Mapping[str, str]) -> list[str]:
    """What differs between two ``code_files`` mappings, file by file: "baselines/mult.py changed" etc."""
    if not old:
        return ["no code digest recorded"]
    out = [f"{path} changed" for path in sorted(set(old) & set(new)) if old[path] != new[path]]
    out += [f"{path} added" for path in sorted(set(new) - set(old))]
    out += [f"{path} removed" for path in sorted(set(old) - set(new))]
    return out
