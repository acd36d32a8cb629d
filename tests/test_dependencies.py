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
OWN = ("config", "producer", "worker")
# Modules that may import the `quality` extra (and only they): `triage evaluate` / `calibrate`.
QUALITY_ONLY = ROOT / "worker" / "quality"


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group()).lower()


def _imports(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return {t for t in tops if t not in sys.stdlib_module_names and t not in OWN}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    quality = base | {_name(r) for r in project["optional-dependencies"]["quality"]}
    # Which installed distribution provides each import name (e.g. sqlalchemy: SQLAlchemy).
    providers = importlib.metadata.packages_distributions()
    undeclared = []
    checked = 0
    for package in OWN:
        for path in sorted((ROOT / package).rglob("*.py")):
            declared = quality if path.is_relative_to(QUALITY_ONLY) else base
            for module in sorted(_imports(path)):
                checked += 1
                dists = {_name(d) for d in providers.get(module, [module])}
                if not dists & declared:
                    undeclared.append(f"{path.relative_to(ROOT)}: {module} ({', '.join(dists)})")
    assert checked > 50  # the walk saw the code
    assert not undeclared, "imported but not declared in pyproject.toml:\n" + "\n".join(undeclared)
