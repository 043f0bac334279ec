#!/bin/sh
# Build the renewer image with podman and smoke-test it with a read-only root filesystem.
#
#   sh .ci/container-check.sh                 build, then --help, imports, uid, state volume
#   RENEWER_CONFIG_FILE=/path/config.toml \
#   RENEWER_ENV_FILE=/path/env \
#   CONTAINER_RUN_ARGS="-v /path/ca.pem:/etc/renewer/ca.pem:ro" \
#   sh .ci/container-check.sh                 also check-config, run the daemon, wait for
#                                             /readyz, healthcheck, SIGTERM stop (exit 0)
#
# Environment: IMAGE (localhost/renewer:ci), BASE_IMAGE (localhost/debian:bookworm; built
# with debootstrap when missing), RENEWER_PORT (9464, probes on 127.0.0.1), READY_TIMEOUT
# (60 s), STOP_TIMEOUT (30 s), LOG_DIR (a temporary directory). Needs root, podman, runc
# and debootstrap (see /work/shared/containers.md for why runc and explicit ulimits).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export CONTAINERS_CONF="$HERE/containers.conf"
IMAGE=${IMAGE:-localhost/renewer:ci}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm}
RENEWER_PORT=${RENEWER_PORT:-9464}
READY_TIMEOUT=${READY_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}
LOG_DIR=${LOG_DIR:-$(mktemp -d /tmp/renewer-container.XXXXXX)}
CID=""

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
step() { printf '%-34s %s\n' "$1" "$2"; }
cleanup() {
  if [ -n "$CID" ]; then
    podman logs "$CID" >"$LOG_DIR/container.log" 2>&1 || true
    podman rm -f -t 0 "$CID" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
fail() {
  echo "FAILED: $1 (logs in $LOG_DIR)" >&2
  exit 1
}

start=$(now)
if ! podman image exists "$BASE_IMAGE"; then
  t=$(now)
  MIRROR=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  rootfs="$LOG_DIR/rootfs"
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

RUN="podman run --rm --network=host --read-only"
SMOKE="$RUN --no-healthcheck"
PY="$SMOKE --entrypoint /opt/renewer/bin/python $IMAGE"
t=$(now)
$PY -c 'import renewer, renewer.metrics, renewer.web, renewer.sdnotify; print(renewer.__version__)' \
  >"$LOG_DIR/import.log" 2>&1 || fail "import renewer"
$SMOKE "$IMAGE" --help >"$LOG_DIR/help.log" 2>&1 || fail "renewer --help"
$PY -c 'import os; assert os.getuid() == 10001, os.getuid()' || fail "non-root uid"
$PY -c 'open("/var/lib/renewer/probe", "w").write("ok")' || fail "state volume not writable"
if $PY -c 'open("/opt/renewer/probe", "w")' 2>/dev/null; then fail "root filesystem writable"; fi
[ "$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")" != null ] \
  || fail "HEALTHCHECK missing (build without --format docker?)"
step "smoke (import, --help, uid, ro)" "$(since "$t")"

if [ -n "${RENEWER_CONFIG_FILE:-}" ]; then
  MOUNTS="-v $RENEWER_CONFIG_FILE:/etc/renewer/config.toml:ro"
  ENV_FILE=""
  [ -n "${RENEWER_ENV_FILE:-}" ] && ENV_FILE="--env-file $RENEWER_ENV_FILE"
  # shellcheck disable=SC2086 # word splitting of the option lists is intended
  $SMOKE $MOUNTS $ENV_FILE ${CONTAINER_RUN_ARGS:-} "$IMAGE" check-config \
    >"$LOG_DIR/check-config.log" 2>&1 || fail "renewer check-config"

  t=$(now)
  # shellcheck disable=SC2086
  CID=$(podman run -d --network=host --read-only $MOUNTS $ENV_FILE ${CONTAINER_RUN_ARGS:-} \
    -e "RENEWER_LIVEZ_URL=http://127.0.0.1:$RENEWER_PORT/livez" "$IMAGE" run 2>"$LOG_DIR/run.err")
  deadline=$(($(date +%s) + READY_TIMEOUT))
  until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$RENEWER_PORT/readyz', timeout=2)" 2>/dev/null; do
    [ "$(podman inspect --format '{{.State.Running}}' "$CID")" = true ] || fail "daemon exited"
    [ "$(date +%s)" -lt "$deadline" ] || fail "/readyz not 200 after ${READY_TIMEOUT}s"
    sleep 0.2
  done
  step "daemon ready (/readyz 200)" "$(since "$t")"
  podman healthcheck run "$CID" >/dev/null 2>&1 || fail "podman healthcheck"

  t=$(now)
  podman stop -t "$STOP_TIMEOUT" "$CID" >/dev/null
  code=$(podman wait "$CID")
  step "SIGTERM stop (exit $code)" "$(since "$t")"
  [ "$code" = 0 ] || fail "daemon exited $code on SIGTERM"
fi

step "total" "$(since "$start")"
echo "container check passed (logs in $LOG_DIR)"
