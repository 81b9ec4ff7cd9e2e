#!/usr/bin/env bash
# build-offline-images.sh — stand-in base images for docker-compose.yml on a machine that reaches no
# container registry (`docker pull` cannot work), built from Debian packages (run as root).
#
#   bash scripts/build-offline-images.sh            # build what is missing, write .env
#   docker compose up -d --build                    # then uses the stand-ins (docs/operations.md)
#
# The production compose names four images from a registry. For each one that is not already present
# locally, this script builds a stand-in with mmdebstrap (a minimal Debian root file system with the
# packages it needs) and `docker import`, and records it in the file Compose reads its variables from
# (`.env` next to docker-compose.yml), so that the plain `docker compose up -d --build` uses it:
#
#   variable                 official image (default)   stand-in                                  from
#   WINDFLOW_PYTHON_IMAGE    python:3.11-slim-trixie    windflow-offline/python:3.13-trixie       Debian 13: python3, python3-venv
#   WINDFLOW_POSTGRES_IMAGE  postgres:16                windflow-offline/postgres:15-bookworm     Debian 12: postgresql-15
#   WINDFLOW_REDIS_IMAGE     redis:7                    windflow-offline/redis:7-bookworm         Debian 12: redis-server
#   WINDFLOW_PROXY_IMAGE     nginx:1.27                 windflow-offline/nginx:1.22-bookworm      Debian 12: nginx
#
# Each stand-in behaves like the official image for what docker-compose.yml uses:
#   python    Debian 13 "trixie" (its docker-cli and compose v2 packages are what the Dockerfile installs),
#             Python 3.13 in a virtual environment at /opt/python first on PATH, so that `python` and
#             `pip install` work as in the official image (Debian's own Python refuses `pip install`);
#   postgres  POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB on the first start, the cluster in
#             /var/lib/postgresql/data, listening on every interface with password authentication,
#             `pg_isready` on PATH (deploy/offline-images/postgres-entrypoint.sh);
#   redis     `redis-server --appendonly yes` in /data as the user redis, protected mode off like the
#             official build, `redis-cli` on PATH (deploy/offline-images/redis-entrypoint.sh);
#   nginx     `nginx -g 'daemon off;'`, the configuration in /etc/nginx/conf.d/*.conf (the proxy service
#             mounts deploy/nginx.conf there), logs on the container's output.
#
# Cache: an image that exists with the same recipe (a hash of its build functions and options and of the
# files in deploy/offline-images/, in the label windflow.offline-image.recipe) is skipped; --rebuild
# builds them again anyway. An official image present locally (pulled earlier, or loaded with
# `docker load`) is used instead of its stand-in.
#
# Options:
#   --rebuild          build every stand-in again, even if it exists
#   --env-file FILE    write the variables to FILE instead of .env (the test suite uses its own file)
#   --no-env-file      write no file; print the variables only
#   --stand-ins        build and use the stand-ins even where the official image is present
#
# Environment: WINDFLOW_DEBIAN_MIRROR (default: this machine's apt mirror, else deb.debian.org),
# WINDFLOW_DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security; empty: none).
# Takes about 1-2 minutes the first time (mostly downloads), a few seconds when everything exists.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
recipes="$repo/deploy/offline-images"

log() { echo "[offline-images] $*" >&2; }
die() { echo "[offline-images] ERROR: $*" >&2; exit 1; }

rebuild=false
env_file="$repo/.env"
force_standins=false
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild) rebuild=true ;;
        --env-file) [ $# -ge 2 ] || die "--env-file needs a file"; env_file="$2"; shift ;;
        --env-file=*) env_file="${1#--env-file=}" ;;
        --no-env-file) env_file="" ;;
        --stand-ins) force_standins=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

docker info >/dev/null 2>&1 || die "no Docker engine answers (bash scripts/setup-docker.sh starts one)"
export DEBIAN_FRONTEND=noninteractive

detect_debian_mirror() {
    # First ".../debian" URI of this machine's apt sources (one-line or deb822 format); deb.debian.org if none.
    local f uri=""
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri="$(awk '
            /^[[:space:]]*#/ { next }
            $1 == "deb" || $1 == "URIs:" {
                for (i = 2; i <= NF; i++) if ($i ~ /^(https?|ftp|file):\/\//) print $i
            }' "$f" | grep -E '/debian/?$' | head -n1 || true)"
        [ -n "$uri" ] && break
    done
    echo "${uri:-http://deb.debian.org/debian}"
}
mirror="${WINDFLOW_DEBIAN_MIRROR:-$(detect_debian_mirror)}"
security="${WINDFLOW_DEBIAN_SECURITY_MIRROR-http://deb.debian.org/debian-security}"

RECIPE_LABEL=windflow.offline-image.recipe

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_recipe() { docker image inspect --format "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$1" 2>/dev/null || true; }

ensure_mmdebstrap() {
    [ "$(id -u)" -eq 0 ] || die "building the stand-ins needs root (mmdebstrap builds root file systems as root)"
    command -v mmdebstrap >/dev/null && return 0
    log "installing mmdebstrap"
    apt-get install -y -q mmdebstrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q mmdebstrap >/dev/null; } \
        || die "apt-get install mmdebstrap failed"
}

