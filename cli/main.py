"""The `triage` command line: one click group whose commands live in their own modules.

A command's module is imported only when that command runs (or its help is asked for), so
`triage --help` imports no model, client or database driver, and the quality commands can be
listed, with the install hint, whether or not the `quality` extra is installed. Every
command loads the settings first: a bad TRIAGE_* value stops it with a message naming the
variable (exit code 2).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass

import click

NEEDS_EXTRA = "(needs the quality extra: pip install 'ticket-triage[quality]')"
QUALITY_INSTALL = "pip install 'ticket-triage[quality]' (in a clone: pip install -e '.[quality]')"


@dataclass(frozen=True)
class Lazy:
    """Where a command lives, and its short help for the command list (the first sentence of
    the command's own help: tests/test_cli.py checks that they agree)."""

    module: str
    attribute: str
    summary: str
    # Packages of an optional extra the module imports: without them, the install hint.
    needs: tuple[str, ...] = ()


COMMANDS = {
    "worker": Lazy(
        "cli.worker",
        "worker",
        "Run a triage worker (same as `celery -A config.celery_app worker`).",
    ),
    "serve": Lazy(
        "cli.serve",
        "serve",
        "Run the HTTP service: helpdesk webhooks, ticket ingest, read API, health, metrics.",
    ),
    "ingest": Lazy(
        "cli.ingest", "ingest", "Enqueue the tickets of a CSV or JSONL FILE for triage."
    ),
    "search": Lazy(
        "cli.search",
        "search",
        "Print the past tickets a ticket with TEXT would be matched with, ranked as the worker "
        "ranks (hybrid: cosine fused with BM25, unless TRIAGE_HYBRID_ALPHA=1).",
    ),
    "purge": Lazy(
        "cli.purge",
        "purge",
        "Erase tickets' text (by key, or older than a retention period); decisions stay.",
    ),
    "decisions": Lazy(
        "cli.decisions", "decisions", "Print the most recent decisions (or failures)."
    ),
    "doctor": Lazy(
        "cli.doctor",
        "doctor",
        "Check Redis, the queue and its workers, the database, the embedder and Chroma; print "
        "their versions.",
    ),
    "db": Lazy("cli.admin", "db_group", "Database schema commands."),
    "reindex": Lazy(
        "cli.admin",
        "reindex",
        "Re-embed every stored ticket with the configured model into a new collection, then "
        "switch the workers over to it (the old collection serves until then).",
    ),
    "lexical": Lazy("cli.lexical", "lexical_group", "BM25 index commands."),
    "redrive": Lazy(
        "cli.admin", "redrive", "Publish failed tickets (the failure table) to the queue again."
    ),
    "actions": Lazy(
        "cli.actions",
        "actions",
        "List the outbox's pending, failed and dead deliveries; --redrive sends the dead ones "
        "again.",
    ),
    "demo": Lazy(
        "cli.demo", "demo", "Run the whole flow on embedded defaults and print the routing table."
    ),
    "evaluate": Lazy(
        "quality.cli",
        "evaluate",
        "Measure triage quality on labelled data (reports: report.md + report.json).",
        needs=("bm25s",),
    ),
    "calibrate": Lazy(
        "quality.calibrate_cli",
        "calibrate",
        "Recommend duplicate / suggest thresholds from labelled pairs or agent feedback.",
        needs=("matplotlib",),
    ),
}


def _missing(lazy: Lazy) -> list[str]:
    return [name for name in lazy.needs if importlib.util.find_spec(name) is None]


class TriageGroup(click.Group):
    """Commands from COMMANDS, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = COMMANDS.get(cmd_name)
        if lazy is None:
            return None
        missing = _missing(lazy)
        if not missing:
            try:
                command = getattr(importlib.import_module(lazy.module), lazy.attribute)
            except ImportError as exc:
                if not lazy.needs:
                    raise
                missing = [exc.name or str(exc)]  # installed, yet broken: say which module
            else:
                assert isinstance(command, click.Command)
                return command
        return _needs_extra(cmd_name, missing)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS: `triage --help` imports no command module."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = []
        for name, lazy in sorted(COMMANDS.items()):
            summary = click.Command(name, help=lazy.summary).get_short_help_str(limit)
            if lazy.needs and _missing(lazy):
                summary = NEEDS_EXTRA
            rows.append((name, summary))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _needs_extra(name: str, missing: list[str]) -> click.Command:
    def explain() -> None:
        click.echo(
            f"triage {name} needs the quality extra ({', '.join(missing)} cannot be "
            f"imported): {QUALITY_INSTALL}",
            err=True,
        )
        sys.exit(1)

    return click.Command(
        name,
        callback=explain,
        help=f"Not installed: needs the quality extra. {QUALITY_INSTALL}",
        short_help=NEEDS_EXTRA,
        # Any arguments: the answer is the install command, not a usage error.
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


def _version() -> str:
    try:
        return importlib.metadata.version("ticket-triage")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


@click.group(cls=TriageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="triage", message="%(prog)s %(version)s")
def cli() -> None:
    """ticket-triage: route helpdesk tickets as duplicate / suggest / manual."""


def main() -> None:
    cli(prog_name="triage")


if __name__ == "__main__":
    main()
