#!/usr/bin/env bash
# VM templates (warm start) against cold boots, in one run on one build:
# time to agent-ready of a VM with a share booted cold, made into the
# template (cold boot + save + restore) and restored from it; `runvm run`
# of a trivial container cold and from the template; and the memory (PSS)
# of 10 VMs running at once, restored and cold. 128 MiB VMs: what
# `runvm run` gives a container without a memory limit, so that its VMs
# and the library's have the same template. Writes the "VM templates"
# section of bench/RESULTS.md. See bench/README.md.
#
# Environment (all optional):
#   ROUNDS=3  MEMORY_VMS=10  MEMORY_PARALLEL=2  IDLE_WAIT_S=900
#   MAX_LOAD=1.0  TIMEOUT_S=600  CARGO=cargo  RESULTS=bench/RESULTS.md
#   RAW=/tmp/runvm-templates-<time>.json
set -Eeuo pipefail

die() {
  echo "bench/templates.sh: error: $*" >&2
  exit 1
}
trap 'echo "bench/templates.sh: error: line $LINENO: a command failed (status $?)" >&2' ERR

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$repo/bench"
# shellcheck source=bench/quiet.sh
source "$bench/quiet.sh"

ROUNDS=${ROUNDS:-3}
MEMORY_VMS=${MEMORY_VMS:-10}
MEMORY_PARALLEL=${MEMORY_PARALLEL:-2}
IDLE_WAIT_S=${IDLE_WAIT_S:-900}
MAX_LOAD=${MAX_LOAD:-1.0}
TIMEOUT_S=${TIMEOUT_S:-600}
CARGO=${CARGO:-cargo}
RESULTS=${RESULTS:-$repo/bench/RESULTS.md}

for var in ROUNDS MEMORY_VMS MEMORY_PARALLEL IDLE_WAIT_S TIMEOUT_S; do
  [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a whole number of at least 1, got '${!var}'"
done
((EUID == 0)) || die "run as root: the VMs' shares bind directories and start virtiofsd"
release="$repo/target/release"
kernel="$repo/build/vmlinux"
image="$repo/build/runvm-agent"
for f in "$kernel" "$image" "$release/runvm" "$release/runvm-vmm"; do
  [[ -f $f ]] || die "$f is missing: run 'make build' first"
done
[[ -r /dev/kvm && -w /dev/kvm ]] || die "/dev/kvm is missing or not usable"
command -v python3 >/dev/null || die "python3 not found"

echo "bench: building runvm-templates-bench" >&2
(cd "$repo" && "$CARGO" build --release --locked -q -p runvm-containers-bench --bin runvm-templates-bench) ||
  die "cannot build runvm-templates-bench"

work=$(mktemp -d /tmp/runvm-templates.XXXXXX)
# The VMs die with the benchmark (their VMMs have a parent-death signal);
# the store holds only this run's template.
trap 'rm -rf "$work"' EXIT
"$repo/scripts/demo-bundle.sh" "$release/runvm" "$work/bundle" >/dev/null

quiet_note=""
bench_wait_quiet "$IDLE_WAIT_S" "$MAX_LOAD"

python3 "$bench/templates/measure.py" \
  --bench "$release/runvm-templates-bench" --runvm "$release/runvm" --vmm "$release/runvm-vmm" \
  --kernel "$kernel" --image "$image" --bundle "$work/bundle" --state "$work/state" \
  --store "$work/templates" --work "$work" --repo "$repo" --results "$RESULTS" \
  --rounds "$ROUNDS" --memory-vms "$MEMORY_VMS" --memory-parallel "$MEMORY_PARALLEL" \
  --timeout "$TIMEOUT_S" --quiet-note "$quiet_note" \
  --raw "${RAW:-/tmp/runvm-templates-$(date -u +%Y%m%dT%H%M%SZ).json}"
