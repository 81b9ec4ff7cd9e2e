# WindFlow backend image: the API and UI (`python -m backend.app.main`), Celery workers
# (`celery -A backend.app.celery_app worker`) and the beat scheduler (`celery -A backend.app.celery_app beat`).
#
#   docker build -t windflow-backend:latest .          # or: docker compose build
#   docker compose up -d                                # see docker-compose.yml and docs/operations.md
#
# The image drives the host's Docker engine through a mounted /var/run/docker.sock with the docker CLI and
# the compose v2 plugin. Processes run as the unprivileged user `windflow` (uid 10001): the entrypoint
# starts as root only to add the socket's group to that user, then drops privileges (see
# deploy/docker-entrypoint.sh). Anyone who can use the socket controls the host, so this limits what a
# compromised process can do inside the container, not on the host.

# The base image is a build argument. It must be Debian 13 "trixie" with `python` and `pip` first on PATH:
# its docker-cli and docker-compose (the compose v2 CLI plugin) packages are what the engines in
# backend/app/engines drive (Debian 12 ships compose v1 only). Where no registry is reachable,
# `bash scripts/build-offline-images.sh` builds windflow-offline/python:3.13-trixie from Debian's packages
# and docker-compose.yml passes it (WINDFLOW_PYTHON_IMAGE).
ARG PYTHON_IMAGE=python:3.11-slim-trixie
FROM ${PYTHON_IMAGE}

# A package index other than PyPI (a mirror or a proxy) can be given with --build-arg.
ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# docker-cli + docker-compose: compose and swarm targets; openssh-client: ssh:// targets;
# tini: PID 1 that forwards signals and reaps the CLIs' orphaned children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates docker-cli docker-compose openssh-client tini \
    && rm -rf /var/lib/apt/lists/* \
    && docker --version \
    && docker compose version

RUN groupadd --system --gid 10001 windflow \
    && useradd --system --uid 10001 --gid windflow --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin windflow

# The package (with its Alembic migrations), from pyproject.toml. Its pinned dependencies go first, in
# their own layer, so that a code change does not reinstall them.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY backend ./backend
RUN pip install . \
    && rm -rf /src

WORKDIR /app
COPY stacks_definitions ./stacks_definitions
# frontend/dist is optional (build it first with `make frontend` to serve the UI). The
# glob matches nothing when it is absent and pyproject.toml keeps the COPY from having no source at all.
COPY pyproject.toml frontend/dis[t] ./frontend/dist/
COPY deploy/docker-entrypoint.sh /usr/local/bin/windflow-entrypoint
COPY deploy/healthcheck.py /usr/local/bin/windflow-healthcheck
COPY deploy/supervise.py /usr/local/bin/windflow-supervise
RUN rm ./frontend/dist/pyproject.toml \
    && chmod 0755 /usr/local/bin/windflow-entrypoint /usr/local/bin/windflow-healthcheck /usr/local/bin/windflow-supervise \
    && mkdir -p data/deployments logs \
    && chown windflow:windflow /app /app/data /app/data/deployments /app/logs

# The package is installed in site-packages, so every path setting is given explicitly. The SQLite default
# makes `docker run` work on its own; docker-compose.yml uses PostgreSQL (.env.prod).
ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL=sqlite+aiosqlite:////app/data/windflow.db \
    DEPLOYMENTS_WORKDIR=/app/data/deployments \
    STACKS_DEFINITIONS_DIR=/app/stacks_definitions \
    FRONTEND_DIST=/app/frontend/dist

EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 CMD ["windflow-healthcheck"]

ENTRYPOINT ["tini", "--", "windflow-entrypoint"]
CMD ["python", "-m", "backend.app.main"]
