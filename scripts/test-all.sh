#!/usr/bin/env bash
# `make test`: every test, in six streams that run at the same time (most of the suite waits on Docker, Celery
# workers and brokers, timers and Chromium):
#   celery:   backend/tests/celery but the files of CELERY_B (real workers and beat on both brokers, kills, replicas);
#   celery-b: the frontend (ESLint, Prettier, vue-tsc, vitest), then the Celery files of CELERY_B (a pool that
#             cannot start tasks, database and broker restarts, the guide's commands, the SQL transport, two
#             replicas behind nginx);
#   docker:   backend/tests/docker (deployments on the real engine, registries, the production compose);
#   rest-a:   the integration tests test_a* to test_o*, then the security tests;
#   rest-b:   ruff (lint and format), then every other pytest test (integration from test_p*, unit, e2e);
#   ui:       the browser tests (Chromium).
# The summary line gives each stream's seconds. Evening their lengths out does not shorten the run: with the
# long files of docker and rest-a moved to the streams that ended first (celery, celery-b, rest-b), every stream
# ended at 982-1,029 s instead of 704-938 s (the machine's two cores are busy until the end either way). Once
# more with two Docker files (the production compose, a database restart) moved to celery-b: 994 s instead of
# 893-913 s, the production compose test taking 165 s beside the docker stream's engine work instead of 75 s in it.
# The celery stream runs every file of the folder but those named in CELERY_B, so a new test file always runs.
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

# Six streams, no more: the Celery folder alone took 864 s of a 1049 s run in four streams (the others 620 s at
# most), and most of its time is waiting (leases expiring, workers restarting), so a second Celery stream costs
# little CPU; the rest of the suite, one CPU-bound pytest process, ran alone for minutes after the others ended
# in five streams, so it is split in two. Seven streams raised the load on 2 cores to about 11 and with it the timing of the fault tests
# (kills, restarts, engine calls under load). The frontend checks (about 60 s of CPU) run in celery-b so that
# the browser tests start at once.
CELERY_B=(test_worker_health.py test_spec_commands.py test_sql_broker.py test_two_replicas.py)
celery_a=(backend/tests/celery)
celery_b=()
for file in "${CELERY_B[@]}"; do
    celery_a+=("--ignore=backend/tests/celery/$file")
    celery_b+=("backend/tests/celery/$file")
done

declare -A pids
run() {  # run NAME REDIS_DB COMMAND...: one stream in the background
    local name=$1 db=$2
    shift 2
    (
        WINDFLOW_TEST_REDIS_DB=$db "$@"
        code=$?
        echo $(($(date +%s) - started)) > "test-output/tests-$name.seconds"
        # the CPU seconds of the stream's processes (user + system, every descendant waited for; not the engine's)
        # (written by the builtin itself: in a pipe or a substitution it would count a subshell's children)
        times > "test-output/tests-$name.times"
        exit $code
    ) > "test-output/tests-$name.log" 2>&1 &
    pids[$name]=$!
}
# `both FIRST -- SECOND`: runs both commands whatever the first's outcome; fails if either failed
both() {
    local first=() code=0
    while [ "$1" != -- ]; do first+=("$1"); shift; done
    shift
    "${first[@]}" || code=1
    "$@" || code=1
    return $code
}

streams=(celery celery-b docker rest-a rest-b ui)
run celery "$REDIS_DB" "${PYTEST[@]}" "${celery_a[@]}"
run celery-b $((REDIS_DB - 3)) both make --no-print-directory test-frontend -- "${PYTEST[@]}" "${celery_b[@]}"
run docker $((REDIS_DB - 2)) "${PYTEST[@]}" backend/tests/docker
# The rest of the suite in two streams: one pytest process uses one core at most, and alone it was the last
# stream to end by minutes (1,874 tests). rest-a: the integration files test_a* to test_o*, then the security
# tests; rest-b: ruff, then the integration files from test_p*, the unit and e2e tests. In a CI run split at
# test_o* alone, the integration files test_a*-test_o* took 13 minutes, test_p*-test_stacks* 11 and the rest
# (the last integration files, security and unit) 13. A new file lands in one of them.
rest_a=() rest_b=()
for file in backend/tests/integration/test_*.py; do
    case "$(basename "$file")" in
        test_[a-o]*) rest_a+=("$file") ;;
        *) rest_b+=("$file") ;;
    esac
done
run rest-a $((REDIS_DB - 1)) "${PYTEST[@]}" "${rest_a[@]}" backend/tests/security
run rest-b $((REDIS_DB - 4)) bash -c 'make --no-print-directory lint && "$@"' _ "${PYTEST[@]}" "${rest_b[@]}" \
    backend/tests/unit backend/tests/e2e
run ui $((REDIS_DB - 5)) "${PYTEST[@]}" backend/tests/browser

status=0
summary=""
for name in "${streams[@]}"; do
    wait "${pids[$name]}"
    code=$?
    [ "$code" -eq 0 ] || status=1
    summary+="$name: exit $code after $(cat "test-output/tests-$name.seconds" 2>/dev/null || echo '?') s"
    summary+=" ($(awk 'NR == 2 { gsub(/[ms]/, " "); print int($1 * 60 + $2 + $3 * 60 + $4) }' "test-output/tests-$name.times" 2>/dev/null) s CPU); "
done
for name in "${streams[@]}"; do
    echo "===== $name (test-output/tests-$name.log)"
    cat "test-output/tests-$name.log"
done
echo "===== ${summary}$(( $(date +%s) - started )) s in all"
exit $status
