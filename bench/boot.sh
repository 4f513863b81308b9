#!/usr/bin/env bash
# Boot benchmark: the same vmlinux + initramfs booted alternately under
# runvm-vmm and QEMU's microvm machine, RUNS times each; boot time to the
# agent's ready line, time to exit, and the VMM's own peak RSS (guest RAM
# excluded). Prints a Markdown report and writes it to bench/RESULTS.md.
# See bench/README.md.
#
# Environment (all optional):
#   RUNS=5  MEMORY_MIB=128  VCPUS=1  WARMUP=1  TIMEOUT_S=120  SAMPLE_MS=10
#   KERNEL=build/vmlinux  INITRD=build/initramfs.cpio
#   VMM=target/release/runvm-vmm  QEMU=qemu-system-x86_64
#   QEMU_CPU  (default: host; host,-arch-capabilities on kvm_pvm hosts)
#   RESULTS=bench/RESULTS.md  LOG_DIR=(a new directory under /tmp)
set -euo pipefail
# Cold boots: these figures are of booting (VM templates, which the
# runtime uses by default, are measured apart).
export RUNVM_COLD_BOOT="${RUNVM_COLD_BOOT:-1}"

die() {
  echo "bench/boot.sh: error: $*" >&2
  exit 1
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$repo/bench"

RUNS=${RUNS:-5}
MEMORY_MIB=${MEMORY_MIB:-128}
VCPUS=${VCPUS:-1}
WARMUP=${WARMUP:-1}
TIMEOUT_S=${TIMEOUT_S:-120}
SAMPLE_MS=${SAMPLE_MS:-10}
KERNEL=${KERNEL:-$repo/build/vmlinux}
INITRD=${INITRD:-$repo/build/initramfs.cpio}
VMM=${VMM:-$repo/target/release/runvm-vmm}
QEMU=${QEMU:-qemu-system-x86_64}
RESULTS=${RESULTS:-$bench/RESULTS.md}

for var in RUNS MEMORY_MIB VCPUS WARMUP TIMEOUT_S SAMPLE_MS; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number, got '${!var}'"
done
((RUNS >= 1)) || die "RUNS must be at least 1"

[[ -f $KERNEL ]] || die "no kernel at $KERNEL (build it with 'make kernel', or set KERNEL=)"
[[ -f $INITRD ]] || die "no initramfs at $INITRD (build it with 'make initramfs', or set INITRD=)"
[[ -x $VMM ]] || die "no runvm-vmm at $VMM (build it with 'cargo build --release -p runvm-vmm', or set VMM=)"
command -v "$QEMU" >/dev/null ||
  die "$QEMU not found (install it with 'apt-get install -y qemu-system-x86' or 'scripts/setup.sh --bench')"
command -v python3 >/dev/null || die "python3 not found"
[[ -r /dev/kvm && -w /dev/kvm ]] || die "/dev/kvm is missing or not usable by $(id -un)"
QEMU=$(command -v "$QEMU")

# On kvm_pvm hosts QEMU 7.2's '-cpu host' aborts at start ("failed to set
# MSR 0x10a", IA32_ARCH_CAPABILITIES), so the CPUID bit behind that MSR goes.
# The guest sees the host's CPUID there anyway (KVM ignores the VMM's), so
# this changes nothing inside the guest.
if [[ -z ${QEMU_CPU:-} ]]; then
  if [[ -d /sys/module/kvm_pvm ]]; then
    QEMU_CPU=host,-arch-capabilities
  else
    QEMU_CPU=host
  fi
fi

vmm_args=(--kernel "$KERNEL" --initrd "$INITRD" --memory "$MEMORY_MIB" --vcpus "$VCPUS" --init-arg=--poweroff)
# The exact guest command line runvm would use, so QEMU boots with the same one.
cmdline=$("$VMM" "${vmm_args[@]}" --print-cmdline) || die "'$VMM --print-cmdline' failed"
[[ -n $cmdline ]] || die "'$VMM --print-cmdline' printed nothing"

runvm_cmd=("$VMM" "${vmm_args[@]}")
qemu_cmd=(
  "$QEMU" -M microvm,acpi=off -enable-kvm -cpu "$QEMU_CPU"
  -m "$MEMORY_MIB" -smp "$VCPUS"
  -nodefaults -no-user-config -nographic -serial stdio
  -kernel "$KERNEL" -initrd "$INITRD" -append "$cmdline"
  -device isa-debug-exit,iobase=0xf4,iosize=1
)

to_json() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"; }
runvm_json="{\"name\": \"runvm-vmm\", \"expect\": 0, \"cmd\": $(to_json "${runvm_cmd[@]}")}"
qemu_json="{\"name\": \"qemu\", \"expect\": 1, \"cmd\": $(to_json "${qemu_cmd[@]}")}"

LOG_DIR=${LOG_DIR:-$(mktemp -d /tmp/runvm-bench.XXXXXX)}
mkdir -p "$LOG_DIR"
echo "bench: $RUNS runs per VMM (+$WARMUP warm-up), ${MEMORY_MIB} MiB, $VCPUS vCPU; consoles in $LOG_DIR" >&2

notes=()
if [[ $QEMU_CPU != host ]]; then
  notes+=(--note "QEMU runs with \`-cpu $QEMU_CPU\`: plain \`-cpu host\` makes QEMU 7.2 abort on this kvm_pvm host (\"failed to set MSR 0x10a\", IA32_ARCH_CAPABILITIES). The guest sees the host's CPUID here regardless of what the VMM sets, so this does not change the guest.")
fi

python3 "$bench/measure.py" \
  --runs "$RUNS" --warmup "$WARMUP" --memory-mib "$MEMORY_MIB" --vcpus "$VCPUS" \
  --timeout "$TIMEOUT_S" --sample-ms "$SAMPLE_MS" \
  --kernel "$KERNEL" --initrd "$INITRD" --cmdline "$cmdline" \
  --qemu-bin "$QEMU" --repo "$repo" --results "$RESULTS" --log-dir "$LOG_DIR" \
  "${notes[@]}" --vmm "$runvm_json" --vmm "$qemu_json" ||
  die "benchmark failed (consoles and stderr of every run are in $LOG_DIR)"

echo "bench: report written to $RESULTS" >&2
