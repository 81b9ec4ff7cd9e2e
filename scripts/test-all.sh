#!/usr/bin/env bash
# `make test`: every test, in seven streams that run at the same time. Most of the suite waits (on Docker, on
# Celery workers and brokers, on timers, on Chromium), so the streams finish in a fraction of the time even on a
# 2-core machine:
#   celery-a, celery-b: backend/tests/celery (real workers and beat on both brokers, kills, restarts, replicas);
#   docker-a, docker-b: backend/tests/docker (deployments on the real engine, registries, the production compose);
#   rest-a:             backend/tests/security and the integration files named below;
#   rest-b:             ruff (lint and format), then every other pytest test;
#   ui:                 the frontend (ESLint, Prettier, vue-tsc, vitest), then the browser tests (Chromium).
# Each "-a" stream runs the files named below; its "-b" stream runs every other file of the folder, so a new
# test file always runs somewhere. The streams share nothing that matters: each test creates its own databases,
# deployments are labelled by id, the remote engine runs in a namespace named after its pytest process, swarm
# mode is taken in turn (a file lock), and each stream has its own Redis database. Each stream's output goes to
# test-output/ and is printed when all are done (with the slowest tests of each); the exit status is non-zero if
# any stream failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTEST=("$PY" -m pytest -q -p no:cacheprovider --durations=15)
REDIS_DB=${WINDFLOW_TEST_REDIS_DB:-11}
mkdir -p test-output
started=$(date +%s)

# The files of the "-a" streams (about half of each folder's time).
CELERY_A=(test_celery_execution.py test_worker_health.py test_sql_broker.py test_spec_commands.py)
INTEGRATION_A=(test_auth.py test_state_machine.py test_stacks_api.py test_watch_transitions.py test_targets_api.py
    test_schemathesis.py)
DOCKER_A=(test_production_compose.py test_deployments.py test_remote_and_swarm.py test_swarm_registry_auth.py
    test_remote_engine_isolation.py test_no_shared_disk.py test_database_restart_deployment.py)

# `split DIR a|b FILE...`: the pytest arguments of DIR's part a (the files) or part b (the folder without them).
split() {
    local dir=$1 part=$2 file
    shift 2
    if [ "$part" = a ]; then
        for file in "$@"; do echo "$dir/$file"; done
    else
        echo "$dir"
        for file in "$@"; do echo "--ignore=$dir/$file"; done
    fi
}

declare -A pids
run() {  # run NAME REDIS_DB COMMAND...: one stream in the background
    local name=$1 db=$2
    shift 2
    (WINDFLOW_TEST_REDIS_DB=$db "$@") > "test-output/tests-$name.log" 2>&1 &
    pids[$name]=$!
}

mapfile -t celery_a < <(split backend/tests/celery a "${CELERY_A[@]}")
mapfile -t celery_b < <(split backend/tests/celery b "${CELERY_A[@]}")
mapfile -t docker_a < <(split backend/tests/docker a "${DOCKER_A[@]}")
mapfile -t docker_b < <(split backend/tests/docker b "${DOCKER_A[@]}")
mapfile -t integration_a < <(split backend/tests/integration a "${INTEGRATION_A[@]}")
mapfile -t integration_b < <(split backend/tests/integration b "${INTEGRATION_A[@]}")

run celery-a "$REDIS_DB" "${PYTEST[@]}" "${celery_a[@]}"
run celery-b $((REDIS_DB - 3)) "${PYTEST[@]}" "${celery_b[@]}"
run docker-a $((REDIS_DB - 2)) "${PYTEST[@]}" "${docker_a[@]}"
run docker-b $((REDIS_DB - 4)) "${PYTEST[@]}" "${docker_b[@]}"
run rest-a $((REDIS_DB - 6)) "${PYTEST[@]}" backend/tests/security "${integration_a[@]}"
run rest-b $((REDIS_DB - 1)) bash -c 'make --no-print-directory lint && "$@"' _ "${PYTEST[@]}" backend/tests \
    --ignore=backend/tests/browser --ignore=backend/tests/celery --ignore=backend/tests/docker \
    --ignore=backend/tests/security "${integration_a[@]/#/--ignore=}"
run ui $((REDIS_DB - 5)) make --no-print-directory test-frontend test-browser

status=0
summary=""
for name in celery-a celery-b docker-a docker-b rest-a rest-b ui; do
    wait "${pids[$name]}"
    code=$?
    [ "$code" -eq 0 ] || status=1
    summary+="$name: exit $code; "
done
for name in celery-a celery-b docker-a docker-b rest-a rest-b ui; do
    echo "===== $name (test-output/tests-$name.log)"
    cat "test-output/tests-$name.log"
done
echo "===== ${summary}$(( $(date +%s) - started )) s in all"
exit $status
