"""The import graph points one way: models import no layer above them, callbacks see systems only through their
interface, and no entry point imports another (docs/README.md, layout). Read from the source with ast, so a new
import that breaks a rule fails here however it is spelled (`from main.x import y`, `import main.x`, inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MAIN = Path(__file__).resolve().parent.parent / "main"
ENTRY_POINTS = sorted(p.stem for p in MAIN.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def imported_modules(path: Path) -> set[str]:
    """Every main.* module a file imports, at any depth of its code."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)  # from main import train_ae
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {m for m in modules if m == "main" or m.startswith("main.")}


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(MAIN.parent)} imports {module}"
        for path in sorted((MAIN / folder).rglob("*.py"))
        for module in sorted(imported_modules(path))
        if module.startswith(forbidden)
    ]


def test_the_entry_points_are_found():
    assert {"train_ae", "train_ddpm", "test_ae", "test_ddpm", "fid"} <= set(ENTRY_POINTS)


def test_models_import_no_layer_above_them():
    above = ("main.datasets", "main.systems", "main.evaluation", "main.callbacks", "main.training", "main.api")
    assert violations("models", above + tuple(f"main.{entry}" for entry in ENTRY_POINTS)) == []


def test_callbacks_import_no_system():
    assert violations("callbacks", ("main.systems",)) == []


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_entry_point_imports_another(entry):
    others = {f"main.{other}" for other in ENTRY_POINTS if other != entry}
    assert imported_modules(MAIN / f"{entry}.py") & others == set()


def test_the_checker_sees_every_spelling(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import main.systems.stage_one\nfrom main import train_ae\n\ndef f():\n    from main.datasets import x\n")
    assert {"main.systems.stage_one", "main.train_ae", "main.datasets"} <= imported_modules(source)
