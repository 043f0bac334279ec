#!/usr/bin/env bash
# Build the renewer image with podman, then run it as a sidecar would run: host network,
# read-only root filesystem, configuration mounted read-only, state on a named volume.
# Against the Admin API emulator and Pebble started here on the host, it must become
# ready, pass its healthcheck, renew the one due managed certificate and stop with exit
# code 0 on SIGTERM. Every process, container and volume it starts is removed on exit.
#
#   bash .ci/container-check.sh
#
# Environment: PYTHON (.venv/bin/python: the project's venv, made by .ci/bootstrap),
# IMAGE (localhost/renewer:ci), BASE_IMAGE (localhost/debian:bookworm; built with
# debootstrap when missing), RENEWER_PORT (a free port; metrics and probes on 127.0.0.1),
# READY_TIMEOUT (60 s), RENEW_TIMEOUT (120 s), STOP_TIMEOUT (30 s), LOG_DIR (a temporary
# directory, kept). Needs root, podman, runc and debootstrap (see /work/shared/containers.md
# for why runc and explicit ulimits).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
export CONTAINERS_CONF="$HERE/containers.conf"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
IMAGE=${IMAGE:-localhost/renewer:ci}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm}
READY_TIMEOUT=${READY_TIMEOUT:-60}
RENEW_TIMEOUT=${RENEW_TIMEOUT:-120}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}
LOG_DIR=${LOG_DIR:-$(mktemp -d /tmp/renewer-container.XXXXXX)}
mkdir -p "$LOG_DIR"
WORK=$(mktemp -d /tmp/renewer-container-peers.XXXXXX)
CID=""
VOLUME=""
PEERS=()

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
step() { printf '%-38s %s\n' "$1" "$2"; }
fail() {
  echo "FAILED: $1 (logs in $LOG_DIR)" >&2
  exit 1
}
cleanup() {
  if [ -n "$CID" ]; then
    podman logs "$CID" >"$LOG_DIR/container.log" 2>&1 || true
    podman rm -f -v -t 0 "$CID" >/dev/null 2>&1 || true
  fi
  if [ -n "$VOLUME" ]; then
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  fi
  for pid in "${PEERS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PEERS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for WHAT TIMEOUT COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
  local what=$1 deadline=$(($(date +%s) + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what"
    sleep 0.2
  done
}
# json FILE KEY: one field of the JSON line a helper printed when it was ready.
json() { "$PYTHON" -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]])' "$1" "$2"; }
# metric NAME_AND_LABELS: the value of one series on the daemon's /metrics (empty if absent).
metric() {
  curl -fsS "http://127.0.0.1:$RENEWER_PORT/metrics" | awk -v s="$1" 'index($0, s " ") == 1 { print $2 }'
}
# at_least NAME_AND_LABELS N: true once the series reaches N.
at_least() { awk -v v="$(metric "$1")" -v n="$2" 'BEGIN { exit !(v != "" && v + 0 >= n + 0) }'; }
daemon_running() { [ "$(podman inspect --format '{{.State.Running}}' "$CID")" = true ]; }
ready() {
  daemon_running || fail "daemon exited"
  curl -fsS "http://127.0.0.1:$RENEWER_PORT/readyz"
}
renewed() {
  daemon_running || fail "daemon exited"
  curl -fsS "$ADMIN_URL/_emulator/writes" | grep -Eq '"ssl_id": ?"site"' \
    && at_least 'renewer_renewals_total{gateway="emulator",result="renewed"}' 1
}

[ -x "$PYTHON" ] || fail "no Python at $PYTHON (run .ci/bootstrap, or set PYTHON)"
RENEWER_PORT=${RENEWER_PORT:-$("$PYTHON" -c 'from tests.fixtures.net import free_port; print(free_port())')}

start=$(now)
if ! podman image exists "$BASE_IMAGE"; then
  t=$(now)
  MIRROR=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  rootfs="$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$LOG_DIR/debootstrap.log" 2>&1 \
    || fail "debootstrap"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" \
    >"$LOG_DIR/base-import.log" 2>&1 || fail "podman import"
  rm -rf "$rootfs"
  step "base image $BASE_IMAGE" "$(since "$t")"
fi

t=$(now)
podman build --network=host --format docker --build-arg "BASE=$BASE_IMAGE" \
  --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt \
  -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >"$LOG_DIR/build.log" 2>&1 || fail "podman build"
step "build $IMAGE" "$(since "$t")"
step "image size" "$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%d MB", $1 / 1e6 }')"

SMOKE=(podman run --rm --network=host --read-only --no-healthcheck)
PY=("${SMOKE[@]}" --entrypoint /opt/renewer/bin/python "$IMAGE")
t=$(now)
"${PY[@]}" -c 'import renewer, renewer.metrics, renewer.web, renewer.sdnotify; print(renewer.__version__)' \
  >"$LOG_DIR/import.log" 2>&1 || fail "import renewer"
"${SMOKE[@]}" "$IMAGE" --help >"$LOG_DIR/help.log" 2>&1 || fail "renewer --help"
"${PY[@]}" -c 'import os; assert os.getuid() == 10001, os.getuid()' || fail "non-root uid"
if "${PY[@]}" -c 'open("/opt/renewer/probe", "w")' 2>/dev/null; then fail "root filesystem writable"; fi
[ "$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")" != null ] \
  || fail "HEALTHCHECK missing (build without --format docker?)"
