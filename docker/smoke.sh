#!/usr/bin/env bash
# The container smoke test: docker/compose.yaml built and run for real, with podman.
#
#   1. installs podman, runc, catatonit and debootstrap (apt) and podman-compose (PyPI,
#      into its own venv) when missing; podman runs with runc and ulimits it may set here
#      (its own containers.conf, via CONTAINERS_CONF);
#   2. the base images: pulled where a registry answers, else local STAND-INS tagged with
#      the real names (docker/smoke/bases.sh);
#   3. builds squeezesam:latest and squeezesam-train:latest once each (`--format docker`,
#      which keeps HEALTHCHECK; the train image takes CPU torch from the PyTorch CPU
#      index, or where that is out of reach from the wheel `pip install torch==2.13.0`
#      finds on this machine);
#   4. checks that compose refuses to start without BASIC_AUTH_PASS / WEBHOOK_SECRET;
#   5. `up` with the labelstudio profile and random secrets, waits for every container's
#      health check (`podman healthcheck run`: podman runs none by itself without systemd);
#   6. the round trip through the containers (docker/smoke/roundtrip.py); then the serving
#      image alone (`docker run`: its default command `serve`), joined to that Label
#      Studio as a second model, answers a click;
#   7. stops every container (SIGTERM, 10 s grace), timing each: one that needs SIGKILL
#      (or the single container's `serve` having to SIGKILL a child) fails the test;
#      then `down -v`.
#
# usage: bash docker/smoke.sh   (root or sudo; the project installed, as .ci/run does)
# env:   SMOKE_WORK (default /var/tmp/squeezesam-smoke: stand-in root filesystem, venv,
#        logs; never inside the repository), SMOKE_KEEP=1 leaves the stack running.
set -euo pipefail
cd "$(dirname "$0")/.."
# rootful podman (debootstrap and runc need root): under sudo, with this PATH, so that
# python3 is still the one with the project installed
if [ "$(id -u)" != 0 ]; then exec sudo -E env PATH="$PATH" bash "$0" "$@"; fi
T0=$(date +%s)
WORK=${SMOKE_WORK:-/var/tmp/squeezesam-smoke}
PROJECT=squeezesam-smoke
COMPOSE_FILE=docker/compose.yaml
LOGS="$WORK/logs"
mkdir -p "$LOGS"
log() { echo "[smoke $(date +%T) +$(($(date +%s) - T0))s] $*"; }
fail() { echo "SMOKE FAIL: $*" >&2; exit 1; }

## 1. podman and friends
if ! command -v podman >/dev/null || ! command -v runc >/dev/null ||
   ! command -v debootstrap >/dev/null || [ ! -x /usr/libexec/podman/catatonit ]; then
  log "installing podman, runc, catatonit, debootstrap"
  apt-get update -q >"$LOGS/apt.log" 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc catatonit debootstrap \
    >>"$LOGS/apt.log" 2>&1 || { tail -20 "$LOGS/apt.log"; fail "apt-get install"; }
fi
# runc (crun fails here: "cgroups in hybrid mode not supported"); podman's default
# ulimits are above what this machine allows
export CONTAINERS_CONF="$WORK/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=30000:30000"]
[engine]
runtime = "runc"
EOF
PC="$WORK/compose-venv/bin/podman-compose"
if [ ! -x "$PC" ]; then
  log "installing podman-compose from PyPI into $WORK/compose-venv"
  python3 -m venv "$WORK/compose-venv"
  "$WORK/compose-venv/bin/pip" install -q "podman-compose==1.6.0" >"$LOGS/pip-compose.log" 2>&1 ||
    { tail -20 "$LOGS/pip-compose.log"; fail "pip install podman-compose"; }
fi
log "$(podman --version), runc $(runc --version | head -1 | awk '{print $3}'), $("$PC" --version 2>/dev/null | head -1)"

## 2. base images (real or stand-in): Python now; Redis and Label Studio while ours build
base_kind() {
  kind=$(podman image inspect --format '{{index .Labels "squeezesam.standin"}}' "$1")
  log "base $1: $([ "$kind" = true ] && echo 'STAND-IN (built here)' || echo real)"
}
bash docker/smoke/bases.sh "$WORK" python || fail "the Python base image"
base_kind docker.io/library/python:3.11.13-slim-bookworm
bash docker/smoke/bases.sh "$WORK" services >"$LOGS/bases-services.log" 2>&1 &
services_pid=$!

## 3. our two images, built once each, in parallel (and with the services' bases)
train_args=()
if ! curl -sf -m 15 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
  # the CPU index is out of reach: the wheel `pip install torch==2.13.0` takes here
  mkdir -p "$WORK/wheels"
  if ! ls "$WORK"/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps -d "$WORK/wheels" torch==2.13.0 >"$LOGS/pip-torch.log" 2>&1 ||
      { tail -5 "$LOGS/pip-torch.log"; fail "no torch 2.13.0 wheel here"; }
  fi
  log "PyTorch CPU index out of reach: torch from $(ls "$WORK"/wheels/torch-2.13.0*.whl)"
  train_args=(--volume "$WORK/wheels:/wheels:ro" --build-arg TORCH_FIND_LINKS=/wheels)
