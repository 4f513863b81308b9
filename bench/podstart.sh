#!/usr/bin/env bash
# Pod start benchmark: through the runc command line, a pod's sandbox
# created and started, then two member containers, under runvm and, as the
# reference, runc; per step times, and the runvm-vmm count and guest
# boot_id after each container (no VM boots for a member). Writes the "Pod
# start" section of bench/RESULTS.md. See bench/README.md.
#
# Environment (all optional):
#   RUNS=3  IDLE_WAIT_S=900  MAX_LOAD=1.0  STEP_TIMEOUT_S=600
#   VM_LOCK=  (a lock file, e.g. /tmp/runvm-vm.lock, held around each runvm pod)
#   RUNVM=target/release/runvm  VMM=target/release/runvm-vmm  KERNEL=build/vmlinux
#   IMAGE=build/rootfs.ext4  RUNC=runc  BUSYBOX=/bin/busybox  RESULTS=bench/RESULTS.md
#   RAW=  (also write the raw figures there, as JSON)
set -Eeuo pipefail

die() {
  echo "bench/podstart.sh: error: $*" >&2
  exit 1
}
trap 'echo "bench/podstart.sh: error: line $LINENO: a command failed (status $?)" >&2' ERR

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$repo/bench"
# shellcheck source=bench/quiet.sh
source "$bench/quiet.sh"

RUNS=${RUNS:-3}
IDLE_WAIT_S=${IDLE_WAIT_S:-900}
MAX_LOAD=${MAX_LOAD:-1.0}
STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-600}
RUNVM=${RUNVM:-$repo/target/release/runvm}
VMM=${VMM:-$repo/target/release/runvm-vmm}
KERNEL=${KERNEL:-$repo/build/vmlinux}
IMAGE=${IMAGE:-$repo/build/rootfs.ext4}
RUNC=${RUNC:-$(command -v runc || true)}
BUSYBOX=${BUSYBOX:-/bin/busybox}
RESULTS=${RESULTS:-$bench/RESULTS.md}

for var in RUNS IDLE_WAIT_S STEP_TIMEOUT_S; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number, got '${!var}'"
done
((RUNS >= 1)) || die "RUNS must be at least 1"
((EUID == 0)) || die "run as root: both runtimes create namespaces and cgroups"
for f in "$RUNVM" "$VMM" "$KERNEL" "$IMAGE"; do
  [[ -f $f ]] || die "$f is missing: run 'make build' first"
done
[[ -n $RUNC && -x $RUNC ]] || die "runc not found (apt-get install runc), or set RUNC="
[[ -x $BUSYBOX ]] || die "no busybox at $BUSYBOX (apt-get install busybox-static)"
[[ -r /dev/kvm && -w /dev/kvm ]] || die "/dev/kvm is missing or not usable by $(id -un)"

quiet_note=""
bench_wait_quiet "$IDLE_WAIT_S" "$MAX_LOAD"
python3 "$bench/pods/start.py" --runvm "$RUNVM" --runc "$RUNC" --vmm "$VMM" --kernel "$KERNEL" \
  --image "$IMAGE" --busybox "$BUSYBOX" --runs "$RUNS" --step-timeout "$STEP_TIMEOUT_S" \
  --vm-lock "${VM_LOCK:-}" --quiet-note "$quiet_note" --repo "$repo" --results "$RESULTS" \
  --raw "${RAW:-}"
echo "bench: report written to $RESULTS" >&2
