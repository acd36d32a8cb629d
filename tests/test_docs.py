"""The docs site: the configuration reference is generated from the settings model and current,
and every page is reachable from the navigation (`mkdocs build --strict` in .ci/check checks
the links)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import yaml

from config.settings import SECRET_FIELDS, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_settings", DOCS / "gen_settings.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not missing, f"settings without Field(description=...): {missing}"


def test_the_settings_reference_is_current() -> None:
    gen = generator()
    committed = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    assert committed == gen.render(), (
        "docs/reference/settings.md is stale: run `python docs/gen_settings.py` and commit it"
    )


def test_the_settings_reference_marks_every_secret() -> None:
    page = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `TRIAGE_(\w+)` \| ([^|]*)\|", page, flags=re.M)
    }
    assert set(rows) == {name.upper() for name in Settings.model_fields}
    for name in Settings.model_fields:
        assert ("**secret**" in rows[name.upper()]) == (name in SECRET_FIELDS), name


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return []


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
