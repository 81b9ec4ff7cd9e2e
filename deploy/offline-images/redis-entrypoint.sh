#!/bin/sh
# Entrypoint of the stand-in Redis image that scripts/build-offline-images.sh builds from Debian's
# redis-server when no container registry is reachable. Like the official image: options alone
# (`--appendonly yes`) or a config file are run by redis-server, which runs as the user `redis` in /data,
# and protected mode is off unless the command line or a config file says otherwise (the official image
# builds Redis with that default: the container's network is what protects it).
set -eu

case "${1:-}" in
    -* | *.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = "redis-server" ] && [ "$(id -u)" = "0" ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups -- "$0" "$@"
fi

if [ "${1:-}" = "redis-server" ]; then
    case "${2:-}" in
        *.conf) ;;  # the config file decides
        *)
            case " $* " in
                *" --protected-mode "*) ;;
                *) set -- "$@" --protected-mode no ;;
            esac
            ;;
    esac
fi

exec "$@"
