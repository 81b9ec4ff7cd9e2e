#!/bin/sh
# Entrypoint of the stand-in PostgreSQL image that scripts/build-offline-images.sh builds from Debian's
# postgresql-15 when no container registry is reachable. It does what docker-compose.yml relies on in the
# official image's entrypoint:
#   * POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_USER (default postgres),
#     POSTGRES_DB (default: the user), POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256);
#   * the cluster in PGDATA (/var/lib/postgresql/data), created on the first start only;
#   * listening on every interface, password authentication for every remote host;
#   * /docker-entrypoint-initdb.d/*.sql and *.sh run once, after the database is created;
#   * the server runs as the user `postgres`, in the foreground (`docker stop` sends SIGINT: fast shutdown).
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

case "${1:-}" in
    -*) set -- postgres "$@" ;;
esac

if [ "${1:-}" != "postgres" ]; then
    exec "$@"
fi

if [ "$(id -u)" = "0" ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    chmod 2775 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != "trust" ]; then
        echo "postgres-entrypoint: the database is uninitialised and POSTGRES_PASSWORD is not set" >&2
        echo "  (set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection)" >&2
        exit 1
    fi
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of options
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host="$auth" \
        ${POSTGRES_INITDB_ARGS:-} >/dev/null
    rm -f "$pwfile"
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
    printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"

    # Create the database and run the init scripts on a server that listens on its socket only.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    export PGUSER="$user" PGDATABASE=postgres
    if [ "$db" != "postgres" ]; then
        echo 'CREATE DATABASE :"db";' | psql -q -v ON_ERROR_STOP=1 -v db="$db"
    fi
    export PGDATABASE="$db"
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) echo "postgres-entrypoint: running $f"; . "$f" ;;
            *.sql) echo "postgres-entrypoint: running $f"; psql -q -v ON_ERROR_STOP=1 -f "$f" ;;
            *) ;;
        esac
    done
    unset PGUSER PGDATABASE
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres-entrypoint: database $db of user $user initialised in $PGDATA"
fi

exec "$@"
