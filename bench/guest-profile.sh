#!/usr/bin/env bash
# Where the guest kernel spends its emulated instructions, while COMMAND
# runs: on an emulating host (kvm_pvm) every guest-kernel instruction goes
# through KVM's instruction emulator, whose `kvm:kvm_emulate_insn`
# tracepoint names the instruction's address. This records every one of
# them system-wide (run it with no other VM on the machine), then prints
# the guest kernel functions by instruction count, symbolised with the
# guest's vmlinux. A diagnostic, not a benchmark: tracing slows the guest
# down, and time-driven work (the timer tick) grows with it.
#
#   bench/guest-profile.sh [-o DIR] [-n TOP] -- COMMAND [ARGS...]
#
# Environment: KERNEL=build/vmlinux (the guest's, unstripped)
# Needs root, perf, and a host kernel with the kvm tracepoints.
set -Eeuo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=
top=40
while (($#)); do
    case $1 in
    -o) out=$2; shift 2 ;;
    -n) top=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "guest-profile: unexpected argument '$1' (usage: $0 [-o DIR] [-n TOP] -- COMMAND...)" >&2; exit 2 ;;
    esac
done
(($#)) || { echo "guest-profile: no command to run (usage: $0 [-o DIR] [-n TOP] -- COMMAND...)" >&2; exit 2; }
kernel=${KERNEL:-$repo/build/vmlinux}
[[ -r $kernel ]] || { echo "guest-profile: cannot read the guest kernel $kernel (set KERNEL)" >&2; exit 1; }
command -v perf >/dev/null || { echo "guest-profile: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
perf list tracepoint 2>/dev/null | grep -c "kvm:kvm_emulate_insn" >/dev/null ||
    { echo "guest-profile: this host kernel has no kvm:kvm_emulate_insn tracepoint" >&2; exit 1; }
if [[ -z $out ]]; then
    out=$(mktemp -d /tmp/runvm-guest-profile.XXXXXX)
fi
mkdir -p "$out"
data=$out/perf.data
perf record -q -e kvm:kvm_emulate_insn -e kvm:kvm_apic_accept_irq -a -o "$data" 2>"$out/perf.log" &
recorder=$!
# perf needs a moment before its buffers are live.
sleep 1
status=0
"$@" || status=$?
kill -INT "$recorder"
wait "$recorder" || true
echo "guest-profile: the command ended with status $status; perf data in $data" >&2
perf script -i "$data" -F event,trace 2>/dev/null |
    python3 "$repo/bench/guest_profile.py" --kernel "$kernel" --top "$top" | tee "$out/report.txt"
exit "$status"
