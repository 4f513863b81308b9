#!/usr/bin/env python3
"""Boot the same guest under several VMMs, time it and sample its memory.

Called by bench/boot.sh, which checks the inputs and builds the command
lines; this helper only runs them, measures and reports. Python 3 stdlib only.

Per run it measures:
  ready  wall time from just before the VMM process is spawned to the moment
         the agent's ready line (`runvm-agent <version> ready`) is read from
         the VMM's stdout;
  exit   wall time from the same start to the moment wait4() reaps the VMM;
  RSS    /proc/PID/smaps is read every SAMPLE_MS until exit. Per sample:
         total = sum of Rss over all mappings, guest = Rss of the guest-RAM
         mappings (see guest_ram_vmas), and the run's figures are the maxima
         of (total - guest) and of total. wait4()'s ru_maxrss (the kernel's
         own high-water mark of total RSS) is kept as a cross-check.
"""

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

from benchlib import machine_facts, machine_lines, stat, write_boot_report

READY_RE = re.compile(rb"runvm-agent \S+ ready")
KIB = 1024
MIB = 1024 * 1024
# The guest-RAM mappings must add up to the guest size, give or take this
# (alignment or guard pages a VMM may add around its RAM).
GUEST_SIZE_SLACK_KIB = 4 * 1024
# Each guest-RAM mapping is at least this big (or the whole guest, if smaller):
# runvm splits RAM larger than 3 GiB around the device hole into two mappings.
GUEST_VMA_MIN_KIB = 1024 * 1024


class BenchError(Exception):
    pass


def is_anonymous(path):
    """Anonymous memory, however the kernel names it."""
    return (
        path == ""
        or path.startswith("[anon:")  # PR_SET_VMA_ANON_NAME
        or path.startswith("/memfd:")  # memfd-backed guest RAM (vhost-user)
        or path.startswith("/dev/zero")
    )


def read_smaps(pid):
    """[(size_kib, rss_kib, perms, path)] for every mapping, or None once gone."""
    try:
        with open(f"/proc/{pid}/smaps", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    vmas = []
    cur = None
    for line in data.split(b"\n"):
        if not line:
            continue
        head, _, rest = line.partition(b" ")
        if head.endswith(b":"):
            if cur is None:
                continue
            if head == b"Size:":
                cur[0] = int(rest.split()[0])
            elif head == b"Rss:":
                cur[1] = int(rest.split()[0])
        else:
            # "start-end perms offset dev inode [path]"
            fields = line.split(None, 5)
            path = fields[5].decode(errors="replace").strip() if len(fields) > 5 else ""
            cur = [0, 0, fields[1].decode(), path]
            vmas.append(cur)
    return vmas or None  # a zombie has no mappings left


def guest_ram_vmas(vmas, guest_kib):
    """The mappings that hold guest RAM: anonymous, writable, and at least
    min(guest size, 1 GiB) each. Checked by the caller to add up to the guest
    size; a stray big anonymous buffer would break that check, loudly."""
    floor = min(guest_kib, GUEST_VMA_MIN_KIB)
    return [v for v in vmas if v[0] >= floor and "w" in v[2] and is_anonymous(v[3])]


def run_once(name, cmd, expected_exit, guest_kib, timeout_s, sample_s, log_prefix):
    console_path = log_prefix + ".console"
    stderr_path = log_prefix + ".stderr"
    console = open(console_path, "wb")
    errf = open(stderr_path, "wb")
    result = {"vmm": name, "ready_s": None, "exit_s": None}
    ready_event = threading.Event()
    exited_event = threading.Event()
    wait_info = {}

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=errf,
        start_new_session=True,  # so a timeout can kill the whole group
    )

    def reader():
        for line in iter(proc.stdout.readline, b""):
            t = time.perf_counter()
            console.write(line)
            if not ready_event.is_set() and READY_RE.search(line):
                result["ready_s"] = t - t0
                ready_event.set()
        console.flush()

    def waiter():
        _, status, rusage = os.wait4(proc.pid, 0)
        wait_info["exit_s"] = time.perf_counter() - t0
        wait_info["status"] = status
        wait_info["maxrss_kib"] = rusage.ru_maxrss
        exited_event.set()

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=waiter, daemon=True)]
    for t in threads:
        t.start()

    peak_excl = 0
    peak_total = 0
    samples = 0
    guest_samples = 0
    odd_samples = []
    guest_vma_kib = None
    deadline = t0 + timeout_s
    next_tick = time.perf_counter()
    failure = None
    while not exited_event.is_set():
        now = time.perf_counter()
        if now > deadline:
            what = "exit" if ready_event.is_set() else "print the ready line"
            failure = f"{name} did not {what} within {timeout_s:g} s"
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        vmas = read_smaps(proc.pid)
        if vmas is not None and not exited_event.is_set():
            samples += 1
            total = sum(v[1] for v in vmas)
            guest = guest_ram_vmas(vmas, guest_kib)
            guest_size = sum(v[0] for v in guest)
            if guest and not (guest_kib <= guest_size <= guest_kib + GUEST_SIZE_SLACK_KIB):
                # Not the guest RAM as we know it: keep the sample out and
                # report it, rather than subtract the wrong mapping.
                odd_samples.append([(v[0], v[2], v[3]) for v in guest])
            else:
                guest_rss = sum(v[1] for v in guest)
                if guest:
                    guest_samples += 1
                    guest_vma_kib = [v[0] for v in guest]
                peak_excl = max(peak_excl, total - guest_rss)
                peak_total = max(peak_total, total)
        next_tick += sample_s
        delay = next_tick - time.perf_counter()
        if delay > 0:
            exited_event.wait(delay)
        else:
            next_tick = time.perf_counter()

    exited_event.wait(10)
    threads[0].join(10)
    console.close()
    errf.close()

    def fail(message):
        tail = []
        for path in (console_path, stderr_path):
            try:
                with open(path, "rb") as f:
                    text = f.read()[-1500:].decode(errors="replace")
            except OSError:
                text = ""
            tail.append(f"--- last output in {path} ---\n{text}")
        raise BenchError(message + "\n" + "\n".join(tail))

    if failure:
        fail(failure)
    status = wait_info.get("status")
    code = os.waitstatus_to_exitcode(status) if status is not None else None
    proc.returncode = code
    if code != expected_exit:
        fail(f"{name} exited with status {code}, expected {expected_exit}")
    if result["ready_s"] is None:
        fail(f"{name} exited (status {code}) without printing the ready line")
    if guest_samples == 0:
        found = odd_samples[-1] if odd_samples else "no anonymous writable mapping that big"
        fail(
            f"{name}: found no guest-RAM mapping of {guest_kib} KiB in {samples} samples "
            f"(candidates: {found}); cannot tell guest memory from VMM memory"
        )
    result.update(
        exit_s=wait_info["exit_s"],
        status=code,
        peak_excl_mib=peak_excl / KIB,
        peak_total_mib=peak_total / KIB,
        maxrss_mib=wait_info["maxrss_kib"] / KIB,
        samples=samples,
        guest_samples=guest_samples,
        odd_samples=len(odd_samples),
        guest_vma_kib=guest_vma_kib,
    )
    return result