# Shared by every image: slim like the official Debian-based images (no manuals, documentation or
# translations, also for what the image installs later), apt's lists and caches dropped by mmdebstrap.
SLIM=(
    --variant=minbase --mode=root --format=tar
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --aptopt='APT::Install-Recommends "false"'
)

sources() {  # sources SUITE: the apt lines of the image (kept in it, so that `apt-get install` works there)
    echo "deb $mirror $1 main"
    echo "deb $mirror $1-updates main"
    [ -z "$security" ] || echo "deb $security $1-security main"
}

# build NAME TAG SUITE PACKAGES HOOK CHANGES...: mmdebstrap SUITE with PACKAGES, run HOOK (a shell snippet
# given the root directory as $1) in the customize phase, docker import, then the Dockerfile
# instructions CHANGES on top (environment, command, entrypoint, stop signal...).
build() {
    local name=$1 tag=$2 suite=$3 packages=$4 hook=$5; shift 5
    local work started
    work="$(mktemp -d /tmp/windflow-offline-image.XXXXXX)"
    started=$SECONDS
    log "$name: mmdebstrap $suite ($packages)"
    local mirrors=()
    mapfile -t mirrors < <(sources "$suite")
    if ! mmdebstrap "${SLIM[@]}" --include="$packages" \
            --customize-hook="$hook" \
            "$suite" "$work/rootfs.tar" "${mirrors[@]}" >"$work/mmdebstrap.log" 2>&1; then
        tail -n 40 "$work/mmdebstrap.log" >&2
        rm -rf "$work"
        die "$name: mmdebstrap failed"
    fi
    # docker import takes few instructions with --change (no STOPSIGNAL on older engines): the image's
    # settings go on top of the imported file system with a small build instead.
    docker import --message "scripts/build-offline-images.sh ($name)" "$work/rootfs.tar" "$tag-rootfs" >/dev/null \
        || { rm -rf "$work"; die "$name: docker import failed"; }
    mkdir "$work/context"
    {
        echo "FROM $tag-rootfs"
        printf '%s\n' "$@"
        echo "LABEL $RECIPE_LABEL=$recipe_hash"
        echo "LABEL org.opencontainers.image.description=\"WindFlow offline stand-in ($name, Debian $suite)\""
    } > "$work/context/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$work/context" >"$work/build.log" 2>&1 \
        || { cat "$work/build.log" >&2; rm -rf "$work"; die "$name: docker build of the image's settings failed"; }
    docker rmi "$tag-rootfs" >/dev/null
    rm -rf "$work"
    log "$name: built $tag in $((SECONDS - started)) s ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}'))"
}

# Certificate authorities this machine trusts beyond Debian's list (e.g. the CA of a TLS-inspecting proxy
# between it and PyPI): the Dockerfile's `pip install` goes out through the same network, so the python
# stand-in trusts them too (in /usr/local/share/ca-certificates, as Debian adds local CAs). They are the
# certificates of WINDFLOW_CA_BUNDLE (default: this machine's bundle) that Debian's ca-certificates lacks.
extra_cas() {
    python3 - "${WINDFLOW_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" <<'PY'
import glob, re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
def certs(path):
    try:
        return pem.findall(open(path, encoding="ascii", errors="replace").read())
    except OSError:
        return []
debian = {c.replace("\n", "") for f in glob.glob("/usr/share/ca-certificates/**/*.crt", recursive=True) for c in certs(f)}
for c in certs(sys.argv[1]):
    if c.replace("\n", "") not in debian:
        print(c)
PY
}

build_python() {
    local cas
    cas="$(mktemp /tmp/windflow-offline-cas.XXXXXX)"
    extra_cas > "$cas"
    [ ! -s "$cas" ] || log "python: adding $(grep -c 'BEGIN CERTIFICATE' "$cas") certificate authorit(y/ies) of this machine that Debian lacks"
    build python "$1" trixie python3,python3-venv,ca-certificates,passwd \
        "mkdir -p \"\$1\"/usr/local/share/ca-certificates \
         && awk -v dir=\"\$1/usr/local/share/ca-certificates\" \
                '/BEGIN CERTIFICATE/ { n++ } { print > (dir \"/host-ca-\" n \".crt\") }' '$cas' \
         && chroot \"\$1\" update-ca-certificates >/dev/null \
         && chroot \"\$1\" python3 -m venv /opt/python && chroot \"\$1\" /opt/python/bin/python -m pip --version" \
        'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'ENV LANG=C.UTF-8' \
        'CMD ["python3"]'
    rm -f "$cas"
    docker run --rm "$1" sh -c 'python --version && pip --version && command -v setpriv useradd >/dev/null' \
        >/dev/null || die "python: $1 has no working python/pip/setpriv/useradd"
}

