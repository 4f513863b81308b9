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
#   IMAGE=build/runvm-agent  RUNC=runc  BUSYBOX=/bin/busybox  RESULTS=bench/RESULTS.md
#   RAW=  (also write the raw figures there, as JSON)
set -Eeuo pipefail
# Cold boots: these figures are of booting (VM templates, which the
# runtime uses by default, are measured apart).
export RUNVM_COLD_BOOT="${RUNVM_COLD_BOOT:-1}"
script=bench/podstart.sh
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/pods/common.sh
source "$repo/bench/pods/common.sh"

RUNS=${RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a whole number of at least 1, got '$RUNS'"
pod_wait_quiet
python3 "$bench/pods/start.py" "${pod_args[@]}" --runs "$RUNS"
echo "bench: report written to $RESULTS" >&2
