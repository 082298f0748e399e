"""The layering rules of bertcli/, checked on the source (ast): what may import what, and how long a module may be.

    cli → stages (train_vocab, pairs, mask, pretrain; pipeline chains them) and tools (read-only) → pure logic

A stage never imports another stage (only pipeline.py runs them, through the registry in schemas.py); the logic
modules never import a stage, a tool or the CLI; nobody imports another module's private (`_name`) names.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bertcli"
LOGIC = ("vocab", "vocab_extension", "wordpiece", "pairing", "masking", "model", "batching")
MAX_LINES = 700
LONG_ALLOWED = {"bertcli.wordpiece"}  # the trainer, its heap and its proofs: one algorithm, read in one place


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the module, those inside functions too;
    `from bertcli.stages import pairs` counts as importing bertcli.stages.pairs."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            found += [(m, [], node.lineno) for m in submodules]
            found.append((base, [a.name for a in node.names], node.lineno))
    return found


def _is_stage(module: str) -> bool:
    return module.startswith("bertcli.stages.")


def test_no_stage_imports_another_stage() -> None:
    bad = [
        f"{name}:{line} imports {target}"
        for name in MODULES
        if _is_stage(name) and name != "bertcli.stages.pipeline"
        for target, _, line in _imports(name)
        if _is_stage(target) and target != name
    ]
    assert not bad, "a stage runs on its own; share code through a logic or infrastructure module:\n" + "\n".join(bad)


def test_logic_modules_import_no_stage_tool_or_cli() -> None:
    upper = ("bertcli.stages", "bertcli.tools", "bertcli.cli")
    bad = [
        f"{name}:{line} imports {target}"
        for name in MODULES
        if name.removeprefix("bertcli.") in LOGIC
        for target, _, line in _imports(name)
        if target in upper or target.startswith(tuple(u + "." for u in upper))
    ]
    assert not bad, "the arrows point one way (cli → stages/tools → logic):\n" + "\n".join(bad)


def test_nobody_imports_private_names() -> None:
    bad = [
        f"{name}:{line} takes {n} from {target}"
        for name in MODULES
        for target, names, line in _imports(name)
        for n in names
        if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))
    ]
    assert not bad, "a name another module needs is public (no leading underscore):\n" + "\n".join(bad)


def test_schemas_import_no_torch() -> None:
    # `bert config show` and every config check run without loading torch (seconds and hundreds of MB).
    imported = {t.split(".")[0] for t, _, _ in _imports("bertcli.schemas")}
    assert imported <= set(sys.stdlib_module_names), imported


def test_the_rules_see_imports() -> None:
    # The checks above would pass vacuously if _imports missed the forms used in the package.
    assert "bertcli.stages.pairs" in {t for t, _, _ in _imports("bertcli.cli")}  # from bertcli.stages import pairs
    assert ("bertcli.errors", ["ArtifactError", "ConfigError", "InputError"]) in [
        (t, n) for t, n, _ in _imports("bertcli.stages.pairs")
    ]
    assert "bertcli.stages.pipeline" in MODULES and "bertcli.tools.predict" in MODULES


@pytest.mark.parametrize("name", [name for name in MODULES if name not in LONG_ALLOWED])
def test_modules_stay_readable(name: str) -> None:
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines; split it by what its parts do"
