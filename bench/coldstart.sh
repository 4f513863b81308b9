#!/usr/bin/env bash
# Cold-start benchmark: boot to ready of the guest images (the agent as the
# VMM's init program, which runvm boots, as an initramfs and as an ext4 root
# disk, the test image both ways) next to the
# same kernel booting a tiny static init, with the VM's KVM counters at the
# ready line; and `runvm run` of a trivial container next to that tiny-init
# boot, and the floor under it: the same process run by the agent of a cold
# VM from the share with no container (runvm-floor-bench). Writes the
# "Cold start" section of bench/RESULTS.md.
#
# Environment (all optional):
#   RUNS=5  CONTAINER_RUNS=3  MEMORY_MIB=128  IDLE_WAIT_S=900  MAX_LOAD=1.0
#   TIMEOUT_S=300  RESULTS=bench/RESULTS.md  RAW=/tmp/runvm-coldstart-<time>.json
#   BEFORE=DIR: another built checkout of runvm (say, a worktree of an older
#     commit, built with `make build`) measured in the same run as "before"
set -Eeuo pipefail
# Cold boots: these figures are of booting (VM templates, which the
# runtime uses by default, are measured apart).
export RUNVM_COLD_BOOT="${RUNVM_COLD_BOOT:-1}"

die() {
  echo "bench/coldstart.sh: error: $*" >&2
  exit 1
}
trap 'echo "bench/coldstart.sh: error: line $LINENO: a command failed (status $?)" >&2' ERR

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$repo/bench"
# shellcheck source=bench/quiet.sh
source "$bench/quiet.sh"

RUNS=${RUNS:-5}
CONTAINER_RUNS=${CONTAINER_RUNS:-3}
MEMORY_MIB=${MEMORY_MIB:-128}
IDLE_WAIT_S=${IDLE_WAIT_S:-900}
MAX_LOAD=${MAX_LOAD:-1.0}
TIMEOUT_S=${TIMEOUT_S:-300}
RESULTS=${RESULTS:-$repo/bench/RESULTS.md}

release="$repo/target/release"
kernel="$repo/build/vmlinux"
image="$repo/build/runvm-agent"
root_disk="$repo/build/rootfs.ext4"
tools_image="$repo/build/rootfs-tools.ext4"
initrd="$repo/build/initramfs.cpio"
agent="$repo/target/x86_64-unknown-linux-gnu/agent/runvm-agent"
for f in "$kernel" "$image" "$root_disk" "$tools_image" "$initrd" "$agent" "$release/runvm" "$release/runvm-vmm" \
  "$release/runvm-rootfs-builder"; do
  [[ -f $f ]] || die "$f is missing: run 'make build' first"
done
[[ -r /dev/kvm && -w /dev/kvm ]] || die "/dev/kvm is missing or not usable by $(id -un)"
command -v gcc >/dev/null || die "gcc not found (apt-get install build-essential)"

(cd "$repo" && cargo build --release --locked -q -p runvm-guest-counters -p runvm-containers-bench) ||
  die "cannot build runvm-guest-counters and runvm-floor-bench"

work=$(mktemp -d /tmp/runvm-coldstart.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The reference guest: a static C init that prints its ready line and waits.
gcc -static -O2 -o "$work/tiny-init" "$bench/coldstart/tiny-init.c"
"$release/runvm-rootfs-builder" --agent "$work/tiny-init" --output "$work/tiny-init.cpio" 2>/dev/null
# The test image as an initramfs, for the comparison.
"$release/runvm-rootfs-builder" --agent "$agent" --busybox /bin/busybox \
  --output "$work/initramfs-tools.cpio" 2>/dev/null
"$repo/scripts/demo-bundle.sh" "$release/runvm" "$work/bundle" >/dev/null

quiet_note=""
bench_wait_quiet "$IDLE_WAIT_S" "$MAX_LOAD"

ready="runvm-agent"
vmm="$release/runvm-vmm"
args=(
  --variant "tiny-init|$vmm|$kernel|--initrd|$work/tiny-init.cpio|tiny-init ready"
  --variant "agent-program|$vmm|$kernel|--init-program|$image|$ready"
  --variant "agent-initramfs|$vmm|$kernel|--initrd|$initrd|$ready"
  --variant "agent-root-disk|$vmm|$kernel|--root-disk|$root_disk|$ready"
  --variant "tools-initramfs|$vmm|$kernel|--initrd|$work/initramfs-tools.cpio|$ready"
  --variant "tools-root-disk|$vmm|$kernel|--root-disk|$tools_image|$ready"
  --container "this tree|$release/runvm|$vmm|$kernel|$image"
  --container "this tree, agent on a root disk|$release/runvm|$vmm|$kernel|$root_disk"
  --floor "this tree|$release/runvm-floor-bench|$vmm|$kernel|$image"
)
if [[ -n ${BEFORE:-} ]]; then
  old="$BEFORE/target/release"
  for f in "$BEFORE/build/vmlinux" "$BEFORE/build/initramfs.cpio" "$BEFORE/build/initramfs-tools.cpio" \
    "$old/runvm" "$old/runvm-vmm"; do
    [[ -f $f ]] || die "BEFORE=$BEFORE: $f is missing (run 'make build' there)"
  done
  args+=(
    --variant "before: tiny-init|$old/runvm-vmm|$BEFORE/build/vmlinux|--initrd|$work/tiny-init.cpio|tiny-init ready"
    --variant "before: agent-initramfs|$old/runvm-vmm|$BEFORE/build/vmlinux|--initrd|$BEFORE/build/initramfs.cpio|$ready"
    --variant "before: tools-initramfs|$old/runvm-vmm|$BEFORE/build/vmlinux|--initrd|$BEFORE/build/initramfs-tools.cpio|$ready"
    --container "before|$old/runvm|$old/runvm-vmm|$BEFORE/build/vmlinux|$BEFORE/build/initramfs.cpio"
  )
fi
python3 "$bench/coldstart/measure.py" \
  --counters "$release/runvm-guest-counters" --bundle "$work/bundle" --state "$work/state" \
  "${args[@]}" \
  --runs "$RUNS" --container-runs "$CONTAINER_RUNS" --memory-mib "$MEMORY_MIB" \
  --timeout "$TIMEOUT_S" --repo "$repo" --results "$RESULTS" --quiet-note "$quiet_note" \
  --raw "${RAW:-/tmp/runvm-coldstart-$(date -u +%Y%m%dT%H%M%SZ).json}"
