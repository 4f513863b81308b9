#!/usr/bin/env bash
# Containers benchmark: boot to agent-ready without and with a share, then
# in one microVM with a share trivial containers (a busybox bundle, `runc
# spec` config, `true`) from bind to unbind, and virtio-fs write/read
# throughput next to the guest's tmpfs and the host. Prints a Markdown
# report and writes it into bench/RESULTS.md as the "Containers" section
# (the other parts stay). See bench/README.md.
#
# Environment (all optional):
#   BOOT_RUNS=3  CONTAINER_RUNS=10  CONTAINER_WARMUP=1  FS_MIB=32  FS_RUNS=3
#   HOST_RUNS=3  MEMORY_MIB=128  VCPUS=1  IDLE_WAIT_S=900  MAX_LOAD=1.0
#   BOOT_TIMEOUT_S=120  STEP_TIMEOUT_S=600
#   KERNEL=build/vmlinux  IMAGE=build/rootfs-tools.ext4
#   VMM=target/release/runvm-vmm  VIRTIOFSD=(the runtime's search)
#   BUSYBOX=/bin/busybox  CARGO=cargo  RESULTS=bench/RESULTS.md
set -Eeuo pipefail
# Cold boots: these figures are of booting (VM templates, which the
# runtime uses by default, are measured apart).
export RUNVM_COLD_BOOT="${RUNVM_COLD_BOOT:-1}"

die() {
  echo "bench/containers.sh: error: $*" >&2
  exit 1
}

# A command that fails under errexit says where, instead of ending the run silently.
trap 'echo "bench/containers.sh: error: line $LINENO: a command failed (status $?)" >&2' ERR

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$repo/bench"
# shellcheck source=bench/quiet.sh
source "$bench/quiet.sh"

BOOT_RUNS=${BOOT_RUNS:-3}
CONTAINER_RUNS=${CONTAINER_RUNS:-10}
CONTAINER_WARMUP=${CONTAINER_WARMUP:-1}
FS_MIB=${FS_MIB:-32}
FS_RUNS=${FS_RUNS:-3}
HOST_RUNS=${HOST_RUNS:-3}
MEMORY_MIB=${MEMORY_MIB:-128}
VCPUS=${VCPUS:-1}
IDLE_WAIT_S=${IDLE_WAIT_S:-900}
MAX_LOAD=${MAX_LOAD:-1.0}
BOOT_TIMEOUT_S=${BOOT_TIMEOUT_S:-120}
STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-600}
KERNEL=${KERNEL:-$repo/build/vmlinux}
IMAGE=${IMAGE:-${INITRD:-$repo/build/rootfs-tools.ext4}}
VMM=${VMM:-$repo/target/release/runvm-vmm}
VIRTIOFSD=${VIRTIOFSD:-}
BUSYBOX=${BUSYBOX:-/bin/busybox}
CARGO=${CARGO:-cargo}
RESULTS=${RESULTS:-$bench/RESULTS.md}

for var in BOOT_RUNS CONTAINER_RUNS CONTAINER_WARMUP FS_MIB FS_RUNS HOST_RUNS MEMORY_MIB VCPUS \
  IDLE_WAIT_S BOOT_TIMEOUT_S STEP_TIMEOUT_S; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number, got '${!var}'"
