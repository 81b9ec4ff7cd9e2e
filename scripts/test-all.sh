#!/usr/bin/env bash
# `make test`: every test, in four streams that run at the same time (most of the suite waits on Docker, Celery
# workers and brokers, timers and Chromium):
#   celery: backend/tests/celery (real workers and beat on both brokers, kills, restarts, replicas);
#   docker: backend/tests/docker (deployments on the real engine, registries, the production compose);
#   rest:   ruff (lint and format), then every other pytest test;
#   ui:     the frontend (ESLint, Prettier, vue-tsc, vitest), then the browser tests (Chromium).
# The streams share nothing that matters: each test creates its own databases, deployments are labelled by id,
# the remote engine runs in a namespace named after its pytest process, swarm mode is taken in turn (a file
# lock), and each stream has its own Redis database. Each stream's output goes to test-output/ and is printed
# when all are done (with the slowest tests of each); the exit status is non-zero if any stream failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTEST=("$PY" -m pytest -q -p no:cacheprovider --durations=15)
REDIS_DB=${WINDFLOW_TEST_REDIS_DB:-11}
mkdir -p test-output
started=$(date +%s)

declare -A pids
run() {  # run NAME REDIS_DB COMMAND...: one stream in the background
    local name=$1 db=$2
    shift 2
    (WINDFLOW_TEST_REDIS_DB=$db "$@") > "test-output/tests-$name.log" 2>&1 &
    pids[$name]=$!
}

# Four streams: more of them on 2 cores only raised the load (about 11 with seven) and with it the timing of the
# fault tests (kills, restarts, engine calls under load).
run celery "$REDIS_DB" "${PYTEST[@]}" backend/tests/celery
run docker $((REDIS_DB - 2)) "${PYTEST[@]}" backend/tests/docker
run rest $((REDIS_DB - 1)) bash -c 'make --no-print-directory lint && "$@"' _ "${PYTEST[@]}" backend/tests \
    --ignore=backend/tests/browser --ignore=backend/tests/celery --ignore=backend/tests/docker
run ui $((REDIS_DB - 5)) make --no-print-directory test-frontend test-browser

status=0
summary=""
for name in celery docker rest ui; do
    wait "${pids[$name]}"
    code=$?
    [ "$code" -eq 0 ] || status=1
    summary+="$name: exit $code; "
done
for name in celery docker rest ui; do
    echo "===== $name (test-output/tests-$name.log)"
    cat "test-output/tests-$name.log"
done
echo "===== ${summary}$(( $(date +%s) - started )) s in all"
exit $status
