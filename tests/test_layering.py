"""The layering of docs/ARCHITECTURE.md, checked on the source: no module imports upwards.

Every ``import`` statement counts, at module level or inside a function (a lazy import is still a
dependency), so the test fails on the first upward import anyone writes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Which top-level parts a part may import (beyond itself and third-party packages).
ALLOWED = {
    "zoo": {"zoo"},  # the core: layers, bounds, certificates, checkpoints, registry, zoo.load
    "training": {"zoo", "training"},
    "export": {"zoo", "export"},
    "zoo.app": {"zoo", "zoo.app", "training", "export"},  # CLI, server, report, publishing
}
PARTS = ("zoo", "training", "export", "zoo.app")


def part_of(module: str) -> str | None:
    """The layer a dotted module name belongs to, or None for third-party modules. ``zoo.__main__``
    (``python -m zoo``, the command line) is part of the application."""
    if module in ("zoo.app", "zoo.__main__") or module.startswith("zoo.app."):
        return "zoo.app"
    top = module.partition(".")[0]
    return top if top in ("zoo", "training", "export") else None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import statement of the file; ``from zoo import app`` counts as
    ``zoo.app`` (it may name a submodule)."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append((node.lineno, node.module))
            modules += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}:{node.lineno}: relative import (the project uses absolute ones)")
    return modules


def source_files() -> list[Path]:
    return sorted(file for top in ("zoo", "training", "export") for file in (ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_layer_above_its_own(path):
    dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    layer = part_of(dotted)
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {module} ({part_of(module)} is not below {layer})"
        for line, module in imported_modules(path)
        if part_of(module) is not None and part_of(module) not in ALLOWED[layer]
    ]
    assert not upward, "\n".join(upward)


def test_the_check_sees_lazy_and_from_imports(tmp_path):
    """The checker itself: an import inside a function and ``from zoo import app`` are both found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from zoo import app\n    import export.verify\n")
    found = {name for _, name in imported_modules(module)}
    assert {"zoo.app", "export.verify"} <= found
    assert {part_of(name) for name in found} >= {"zoo.app", "export"}


def test_the_training_package_has_no_import_cycle():
    """training.trainer is the one entry point: it imports the protocols (plain, transfer,
    continual); they never import it back, directly or through another module."""
    modules = {}
    for path in sorted((ROOT / "training").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    imports = {
        name: {module for _, module in imported_modules(path) if module in modules and module != name}
        for name, path in modules.items()
    }

    def reaches(start: str, target: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for module in imports[todo.pop()] - seen:
                seen.add(module)
                todo.append(module)
        return target in seen

    cycles = [name for name in modules if reaches(name, name)]
    assert not cycles, f"modules on an import cycle: {', '.join(cycles)}"
