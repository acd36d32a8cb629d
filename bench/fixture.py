"""One synthetic ticket history, reused by every at-scale figure: SQL rows + a Chroma store.

    nice -n 10 python bench/fixture.py --out /work/fixtures/bench --sizes 10000,100000,1000000 \
        --json bench/results/fixture-build.json

Ticket ``i`` is the same at every size, so the 10k and 100k fixtures are prefixes of the 1M
one. Each size gets:

- a PostgreSQL database (``--database`` with ``{size}`` filled in, e.g. ``bench_1m``) brought to
  the schema by the product's own migrations (tickets/migrate.py), holding one
  ``triage_tickets`` row and one ``triage_decisions`` row per ticket, written with COPY, then
  analysed (the planner statistics a deployment's autovacuum keeps);
- a collection (``bench-10k`` ...) in one embedded Chroma directory, ``OUT/chroma``, opened by
  the product's ``open_store`` (so its metadata is what a worker checks) and filled with
  ``add`` calls of 5,000 vectors (Chroma's largest write batch). ``chroma run --path OUT/chroma``
  then serves every size at once; a worker picks one with TRIAGE_CHROMA_COLLECTION.

The vectors are clustered like paraphrases: ``--clusters`` random unit centres (20,000), each
ticket its cluster's centre plus Gaussian noise of a per-ticket scale (0.012-0.035 per
dimension), normalised. Two tickets of one cluster then have a cosine of about
1 / sqrt((1 + 384 s1²)(1 + 384 s2²)): from ≈ 0.95 (both close) down to ≈ 0.68, so some pairs
are over a duplicate threshold of 0.85 and most are not; tickets of different clusters are
near 0. The text is ticket-like for BM25: a subject of 6 words and a body of 20-70 words, each
word drawn from the cluster's own 8 identifier-like words (a quarter of them) or a shared
vocabulary of 3,000 words with Zipf frequencies; so a cluster's tickets share rare terms as
real duplicates share error codes and class names.

Decision rows follow the vectors: a cluster's first ticket is ``manual`` (nothing like it
yet); a later one is a ``duplicate`` of it at cosine ≥ 0.85, ``suggest`` at ≥ 0.65, else
``manual``. The fixture is built
with the embedded client because a `chroma run` server ingests ≈ 550 vectors/s over HTTP.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

DIM = 384
CHUNK = 10_000  # tickets generated per deterministic chunk: every size is a whole number of chunks
SOURCE = "bench"
QUEUES = ("billing", "network", "accounts", "mobile", "email", "storage", "printing", "vpn")
DUPLICATE, SUGGEST = 0.85, 0.65
VOCAB = 3_000
CLUSTER_WORDS = 8
MODEL_FALLBACK = "all-MiniLM-L6-v2"

_TICKET_WORDS = (  # noqa: SIM905
    "error cannot login password reset account locked failed timeout server connection "
    "network slow crash update install printer email outlook vpn wifi disk full backup "
    "restore permission denied access page blank screen freeze invoice payment refund "
    "charge billing subscription cancel upgrade license key expired certificate ssl "
    "browser chrome firefox mobile app android iphone sync calendar meeting link broken "
    "upload download file attachment size limit report export import csv excel database "
    "query missing data duplicate order shipping delivery address phone number verify "
    "code token session logout keyboard mouse monitor display driver audio camera "
    "microphone teams zoom slack notification alert spam folder share drive quota"
).split()


def size_label(n: int) -> str:
    """10k, 100k, 1m: the size in database and collection names (tiny test sizes: as is)."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _pseudo_words(rng: np.random.Generator, n: int, lengths: tuple[int, int]) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        k = int(rng.integers(lengths[0], lengths[1] + 1))
        word = "".join(syllables[j] for j in rng.integers(0, len(syllables), k))
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