build_postgres() {
    build postgres "$1" bookworm postgresql-15,passwd \
        "rm -rf \"\$1\"/etc/postgresql/15/main \"\$1\"/var/lib/postgresql/15/main \
         && install -m 0755 '$recipes/postgres-entrypoint.sh' \"\$1\"/usr/local/bin/docker-entrypoint.sh \
         && mkdir -p \"\$1\"/docker-entrypoint-initdb.d \"\$1\"/var/lib/postgresql/data \
         && chroot \"\$1\" chown postgres:postgres /var/lib/postgresql/data \
         && chmod 0700 \"\$1\"/var/lib/postgresql/data" \
        'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'ENV LANG=C.UTF-8' \
        'ENV PGDATA=/var/lib/postgresql/data' \
        'VOLUME /var/lib/postgresql/data' \
        'EXPOSE 5432' \
        'STOPSIGNAL SIGINT' \
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
        'CMD ["postgres"]'
}

build_redis() {
    build redis "$1" bookworm redis-server,redis-tools \
        "install -m 0755 '$recipes/redis-entrypoint.sh' \"\$1\"/usr/local/bin/docker-entrypoint.sh \
         && mkdir -p \"\$1\"/data && chroot \"\$1\" chown redis:redis /data" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'WORKDIR /data' \
        'VOLUME /data' \
        'EXPOSE 6379' \
        'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
        'CMD ["redis-server"]'
}

build_nginx() {
    build nginx "$1" bookworm nginx \
        "rm -f \"\$1\"/etc/nginx/sites-enabled/default \
         && install -m 0644 '$recipes/nginx-default.conf' \"\$1\"/etc/nginx/conf.d/default.conf \
         && ln -sf /dev/stdout \"\$1\"/var/log/nginx/access.log \
         && ln -sf /dev/stderr \"\$1\"/var/log/nginx/error.log" \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        'EXPOSE 80' \
        'STOPSIGNAL SIGQUIT' \
        'CMD ["nginx", "-g", "daemon off;"]'
}

# The recipe of an image: the functions that build it, the options and the files it copies in (not the
# comments or the rest of this script). A change rebuilds the image.
recipe_of() {
    { declare -f build sources "build_$1"; printf '%s\n' "${SLIM[@]}" "$mirror" "$security"; cat "$recipes"/*
      [ "$1" != python ] || { declare -f extra_cas; extra_cas; }; } \
        | sha256sum | cut -c1-16
}

#        name      variable                 official                  stand-in
IMAGES=("python   WINDFLOW_PYTHON_IMAGE    python:3.11-slim-trixie  windflow-offline/python:3.13-trixie"
        "postgres WINDFLOW_POSTGRES_IMAGE  postgres:16              windflow-offline/postgres:15-bookworm"
        "redis    WINDFLOW_REDIS_IMAGE     redis:7                  windflow-offline/redis:7-bookworm"
        "nginx    WINDFLOW_PROXY_IMAGE     nginx:1.27               windflow-offline/nginx:1.22-bookworm")

started=$SECONDS
assignments=()
for row in "${IMAGES[@]}"; do
    read -r name variable official standin <<<"$row"
    if ! $force_standins && image_exists "$official"; then
        log "$name: $official is present, no stand-in needed"
        continue
    fi
    recipe_hash="$(recipe_of "$name")"
    if ! $rebuild && image_exists "$standin" && [ "$(image_recipe "$standin")" = "$recipe_hash" ]; then
        log "$name: $standin already built"
    else
        ensure_mmdebstrap
        previous="$(docker image inspect --format '{{.Id}}' "$standin" 2>/dev/null || true)"
        "build_$name" "$standin"
        # The image it replaces, now untagged (kept if a container still uses it).
        [ -z "$previous" ] || docker rmi "$previous" >/dev/null 2>&1 || true
    fi
    assignments+=("$variable=$standin")
done

block_start="# >>> scripts/build-offline-images.sh: stand-in base images (no container registry here)"
block_end="# <<< scripts/build-offline-images.sh"
if [ -n "$env_file" ]; then
    # A .env that does not exist yet is created the way `make env` creates it (a fresh SECRET_KEY), since
    # WindFlow reads that file too (it ignores these variables) and `make` would not create it any more.
    if [ "$env_file" = "$repo/.env" ] && [ ! -f "$env_file" ]; then
        make -C "$repo" --no-print-directory env >/dev/null || die "make env failed"
    fi
    touch "$env_file"
    tmp="$(mktemp "$env_file.XXXXXX")"
    awk -v start="$block_start" -v end="$block_end" '
        $0 == start { skip = 1; next }
        $0 == end { skip = 0; next }
        !skip' "$env_file" > "$tmp"
    if [ "${#assignments[@]}" -gt 0 ]; then
        { echo "$block_start"; printf '%s\n' "${assignments[@]}"; echo "$block_end"; } >> "$tmp"
    fi
    chmod --reference="$env_file" "$tmp"
    mv -f "$tmp" "$env_file"
    log "wrote ${#assignments[@]} variable(s) to $env_file"
fi
printf '%s\n' "${assignments[@]+"${assignments[@]}"}"
log "done in $((SECONDS - started)) s"