def report(args, vmms, results, facts):
    by_vmm = {v["name"]: [r for r in results if r["vmm"] == v["name"]] for v in vmms}
    out = []
    w = out.append
    w("# Boot benchmark: runvm-vmm vs QEMU microvm")
    w("")
    w("Same `vmlinux`, same initramfs, same guest kernel command line, "
      f"{args.memory_mib} MiB, {args.vcpus} vCPU; {args.runs} measured runs per VMM "
      f"({args.warmup} warm-up run each, not counted), alternating between the VMMs.")
    w("")
    w("## Results")
    w("")
    w("min / median / max over the measured runs.")
    w("")
    w("| VMM | ready (s) | exit (s) | peak RSS excl. guest RAM (MiB) | peak total RSS (MiB) |")
    w("|---|---|---|---|---|")
    for v in vmms:
        rs = by_vmm[v["name"]]
        w(f"| {v['name']} | {stat([r['ready_s'] for r in rs], 3)} | "
          f"{stat([r['exit_s'] for r in rs], 3)} | "
          f"{stat([r['peak_excl_mib'] for r in rs], 1)} | "
          f"{stat([r['peak_total_mib'] for r in rs], 1)} |")
    w("")
    w("- **ready**: process start to the agent's `runvm-agent <version> ready` line on the VMM's stdout.")
    w("- **exit**: process start to process exit (the agent powers the guest off right after the ready line).")
    w("- **peak RSS excl. guest RAM**: max over samples of (total Rss − Rss of the guest-RAM mapping): "
      "what the VMM itself costs per VM.")
    w("- **peak total RSS**: max over samples of total Rss, guest pages included (reference).")
    w("")
    w("## Machine")
    w("")
    out.extend(machine_lines(facts))
    w(f"- load average before the runs: {facts['loadavg']}")
    w(f"- QEMU: {facts['qemu']}")
    w(f"- kernel image: `{args.kernel}`, {os.path.getsize(args.kernel):,} bytes")
    w(f"- initramfs: `{args.initrd}`, {os.path.getsize(args.initrd):,} bytes")
    w("")
    w("## Command lines")
    w("")
    w("Guest kernel command line (from `runvm-vmm --print-cmdline`, given to QEMU with `-append`):")
    w("")
    w("```")
    w(args.cmdline)
    w("```")
    w("")
    for v in vmms:
        w(f"{v['name']} (expected exit status {v['expect']}):")
        w("")
        w("```")
        w(shlex.join(v["cmd"]))
        w("```")
        w("")
    if args.note:
        for note in args.note:
            w(f"Note: {note}")
            w("")
    w("## Per run")
    w("")
    w("| # | VMM | ready (s) | exit (s) | RSS excl. guest (MiB) | total RSS (MiB) | ru_maxrss (MiB) | samples | guest-RAM mapping (KiB) |")
    w("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(results, 1):
        w(f"| {r['round']} | {r['vmm']} | {r['ready_s']:.3f} | {r['exit_s']:.3f} | {r['peak_excl_mib']:.1f} | "
          f"{r['peak_total_mib']:.1f} | {r['maxrss_mib']:.1f} | {r['samples']}"
          f"{' (' + str(r['odd_samples']) + ' odd, left out)' if r['odd_samples'] else ''} | "
          f"{' + '.join(str(k) for k in r['guest_vma_kib'])} |")
    w("")
    w("## How measured")
    w("")
    w("`bench/boot.sh` asks `runvm-vmm --print-cmdline` for the guest kernel command line and hands the very "
      "same string to QEMU with `-append`, so both boot identical bits: same `vmlinux` (PVH entry), same "
      "uncompressed initramfs, same memory and vCPUs. `bench/measure.py` then runs the VMMs in rounds, "
      "alternating which goes first in each round (ABBA) so neither always follows the other; one warm-up "
      "round is discarded so both start with the files in the page cache. The clock starts just before the "
      "process is spawned (so QEMU's larger exec and library loading is counted) and is read with "
      "`perf_counter` when the ready line arrives on the stdout pipe and when `wait4()` reaps the process. "
      "A run fails the benchmark if the ready line does not appear within the timeout, or the exit status is "
      "not the VMM's success status (runvm-vmm 0; QEMU 1, which is how `isa-debug-exit` reports the guest's "
      "write of 0 to port 0xf4).")
    w("")
    w(f"Memory: `/proc/PID/smaps` is read every {args.sample_ms:g} ms until the process exits. The guest RAM "
      "is identified the same way for both VMMs: the anonymous, writable mappings of at least "
      "min(guest size, 1 GiB) each, which must add up to the guest size (within 4 MiB) — runvm-vmm "
      "(vm-memory) and QEMU 7.2 (`qemu_ram_mmap`, 2 MiB aligned, guard page in its own mapping) each map "
      f"{args.memory_mib} MiB guest RAM as exactly one {args.memory_mib * 1024} KiB anonymous mapping "
      "(see the last column of the per-run table). A sample where such mappings exist but do not add up is "
      "left out and counted; a run where none is ever found fails. Per sample, RSS excl. guest RAM = "
      "total Rss − Rss of those mappings; the run's figure is the maximum over samples (before the guest "
      "RAM is mapped, the whole RSS counts). Rss counts shared library pages in full (QEMU links far more "
      "libraries than runvm-vmm), and QEMU's copies of the kernel and initramfs it loads (its ROM blobs) are "
      "VMM memory, not guest RAM, so they count as QEMU's own. Peaks between samples can be missed; "
      "`ru_maxrss` from `wait4()` (the kernel's own high-water mark of total RSS, updated lazily, so it "
      "can differ by a few hundred KiB either way) is shown per run as a cross-check of the sampled total.")
    w("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--memory-mib", type=int, required=True)
    ap.add_argument("--vcpus", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--sample-ms", type=float, default=10)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--cmdline", required=True)
    ap.add_argument("--qemu-bin", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--vmm", action="append", required=True,
                    help='JSON {"name": ..., "expect": exit status, "cmd": [argv]}; repeat per VMM')
    args = ap.parse_args()
    if args.runs < 1:
        raise BenchError("RUNS must be at least 1")
    vmms = [json.loads(v) for v in args.vmm]
    guest_kib = args.memory_mib * 1024
    facts = machine_facts(args.repo, qemu=args.qemu_bin)

    results = []
    total_rounds = args.warmup + args.runs
    for rnd in range(total_rounds):
        warm = rnd < args.warmup
        order = vmms if rnd % 2 == 0 else list(reversed(vmms))
        for v in order:
            label = f"warm-up {rnd + 1}" if warm else f"run {rnd - args.warmup + 1}/{args.runs}"
            prefix = os.path.join(args.log_dir, f"{rnd:02d}-{v['name']}")
            r = run_once(v["name"], v["cmd"], v["expect"], guest_kib, args.timeout,
                         args.sample_ms / 1000, prefix)
            print(f"{label:>12}  {v['name']:<10} ready {r['ready_s']:6.3f} s  exit {r['exit_s']:6.3f} s  "
                  f"RSS excl. guest {r['peak_excl_mib']:6.1f} MiB  total {r['peak_total_mib']:6.1f} MiB  "
                  f"({r['samples']} samples)", file=sys.stderr, flush=True)
            if not warm:
                r["round"] = rnd - args.warmup + 1
                results.append(r)

    text = report(args, vmms, results, facts)
    # The other benchmarks' sections after it stay.
    write_boot_report(args.results, text)
    print(text)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"bench: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
