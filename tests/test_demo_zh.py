"""The Chinese demo set: hand-written tickets, their duplicate clusters, the seed's examples."""

from __future__ import annotations

from collections import Counter

from cli.demo import labels_path, read_labels, sample_path
from producer.importer import RowError, read_tickets

SEED = ("用户反映APP登录后闪退", "订单支付成功但未扣款", "用户说安卓APP点登录就崩溃")


def test_chinese_sample_reads_clean_and_its_labels_resolve() -> None:
    file = sample_path("zh")
    assert file.name == "demo_tickets_zh.csv"
    rows = list(read_tickets(file, source="demo"))
    errors = [r for r in rows if isinstance(r, RowError)]
    assert errors == []
    tickets = {r.key.ticket_id: r for r in rows if not isinstance(r, RowError)}
    assert len(tickets) >= 150
    labels = read_labels(labels_path(file))
    assert labels_path(sample_path("en")).name == "demo_labels.csv"
    assert set(labels) <= set(tickets)
    sizes = Counter(labels.values())
    assert len(sizes) >= 25 and min(sizes.values()) >= 2
    bodies = {t.body: tid for tid, t in tickets.items()}
    for text in SEED:
        assert text in bodies
    # The seed's new ticket arrives after the ticket it must find, in the same cluster.
    first, new = bodies[SEED[0]], bodies[SEED[2]]
    assert first < new and labels[first] == labels[new]
