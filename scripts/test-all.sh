#!/usr/bin/env bash
# `make test`: every test, in two streams that run at the same time (most of the suite waits on Docker,
# Celery workers and brokers, so two streams finish in about half the time on a 2-core machine):
#   engines: backend/tests/celery and backend/tests/docker (real workers, beat, deployments);
#   rest:    ruff (lint and format), every other pytest test, then the frontend (ESLint, Prettier, vue-tsc,
#            vitest) and the browser tests (Chromium).
# The streams share nothing that matters: each test creates its own databases, deployments are labelled by
# id, the remote engine runs in a namespace named after its pytest process, swarm mode is taken in turn (a
# file lock), and each stream has its own Redis database. Each stream's output goes to test-output/ and is
# printed when both are done; the exit status is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
REDIS_DB=${WINDFLOW_TEST_REDIS_DB:-11}
mkdir -p test-output
started=$(date +%s)

WINDFLOW_TEST_REDIS_DB=$REDIS_DB "${PYTEST[@]}" backend/tests/celery backend/tests/docker \
    > test-output/tests-engines.log 2>&1 &
engines=$!
(
    make --no-print-directory lint \
    && WINDFLOW_TEST_REDIS_DB=$((REDIS_DB - 1)) "${PYTEST[@]}" backend/tests \
        --ignore=backend/tests/browser --ignore=backend/tests/celery --ignore=backend/tests/docker \
    && make --no-print-directory test-frontend test-browser
) > test-output/tests-rest.log 2>&1 &
rest=$!

wait $engines; engines_status=$?
wait $rest; rest_status=$?
for stream in engines rest; do
    echo "===== $stream (test-output/tests-$stream.log)"
    cat "test-output/tests-$stream.log"
done
echo "===== engines: exit $engines_status; rest: exit $rest_status; $(( $(date +%s) - started )) s in all"
[ "$engines_status" -eq 0 ] && [ "$rest_status" -eq 0 ]
