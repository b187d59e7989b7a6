# wamid-guard: one image for every command (`run`, `migrate`, `tail`, `produce`).
#   docker build -t wamid-guard .
#   docker run --rm wamid-guard --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Build from a scratch directory; all dependencies (asyncpg, orjson, ...) ship as wheels,
# so no compiler is needed. README.md is the project's `readme` and must be present for
# the build; schemas/ is copied so the contract ships next to the code that produces it.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consumer/ consumer/
COPY schemas/ schemas/
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app --create-home --shell /usr/sbin/nologin wamid

# Run from a directory without the sources, so `python -m consumer` imports the installed
# package (migrations are package data) rather than /src/consumer.
WORKDIR /app
USER wamid

# Liveness of a `run` container: GET /healthz on METRICS_HOST:METRICS_PORT (127.0.0.1 when
# the host is a wildcard), healthy while the poll loop keeps coming round. Not readiness:
# /readyz also fails while Redis or the database is down or a rebalance is in progress,
# which restarting cannot fix (docs/operations.md, "Health"). `|| exit 1` because Docker
# reserves exit code 2, which the CLI uses for a bad configuration. One-shot commands
# (migrate, tail, produce, dlq) serve no endpoint: run them with --no-healthcheck, or
# `healthcheck: disable: true` in compose; with METRICS_PORT=0 turn the check off too.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD python -m consumer health --live || exit 1

# The CLI installs SIGTERM/SIGINT handlers itself (graceful drain within SHUTDOWN_GRACE_S).
ENTRYPOINT ["python", "-m", "consumer"]
CMD ["run"]