@dataclass
class Generator:
    """Ticket ``i``'s cluster, vector and text, the same whatever the size built."""

    seed: int = 16
    clusters: int = 20_000

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        centres = rng.standard_normal((self.clusters, DIM), dtype=np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        common = _TICKET_WORDS + _pseudo_words(rng, VOCAB - len(_TICKET_WORDS), (2, 3))
        self.vocab = np.array(common, dtype=object)
        zipf = 1.0 / np.arange(1, VOCAB + 1) ** 1.07
        self.zipf = zipf / zipf.sum()
        # Identifier-like words: a cluster's own error code / component names.
        ids = _pseudo_words(rng, self.clusters * CLUSTER_WORDS, (3, 4))
        self.cluster_words = np.array(
            [f"{w}{j % 100}" if j % 3 == 0 else w for j, w in enumerate(ids)], dtype=object
        ).reshape(self.clusters, CLUSTER_WORDS)

    def chunk(self, c: int) -> dict[str, Any]:
        """Tickets c*CHUNK .. (c+1)*CHUNK-1."""
        rng = np.random.default_rng([self.seed, c])
        n = CHUNK
        cluster = rng.integers(0, self.clusters, n)
        scale = rng.uniform(0.012, 0.035, n).astype(np.float32)
        raw = self.centres[cluster] + scale[:, None] * rng.standard_normal((n, DIM), np.float32)
        vectors = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
        body_len = rng.integers(20, 71, n)
        common = self.vocab[rng.choice(VOCAB, size=(n, 76), p=self.zipf)]
        own = self.cluster_words[cluster[:, None], rng.integers(0, CLUSTER_WORDS, (n, 76))]
        pick_own = rng.random((n, 76)) < 0.25
        words = np.where(pick_own, own, common)
        subjects, bodies = [], []
        for k in range(n):
            row = words[k]
            subjects.append(" ".join(row[:6]).capitalize())
            bodies.append(" ".join(row[6 : 6 + body_len[k]]).capitalize() + ".")
        return {
            "ids": np.arange(c * n, (c + 1) * n),
            "cluster": cluster,
            "vectors": vectors,
            "subjects": subjects,
            "bodies": bodies,
        }

    def tickets(self, start_chunk: int, chunks: int) -> Iterator[dict[str, Any]]:
        for c in range(start_chunk, start_chunk + chunks):
            yield self.chunk(c)


def ticket_id(i: int) -> str:
    return f"t{i:07d}"


def queue_of(cluster: int) -> str:
    return QUEUES[cluster % len(QUEUES)]


class Router:
    """The fixture's decisions: each cluster's first ticket is its canonical."""

    def __init__(self) -> None:
        self.first: dict[int, tuple[str, np.ndarray]] = {}
        self.routes: list[str] = []

    def route(self, i: int, cluster: int, vector: np.ndarray) -> tuple[str, str, float | None]:
        first = self.first.get(cluster)
        if first is None:
            self.first[cluster] = (ticket_id(i), vector)
            self.routes.append("manual")
            return "manual", ticket_id(i), None
        score = float(vector @ first[1])
        route = "duplicate" if score >= DUPLICATE else "suggest" if score >= SUGGEST else "manual"
        self.routes.append(route)
        return route, first[0] if route == "duplicate" else ticket_id(i), score


# --- SQL --------------------------------------------------------------------------------------


def pg_url(template: str, n: int) -> str:
    return template.format(size=size_label(n))


def create_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


TICKET_COLS = (
    "source, ticket_id, subject, body, queue, tags, created_at, received_at, content_hash, "
    "backfill, model, stored_at"
)
DECISION_COLS = (
    "source, ticket_id, route, score, matched_source, matched_ticket_id, canonical_source, "
    "canonical_ticket_id, matches, ranked_by, model, duplicate_threshold, suggest_threshold, "
    "queue, subject, received_at, decided_at, latency_ms"
)


def write_sql(conn: Any, chunk: dict[str, Any], router: Router, model: str) -> list[dict[str, Any]]:
    """COPY one chunk's ticket and decision rows; return each ticket's vector metadata."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    metas = []
    with conn.cursor() as cur:
        with cur.copy(f"COPY triage_tickets ({TICKET_COLS}) FROM STDIN") as copy:
            for k, i in enumerate(chunk["ids"]):
                at = base + timedelta(seconds=int(i))
                body = chunk["bodies"][k]
                copy.write_row(
                    (
                        SOURCE,
                        ticket_id(int(i)),
                        chunk["subjects"][k],
                        body,
                        queue_of(int(chunk["cluster"][k])),
                        "[]",
                        at,
                        at,
                        hashlib.sha256(body.encode()).hexdigest(),
                        False,
                        model,
                        at,
                    )
                )
        with cur.copy(f"COPY triage_decisions ({DECISION_COLS}) FROM STDIN") as copy:
            for k, i in enumerate(chunk["ids"]):
                at = base + timedelta(seconds=int(i))
                tid = ticket_id(int(i))
                cluster = int(chunk["cluster"][k])
                route, canonical, score = router.route(int(i), cluster, chunk["vectors"][k])
                matched = router.first[cluster][0] if score is not None else None
                matches = (
                    [{"source": SOURCE, "ticket_id": matched, "score": round(score, 6)}]
                    if score is not None
                    else []
                )
                copy.write_row(
                    (
                        SOURCE,
                        tid,
                        route,
                        None if score is None else round(score, 6),
                        SOURCE if matched else None,
                        matched,
                        SOURCE,
                        canonical,
                        json.dumps(matches),
                        "cosine",
                        model,
                        DUPLICATE,
                        SUGGEST,
                        queue_of(cluster),
                        chunk["subjects"][k],
                        at,
                        at + timedelta(milliseconds=150),
                        150,
                    )
                )
                metas.append(
                    {
                        "source": SOURCE,
                        "ticket_id": tid,
                        "canonical_source": SOURCE,
                        "canonical_ticket_id": canonical,
                        "route": route,
                        "readable": True,
                    }
                )
    conn.commit()
    return metas


# --- build ------------------------------------------------------------------------------------


def open_collection(chroma_dir: Path, name: str) -> Any:
    """The product's store on ``chroma_dir``, with the metadata a worker checks."""
    from config.settings import load_settings
    from worker.embedding import make_embedder
    from worker.store import open_store

    settings = load_settings(chroma_path=chroma_dir, chroma_collection=name, chroma_url=None)
    embedder = make_embedder(settings)
    return open_store(settings, embedder), embedder.model_id


def build(n: int, args: argparse.Namespace, gen: Generator) -> dict[str, Any]:
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from tickets import migrate

    url = pg_url(args.database, n)
    create_database(url)
    engine = create_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    collection = f"bench-{size_label(n)}"
    store, model = open_collection(args.out / "chroma", collection)
    if args.no_chroma:
        store.close()
        store = None
    elif store.count():
        raise SystemExit(f"collection {collection} is not empty: remove {args.out / 'chroma'}")
    parsed = make_url(url)
    conn = psycopg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username, dbname=parsed.database
    )
    router = Router()
    start = time.perf_counter()
    t_gen = t_sql = t_chroma = 0.0
    done = 0
    for c in range(-(-n // CHUNK)):
        t0 = time.perf_counter()
        chunk = gen.chunk(c)
        if n < CHUNK:  # a tiny fixture (the smoke test): the first n tickets
            chunk = {k: v[:n] for k, v in chunk.items()}
        t1 = time.perf_counter()
        metas = write_sql(conn, chunk, router, model)
        t2 = time.perf_counter()
        ids = [f"{SOURCE}:{ticket_id(int(i))}" for i in chunk["ids"]]
        for s in range(0, len(ids) if store is not None else 0, 5000):
            store._collection.add(
                ids=ids[s : s + 5000],
                embeddings=chunk["vectors"][s : s + 5000],
                metadatas=metas[s : s + 5000],
            )
        t3 = time.perf_counter()
        t_gen, t_sql, t_chroma = t_gen + t1 - t0, t_sql + t2 - t1, t_chroma + t3 - t2
        done += len(ids)
        if done % 100_000 == 0 or done == n:
            print(
                f"  {size_label(n)}: {done} tickets, {t3 - start:.0f} s (generate {t_gen:.0f} s, "
                f"sql {t_sql:.0f} s, chroma {t_chroma:.0f} s; chroma now "
                f"{len(ids) / (t3 - t2):.0f} vectors/s)",
                flush=True,
            )
    # The planner statistics autovacuum would gather after such a load: without them the
    # catch-up's `id > W` is estimated at a third of the table and read by a sequential scan
    # (46 ms at 100k instead of 0.3), a figure of the fixture, not of a running deployment.
    conn.execute("ANALYZE triage_tickets")
    conn.execute("ANALYZE triage_decisions")
    conn.commit()
    conn.close()
    total = time.perf_counter() - start
    count = store.count() if store is not None else 0
    if store is not None:
        store.close()
    sql_bytes = _database_bytes(url)
    routes: dict[str, int] = {}
    for route in router.routes:
        routes[route] = routes.get(route, 0) + 1
    return {
        "size": n,
        "database": url,
        "collection": collection,
        "stored_vectors": count,
        "build_s": round(total, 1),
        "generate_s": round(t_gen, 1),
        "sql_s": round(t_sql, 1),
        "chroma_s": round(t_chroma, 1),
        "database_mib": round(sql_bytes / 2**20, 1),
        "clusters_used": len(router.first),
        **{f"routes_{k}": v for k, v in routes.items()},
    }


def _database_bytes(url: str) -> int:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(url)
    with engine.connect() as conn:
        size = conn.execute(
            text("SELECT pg_database_size(:d)"), {"d": make_url(url).database}
        ).scalar_one()
    engine.dispose()
    return int(size)


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/work/fixtures/bench"))
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument(
        "--database",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/bench_{size}",
        help="SQLAlchemy URL; {size} becomes 10k / 100k / 1m",
    )
    p.add_argument("--clusters", type=int, default=20_000)
    p.add_argument(
        "--no-chroma", action="store_true", help="SQL rows only (the collection stays empty)"
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(n % CHUNK and n > CHUNK for n in sizes):
        raise SystemExit(f"sizes must be multiples of {CHUNK}, or less than it")
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {os.cpu_count()} cores; python {platform.python_version()}; "
        f"chromadb {metadata.version('chromadb')}; numpy {np.__version__}; "
        f"clusters {args.clusters}; nice {os.nice(0)}",
        flush=True,
    )
    gen = Generator(clusters=args.clusters)
    results = []
    for n in sizes:
        r = build(n, args, gen)
        r["chroma_dir_mib_after"] = round(dir_mib(args.out / "chroma"), 1)
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.json:
        previous = json.loads(args.json.read_text())["results"] if args.json.exists() else []
        results = [*(r for r in previous if r["size"] not in sizes), *results]
        args.json.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    # Run as a script: the product is this checkout's. Imported (bench/critical_section.py),
    # the importer has put the checkout under test first on the path.
    sys.path.insert(0, str(ROOT))
    main()
