"""`triage calibrate`: recommend thresholds from labelled pairs or from agent feedback.

    triage calibrate --pairs labelled.csv [--per-queue] [--out DIR] [--write-thresholds PATH]
    triage calibrate --feedback            # confirm / veto verdicts stored by the product

Writes ``roc.png``, ``pr.png``, ``histogram.png``, ``report.md``, ``report.json`` and a
candidate ``thresholds.json`` into ``--out``; ``--write-thresholds`` also writes (atomically
replaces) the thresholds file the worker reads, and the command prints the
``TRIAGE_THRESHOLDS_FILE=...`` line that points the worker at it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from config.settings import Settings, SettingsError, load_settings
from quality.calibrate import (
    DEFAULT_MIN_QUEUE_PAIRS,
    DEFAULT_MIN_SUPPORT,
    FloatArray,
    IntArray,
    Metrics,
    QueueRecommendations,
    Recommendation,
    load_feedback,
    metrics_at,
    plot,
    read_pairs,
    recommend,
    recommend_per_queue,
    safe_name,
    score_pairs,
)
from tickets.db import make_engine
from tickets.errors import TriageError
from worker.embedding import make_embedder
from worker.routing import Thresholds
from worker.thresholds import load_thresholds, save_thresholds

ENV_NAME = "TRIAGE_THRESHOLDS_FILE"


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"triage calibrate: {message}", err=True)
    sys.exit(code)


def _current_thresholds(settings: Settings) -> tuple[Thresholds, str]:
    """The thresholds in force now, to compare with: the thresholds file's default when
    TRIAGE_THRESHOLDS_FILE is set, else TRIAGE_DUPLICATE_THRESHOLD / TRIAGE_SUGGEST_THRESHOLD."""
    configured = settings.thresholds_file
    if configured:
        try:
            return load_thresholds(Path(configured)).default, f"{ENV_NAME}={configured}"
        except ValueError as exc:
            click.echo(f"warning: {exc}; comparing with the plain settings instead", err=True)
    return (
        Thresholds(duplicate=settings.duplicate_threshold, suggest=settings.suggest_threshold),
        "TRIAGE_DUPLICATE_THRESHOLD / TRIAGE_SUGGEST_THRESHOLD",
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pairs_data(
    settings: Settings, pairs_file: Path, batch_size: int, quiet: bool
) -> tuple[FloatArray, IntArray, list[str | None] | None, str | None, dict[str, Any]]:
    try:
        pairs = read_pairs(pairs_file)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _fail(str(exc))
    try:
        embedder = make_embedder(settings)
        n_texts = len(set(pairs.text_a) | set(pairs.text_b))
        with tqdm(
            total=n_texts, desc="embedding", unit="text", disable=quiet, file=sys.stderr
        ) as bar:
            scores = score_pairs(
                embedder, pairs.text_a, pairs.text_b, batch_size=batch_size, progress=bar.update
            )
    except TriageError as exc:
        _fail(f"embedding failed: {exc}")
    provenance = {
        "source": "pairs",
        "data": str(pairs_file.resolve()),
        "data_sha256": _sha256(pairs_file),
        "texts_embedded": n_texts,
    }
    return scores, pairs.labels, pairs.queues, embedder.model_id, provenance


def _feedback_data(
    settings: Settings,
) -> tuple[FloatArray, IntArray, list[str | None], str | None, dict[str, Any], list[str]]:
    engine = make_engine(settings.database_url)
    try:
        fb = load_feedback(engine)
    except SQLAlchemyError as exc:
        _fail(
            f"cannot read feedback from {engine.url.render_as_string()}: {exc}. "
            f"Is the schema current (`triage db upgrade`)?"
        )
    finally:
        engine.dispose()
    if len(fb.scores) == 0:
        _fail(
            f"no usable agent feedback in {engine.url.render_as_string()} "
            f"({fb.verdicts} verdicts, {fb.conflicting} tied, {fb.unscored} without a score): "
            f"agents confirm or veto duplicate / suggest decisions on the dashboard (/dashboard/review) or through the API first"
        )
    warnings = [
        # Only `duplicate` / `suggest` decisions can be judged, so the set is censored.
        f"feedback exists only for decisions routed duplicate or suggest (scores ≥ "
        f"{fb.lowest_score:.3f} here): recall is recall among reviewed decisions, and no "
        f"threshold below {fb.lowest_score:.3f} can be justified from feedback alone"
    ]
    if len(fb.models) > 1:
        warnings.append(
            f"the feedback spans decisions of {len(fb.models)} embedding models "
            f"({', '.join(fb.models)}): their scores are not comparable; calibrate after a "
            f"re-index on fresh feedback"
        )
    model = fb.models[0] if len(fb.models) == 1 else None
    provenance = {
        "source": "feedback",
        "data": engine.url.render_as_string(),  # password hidden
        "verdicts": fb.verdicts,
        "tied_decisions_left_out": fb.conflicting,
        "unscored_decisions_left_out": fb.unscored,
        "models": list(fb.models),
    }
    return fb.scores, fb.labels, fb.queues, model, provenance, warnings


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _metric_row(name: str, m: Metrics) -> list[str]:
    return [
        name,
        f"{m.threshold:.4f}",
        _fmt(m.precision),
        _fmt(m.precision_low),
        _fmt(m.recall),
        _fmt(m.f1),
        str(m.above),
    ]


_HEAD = ["", "threshold", "precision", "prec. ≥ (95 %)", "recall", "F1", "pairs above"]


def _table_rows(
    rec: Recommendation, current: Thresholds, s: FloatArray, y: IntArray
) -> list[list[str]]:
    return [
        _metric_row("duplicate (recommended)", rec.duplicate),
        _metric_row("suggest (recommended)", rec.suggest),
        _metric_row("duplicate (current)", metrics_at(s, y, current.duplicate)),
        _metric_row("suggest (current)", metrics_at(s, y, current.suggest)),
    ]


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _queue_rows(result: QueueRecommendations) -> list[list[str]]:
    rows = []
    for queue, rec in sorted(result.queues.items()):
        rows.append(
            [
                queue,
                str(rec.pairs),
                f"{rec.thresholds.duplicate:.4f}",
                f"{rec.thresholds.suggest:.4f}",
                _fmt(rec.duplicate.precision),
                _fmt(rec.suggest.recall),
                "own" if rec.precision_reached else "own; precision target NOT reached",
            ]
        )
    for queue, why in sorted(result.fell_back.items()):
        d = result.default.thresholds
        rows.append(
            [queue, "—", f"{d.duplicate:.4f}", f"{d.suggest:.4f}", "—", "—", f"default ({why})"]
        )
    return rows


_QUEUE_HEAD = ["queue", "pairs", "duplicate", "suggest", "precision", "recall", "thresholds"]


def _report_md(
    result: QueueRecommendations,
    current: Thresholds,
    current_from: str,
    s: FloatArray,
    y: IntArray,
    provenance: Mapping[str, Any],
    warnings: list[str],
    thresholds_file: Path,
) -> str:
    rec = result.default
    lines = [
        "# Threshold calibration",
        "",
        f"- data: `{provenance['data']}` ({provenance['source']})",
        f"- model: `{provenance.get('model')}`",
        f"- pairs: {rec.pairs} ({rec.positives} duplicates, {rec.negatives} not)",
        f"- ROC AUC: {rec.auc:.4f}",
        f"- targets: precision ≥ {rec.target_precision} at `duplicate` (at least "
        f"{rec.min_support} pairs above), recall ≥ {rec.target_recall} at `suggest`",
        f"- current thresholds from {current_from}",
        f"- created: {provenance['created_at']}",
        "",
        _md_table(_HEAD, _table_rows(rec, current, s, y)),
        "",
    ]
    if result.queues or result.fell_back:
        lines += ["## Per queue", "", _md_table(_QUEUE_HEAD, _queue_rows(result)), ""]
    notes = [*warnings, *rec.notes]
    for queue, qrec in sorted(result.queues.items()):
        notes += [f"queue {queue}: {note}" for note in qrec.notes]
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    lines += [
        "## Plots",
        "",
        "![ROC](roc.png)",
        "![Precision-recall](pr.png)",
        "![Score histograms](histogram.png)",
        "",
        "## Use",
        "",
        "```",
        f"{ENV_NAME}={thresholds_file}",
        "```",
        "",
    ]
    return "\n".join(lines)


@click.command("calibrate")
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labelled pairs CSV: text_a,text_b,label[,queue] (or sentence1,sentence2,label).",
)
@click.option(
    "--feedback",
    is_flag=True,
    help="Use the agents' confirm / veto feedback in TRIAGE_DATABASE_URL instead.",
)
@click.option(
    "--target-precision",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.95,
    show_default=True,
    help="Precision the duplicate threshold must reach.",
)
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.90,
    show_default=True,
    help="Recall the suggest threshold must keep.",
)
@click.option("--per-queue", is_flag=True, help="Also recommend thresholds for each queue.")
@click.option(
    "--min-support",
    type=click.IntRange(min=1),
    default=DEFAULT_MIN_SUPPORT,
    show_default=True,
    help="Pairs that must score above a duplicate threshold before its precision counts.",
)
@click.option(
    "--min-queue-pairs",
    type=click.IntRange(min=1),
    default=DEFAULT_MIN_QUEUE_PAIRS,
    show_default=True,
    help="Labelled pairs a queue needs for its own thresholds (else: the default).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("calibration"),
    show_default=True,
    help="Folder for the plots, report.md / report.json and a candidate thresholds.json.",
)
@click.option(
    "--write-thresholds",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write (atomically replace) the thresholds file the worker reads.",
)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=64, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def calibrate(
    pairs_file: Path | None,
    feedback: bool,
    target_precision: float,
    target_recall: float,
    per_queue: bool,
    min_support: int,
    min_queue_pairs: int,
    out_dir: Path,
    write_thresholds: Path | None,
    batch_size: int,
    quiet: bool,
) -> None:
    """Recommend duplicate / suggest thresholds from labelled pairs or agent feedback."""
    if (pairs_file is None) == (not feedback):
        raise click.UsageError("give exactly one of --pairs FILE or --feedback")
    try:
        settings = load_settings()
    except SettingsError as exc:
        _fail(str(exc), code=2)
    current, current_from = _current_thresholds(settings)

    warnings: list[str] = []
    if pairs_file is not None:
        s, y, queues, model, provenance = _pairs_data(settings, pairs_file, batch_size, quiet)
    else:
        s, y, fb_queues, model, provenance, warnings = _feedback_data(settings)
        queues = fb_queues
    if per_queue and (queues is None or not any(queues)):
        raise click.UsageError(
            "--per-queue needs queue names: a `queue` column in the pairs file, or decisions "
            "with a queue"
        )

    try:
        if per_queue:
            assert queues is not None
            result = recommend_per_queue(
                s,
                y,
                queues,
                target_precision=target_precision,
                target_recall=target_recall,
                min_support=min_support,
                min_pairs=min_queue_pairs,
            )
        else:
            result = QueueRecommendations(
                default=recommend(
                    s,
                    y,
                    target_precision=target_precision,
                    target_recall=target_recall,
                    min_support=min_support,
                )
            )
    except ValueError as exc:
        _fail(str(exc))
    rec = result.default

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(s, y, rec, out_dir, current=current, title=Path(str(provenance["data"])).name)
    queue_plots: dict[str, dict[str, str]] = {}
    if per_queue:
        names = np.array([q or "" for q in queues or []], dtype=object)
        for queue, qrec in result.queues.items():
            mask = names == queue
            paths = plot(
                s[mask],
                y[mask],
                qrec,
                out_dir / "queues" / safe_name(queue),
                current=current,
                title=f"queue {queue}",
            )
            queue_plots[queue] = {k: str(v) for k, v in paths.items()}

    provenance = {
        **provenance,
        "model": model,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "pairs": rec.pairs,
        "positives": rec.positives,
        "negatives": rec.negatives,
        "target_precision": target_precision,
        "target_recall": target_recall,
        "min_support": min_support,
        "precision_reached": rec.precision_reached,
        "roc_auc": rec.auc,
        "duplicate": {"precision": rec.duplicate.precision, "recall": rec.duplicate.recall},
        "suggest": {"precision": rec.suggest.precision, "recall": rec.suggest.recall},
    }
    if per_queue:
        provenance["min_queue_pairs"] = min_queue_pairs
        provenance["queues_fell_back"] = dict(result.fell_back)
        provenance["queues_precision_not_reached"] = sorted(
            q for q, r in result.queues.items() if not r.precision_reached
        )

    table = result.table(model)
    candidate = out_dir / "thresholds.json"
    save_thresholds(candidate, table, provenance)
    target = candidate
    if write_thresholds is not None:
        save_thresholds(write_thresholds, table, provenance)
        target = write_thresholds
    target = target.resolve()

    report_json = {
        "calibration": provenance,
        "current": {
            "duplicate": current.duplicate,
            "suggest": current.suggest,
            "from": current_from,
        },
        "current_metrics": {
            "duplicate": asdict(metrics_at(s, y, current.duplicate)),
            "suggest": asdict(metrics_at(s, y, current.suggest)),
        },
        "default": rec.to_dict(),
        "queues": {q: r.to_dict() for q, r in sorted(result.queues.items())},
        "queues_fell_back": dict(result.fell_back),
        "warnings": warnings,
        "plots": {k: str(v) for k, v in plots.items()},
        "queue_plots": queue_plots,
        "thresholds_file": str(target),
    }
    (out_dir / "report.json").write_text(
        json.dumps(report_json, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / "report.md").write_text(
        _report_md(result, current, current_from, s, y, provenance, warnings, target),
        encoding="utf-8",
    )

    click.echo(
        f"pairs: {rec.pairs} ({rec.positives} duplicates, {rec.negatives} not)   "
        f"model: {model}   ROC AUC: {rec.auc:.4f}"
    )
    click.echo(
        f"targets: precision ≥ {target_precision} at duplicate (≥ {min_support} pairs above), "
        f"recall ≥ {target_recall} at suggest"
    )
    click.echo("")
    click.echo(_text_table(_HEAD, _table_rows(rec, current, s, y)))
    if per_queue:
        click.echo("")
        click.echo(_text_table(_QUEUE_HEAD, _queue_rows(result)))
        if result.fell_back:
            click.echo(f"queues on the default thresholds: {', '.join(sorted(result.fell_back))}")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if not rec.precision_reached:
        click.echo(
            f"WARNING: precision target {target_precision} not reached: see the notes", err=True
        )
    for note in rec.notes:
        click.echo(f"note: {note}")
    for queue, qrec in sorted(result.queues.items()):
        for note in qrec.notes:
            click.echo(f"note: queue {queue}: {note}")
    click.echo("")
    click.echo(f"plots:  {', '.join(str(p) for p in plots.values())}")
    click.echo(f"report: {out_dir / 'report.md'}, {out_dir / 'report.json'}")
    click.echo(f"thresholds file: {target}")
    click.echo("point the worker at it with:")
    click.echo(f"{ENV_NAME}={target}")


if __name__ == "__main__":
    calibrate()
