#!/usr/bin/env bash
# The base images of docker/Dockerfile*, docker/compose.yaml, pulled when a registry
# answers, else built here as local STAND-INS tagged with the real names, so that the
# Dockerfiles and compose.yaml build and run unchanged:
#
#   python:3.11.13-slim-bookworm     Debian bookworm minbase + its python3.11, pip, venv
#   redis:7.2-alpine                 Debian bookworm minbase + its redis-server 7.0 (+ cli)
#   heartexlabs/label-studio:1.23.2  the python stand-in + `pip install label-studio==1.23.2`
#
# The root filesystem comes from `debootstrap --variant=minbase bookworm` (`podman
# import`). Outgoing TLS may be intercepted: the machine's CA certificates
# (/usr/local/share/ca-certificates/*.crt) go into the stand-ins that pip installs with.
#
# usage: docker/smoke/bases.sh WORKDIR [python|services|all]   (root; WORKDIR outside the
#        repository; python: the Python base only, services: Redis and Label Studio)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:?usage: $0 WORKDIR [python|services|all]}
PHASE=${2:-all}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=docker.io/library/python:3.11.13-slim-bookworm
REDIS=docker.io/library/redis:7.2-alpine
LS=docker.io/heartexlabs/label-studio:1.23.2
MINBASE=localhost/squeezesam-smoke/bookworm-minbase:latest
mkdir -p "$WORK"

log() { echo "[bases $(date +%T)] $*"; }

# the real image when a registry answers (a stand-in built earlier is kept)
pulled() {
  if podman image exists "$1"; then
    log "$1: present ($(podman image inspect --format '{{index .Labels "squeezesam.standin"}}' "$1" | sed 's/^$/pulled/;s/^true$/stand-in/'))"
    return 0
  fi
  if timeout 120 podman pull -q "$1" >/dev/null 2>&1; then log "$1: pulled"; return 0; fi
  log "$1: cannot be pulled: building a stand-in"
  return 1
}

minbase() {
  podman image exists "$MINBASE" && return 0
  if [ ! -x "$WORK/rootfs/usr/bin/apt-get" ] || [ ! -e "$WORK/rootfs/.complete" ]; then
    rm -rf "$WORK/rootfs"
    log "debootstrap --variant=minbase bookworm ($MIRROR)"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
      { tail -20 "$WORK/debootstrap.log"; exit 1; }
    touch "$WORK/rootfs/.complete"
  fi
  # debootstrap leaves the host's resolv.conf/hostname; podman supplies its own
  rm -f "$WORK/rootfs/etc/resolv.conf" "$WORK/rootfs/etc/hostname" "$WORK/rootfs/.complete"
  tar -C "$WORK/rootfs" -c . | podman import -q --change 'CMD ["bash"]' - "$MINBASE" >/dev/null
  touch "$WORK/rootfs/.complete"
  log "imported $MINBASE"
}

# a build context of one Containerfile (from docker/smoke/) plus the machine's CA certs and
# Label Studio's pip constraints (the e2e tests' own file)
context() {
  local dir="$WORK/ctx-$1"
  rm -rf "$dir" && mkdir -p "$dir/ca"
  cp "$HERE/$2" "$dir/Containerfile"
  cp "$HERE/../../tests/e2e/labelstudio-constraints.txt" "$dir/"
  cp /usr/local/share/ca-certificates/*.crt "$dir/ca/" 2>/dev/null || true
  echo "$dir"
}

build() {  # build TAG CONTAINERFILE [podman build args...]
  local tag=$1 file=$2; shift 2
  local ctx; ctx=$(context "$(basename "$file" .Containerfile)" "$file")
  log "building stand-in $tag"
  podman build -q --format docker --label squeezesam.standin=true --build-arg MINBASE="$MINBASE" \
    --build-arg PYTHON_BASE="$PY" "$@" -t "$tag" "$ctx" >"$WORK/build-$(basename "$file").log" 2>&1 ||
    { tail -30 "$WORK/build-$(basename "$file").log"; exit 1; }
  log "built $tag"
}

# python first (our images and the Label Studio stand-in build on it), then the services'
need_py=0 need_redis=0 need_ls=0
if [ "$PHASE" != services ]; then
  pulled "$PY" || need_py=1
fi
if [ "$PHASE" != python ]; then
  pulled "$REDIS" || need_redis=1
  pulled "$LS" || need_ls=1
fi
[ $((need_py + need_redis + need_ls)) = 0 ] || minbase
[ $need_py = 0 ] || build "$PY" python.Containerfile
# Label Studio's install reuses pip's download cache of the host (the e2e step's venv)
pipcache=$(python3 -m pip cache dir 2>/dev/null || true)
cache_args=()
if [ -n "$pipcache" ] && [ -d "$pipcache" ]; then cache_args=(--volume "$pipcache:/root/.cache/pip"); fi
[ $need_redis = 0 ] || build "$REDIS" redis.Containerfile
[ $need_ls = 0 ] || build "$LS" labelstudio.Containerfile "${cache_args[@]}"
