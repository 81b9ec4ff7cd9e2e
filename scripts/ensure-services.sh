#!/usr/bin/env bash
# Make sure the services the test suite talks to are up: PostgreSQL, Redis and a Docker engine.
# Idempotent; starts what is installed but stopped, installs what is missing (Debian, as root).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

wait_for() {  # wait_for NAME SECONDS CMD...
  local name=$1 seconds=$2; shift 2
  for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && { echo "$name: up"; return 0; }; sleep 1; done
  echo "$name: not reachable after ${seconds}s" >&2; return 1
}

if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  echo "PostgreSQL: starting"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
wait_for PostgreSQL 30 pg_isready -h 127.0.0.1 -p 5432

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  echo "Redis: starting"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
wait_for Redis 30 redis-cli -h 127.0.0.1 ping

# Headless Chromium for the browser tests (backend/tests/browser): Debian's package, not Playwright's download.
if [ ! -x /usr/bin/chromium ]; then
  echo "Chromium: installing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
/usr/bin/chromium --version 2>/dev/null | head -n1 || true

# A real container registry (distribution 2.8, Debian's docker-registry) and htpasswd, for the registry and
# private-image tests (backend/tests/registry_fixtures.py starts its own on loopback ports).
if [ ! -x /usr/bin/docker-registry ] || ! command -v htpasswd >/dev/null 2>&1; then
  echo "docker-registry: installing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q docker-registry apache2-utils >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q docker-registry apache2-utils >/dev/null; }
fi

# nginx (Debian's), for the two-replica test behind the production proxy's configuration
# (backend/tests/celery/test_two_replicas.py runs its own on a loopback port; the package's service is not started).
if [ ! -x /usr/sbin/nginx ]; then
  echo "nginx: installing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q nginx-light >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; }
fi

if [ -f "$here/setup-docker.sh" ]; then
  bash "$here/setup-docker.sh"
fi

# The stand-in base images of the production compose (no registry here), for
# backend/tests/docker/test_production_compose.py: built once (a few minutes), then skipped.
if [ -f "$here/build-offline-images.sh" ]; then
  bash "$here/build-offline-images.sh" --no-env-file >/dev/null
fi
