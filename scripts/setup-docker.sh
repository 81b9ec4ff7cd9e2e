#!/usr/bin/env bash
# setup-docker.sh — make a real Docker engine usable on this machine for
# WindFlow's tests and CI (Debian 12 "bookworm", run as root).
#
# Idempotent: every step checks first and does nothing when already done, so a
# second run takes a couple of seconds at most.
#
# What it does:
#   1. installs Debian's docker.io (engine 20.10, containerd, runc, tini as
#      docker-init), busybox-static and compose v1 (`docker-compose` 1.29,
#      the fallback of WindFlow's compose driver) when missing;
#   2. starts dockerd in the background (its own session, survives this
#      script; log: /var/log/dockerd.log) unless `docker info` already
#      answers, then waits for it (60 s at most);
#   3. installs compose v2 as a CLI plugin (/usr/local/lib/docker/cli-plugins/
#      docker-compose) taken from Debian 13 "trixie"'s docker-compose package.
#      Debian 12 ships compose v1 only. The trixie .deb is fetched with apt
#      against a throw-away sources/lists/cache directory, so the system's apt
#      configuration never sees trixie and nothing else gets upgraded;
#   4. builds the local test image windflow-test/busybox:latest (FROM scratch
#      + Debian's static busybox with its applet symlinks) since no container
#      registry is reachable here (`docker pull` cannot work). Rebuilt only if
#      missing or if its recipe / the busybox binary changed (label hash).
#
# It does NOT init swarm mode; tests do that themselves when needed
# (`docker swarm init --advertise-addr 127.0.0.1`, `docker swarm leave --force`).
#
# dockerd flags: none are needed on this kind of machine. The defaults were
# checked here: storage driver overlay2 works (kernel has overlayfs, / is
# ext4), the iptables (nft backend) rules for the docker0 bridge and published
# ports work, cgroup v1 with the cgroupfs driver. Extra flags can be passed
# with WINDFLOW_DOCKERD_FLAGS (e.g. "--storage-driver=vfs" on a host whose
# filesystem cannot hold overlay layers, or "--iptables=false" where netfilter
# is unavailable — the latter breaks published ports through the bridge).
#
# Environment knobs (all optional):
#   WINDFLOW_DOCKERD_FLAGS   extra flags for dockerd (word-split)
#   WINDFLOW_DOCKERD_LOG     dockerd log file (default /var/log/dockerd.log)
#   WINDFLOW_DOCKER_TIMEOUT  seconds to wait for the engine (default 60)
#   WINDFLOW_DEBIAN_MIRROR   Debian mirror for the trixie download (default:
#                            the one this machine's apt sources use)
set -euo pipefail

TEST_IMAGE="windflow-test/busybox:latest"
COMPOSE_PLUGIN_DIR="/usr/local/lib/docker/cli-plugins"
COMPOSE_PLUGIN="$COMPOSE_PLUGIN_DIR/docker-compose"
DOCKERD_LOG="${WINDFLOW_DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKER_TIMEOUT="${WINDFLOW_DOCKER_TIMEOUT:-60}"
APT_PACKAGES=(docker.io busybox-static docker-compose)

log() { echo "[setup-docker] $*"; }
die() { echo "[setup-docker] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages and starts dockerd)"
export DEBIAN_FRONTEND=noninteractive

# The classic builder: the docker CLI here may be newer than the engine and
# has no buildx plugin, so BuildKit mode would refuse to build.
export DOCKER_BUILDKIT=0

TMP_DIRS=()
cleanup() { local d; for d in "${TMP_DIRS[@]+"${TMP_DIRS[@]}"}"; do rm -rf "$d"; done; }
trap cleanup EXIT

# ---------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------
pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

log "step 1/4: Debian packages (${APT_PACKAGES[*]})"
missing=()
for p in "${APT_PACKAGES[@]}"; do
    pkg_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "  installing: ${missing[*]}"
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
else
    log "  already installed"
fi
command -v docker >/dev/null || die "no docker CLI on PATH after installing docker.io"
DOCKERD="$(command -v dockerd || true)"
[ -n "$DOCKERD" ] || DOCKERD=/usr/sbin/dockerd
[ -x "$DOCKERD" ] || die "dockerd not found (package docker.io)"
[ -x /bin/busybox ] || die "/bin/busybox missing (package busybox-static)"

# ---------------------------------------------------------------------------
# 2. Docker engine
# ---------------------------------------------------------------------------
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid

# proc_alive PID NAME: PID is a running, non-zombie process whose command line
# contains NAME ("" matches any).
proc_alive() {
    local pid="$1" name="$2" state
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null || true)"
    case "$state" in Z|X|x|"") return 1 ;; esac
    [ -z "$name" ] || grep -qa -- "$name" "/proc/$pid/cmdline" 2>/dev/null
}

