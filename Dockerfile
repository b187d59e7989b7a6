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

# The CLI installs SIGTERM/SIGINT handlers itself (graceful drain within SHUTDOWN_GRACE_S).
ENTRYPOINT ["python", "-m", "consumer"]
CMD ["run"]
