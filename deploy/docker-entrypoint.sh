#!/bin/sh
# Entrypoint of the WindFlow image: run the command as the unprivileged user `windflow`.
#
# The Docker socket mounted at /var/run/docker.sock belongs to the host's `docker` group, whose id differs
# from host to host (999, 998, 117...). Started as root (the default), this script adds that group to the
# process, makes the writable directories the user's, then drops root with setpriv: no group id to
# configure and no root process left. Started as another user (`user:` in compose, `docker run --user`),
# it runs the command as is; that user then needs the socket's group itself (`group_add:`).
# WINDFLOW_RUN_AS=root keeps root (e.g. a rootless engine's socket that only its owner may open).
set -eu

APP_USER=windflow
SOCKET=${DOCKER_SOCKET:-/var/run/docker.sock}

if [ "$(id -u)" != "0" ] || [ "${WINDFLOW_RUN_AS:-$APP_USER}" = "root" ]; then
    exec "$@"
fi

uid=$(id -u "$APP_USER")
# Named volumes start out with the image's ownership; bind mounts and volumes written by an older image
# may not. Only directories not yet owned by the user are walked.
for dir in /app/data "${DEPLOYMENTS_WORKDIR:-/app/data/deployments}" /app/logs; do
    mkdir -p "$dir" 2>/dev/null || continue
    if [ "$(stat -c %u "$dir")" != "$uid" ]; then
        chown -R "$APP_USER:$APP_USER" "$dir" 2>/dev/null \
            || echo "windflow-entrypoint: warning: cannot make $dir writable for $APP_USER" >&2
    fi
done

if [ -S "$SOCKET" ]; then
    groups="--groups=$(stat -c %g "$SOCKET")"
else
    groups="--clear-groups"
fi

export HOME=/app USER="$APP_USER" LOGNAME="$APP_USER"
exec setpriv --reuid="$APP_USER" --regid="$APP_USER" "$groups" --inh-caps=-all -- "$@"
