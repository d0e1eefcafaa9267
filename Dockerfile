# The credit-sidecar image: `credit-sidecar serve` by default; the same image runs `writer`,
# `worker`, `migrate` and the other commands (see docker-compose.yml).
#
#   docker build -t credit-sidecar .
#
# Set SIDECAR_REDIS_URL and SIDECAR_DATABASE_URL: without them `serve` starts its embedded
# Redis and keeps a SQLite ledger in the data dir, which then needs a volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what `pip install .` needs (no .venv, .data or tests in the build context's layers).
# One package: the Lua scripts are package data of `sidecar.lua`, the Alembic migrations come
# with `sidecar.persistence`.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
RUN pip install . \
    && cd / && rm -rf /src \
    && python -c "from sidecar.lua import source; source('deduct')" \
    && credit-sidecar --version

# A non-root user; its home is the data dir (generated tokens, the SQLite file if no
# SIDECAR_DATABASE_URL is set).
RUN useradd --system --uid 10001 --user-group --create-home \
        --home-dir /var/lib/credit-sidecar credit
USER credit
WORKDIR /var/lib/credit-sidecar

ENV SIDECAR_LISTEN=0.0.0.0:8080 \
    SIDECAR_DATA_DIR=/var/lib/credit-sidecar
EXPOSE 8080

CMD ["credit-sidecar", "serve"]