done
[[ $MAX_LOAD =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "MAX_LOAD must be a number (0: ignore the load), got '$MAX_LOAD'"
((BOOT_RUNS >= 1 && CONTAINER_RUNS >= 1 && FS_RUNS >= 1 && HOST_RUNS >= 1 && FS_MIB >= 1)) ||
  die "BOOT_RUNS, CONTAINER_RUNS, FS_RUNS, HOST_RUNS and FS_MIB must be at least 1"
# The guest's tmpfs holds the whole file (plus 8 MiB) in guest memory.
((FS_MIB + 48 <= MEMORY_MIB)) || die "FS_MIB=$FS_MIB does not fit a tmpfs in a ${MEMORY_MIB} MiB guest"

((EUID == 0)) || die "run as root: the share binds root filesystems and starts virtiofsd"
[[ -f $KERNEL ]] || die "no kernel at $KERNEL (build it with 'make kernel', or set KERNEL=)"
[[ -f $IMAGE ]] ||
  die "no test image at $IMAGE (build it with 'make initramfs', or set IMAGE=)"
[[ -x $VMM ]] || die "no runvm-vmm at $VMM (build it with 'make binaries', or set VMM=)"
[[ -x $BUSYBOX ]] || die "no busybox at $BUSYBOX (the bundles and the test image hold a copy; set BUSYBOX=)"
[[ -z $VIRTIOFSD || -x $VIRTIOFSD ]] || die "no virtiofsd at $VIRTIOFSD"
command -v python3 >/dev/null || die "python3 not found"
[[ -r /dev/kvm && -w /dev/kvm ]] || die "/dev/kvm is missing or not usable by $(id -un)"

echo "bench: building runvm-containers-bench" >&2
(cd "$repo" && "$CARGO" build --release --locked -q -p runvm-containers-bench) ||
  die "cannot build runvm-containers-bench"
containers_bench="$repo/target/release/runvm-containers-bench"

# Also lets the load of the build above die down.
bench_wait_quiet "$IDLE_WAIT_S" "$MAX_LOAD"
loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)

tmp=$(mktemp -d /tmp/runvm-containers-bench.XXXXXX)
bench_pid=
cleanup() {
  if [[ -n $bench_pid ]]; then
    # The VMMs and virtiofsd die with it (PR_SET_PDEATHSIG); the share's
    # mounts live in a mount namespace that goes with virtiofsd.
    kill "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cmd=(
  "$containers_bench" --vmm "$VMM" --kernel "$KERNEL" --image "$IMAGE"
  --memory-mib "$MEMORY_MIB" --vcpus "$VCPUS" --dir "$tmp/work"
  --boot-runs "$BOOT_RUNS" --container-runs "$CONTAINER_RUNS" --container-warmup "$CONTAINER_WARMUP"
  --fs-mib "$FS_MIB" --fs-runs "$FS_RUNS" --host-runs "$HOST_RUNS" --busybox "$BUSYBOX"
  --boot-timeout-s "$BOOT_TIMEOUT_S" --step-timeout-s "$STEP_TIMEOUT_S"
)
[[ -z $VIRTIOFSD ]] || cmd+=(--virtiofsd "$VIRTIOFSD")
# The command as the report shows it: the work directory is a new one each run.
shown=()
for arg in "${cmd[@]}"; do
  [[ $arg == "$tmp/work" ]] && arg=/tmp/runvm-containers-bench.XXXXXX/work
  shown+=("$arg")
done
echo "bench: load average $loadavg_before; $BOOT_RUNS boots of each kind, $CONTAINER_RUNS containers," \
  "$FS_RUNS x $FS_MIB MiB (about 15 minutes on an emulating host)" >&2
# In the background, so that a signal to this script can stop it (and the
# VMs with it) before the clean-up.
"${cmd[@]}" >"$tmp/result.json" &
bench_pid=$!
bench_watch "$bench_pid" "$tmp/watch" &
watch_pid=$!
status=0
wait "$bench_pid" || status=$?
bench_pid=
wait "$watch_pid" || true
((status == 0)) || die "runvm-containers-bench failed (status $status)"
loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)
bench_watch_notes "$tmp/watch"

# What the host directory under test (in the work directory) sits on.
host_fs=$({ df --output=fstype,source "$tmp" 2>/dev/null || true; } | awk 'NR == 2 { print $1 " (" $2 ")" }')

python3 "$bench/containers_report.py" --json "$tmp/result.json" --results "$RESULTS" --repo "$repo" \
  --kernel "$KERNEL" --image "$IMAGE" --busybox "$BUSYBOX" --host-fs "${host_fs:-unknown}" \
  --loadavg-before "$loadavg_before" --loadavg-after "$loadavg_after" --max-load "$max_load_note" \
  --quiet-note "$quiet_note" --during-note "$during_note" -- "${shown[@]}" || {
  # The measurement took a quarter of an hour: keep its figures.
  kept=$(mktemp /tmp/runvm-containers-bench-result.XXXXXX.json)
  cp "$tmp/result.json" "$kept"
  die "cannot write the report (the figures are kept in $kept)"
}

echo "bench: report written to $RESULTS" >&2
