#!/usr/bin/env bash
# Agent-channel benchmark: boots one microVM from the test image and
# measures exec round-trip latency and guest-to-host stdout throughput in
# it, next to a pipe inside the guest and a pipe on the host. Prints a
# Markdown report and writes it into bench/RESULTS.md as the "Agent
# channel" section (the boot report above it stays). See bench/README.md.
#
# Environment (all optional):
#   LATENCY_RUNS=30  WARMUP=3  THROUGHPUT_MIB=4  THROUGHPUT_RUNS=3
#   HOST_RUNS=5  HOST_LARGE_MIB=1024  MEMORY_MIB=128  VCPUS=1
#   IDLE_WAIT_S=900  MAX_LOAD=1.0  BOOT_TIMEOUT_S=120  STEP_TIMEOUT_S=600
#   KERNEL=build/vmlinux  IMAGE=build/rootfs-tools.ext4
#   VMM=target/release/runvm-vmm  BUSYBOX=/bin/busybox  CARGO=cargo
#   RESULTS=bench/RESULTS.md
set -Eeuo pipefail
# Cold boots: these figures are of booting (VM templates, which the
# runtime uses by default, are measured apart).
export RUNVM_COLD_BOOT="${RUNVM_COLD_BOOT:-1}"

die() {
  echo "bench/exec.sh: error: $*" >&2
  exit 1
}

# A command that fails under errexit says where, instead of ending the run silently.
trap 'echo "bench/exec.sh: error: line $LINENO: a command failed (status $?)" >&2' ERR

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$repo/bench"
# shellcheck source=bench/quiet.sh
source "$bench/quiet.sh"

LATENCY_RUNS=${LATENCY_RUNS:-30}
WARMUP=${WARMUP:-3}
THROUGHPUT_MIB=${THROUGHPUT_MIB:-4}
THROUGHPUT_RUNS=${THROUGHPUT_RUNS:-3}
HOST_RUNS=${HOST_RUNS:-5}
HOST_LARGE_MIB=${HOST_LARGE_MIB:-1024}
MEMORY_MIB=${MEMORY_MIB:-128}
VCPUS=${VCPUS:-1}
IDLE_WAIT_S=${IDLE_WAIT_S:-900}
MAX_LOAD=${MAX_LOAD:-1.0}
BOOT_TIMEOUT_S=${BOOT_TIMEOUT_S:-120}
STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-600}
KERNEL=${KERNEL:-$repo/build/vmlinux}
IMAGE=${IMAGE:-${INITRD:-$repo/build/rootfs-tools.ext4}}
VMM=${VMM:-$repo/target/release/runvm-vmm}
BUSYBOX=${BUSYBOX:-/bin/busybox}
CARGO=${CARGO:-cargo}
RESULTS=${RESULTS:-$bench/RESULTS.md}

for var in LATENCY_RUNS WARMUP THROUGHPUT_MIB THROUGHPUT_RUNS HOST_RUNS HOST_LARGE_MIB MEMORY_MIB \
  VCPUS IDLE_WAIT_S BOOT_TIMEOUT_S STEP_TIMEOUT_S; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number, got '${!var}'"
done
[[ $MAX_LOAD =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "MAX_LOAD must be a number (0: ignore the load), got '$MAX_LOAD'"
((LATENCY_RUNS >= 1 && THROUGHPUT_RUNS >= 1 && HOST_RUNS >= 1 && THROUGHPUT_MIB >= 1)) ||
  die "LATENCY_RUNS, THROUGHPUT_RUNS, HOST_RUNS and THROUGHPUT_MIB must be at least 1"

[[ -f $KERNEL ]] || die "no kernel at $KERNEL (build it with 'make kernel', or set KERNEL=)"
[[ -f $IMAGE ]] ||
  die "no test image at $IMAGE (build it with 'make initramfs', or set IMAGE=)"
[[ -x $VMM ]] || die "no runvm-vmm at $VMM (build it with 'make binaries', or set VMM=)"
[[ -x $BUSYBOX ]] || die "no busybox at $BUSYBOX (the test image holds a copy of it; set BUSYBOX=)"
command -v python3 >/dev/null || die "python3 not found"
[[ -r /dev/kvm && -w /dev/kvm ]] || die "/dev/kvm is missing or not usable by $(id -un)"

echo "bench: building runvm-exec-bench" >&2
(cd "$repo" && "$CARGO" build --release --locked -q -p runvm-exec-bench) ||
  die "cannot build runvm-exec-bench"
exec_bench="$repo/target/release/runvm-exec-bench"

# Other microVMs and builds compete for the CPU the emulated guest kernel
# needs; waiting also lets the load of the build above die down.
bench_wait_quiet "$IDLE_WAIT_S" "$MAX_LOAD"
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)

tmp=$(mktemp -d /tmp/runvm-exec-bench.XXXXXX)
bench_pid=
cleanup() {
  if [[ -n $bench_pid ]]; then
    kill "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cmd=(
  "$exec_bench" --vmm "$VMM" --kernel "$KERNEL" --image "$IMAGE"
  --memory-mib "$MEMORY_MIB" --vcpus "$VCPUS" --dir "$tmp/vm"
  --latency-runs "$LATENCY_RUNS" --warmup "$WARMUP"
  --throughput-mib "$THROUGHPUT_MIB" --throughput-runs "$THROUGHPUT_RUNS"
  --host-runs "$HOST_RUNS" --host-large-mib "$HOST_LARGE_MIB" --busybox "$BUSYBOX"
  --boot-timeout-s "$BOOT_TIMEOUT_S" --step-timeout-s "$STEP_TIMEOUT_S"
)
# The command as the report shows it: the VM directory is a new one each run.
shown=()
for arg in "${cmd[@]}"; do
  [[ $arg == "$tmp/vm" ]] && arg=/tmp/runvm-exec-bench.XXXXXX/vm
  shown+=("$arg")
done
echo "bench: load average $loadavg; $LATENCY_RUNS latency runs, $THROUGHPUT_RUNS x $THROUGHPUT_MIB MiB" >&2
# In the background, so that a signal to this script can stop it (and the
# VM with it: the VMM dies with its parent) before the clean-up.
"${cmd[@]}" >"$tmp/result.json" &
bench_pid=$!
# Notes every other VMM that runs at some point during the measurement (ours
# is the benchmark's child), and the load.
bench_watch "$bench_pid" "$tmp/watch" &
watch_pid=$!
status=0
wait "$bench_pid" || status=$?
bench_pid=
wait "$watch_pid" || true
((status == 0)) || die "runvm-exec-bench failed (status $status)"
bench_watch_notes "$tmp/watch"

python3 "$bench/exec_report.py" --json "$tmp/result.json" --results "$RESULTS" --repo "$repo" \
  --kernel "$KERNEL" --image "$IMAGE" --busybox "$BUSYBOX" \
  --loadavg "$loadavg" --quiet-note "$quiet_note" --max-load "$max_load_note" \
  --during-note "$during_note" -- "${shown[@]}" ||
  die "cannot write the report"

echo "bench: report written to $RESULTS" >&2