log "step 2/4: Docker engine"
if docker info >/dev/null 2>&1; then
    log "  dockerd already answering"
else
    # Stale pid files: a dockerd killed at the end of a previous session
    # leaves /var/run/docker.pid (dockerd refuses to start if its pid has
    # been reused by another process) and
    # /var/run/docker/containerd/containerd.pid. PID 1 on this kind of machine
    # does not reap orphans, so the old containerd lingers as a zombie whose
    # pid still "exists": dockerd would wait for that dead containerd's socket
    # and give up ("timeout waiting for containerd to start"). Drop both files
    # unless they name a live (non-zombie) process of the right program.
    running_pid=""
    p="$(cat /var/run/docker.pid 2>/dev/null || true)"
    if [ -n "$p" ] && proc_alive "$p" dockerd; then
        running_pid="$p"
    elif [ -e /var/run/docker.pid ]; then
        log "  removing stale /var/run/docker.pid"
        rm -f /var/run/docker.pid
    fi
    if [ -z "$running_pid" ]; then
        p="$(cat "$CONTAINERD_PIDFILE" 2>/dev/null || true)"
        if [ -e "$CONTAINERD_PIDFILE" ] && ! { [ -n "$p" ] && proc_alive "$p" containerd; }; then
            log "  removing stale $CONTAINERD_PIDFILE"
            rm -f "$CONTAINERD_PIDFILE"
        fi
    fi
    if [ -n "$running_pid" ]; then
        log "  dockerd (pid $running_pid) is running but not answering yet; waiting"
    else
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        log "  starting $DOCKERD ${WINDFLOW_DOCKERD_FLAGS:-} (log: $DOCKERD_LOG)"
        # shellcheck disable=SC2086  # flags are meant to be word-split
        setsid nohup "$DOCKERD" ${WINDFLOW_DOCKERD_FLAGS:-} >>"$DOCKERD_LOG" 2>&1 </dev/null &
        running_pid=$!
        disown || true
    fi
    deadline=$((SECONDS + DOCKER_TIMEOUT))
    until docker info >/dev/null 2>&1; do
        if ! proc_alive "$running_pid" ""; then
            echo "---- last lines of $DOCKERD_LOG ----" >&2
            tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "dockerd exited during start-up (see $DOCKERD_LOG)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "---- last lines of $DOCKERD_LOG ----" >&2
            tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "Docker engine did not answer 'docker info' within ${DOCKER_TIMEOUT}s (see $DOCKERD_LOG)"
        fi
        sleep 0.5
    done
    log "  dockerd is up"
fi

# ---------------------------------------------------------------------------
# 3. Compose v2 CLI plugin (from Debian trixie's docker-compose .deb)
# ---------------------------------------------------------------------------
compose_v2_ok() {
    local v
    v="$(docker compose version --short 2>/dev/null || true)"
    case "$v" in v2.*|2.*) return 0 ;; *) return 1 ;; esac
}

