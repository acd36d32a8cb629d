"""`triage lexical snapshot`: write the BM25 index snapshot workers map at start-up."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import settings as load
from cli.common import setup_logging
from tickets import db, migrate
from worker.lexical_snapshot import update_snapshot


@click.group("lexical")
def lexical_group() -> None:
    """BM25 index commands."""


@lexical_group.command("snapshot")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write it (default: TRIAGE_LEXICAL_SNAPSHOT_DIR).",
)
@click.option(
    "--rebuild",
    is_flag=True,
    help="Read every stored ticket from SQL, not the current snapshot plus the tickets since "
    "(after tickets were purged from the database).",
)
def snapshot(directory: Path | None, rebuild: bool) -> None:
    """Bring the BM25 index snapshot up to the stored tickets, written atomically.

    It reads the current snapshot and the tickets stored after it (all of them from SQL the
    first time, with --rebuild, or when the snapshot is unusable), then replaces the file.
    Run it from one place per deployment, on a schedule (cron, a Kubernetes CronJob):
    workers started after it read only the tickets stored since from SQL.
    """
    settings = load()
    setup_logging("WARNING")
    directory = directory or settings.lexical_snapshot_dir
    if directory is None:
        raise click.UsageError("set TRIAGE_LEXICAL_SNAPSHOT_DIR or pass --dir")
    engine = db.make_engine(settings.database_url)
    try:
        migrate.require_current(engine)
        scope = None if settings.match_scope == "global" else settings.match_scope
        out = update_snapshot(engine, directory, scope_field=scope, rebuild=rebuild)
    finally:
        engine.dispose()
    how = "rebuilt from SQL" if out["rebuilt"] else f"{out['added']} tickets added"
    if out["written"]:
        click.echo(
            f"{out['path']}: {out['documents']} tickets up to id {out['watermark']} ({how}), "
            f"{out['bytes'] / 2**20:.1f} MiB written in {out['write_s']} s"
        )
    else:
        click.echo(
            f"{out['path']}: up to date ({out['documents']} tickets up to id {out['watermark']})"
        )
