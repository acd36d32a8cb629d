"""`triage search`: the past tickets a text would be matched with, ranked as the worker ranks."""

from __future__ import annotations

import sys

import click
import redis

from cli.common import clip
from cli.common import settings as load
from config.celery_app import SEARCH_TASK, create_app, search_queue
from config.redis_client import connect as redis_connect
from config.settings import Settings
from tickets import db
from tickets.errors import StoreLocked, TriageError
from tickets.heartbeat import WorkerBeat, live_workers
from worker.embedding import make_embedder
from worker.lexical_snapshot import open_index
from worker.pipeline import Services
from worker.reindex import active_collection
from worker.routing import Thresholds
from worker.search import SearchAnswer, reply_key, wait_reply
from worker.search import search as run_search
from worker.store import opened_store


@click.command()
@click.argument("text")
@click.option(
    "-k",
    "--top-k",
    "k",
    default=5,
    show_default=True,
    type=click.IntRange(1, 100),
    help="How many matches.",
)
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds to wait for a running worker's answer.",
)
def search(text: str, k: int, timeout: float) -> None:
    """Print the past tickets a ticket with TEXT would be matched with, ranked as the worker
    ranks (hybrid: cosine fused with BM25, unless TRIAGE_HYBRID_ALPHA=1).

    A running worker answers (it owns the embedded store); with none running, the store is
    opened here and searched the same way. Each line: cosine, fused score (hybrid), ticket,
    subject.
    """
    settings = load()
    answer, asked = None, False
    workers = _live_workers(settings)
    if workers:
        answer, asked = _ask_worker(settings, text, k, timeout), True
    note = (
        f"no worker answered within {timeout:g} s"
        if asked
        else "no worker is running (start `triage worker`)"
    )
    if answer is None:
        try:
            answer = _search_here(settings, text, k)
        except StoreLocked as exc:
            # The store's owner runs but has not beaten yet (just started): ask it.
            if not asked:
                answer, asked = _ask_worker(settings, text, k, timeout), True
            if answer is None:
                click.echo(
                    f"triage search: no worker answered within {timeout:g} s, and the store "
                    f"is held by another process: {exc}",
                    err=True,
                )
                sys.exit(1)
        except TriageError as exc:
            click.echo(f"triage search: {note}, and searching here failed: {exc}", err=True)
            sys.exit(1)
        else:
            click.echo(f"{note}: searched the store here", err=True)
    click.echo(answer.describe(), err=True)
    if not answer.hits:
        click.echo("no tickets indexed yet")
    for h in answer.hits:
        fused = "-" if h.fused is None else f"{h.fused:.3f}"
        click.echo(f"{h.cosine:6.3f}  {fused:>6}  {h.key}  {clip(h.title, 70)}")


def _live_workers(settings: Settings) -> list[WorkerBeat]:
    try:
        client = redis_connect(settings, timeout_s=2)
        return live_workers(client, settings.queue)
    except redis.RedisError:
        return []


def _ask_worker(settings: Settings, text: str, k: int, timeout: float) -> SearchAnswer | None:
    """A worker's answer (worker/search.py over the search queue), or None in time."""
    key = reply_key()
    app = create_app(settings)
    try:
        client = redis_connect(settings, timeout_s=timeout + 5, connect_timeout_s=2)
        # Expires with the wait: a worker that comes later never answers a stale request.
        app.send_task(
            SEARCH_TASK,
            args=[key, text, k],
            queue=search_queue(settings.queue),
            expires=timeout,
            retry=False,
        )
        reply = wait_reply(client, key, timeout)
    except Exception as exc:  # Redis unreachable: search here instead
        click.echo(f"triage search: could not ask a worker: {exc}", err=True)
        return None
    finally:
        app.close()
    if reply is None:
        return None
    if not reply.get("ok"):
        click.echo(f"triage search: the worker failed: {reply.get('error')}", err=True)
        sys.exit(1)
    return SearchAnswer.from_json(reply["answer"])


def _search_here(settings: Settings, text: str, k: int) -> SearchAnswer:
    """The worker's search, on this process's own embedder, store and lexical index."""
    engine = db.make_engine(settings.database_url)
    try:
        embedder = make_embedder(settings)
        with opened_store(settings, embedder, active_collection(engine, settings)) as store:
            lexical = None
            if settings.hybrid_alpha < 1:
                lexical = open_index(
                    engine,
                    directory=settings.lexical_snapshot_dir,
                    scope_field=None if settings.match_scope == "global" else settings.match_scope,
                )
            services = Services(
                embedder=embedder,
                store=store,
                engine=engine,
                thresholds=Thresholds(settings.duplicate_threshold, settings.suggest_threshold),
                top_k=k,
                subject_weight=settings.subject_weight,
                lexical=lexical,
                hybrid_alpha=settings.hybrid_alpha,
                hybrid_pool=settings.hybrid_pool,
            )
            return run_search(services, text, k)
    finally:
        engine.dispose()
