# Sourced by bench/podstart.sh and bench/podnet.sh: the settings both pod
# benchmarks share, their checks, and the wait for a quiet machine, which
# sets pod_args, the arguments both Python drivers take. Needs $script (the
# caller's name, for messages) and $repo.

die() {
  echo "$script: error: $*" >&2
  exit 1
}
trap 'echo "$script: error: line $LINENO: a command failed (status $?)" >&2' ERR

bench="$repo/bench"
# shellcheck source=bench/quiet.sh
source "$bench/quiet.sh"

IDLE_WAIT_S=${IDLE_WAIT_S:-900}
MAX_LOAD=${MAX_LOAD:-1.0}
STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-600}
RUNVM=${RUNVM:-$repo/target/release/runvm}
VMM=${VMM:-$repo/target/release/runvm-vmm}
KERNEL=${KERNEL:-$repo/build/vmlinux}
IMAGE=${IMAGE:-$repo/build/runvm-agent}
RUNC=${RUNC:-$(command -v runc || true)}
BUSYBOX=${BUSYBOX:-/bin/busybox}
RESULTS=${RESULTS:-$bench/RESULTS.md}

for var in IDLE_WAIT_S STEP_TIMEOUT_S; do
  [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number, got '${!var}'"
done
[[ $MAX_LOAD =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "MAX_LOAD must be a number (0: ignore the load), got '$MAX_LOAD'"
((EUID == 0)) || die "run as root: both runtimes create namespaces and cgroups"
for f in "$RUNVM" "$VMM" "$KERNEL" "$IMAGE"; do
  [[ -f $f ]] || die "$f is missing: run 'make build' first"
done
[[ -n $RUNC && -x $RUNC ]] || die "runc not found (apt-get install runc), or set RUNC="
[[ -x $BUSYBOX ]] || die "no busybox at $BUSYBOX (apt-get install busybox-static)"
[[ -r /dev/kvm && -w /dev/kvm ]] || die "/dev/kvm is missing or not usable by $(id -un)"
command -v python3 >/dev/null || die "python3 not found"

# pod_wait_quiet: after the caller's own checks, waits for a quiet machine
# and sets pod_args.
pod_wait_quiet() {
  quiet_note=""
  bench_wait_quiet "$IDLE_WAIT_S" "$MAX_LOAD"
  pod_args=(
    --runvm "$RUNVM" --runc "$RUNC" --vmm "$VMM" --kernel "$KERNEL" --image "$IMAGE"
    --busybox "$BUSYBOX" --step-timeout "$STEP_TIMEOUT_S" --vm-lock "${VM_LOCK:-}"
    --quiet-note "$quiet_note" --repo "$repo" --results "$RESULTS" --raw "${RAW:-}"
  )
}