step "smoke (import, --help, uid, ro root)" "$(since "$t")"

# -- peers on the host: the Admin API emulator with one due managed certificate, and Pebble --
t=$(now)
"$PYTHON" - "$WORK/seed.json" <<'EOF'
import json, sys
from datetime import UTC, datetime, timedelta
from tests.certfactory import TestCA

def ssl(names, managed, remaining):
    leaf = TestCA().issue(names, not_before=datetime.now(UTC) + remaining - timedelta(days=90))
    label = "true" if managed else "false"
    return {"cert": leaf.fullchain_pem, "key": leaf.key_pem, "snis": names,
            "labels": {"renewer.io/managed": label}}

seeds = [
    {"id": "site", **ssl(["site.example.test"], True, timedelta(days=2))},
    {"id": "legacy", **ssl(["legacy.example.test"], False, timedelta(days=2))},
]
json.dump({"ssls": seeds}, open(sys.argv[1], "w"))
EOF
"$PYTHON" -m tests.emulator --seed-file "$WORK/seed.json" \
  >"$LOG_DIR/emulator.json" 2>"$LOG_DIR/emulator.log" &
PEERS+=($!)
wait_for "emulator did not start" 20 test -s "$LOG_DIR/emulator.json"
ADMIN_URL=$(json "$LOG_DIR/emulator.json" admin_url)
"$PYTHON" -m tests.fixtures.pebble_cli --workdir "$WORK/pebble" \
  --http-port "$(json "$LOG_DIR/emulator.json" http_port)" \
  >"$LOG_DIR/pebble.json" 2>"$LOG_DIR/pebble.log" &
PEERS+=($!)
wait_for "pebble did not start" 30 test -s "$LOG_DIR/pebble.json"

umask 077
cat >"$WORK/env" <<EOF
APISIX_ADMIN_KEY=$(json "$LOG_DIR/emulator.json" api_key)
RENEWER_STATE_KEY=$("$PYTHON" -m renewer keygen)
EOF
umask 022
cat >"$WORK/config.toml" <<EOF
[gateway]
name = "emulator"
admin_url = "$ADMIN_URL"
api_key = "\$env://APISIX_ADMIN_KEY"

[state]
dir = "/var/lib/renewer"
encryption_key = "\$env://RENEWER_STATE_KEY"

[acme]
directory_url = "$(json "$LOG_DIR/pebble.json" directory_url)"
email = "ops@example.test"
accept_tos = true
ca_file = "/etc/renewer/acme-ca.pem"
order_timeout = "60s"

[http01]
data_plane_url = "$(json "$LOG_DIR/emulator.json" data_plane_url)"
self_check_timeout = "10s"

[verify]
roots_file = "/etc/renewer/roots.pem"
data_plane_tls = ["127.0.0.1:$(json "$LOG_DIR/emulator.json" tls_port)"]
timeout = "10s"

[renewal]
scan_jitter = "0s"

[metrics]
listen = "127.0.0.1:$RENEWER_PORT"

[log]
format = "json"
EOF
step "emulator + pebble on the host" "$(since "$t")"

VOLUME="renewer-ci-state-$$"
podman volume create "$VOLUME" >/dev/null
MOUNTS=(
  -v "$WORK/config.toml:/etc/renewer/config.toml:ro"
  -v "$(json "$LOG_DIR/pebble.json" ca_file):/etc/renewer/acme-ca.pem:ro"
  -v "$(json "$LOG_DIR/pebble.json" roots_file):/etc/renewer/roots.pem:ro"
  -v "$VOLUME:/var/lib/renewer"
)
"${SMOKE[@]}" "${MOUNTS[@]}" --env-file "$WORK/env" "$IMAGE" check-config \
  >"$LOG_DIR/check-config.log" 2>&1 || fail "renewer check-config"

t=$(now)
CID=$(podman run -d --network=host --read-only "${MOUNTS[@]}" --env-file "$WORK/env" \
  -e "RENEWER_LIVEZ_URL=http://127.0.0.1:$RENEWER_PORT/livez" "$IMAGE" run 2>"$LOG_DIR/run.err")
wait_for "/readyz not 200 after ${READY_TIMEOUT}s" "$READY_TIMEOUT" ready
step "daemon ready (/readyz 200)" "$(since "$t")"
podman healthcheck run "$CID" >/dev/null 2>&1 || fail "podman healthcheck"

t=$(now)
wait_for "certificate not renewed after ${RENEW_TIMEOUT}s" "$RENEW_TIMEOUT" renewed
step "managed certificate renewed" "$(since "$t")"
state_dir=$(podman volume inspect --format '{{.Mountpoint}}' "$VOLUME")
[ "$(stat -c '%u %a' "$state_dir/renewer.db")" = "10001 600" ] \
  || fail "state database not on the volume, or not private to uid 10001"

t=$(now)
podman stop -t "$STOP_TIMEOUT" "$CID" >/dev/null 2>>"$LOG_DIR/run.err"
code=$(podman wait "$CID")
step "SIGTERM stop (exit $code)" "$(since "$t")"
[ "$code" = 0 ] || fail "daemon exited $code on SIGTERM"

step "total" "$(since "$start")"
echo "container check passed (logs in $LOG_DIR)"
