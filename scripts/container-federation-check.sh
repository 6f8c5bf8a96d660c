#!/usr/bin/env bash
# container-federation-check.sh [IMAGE]: the README's sample federation with every site in a container
# of IMAGE (default fc-knowledge-distillation:ci), then the checks of the local run on its outputs.
#
#   scripts/container-federation-check.sh                  # after scripts/docker-ci.sh
#   scripts/container-federation-check.sh my/kd:dev
#
# Outputs go to results/containers/ (git-ignored, emptied first so a stale run cannot pass).
# scripts/check_outputs.py then requires, at both sites c1 and c2: every expected file, the same
# student.pt, one metrics.json round entry per configured round, student accuracy >= 0.95, a
# student_int8.onnx predicting like the float student on >= 98% of the site's test images.
# Needs a running Docker engine and the image (scripts/docker-ci.sh provides both); never pulls.
# The app shortens the engine's waits in the container too (README, "Platform waits"), so this takes about as
# long as the local run.
# Exits non-zero with an "ERROR:" line naming what failed.
set -euo pipefail

IMAGE="${1:-fc-knowledge-distillation:ci}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="$REPO/results/containers"
SITES=(c1 c2)

log() { printf '[container-check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'ERROR: container-federation-check: %s\n' "$*" >&2; exit 1; }

[[ $# -le 1 ]] || die "usage: $0 [IMAGE]   (default IMAGE: fc-knowledge-distillation:ci)"
cd "$REPO"
rm -rf "$OUTPUT"
started=$SECONDS

log "sample federation (${SITES[*]}) in containers of $IMAGE -> $OUTPUT"
status=0
python main.py simulate --image "$IMAGE" --client-dirs sample_data/c1,sample_data/c2 \
  --generic-dir sample_data/generic --output-dir "$OUTPUT" || status=$?
case $status in
  0) ;;
  2) die "simulate --image did not start (reason above); is the Docker engine running and $IMAGE built? (scripts/docker-ci.sh)" ;;
  *) die "the federation in containers failed with exit code $status (reason above); site logs: $OUTPUT/<site>.failed.log" ;;
esac
log "federation finished after $((SECONDS - started))s"

# check_outputs.py looks at the site folders it finds: make sure both are there first.
for site in "${SITES[@]}"; do
  [[ -f $OUTPUT/$site/metrics.json ]] || die "site $site has no $OUTPUT/$site/metrics.json although the run succeeded"
done
python scripts/check_outputs.py "$OUTPUT" --min-accuracy 0.95 \
  || die "the outputs in $OUTPUT fail the checks listed above"
log "OK: containers gave every site the same student, accuracy >= 0.95, int8 agreement >= 0.98, all outputs ($((SECONDS - started))s in all)"