fi
log "building squeezesam:latest and squeezesam-train:latest"
podman build --format docker -f docker/Dockerfile -t localhost/squeezesam:latest . \
  >"$LOGS/build-squeezesam.log" 2>&1 &
web_build=$!
podman build --format docker -f docker/Dockerfile.train "${train_args[@]}" \
  -t localhost/squeezesam-train:latest . >"$LOGS/build-squeezesam-train.log" 2>&1 ||
  { tail -30 "$LOGS/build-squeezesam-train.log"; fail "build docker/Dockerfile.train"; }
wait "$web_build" || { tail -30 "$LOGS/build-squeezesam.log"; fail "build docker/Dockerfile"; }
wait "$services_pid" || { cat "$LOGS/bases-services.log"; fail "the Redis and Label Studio base images"; }
cat "$LOGS/bases-services.log"
base_kind docker.io/library/redis:7.2-alpine
base_kind docker.io/heartexlabs/label-studio:1.23.2
for image in squeezesam squeezesam-train; do
  hc=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "localhost/$image:latest")
  [ "$hc" != null ] || fail "$image has lost its HEALTHCHECK"
  log "built $image:latest ($(podman image inspect --format '{{.Size}}' "localhost/$image:latest" |
    awk '{printf "%.0f MB", $1/1e6}')), HEALTHCHECK kept"
done

## 4. safe by default: no secrets, no stack
for missing in BASIC_AUTH_PASS WEBHOOK_SECRET; do
  out=$(env -i PATH="$PATH" LS_TOKEN=x LS_PASSWORD=x BASIC_AUTH_PASS=x WEBHOOK_SECRET=x \
        "$missing=" "$PC" -f "$COMPOSE_FILE" config 2>&1 >/dev/null) &&
    fail "compose accepted an empty $missing"
  grep -q "$missing" <<<"$out" || fail "compose's refusal does not name $missing: $out"
  log "compose refuses to start without $missing"
done

## 5. up
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
secret() { python3 -c 'import secrets; print(secrets.token_hex(20))'; }
export LS_TOKEN LS_PASSWORD BASIC_AUTH_PASS WEBHOOK_SECRET LS_PORT BACKEND_PORT
LS_TOKEN=$(secret) LS_PASSWORD=$(secret) BASIC_AUTH_PASS=$(secret) WEBHOOK_SECRET=$(secret)
LS_PORT=$(free_port) BACKEND_PORT=$(free_port)
export BASIC_AUTH_USER=labelstudio LS_USER=admin@example.com
# the trainer's base data (read-only, TRAIN_BASE_DATA=/base-data): the project's shared
# data where this machine has it, else compose's empty volume
SHARED_DATA=${SQUEEZESAM_SHARED_DATA:-$(pwd)/../shared/data}
if [ -d "$SHARED_DATA" ]; then export BASE_DATA; BASE_DATA=$(realpath "$SHARED_DATA"); fi
export LS_PUBLIC_URL="http://127.0.0.1:$LS_PORT"
compose() { "$PC" -p "$PROJECT" -f "$COMPOSE_FILE" --profile labelstudio "$@"; }
ALONE=$PROJECT-alone
podman rm -f "$ALONE" >/dev/null 2>&1 || true   # a previous run's leftovers
compose down -v -t 10 >/dev/null 2>&1 || true

