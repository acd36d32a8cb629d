"""What the code imports is what pyproject.toml declares: a package reached only through
another's dependencies (click through celery, starlette through fastapi) can change or go
away in a release of that other package."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN = ("config", "tickets", "actions", "producer", "worker", "service", "cli", "quality")
# Modules that may import the `quality` extra (and only they): `triage evaluate` / `calibrate`.
QUALITY_ONLY = ROOT / "quality"


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group()).lower()


def _imports(path: Path) -> dict[str, bool]:
    """Third-party top-level modules imported by ``path``, each with whether the import
    sits inside a function (where an optional extra may be imported: it is loaded only on
    the path that needs it)."""
    tops: dict[str, bool] = {}

    def visit(node: ast.AST, nested: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        for name in names:
            tops[name] = tops.get(name, True) and nested
        inner = nested or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return {
        t: lazy for t, lazy in tops.items() if t not in sys.stdlib_module_names and t not in OWN
    }


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    quality = base | {_name(r) for r in extras["quality"]}
    # Imported inside a function: the package of an optional extra, loaded only when used.
    optional = base | {_name(r) for deps in extras.values() for r in deps}
    # Which installed distribution provides each import name (e.g. sqlalchemy: SQLAlchemy).
    providers = importlib.metadata.packages_distributions()
    undeclared = []
    checked = 0
    for package in OWN:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, lazy in sorted(_imports(path).items()):
                declared = optional if lazy else base
                if path.is_relative_to(QUALITY_ONLY):
                    declared |= quality
                checked += 1
                dists = {_name(d) for d in providers.get(module, [module])}
                if not dists & declared:
                    undeclared.append(f"{path.relative_to(ROOT)}: {module} ({', '.join(dists)})")
    assert checked > 50  # the walk saw the code
    assert not undeclared, "imported but not declared in pyproject.toml:\n" + "\n".join(undeclared)


def test_every_package_is_under_the_import_contracts() -> None:
    # import-linter (`lint-imports` in .ci/check) checks only the packages it is told about:
    # a new top-level package must join its layers, or its imports go unchecked.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    linter = pyproject["tool"]["importlinter"]
    assert set(linter["root_packages"]) == packages == set(OWN)
    layered = {
        name.strip()
        for contract in linter["contracts"]
        if contract["type"] == "layers"
        for layer in contract["layers"]
        for name in layer.split("|")
    }
    assert layered == packages - {"quality"}, "quality is kept apart by its own contract"
