#!/usr/bin/env bash
# Pod network benchmark: TCP throughput host -> pod and pod -> host, TCP
# round trips and HTTP GETs, to a container on a CNI-like veth in network
# namespaces made here, under runc and under runvm (tap + TC mirred,
# virtio-net), in one run. Writes the "Pod network" section of
# bench/RESULTS.md. See bench/README.md.
#
# Environment (all optional):
#   MIB=2  RUNC_LARGE_MIB=512  ROUNDS=3  ROUND_TRIPS=100  GETS=20  MTU=1500
#   IDLE_WAIT_S=900  MAX_LOAD=1.0  STEP_TIMEOUT_S=600
#   VM_LOCK=  (a lock file, e.g. /tmp/runvm-vm.lock, held around the runvm container)
#   RUNVM=target/release/runvm  VMM=target/release/runvm-vmm  KERNEL=build/vmlinux
#   IMAGE=build/runvm-agent  RUNC=runc  BUSYBOX=/bin/busybox  RESULTS=bench/RESULTS.md
#   RAW=  (also write the raw figures there, as JSON)
set -Eeuo pipefail
# Cold boots: these figures are of booting (VM templates, which the
# runtime uses by default, are measured apart).
export RUNVM_COLD_BOOT="${RUNVM_COLD_BOOT:-1}"
script=bench/podnet.sh
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/pods/common.sh
source "$repo/bench/pods/common.sh"

MIB=${MIB:-2}
RUNC_LARGE_MIB=${RUNC_LARGE_MIB:-512}
ROUNDS=${ROUNDS:-3}
ROUND_TRIPS=${ROUND_TRIPS:-100}
GETS=${GETS:-20}
MTU=${MTU:-1500}
for var in MIB RUNC_LARGE_MIB ROUNDS ROUND_TRIPS GETS MTU; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number, got '${!var}'"
done
((MIB >= 1 && ROUNDS >= 1 && ROUND_TRIPS >= 1 && GETS >= 1)) ||
  die "MIB, ROUNDS, ROUND_TRIPS and GETS must be at least 1"
command -v ip >/dev/null || die "ip not found (apt-get install iproute2)"
pod_wait_quiet
python3 "$bench/pods/net.py" "${pod_args[@]}" --mib "$MIB" --runc-large-mib "$RUNC_LARGE_MIB" \
  --rounds "$ROUNDS" --round-trips "$ROUND_TRIPS" --gets "$GETS" --mtu "$MTU"
echo "bench: report written to $RESULTS" >&2