dump_logs() {
  for c in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
    echo "--- podman logs $c (last 25 lines)"; podman logs --tail 25 "$c" 2>&1 || true
  done
}
cleanup() {
  rc=$?
  if [ "$rc" != 0 ]; then dump_logs; fi
  if [ "${SMOKE_KEEP:-0}" != 1 ]; then
    podman rm -f "$ALONE" >/dev/null 2>&1 || true
    compose down -v -t 10 >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # CI's timeout: clean up too
log "up (project $PROJECT, profile labelstudio; Label Studio on :$LS_PORT, backend on :$BACKEND_PORT)"
compose up -d --no-build >"$LOGS/up.log" 2>&1 || { tail -30 "$LOGS/up.log"; fail "compose up"; }
containers=$(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' | sort)
[ "$(wc -w <<<"$containers")" -ge 8 ] || fail "expected 8 containers, got: $containers"
service() { podman inspect --format '{{index .Config.Labels "com.docker.compose.service"}}' "$1"; }
up_at=$(date +%s)
pending=$containers
while [ -n "$pending" ]; do
  still=""
  for c in $pending; do
    if podman healthcheck run "$c" >/dev/null 2>&1; then
      log "healthy: $c ($(service "$c")) $(($(date +%s) - up_at)) s after up"
    else
      still="$still $c"
    fi
  done
  pending=$still
  if [ -n "$pending" ] && [ $(($(date +%s) - up_at)) -gt 300 ]; then
    fail "not healthy after 300 s:$pending"
  fi
  [ -z "$pending" ] || sleep 3
done
for c in $containers; do
  if [ "$(service "$c")" = redis ] && [ -n "$(podman port "$c")" ]; then
    fail "redis publishes a port: $(podman port "$c")"
  fi
done
log "all $(wc -w <<<"$containers") containers healthy; redis publishes no port"
trainer=$(for c in $containers; do if [ "$(service "$c")" = trainer ]; then echo "$c"; fi; done)
# shellcheck disable=SC2016  # expanded in the container
sets=$(podman exec "$trainer" sh -c 'ls -d "$TRAIN_BASE_DATA"/*/ 2>/dev/null | wc -l')
if podman exec "$trainer" sh -c 'touch "$TRAIN_BASE_DATA/.w"' 2>/dev/null; then
  fail "the trainer's base data (/base-data) is writable"
fi
if [ -n "${BASE_DATA:-}" ]; then
  [ "$sets" -gt 0 ] || fail "the trainer sees no dataset folder under /base-data ($BASE_DATA)"
  log "trainer: TRAIN_BASE_DATA=/base-data, read-only, $sets folders of $BASE_DATA"
else
  log "trainer: TRAIN_BASE_DATA=/base-data, read-only, empty (no shared data on this machine)"
fi

## 6. the round trip
web=$(for c in $containers; do if [ "$(service "$c")" = web ]; then echo "$c"; fi; done)
SMOKE_LS_URL="http://127.0.0.1:$LS_PORT" SMOKE_BACKEND_URL="http://127.0.0.1:$BACKEND_PORT" \
  SMOKE_WEB_CONTAINER="$web" python3 docker/smoke/roundtrip.py || fail "round trip"

## 6b. the serving image alone (`docker run`, its default command `serve` with embedded
## Redis), joined to that Label Studio as a second model: the "existing Label Studio" shape
net=$(podman inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$web" | awk '{print $1}')
podman run -d --name "$ALONE" --network "$net" --network-alias alone.squeezesam.internal \
  -p "127.0.0.1:$(free_port):9090" -e LABEL_STUDIO_URL=http://labelstudio:8080 \
  -e LABEL_STUDIO_API_KEY="$LS_TOKEN" -e BASIC_AUTH_USER="$BASIC_AUTH_USER" \
  -e BASIC_AUTH_PASS="$BASIC_AUTH_PASS" -e WEBHOOK_SECRET="$WEBHOOK_SECRET" \
  localhost/squeezesam:latest >/dev/null
up_at=$(date +%s)
until podman healthcheck run "$ALONE" >/dev/null 2>&1; do
  [ $(($(date +%s) - up_at)) -lt 120 ] || fail "the single container is not healthy after 120 s"
  sleep 2
done
log "healthy: $ALONE (the serving image's default command) $(($(date +%s) - up_at)) s after run"
SMOKE_LS_URL="http://127.0.0.1:$LS_PORT" SMOKE_BACKEND_URL=unused SMOKE_WEB_CONTAINER="$ALONE" \
  python3 docker/smoke/roundtrip.py alone http://alone.squeezesam.internal:9090 ||
  fail "single container"

## 7. stop: every container within 10 s of SIGTERM
[ "${SMOKE_KEEP:-0}" != 1 ] || { log "SMOKE_KEEP=1: the stack stays up"; trap - EXIT; exit 0; }
slow=""
timed_stop() {  # timed_stop CONTAINER: SIGTERM, SIGKILL after 10 s; records the slow ones
  local c=$1 start took code
  start=$(date +%s.%N)
  podman stop -t 10 "$c" >>"$LOGS/stop.log" 2>&1
  took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
  code=$(podman inspect --format '{{.State.ExitCode}}' "$c")
  log "stopped: $c in $took s (exit code $code)"
  podman logs "$c" >"$LOGS/container-$c.log" 2>&1 || true
  if [ "$code" = 137 ] || python3 -c "import sys; sys.exit(float(sys.argv[1]) < 10)" "$took"; then
    slow="$slow $c"
    echo "--- the last lines of $c before its SIGKILL:"; tail -15 "$LOGS/container-$c.log"
  fi
}
timed_stop "$ALONE"  # serve: its children, then its embedded Redis, well within 10 s
podman logs "$ALONE" >"$LOGS/alone.log" 2>&1 || true
if grep "SIGKILL" "$LOGS/alone.log"; then  # supervisor.py logs each child it kills
  fail "serve had to SIGKILL a child that ignored its SIGTERM"
fi
podman rm "$ALONE" >/dev/null
order="labelstudio scheduler trainer preannotate interactive web redis"  # dependants first
for svc in $order; do
  for c in $containers; do
    [ "$(service "$c")" = "$svc" ] || continue
    timed_stop "$c"
  done
done
start=$(date +%s)
compose down -v -t 10 >"$LOGS/down.log" 2>&1 || { tail -20 "$LOGS/down.log"; fail "compose down"; }
trap - EXIT
log "down -v in $(($(date +%s) - start)) s"
[ -z "$slow" ] || fail "killed after 10 s instead of stopping on SIGTERM:$slow"
log "SMOKE OK in $(($(date +%s) - T0)) s"
