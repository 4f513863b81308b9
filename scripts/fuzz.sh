#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time (`make fuzz`, part of
# `make test`), starting from the committed seeds in fuzz/corpus/<target>/.
# Inputs the runs find go to fuzz/target/corpus/<target>/ (not committed);
# a crash leaves its input in fuzz/artifacts/<target>/ and fails the run
# once every target has had its turn.
#
#   scripts/fuzz.sh                 every target
#   scripts/fuzz.sh vsock_muxer     only the ones named
#   FUZZ_SECONDS=60 scripts/fuzz.sh longer runs (the default is per target)
#
# Needs the nightly toolchain and cargo-fuzz; installs them if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Seconds per target: the stateful targets get more than the small parsers,
# which saturate in seconds. With the build (two to four minutes on two
# cores) this stays within about six minutes; FUZZ_SECONDS runs longer.
declare -A seconds=(
  [vsock_muxer]=12 [mmio_transport]=12 [agent_spec]=12 [agent_seccomp]=12
  [agent_api_messages]=12 [agent_api_frames]=12 [vmm_kernel_image]=12
  [vsock_connect_line]=6 [stream_greeting]=6 [agent_mountopts]=6
  [rootfs_elf]=6 [rootfs_cpio]=6
)
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^runvm-fuzz$')
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain (libFuzzer needs -Z sanitizer flags)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install, about two minutes)"
  cargo install cargo-fuzz --locked --quiet
fi

start=$(date +%s)
echo "fuzz: building ${#targets[@]} targets"
cargo +nightly fuzz build
echo "fuzz: built in $(($(date +%s) - start)) s"

failed=()
for target in "${targets[@]}"; do
  time=${FUZZ_SECONDS:-${seconds[$target]:-12}}
  work=fuzz/target/corpus/$target
  mkdir -p "$work"
  log=fuzz/target/fuzz-$target.log
  # The first directory takes what the run finds; the seeds stay as they are.
  if cargo +nightly fuzz run "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$time" -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$target")
  fi
  # The last status line: coverage, features, corpus, executions per second.
  summary=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | sed -E 's/^#([0-9]+)\s+\w+\s+/\1 runs, /')
  printf 'fuzz: %-20s %-6s %3s s  %s\n' "$target" "$status" "$time" "$summary"
  if [[ $status == FAILED ]]; then
    grep -E -m 1 -A 12 'panicked|ERROR: ' "$log" | sed 's/^/    /' || tail -n 20 "$log"
  fi
done
echo "fuzz: ${#targets[@]} targets in $(($(date +%s) - start)) s"
if ((${#failed[@]})); then
  echo "fuzz: crashes in ${failed[*]}: inputs in fuzz/artifacts/, logs in fuzz/target/fuzz-*.log" >&2
  exit 1
fi
