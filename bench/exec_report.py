#!/usr/bin/env python3
"""Turns the figures of runvm-exec-bench (JSON) into the "Agent channel"
report: prints it and puts it into bench/RESULTS.md, replacing the
section an earlier run wrote there (the other parts of the file stay).
Run through bench/exec.sh; see bench/README.md."""

import argparse
import json
import os
import shlex
import statistics
import sys

from benchlib import AGENT_CHANNEL, machine_facts, machine_lines, stat, write_section

MIB = 1 << 20


def rate(nbytes, seconds):
    return nbytes / MIB / seconds if seconds > 0 else float("inf")


def report(args, data, facts):
    n = data["bytes"]
    mib = n / MIB
    lat = data["latency_ms"]
    tp = data["throughput"]
    host = data["host"]

    channel_wall = [r["wall_s"] for r in tp["channel"]]
    channel_stream = [r["stream_s"] for r in tp["channel"]]
    channel_first = [r["first_byte_s"] for r in tp["channel"]]
    guest_pipe = [r["guest_s"] for r in tp["guest_pipe"]]
    guest_empty = [r["guest_s"] for r in tp["guest_empty_pipe"]]
    guest_head = [r["guest_s"] for r in tp["guest_head"]]
    host_pipe = [r["wall_s"] for r in host["pipe"]]
    host_large = host["pipe_large"]

    out = []
    w = out.append
    w("# Agent channel: exec latency and stdout throughput")
    w("")
    w(f"One microVM (the test image: agent + busybox), {data['memory_mib']} MiB, {data['vcpus']} vCPU, "
      f"booted once (agent answering {data['boot_s']:.1f} s after the VMM was started); every guest "
      "figure below comes from that one VM. The host pipe runs on the host with the same busybox binary "
      "the image holds, before the VM is booted.")
    w("")
    w("## Exec round trip")
    w("")
    w(f"min / median / max over {data['latency_runs']} runs of each probe, interleaved "
      f"({data['warmup']} uncounted runs of each first). The clock runs on the host from just before the "
      "first request to the end of the last answer (and of the output stream, if any).")
    w("")
    w("| probe | what crosses the channel | ms |")
    w("|---|---|---|")
    w(f"| `Version` request | one request and its answer on the control connection; no process | "
      f"{stat(lat['version'], 1)} |")
    w(f"| `true`, no streams | Exec → Started, Wait → Exited | {stat(lat['true'], 1)} |")
    w(f"| `echo x`, stdout streamed | one stream connection opened, Exec → Started, Wait → Exited, "
      f"`x\\n` and end of file on the stream | {stat(lat['echo'], 1)} |")
    w("")
    w(f"## Stdout throughput, {mib:g} MiB")
    w("")
    w(f"min / median / max over {data['throughput_runs']} runs (MiB/s computed per run; the guest probes "
      f"interleaved), host pipe over {len(host_pipe)} runs.")
    w("")
    w("| path | clock | time (s) | MiB/s |")
    w("|---|---|---|---|")
    w(f"| **guest → host over the agent channel**: `head -c {n} /dev/zero` in the guest, stdout streamed "
      "to the host, counted and discarded there | host: first request to last byte | "
      f"{stat(channel_wall, 2)} | {stat([rate(n, t) for t in channel_wall], 3)} |")
    w(f"| the same runs | host: first byte to last byte | {stat(channel_stream, 2)} | "
      f"**{stat([rate(n, t) for t in channel_stream], 3)}** |")
    w(f"| **in-guest pipe**: `head -c {n} /dev/zero \\| cat > /dev/null` | guest: around the pipeline | "
      f"{stat(guest_pipe, 2)} | **{stat([rate(n, t) for t in guest_pipe], 3)}** |")
    w(f"| in-guest, nothing to copy: `head -c 0 /dev/zero \\| cat > /dev/null` (starting the two "
      f"processes) | guest: around the pipeline | {stat(guest_empty, 2)} | — |")
    w(f"| in-guest, no pipe: `head -c {n} /dev/zero > /dev/null` (the producer alone) | guest: around "
      f"the command | {stat(guest_head, 2)} | {stat([rate(n, t) for t in guest_head], 3)} |")
    w(f"| **host pipe**: `busybox head -c {n} /dev/zero \\| busybox cat > /dev/null` | host: around "
      f"`busybox sh -c` | {stat(host_pipe, 4)} | **{stat([rate(n, t) for t in host_pipe], 1)}** |")
    if host_large:
        large_n = host_large[0]["bytes"]
        large = [r["wall_s"] for r in host_large]
        w(f"| host pipe, {large_n / MIB:g} MiB (start-up negligible) | host: around `busybox sh -c` | "
          f"{stat(large, 3)} | {stat([rate(large_n, t) for t in large], 1)} |")
    w("")

    ch = statistics.median([rate(n, t) for t in channel_stream])
    gp = statistics.median([rate(n, t) for t in guest_pipe])
    hp = statistics.median([rate(n, t) for t in host_pipe])
    net = statistics.median(guest_pipe) - statistics.median(guest_empty)
    gp_net = f"{rate(n, net):.3f} MiB/s" if net > 0 else "n/a"
    w("In medians: the channel streams at "
      f"{ch:.3f} MiB/s, {ch / gp:.2f}× the rate of a pipe inside the same guest ({gp:.3f} MiB/s with "
      f"the start of `head` and `cat` included; {gp_net} with the empty pipeline's "
      f"{statistics.median(guest_empty):.2f} s taken off), and 1/{hp / ch:,.0f} of the host pipe "
      f"({hp:.1f} MiB/s for the same {mib:g} MiB). Before the first byte arrives, each channel run "
      f"spends {statistics.median(channel_first):.2f} s opening the streams and starting `head`.")
    w("")
    w("## Machine")
    w("")
    out.extend(machine_lines(facts))
    w(f"- before the run: {args.quiet_note}; load average {args.loadavg}")
    w(f"- during the run (polled every 2 s): other VMs: {args.during_note}; highest 1-minute load average "
      f"{args.max_load} (this benchmark's own VM alone keeps one core busy)")
    w(f"- guest kernel: {data['guest_kernel']} (`uname -r` in the guest); "
      f"`{args.kernel}`, {os.path.getsize(args.kernel):,} bytes")
    w(f"- guest image: `{args.initrd}`, {os.path.getsize(args.initrd):,} bytes")
    w(f"- busybox (host and guest image): `{args.busybox}`, {facts['busybox']}")
    w("")
    w("Command line:")
    w("")
    w("```")
    w(shlex.join(args.command))
    w("```")
    w("")
    w("## Per run")
    w("")
    w("| # | channel: request to last byte (s) | channel: first byte (s) | channel: first to last byte (s) "
      "| guest pipe (s) | guest empty pipe (s) | guest head only (s) |")
    w("|---|---|---|---|---|---|---|")
    for i, (c, p, e, h) in enumerate(zip(tp["channel"], tp["guest_pipe"], tp["guest_empty_pipe"],
                                         tp["guest_head"]), 1):
        w(f"| {i} | {c['wall_s']:.3f} | {c['first_byte_s']:.3f} | {c['stream_s']:.3f} | "
          f"{p['guest_s']:.2f} | {e['guest_s']:.2f} | {h['guest_s']:.2f} |")
    w("")
    w("## How measured")
    w("")
    w("`bench/exec.sh` waits until no other `runvm-vmm` or `qemu-system-*` process runs and the "
      "1-minute load average is low (the guest kernel's time is CPU-bound and the host has few cores), "
      "notes the load average, and runs "
      "`runvm-exec-bench` (`bench/exec-bench/`), which first times the host pipe and then boots one "
      "microVM with `runvm::vm::MicroVm` and talks to its agent with `runvm::agent_client` and "
      "`runvm::guest_process`, the code `runvm vm-run` uses: every stream is its own vsock connection "
      "through the VMM's hybrid-vsock Unix socket, copied by the runtime's relay into a host writer. "
      "That writer counts bytes and notes when the first and the last arrived; a run whose byte count "
      "or exit status is wrong fails the benchmark.")
    w("")
    w("Latency: `Version` is one framed request on the already open control connection; `true` is "
      "Exec with stdin, stdout and stderr on /dev/null, then Wait until Exited; `echo x` adds one "
      "stream connection for stdout (connect through the VMM, the agent's accept, the token line) "
      "and waits for its end of file, as `runvm vm-run` does.")
    w("")
    w("Throughput: the channel runs are timed on the host with a monotonic clock. \"First request to "
      "last byte\" includes opening the stdout and stderr streams and starting `head` in the guest; "
      "\"first byte to last byte\" is the streaming alone. The in-guest runs are `sh -c` scripts that "
      "read `/proc/uptime` with the shell's `read` builtin before and after the pipeline, so no process "
      "is started for the clock; `/proc/uptime` has 10 ms resolution. The in-guest pipe figure "
      "includes starting `head` and `cat` (the empty-pipeline row shows what that costs), so its rate "
      "is a lower bound for the pipe itself. The host pipe is timed around `busybox sh -c` on the host "
      "(about a millisecond of process start-up, which the large run makes negligible).")
    w("")
    w("What the numbers say: on this host every guest-kernel instruction is emulated (see "
      "README.md, \"Hosts whose KVM emulates guest-kernel code\"; guest user code runs natively), so everything the guest kernel "
      "does per byte and per syscall dominates: the pipe inside the guest is already far below the "
      "host's, and the channel adds the agent's read from the process's pipe and its write into "
      "virtio-vsock, then the VMM and a host Unix socket. Compare the channel with the in-guest pipe "
      "to see what the channel itself costs. Likewise an exec round trip is mostly the guest starting a "
      "process: compare `true` with the empty-pipeline row (which starts two) and with `Version` (the "
      "channel's own round trip, no process). The figures say nothing about hardware KVM, where the guest "
      "kernel runs natively.")
    w("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", required=True, help="runvm-exec-bench's output")
    ap.add_argument("--results", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--image", dest="initrd", required=True)
    ap.add_argument("--busybox", required=True)
    ap.add_argument("--loadavg", required=True)
    ap.add_argument("--quiet-note", required=True)
    ap.add_argument("--max-load", required=True, help="highest 1-minute load average during the run")
    ap.add_argument("--during-note", required=True)
    ap.add_argument("command", nargs="+", help="the runvm-exec-bench command line, for the report")
    args = ap.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    text = report(args, data, machine_facts(args.repo, busybox=args.busybox))
    write_section(args.results, AGENT_CHANNEL, text)
    print(text)


if __name__ == "__main__":
    try:
        main()
    except (OSError, KeyError, ValueError) as e:
        print(f"bench/exec_report.py: error: {e}", file=sys.stderr)
        sys.exit(1)
