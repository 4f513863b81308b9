# Sourced by bench/exec.sh and bench/containers.sh: waiting for a quiet
# machine before measuring, and noting what else ran meanwhile. The guest
# kernel's time is CPU-bound (emulated on some hosts) and the host may have
# few cores, so other VMs and builds skew the figures.

# Other microVMs: runvm-vmm and qemu-system-* processes.
bench_other_vms() {
  # pgrep fails when it finds none: that is the quiet case.
  pgrep -x runvm-vmm || true
  pgrep '^qemu-system' || true
}

bench_load1() { cut -d' ' -f1 /proc/loadavg; }

# Whether the 1-minute load average is below $1 (0: always).
bench_load_below() {
  awk -v load="$(bench_load1)" -v max="$1" 'BEGIN { exit !(max == 0 || load < max) }'
}

# bench_wait_quiet LIMIT_S MAX_LOAD: polls every 10 s until no other VM
# runs and the 1-minute load average is below MAX_LOAD (0: the load does
# not matter), for at most LIMIT_S seconds. Sets quiet_note for the report.
bench_wait_quiet() {
  local limit=$1 max_load=$2 waited=0 vms=0
  while true; do
    vms=$(bench_other_vms | wc -l)
    if ((vms == 0)) && bench_load_below "$max_load"; then
      break
    fi
    if ((waited >= limit)); then
      break
    fi
    if ((waited == 0)); then
      echo "bench: $vms other VM(s), load average $(bench_load1) (wanted below $max_load);" \
        "waiting up to ${limit} s for a quiet machine" >&2
    fi
    sleep 10
    waited=$((waited + 10))
  done
  local wanted="no other VM"
  [[ $max_load == 0 ]] || wanted+=", 1-minute load average below $max_load"
  if ((vms > 0)) || ! bench_load_below "$max_load"; then
    quiet_note="NOT QUIET ($wanted): after waiting ${waited} s, $vms other VMM process(es) and a load average of $(bench_load1); measured anyway, the figures are skewed"
    echo "bench: warning: $quiet_note" >&2
  elif ((waited > 0)); then
    quiet_note="quiet ($wanted) after waiting ${waited} s"
  else
    quiet_note="quiet ($wanted) at once"
  fi
}

# bench_watch PID FILE: until process PID ends, every 2 s appends to FILE
# "vm <pid>" for every other VMM (not a child of PID) and "load <load1>".
bench_watch() {
  local bench_pid=$1 file=$2 pid ppid
  while kill -0 "$bench_pid" 2>/dev/null; do
    for pid in $(bench_other_vms); do
      # (It may have ended since pgrep saw it.)
      ppid=$(ps -o ppid= -p "$pid" 2>/dev/null || true)
      [[ ${ppid// /} == "$bench_pid" ]] || echo "vm $pid"
    done
    echo "load $(bench_load1)"
    sleep 2
  done >>"$file"
}

# bench_watch_notes FILE: sets during_note (other VMs seen) and
# max_load_note (highest 1-minute load average seen) from bench_watch's FILE.
bench_watch_notes() {
  local file=$1 others
  # grep finds nothing on a quiet run: not a failure (pipefail, errexit).
  others=$({ grep '^vm ' "$file" 2>/dev/null || true; } | sort -u | wc -l)
  if ((others > 0)); then
    during_note="$others other VMM process(es) ran during part of the measurement: the figures are skewed"
    echo "bench: warning: $during_note" >&2
  else
    during_note="none"
  fi
  max_load_note=$(awk '$1 == "load" { n++; if ($2 + 0 > max + 0) max = $2 }
    END { print n ? max + 0 : "unknown" }' "$file" 2>/dev/null)
}
