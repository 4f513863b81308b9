#!/usr/bin/env bash
# Runs the end-to-end suites (package runvm-e2e) in two lanes at once, each
# lane's suites one after the other (`make test`, after the unit tests).
#
# Why two lanes: a suite's time is almost all guest-kernel work, one vCPU
# busy per VM, and each suite runs one VM at a time; on a two-core host
# two lanes finish in about two thirds of the serial time. The lanes are
# balanced by measured suite times (CRI-side suites in one, the runc
# command line and VM-level ones in the other) and share nothing but the
# machine: every test makes its own scratch directory, --root, daemons and
# network namespaces; VM templates are shared through a locked store.
#
#   scripts/e2e.sh                  both lanes
#   E2E_LANES=1 scripts/e2e.sh      one lane, every suite in turn
#
# Each line of output is prefixed with its lane; a failing lane fails the
# run once both have finished.
set -euo pipefail
cd "$(dirname "$0")/.."

lane_a=(cri podman shim containerd)
lane_b=(bundle runc_cli network errors vmm_errors agent boot containers snapshot vm_run)

# Every suite must be in a lane: a new one that is not would never run.
mapfile -t all < <(find tests/tests -maxdepth 1 -name '*.rs' -printf '%f\n' | sed 's/\.rs$//' | sort)
mapfile -t laned < <(printf '%s\n' "${lane_a[@]}" "${lane_b[@]}" | sort)
if [[ "${all[*]}" != "${laned[*]}" ]]; then
  echo "e2e: the lanes (${laned[*]}) do not list exactly the suites in tests/tests (${all[*]})" >&2
  exit 2
fi

# Build once (a compile error stops here, shown as cargo shows it); the
# lanes run the test executables cargo reports.
messages=$(mktemp)
trap 'rm -f "$messages"' EXIT
cargo test -p runvm-e2e --locked --no-run --message-format=json-render-diagnostics >"$messages"
declare -A executable
while IFS=$'\t' read -r name path; do
  executable[$name]=$path
done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    if msg.get("reason") == "compiler-artifact" and exe and "test" in msg["target"]["kind"]:
        print(msg["target"]["name"] + "\t" + exe)
' "$messages")

run_lane() {
  local lane=$1 failed=0 suite
  shift
  for suite in "$@"; do
    local exe=${executable[$suite]:-}
    if [[ -z $exe ]]; then
      echo "e2e: no test executable for suite $suite"
      failed=1
      continue
    fi
    echo "e2e: $suite starts ($(date -u +%T))"
    local start=$SECONDS
    # The package directory, as cargo runs them.
    if (cd tests && "$exe"); then
      echo "e2e: $suite passed in $((SECONDS - start)) s"
    else
      echo "e2e: $suite FAILED after $((SECONDS - start)) s"
      failed=1
    fi
  done
  return $failed
}

if [[ ${E2E_LANES:-2} == 1 ]]; then
  run_lane all "${lane_a[@]}" "${lane_b[@]}"
  exit
fi

run_lane a "${lane_a[@]}" > >(sed -u 's/^/[a] /') 2>&1 &
pid_a=$!
run_lane b "${lane_b[@]}" > >(sed -u 's/^/[b] /') 2>&1 &
pid_b=$!
status=0
wait $pid_a || status=1
wait $pid_b || status=1
if ((status != 0)); then
  echo "e2e: at least one suite failed (look for 'FAILED' above)" >&2
fi
exit $status
