"""One ``APIRouter`` per area: tickets (ingest), webhooks, decisions (read API and feedback),
ops (health, status, metrics, docs) and the dashboard."""