detect_debian_mirror() {
    # First ".../debian" URI of this machine's apt sources (one-line or
    # deb822 format); deb.debian.org if none.
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

log "step 3/4: compose v2 plugin ($COMPOSE_PLUGIN)"
if compose_v2_ok; then
    log "  already present: $(docker compose version 2>/dev/null)"
else
    mirror="${WINDFLOW_DEBIAN_MIRROR:-$(detect_debian_mirror)}"
    log "  fetching docker-compose from Debian trixie via $mirror (private apt dirs, system apt untouched)"
    work="$(mktemp -d /tmp/windflow-compose.XXXXXX)"
    TMP_DIRS+=("$work")
    mkdir -p "$work/sources" "$work/lists/partial" "$work/cache/archives/partial" "$work/dl" "$work/x"
    cat >"$work/sources/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Only this list, in private state/cache dirs: the system's package lists
    # and sources stay bookworm-only. apt's sandbox user (_apt) can't write
    # into a root-only temp dir, so download as root.
    apt_opts=(
        -o "Dir::Etc::sourcelist=/dev/null"
        -o "Dir::Etc::sourceparts=$work/sources"
        -o "Dir::State::Lists=$work/lists"
        -o "Dir::Cache=$work/cache"
        -o "APT::Sandbox::User=root"
    )
    apt-get "${apt_opts[@]}" update -qq \
        || die "apt-get update for Debian trixie failed (mirror $mirror)"
    (cd "$work/dl" && apt-get "${apt_opts[@]}" download -qq docker-compose) \
        || die "apt-get download docker-compose (trixie) failed"
    debs=("$work"/dl/docker-compose_*.deb)
    deb="${debs[0]}"
    [ -f "$deb" ] || die "trixie docker-compose .deb not downloaded"
    log "  got $(basename "$deb")"
    dpkg-deb -x "$deb" "$work/x"
    src="$work/x/usr/libexec/docker/cli-plugins/docker-compose"
    [ -x "$src" ] || die "compose plugin binary not found in $(basename "$deb") (expected usr/libexec/docker/cli-plugins/docker-compose)"
    mkdir -p "$COMPOSE_PLUGIN_DIR"
    install -m 0755 "$src" "$COMPOSE_PLUGIN.new"
    mv -f "$COMPOSE_PLUGIN.new" "$COMPOSE_PLUGIN"
    compose_v2_ok || die "'docker compose version' does not report v2 after installing $COMPOSE_PLUGIN"
    log "  installed: $(docker compose version)"
fi
if command -v docker-compose >/dev/null 2>&1; then
    log "  compose v1 fallback: $(docker-compose version --short 2>/dev/null || echo '?')"
fi

# ---------------------------------------------------------------------------
# 4. Local test image (no registry here: build FROM scratch)
# ---------------------------------------------------------------------------
log "step 4/4: test image $TEST_IMAGE"
dockerfile="$(cat <<'EOF'
FROM scratch
COPY busybox /bin/busybox
COPY passwd group /etc/
# busybox is the only binary: let it create its applet symlinks itself.
RUN ["/bin/busybox", "mkdir", "-p", "/usr/bin", "/usr/sbin", "/sbin", "/tmp", "/root", "/www", "/var/www"]
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "ln", "-s", "/bin/env", "/usr/bin/env"]
RUN ["/bin/busybox", "chmod", "1777", "/tmp"]
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["sh"]
EOF
)"
passwd_txt=$'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n'
group_txt=$'root:x:0:\nnogroup:x:65534:\n'
recipe_hash="$(
    { printf '%s' "$dockerfile" "$passwd_txt" "$group_txt"; sha256sum /bin/busybox; } \
        | sha256sum | cut -c1-16
)"
current_hash="$(docker image inspect --format '{{ index .Config.Labels "windflow.test-image.hash" }}' "$TEST_IMAGE" 2>/dev/null || true)"
if [ "$current_hash" = "$recipe_hash" ]; then
    log "  already built (hash $recipe_hash)"
else
    if [ -n "$current_hash" ]; then
        log "  recipe changed ($current_hash -> $recipe_hash): rebuilding"
    else
        log "  building"
    fi
    ctx="$(mktemp -d /tmp/windflow-busybox.XXXXXX)"
    TMP_DIRS+=("$ctx")
    cp /bin/busybox "$ctx/busybox"
    printf '%s\n' "$dockerfile" >"$ctx/Dockerfile"
    printf '%s' "$passwd_txt" >"$ctx/passwd"
    printf '%s' "$group_txt" >"$ctx/group"
    docker build -q --label "windflow.test-image.hash=$recipe_hash" -t "$TEST_IMAGE" "$ctx" >/dev/null \
        || die "docker build of $TEST_IMAGE failed"
    out="$(docker run --rm "$TEST_IMAGE" sh -c 'echo ok' 2>&1 || true)"
    [ "$out" = "ok" ] || die "$TEST_IMAGE does not run a shell (got: $out)"
    log "  built and checked $TEST_IMAGE"
fi

log "done: $(docker version --format 'engine {{.Server.Version}}, CLI {{.Client.Version}}' 2>/dev/null), $(docker compose version 2>/dev/null)"
