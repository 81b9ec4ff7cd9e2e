#!/usr/bin/env bash
# `make test`: every test, in three streams that run at the same time (most of the suite waits on Docker,
# Celery workers and brokers, so the streams finish in about a third of the time even on a 2-core machine):
#   celery:  backend/tests/celery (real workers and beat on both brokers, kills, restarts);
#   docker:  backend/tests/docker (deployments on the real engine, registries, the production compose);
#   rest:    ruff (lint and format), every other pytest test, then the frontend (ESLint, Prettier, vue-tsc,
#            vitest) and the browser tests (Chromium).
# The streams share nothing that matters: each test creates its own databases, deployments are labelled by
# id, the remote engine runs in a namespace named after its pytest process, swarm mode is taken in turn (a
# file lock), and each stream has its own Redis database. Each stream's output goes to test-output/ and is
# printed when all are done (with the slowest tests of each); the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTEST=("$PY" -m pytest -q -p no:cacheprovider --durations=15)
REDIS_DB=${WINDFLOW_TEST_REDIS_DB:-11}
mkdir -p test-output
started=$(date +%s)

WINDFLOW_TEST_REDIS_DB=$REDIS_DB "${PYTEST[@]}" backend/tests/celery > test-output/tests-celery.log 2>&1 &
celery=$!
WINDFLOW_TEST_REDIS_DB=$((REDIS_DB - 2)) "${PYTEST[@]}" backend/tests/docker > test-output/tests-docker.log 2>&1 &
docker=$!
(
    make --no-print-directory lint \
    && WINDFLOW_TEST_REDIS_DB=$((REDIS_DB - 1)) "${PYTEST[@]}" backend/tests \
        --ignore=backend/tests/browser --ignore=backend/tests/celery --ignore=backend/tests/docker \
    && make --no-print-directory test-frontend test-browser
) > test-output/tests-rest.log 2>&1 &
rest=$!

wait $celery; celery_status=$?
wait $docker; docker_status=$?
wait $rest; rest_status=$?
for stream in celery docker rest; do
    echo "===== $stream (test-output/tests-$stream.log)"
    cat "test-output/tests-$stream.log"
done
echo "===== celery: exit $celery_status; docker: exit $docker_status; rest: exit $rest_status; $(( $(date +%s) - started )) s in all"
[ "$celery_status" -eq 0 ] && [ "$docker_status" -eq 0 ] && [ "$rest_status" -eq 0 ]
