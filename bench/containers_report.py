#!/usr/bin/env python3
"""Turns the figures of runvm-containers-bench (JSON) into the "Containers
and virtio-fs" report: prints it and puts it into bench/RESULTS.md,
replacing the section an earlier run wrote there (the other parts of the
file stay). Run through bench/containers.sh; see bench/README.md."""

import argparse
import json
import os
import shlex
import statistics
import sys

from benchlib import CONTAINERS, machine_facts, machine_lines, stat, write_section

MIB = 1 << 20


def rate(nbytes, seconds):
    return nbytes / MIB / seconds if seconds > 0 else float("inf")


def med(values):
    return statistics.median(values)


# (key, step, what it covers)
CONTAINER_STEPS = [
    ("share_ms", "share",
     "the host binds the bundle's rootfs into the share (read-only; in the share's mount namespace, "
     "propagated to virtiofsd)"),
    ("create_ms", "create",
     "`CreateContainer`: the agent sets the container up (its cgroup, namespaces and mounts, on the "
     "rootfs's virtio-fs submount) and holds its init"),
    ("start_ms", "start", "`StartContainer` answered: the init is released"),
    ("start_exit_ms", "start → exit", "from `StartContainer` until `WaitContainer` reports that `true` exited (0)"),
    ("delete_ms", "delete", "`DeleteContainer`: cgroup and mounts removed, the rootfs submount released"),
    ("unshare_ms", "unshare", "the host unbinds the rootfs"),
    ("total_ms", "**total**", "bind to unbind: share + create + start → exit + delete + unshare"),
]


def report(args, data, facts):
    n = data["fs_bytes"]
    mib = n / MIB
    boots = data["boots"]
    bare = [b for b in boots if not b["share"]]
    shared = [b for b in boots if b["share"]]
    runs = data["containers"]["runs"]
    warm = data["containers"]["warmup"]
    fs = data["fs"]
    host = data["host_fs"]

    out = []
    w = out.append
    w("# Containers: trivial container latency and virtio-fs throughput")
    w("")
    w(f"The test image (agent + busybox), {data['memory_mib']} MiB, {data['vcpus']} vCPU, virtiofsd "
      f"`{data['virtiofsd']}` ({data['virtiofsd_version']}). First {data['boot_runs']} boots of each kind "
      "(no share, share), alternating, each VM shut down again; then one VM with a share (agent answering "
      f"{data['ready_s']:.1f} s after the VMM was started) in which every container and guest "
      "throughput figure below was measured. The host `dd` ran before any VM.")
    w("")

    w("## Boot to agent-ready, without and with a share")
    w("")
    w(f"min / median / max over {len(bare)} boots of each kind. The clock runs on the host from just "
      "before `MicroVm::boot` (with a share: making the share and starting virtiofsd, then the VMM) "
      "until the agent has announced itself on the readiness port and answered a `Version` request.")
    w("")
    w("| VM | boot to agent ready (s) | shutdown (s) |")
    w("|---|---|---|")
    if bare:
        w(f"| bare: no share | {stat([b['ready_s'] for b in bare], 2)} | "
          f"{stat([b['shutdown_s'] for b in bare], 2)} |")
    if shared:
        w(f"| with a share (virtio-fs device, virtiofsd) | {stat([b['ready_s'] for b in shared], 2)} | "
          f"{stat([b['shutdown_s'] for b in shared], 2)} |")
    w("")
    if shared:
        w("The guest mounts the share only when the first container needs it (`MountShare`, once per VM): "
          f"{stat([b['mount_share_ms'] for b in shared], 0)} ms in those boots.")
        w("")

    w("## Trivial container: create + start + exit")
    w("")
    w("The bundle: a busybox rootfs (`/bin/busybox`, `sh`, `true`, the mount points) built on the host and a "
      "`config.json` as `runc spec` writes it (pid, network, ipc, uts and mount namespaces, proc, tmpfs "
      "/dev, devpts, mqueue, sysfs and cgroup mounts, masked and read-only paths, read-only root, "
      "`noNewPrivileges`) but with `terminal: false`, `true` as the process and no ambient capabilities "
      "(see the notes). No stdio streams. Each container gets a new id; the same rootfs is bound each time.")
    w("")
    w(f"min / median / max over {len(runs)} containers, one after the other in the same VM, after "
      f"{len(warm)} uncounted one{'s' if len(warm) != 1 else ''}; the first column of figures is the very first "
      "container of the VM, which also has the guest mount the share.")
    w("")
    first = warm[0] if warm else None
    w("| step | what | first container (ms) | ms |")
    w("|---|---|---|---|")
    for key, step, what in CONTAINER_STEPS:
        cell = stat([r[key] for r in runs], 1)
        if key == "total_ms":
            cell = f"**{cell}**"
        first_cell = f"{first[key]:.1f}" if first else "—"
        w(f"| {step} | {what} | {first_cell} | {cell} |")
    plain = data["containers"]["plain_true_ms"]
    w(f"| for comparison: `true` without a container | `Exec` and `Wait` by the agent in the guest itself, "
      f"no streams (after each measured container) | — | {stat(plain, 1)} |")
    w("")
    ready_share = med([b["ready_s"] for b in shared]) if shared else data["ready_s"]
    total = med([r["total_ms"] for r in runs]) / 1e3
    create_exit = med([r["create_ms"] + r["start_exit_ms"] for r in runs]) / 1e3
    line = (f"So: the first container = boot with a share ({ready_share:.1f} s, median) + "
            f"{first['total_ms'] / 1e3:.1f} s" if first else
            f"So: the first container = boot with a share ({ready_share:.1f} s, median) + the first container")
    line += (f"; each further container = {total:.1f} s (median), of which {create_exit:.1f} s from "
             f"`CreateContainer` to the exit, where a plain `true` takes {med(plain) / 1e3:.2f} s.")
    if bare:
        line += (f" A bare VM boots in {med([b['ready_s'] for b in bare]):.1f} s (median): the share adds "
                 f"{ready_share - med([b['ready_s'] for b in bare]):+.1f} s to the boot.")
    w(line)
    w("")
    fork_exec = data["containers"].get("guest_fork_exec")
    if fork_exec and "create_insn" in runs[0]:
        ref_ms = med([f["ms"] for f in fork_exec])
        ref_insn = med([f["insn"] for f in fork_exec])
        w("### Against the guest's own fork+exec")
        w("")
        w("The reference, measured in the same VM after each container: a shell in the guest runs "
          "`/bin/true` 10 times (fork, exec, wait), less an empty loop of the same length, per `true`; its "
          "time is the guest's clock (`/proc/uptime`, 10 ms resolution, so the 10 runs are timed together). "
          "Emulated instructions are KVM's `insn_emulation` counter over the step (see the cold-start "
          "section): guest-kernel work, independent of the host's speed. Medians.")
        w("")
        w("| step | ms | × reference | emulated instructions (k) | × reference |")
        w("|---|---|---|---|---|")
        rows = [
            ("`CreateContainer` (the init set up, held before exec)", med([r["create_ms"] for r in runs]),
             med([r["create_insn"] for r in runs])),
            ("start → exit of `true` in the container", med([r["start_exit_ms"] for r in runs]),
             med([r["start_exit_insn"] for r in runs])),
            ("`DeleteContainer`", med([r["delete_ms"] for r in runs]), med([r["delete_insn"] for r in runs])),
            ("exec round trip: `true` outside a container (`Exec`, `Wait`)", med(plain),
             med(data["containers"]["plain_true_insn"])),
            ("**reference**: the guest's own fork+exec+wait of `true`", ref_ms, ref_insn),
        ]
        for what, ms_, insn in rows:
            w(f"| {what} | {ms_:.0f} | {ms_ / ref_ms:.2f} | {insn / 1e3:.0f} | {insn / ref_insn:.2f} |")
        w("")

    w(f"## virtio-fs throughput, {mib:g} MiB sequential")
    w("")
    w(f"`dd bs=1M` of one {mib:g} MiB file: write from /dev/zero with `conv=fsync`, then read to /dev/null. "
      f"min / median / max over {data['fs_runs']} rounds in the guest (MiB/s computed per run; share and "
      f"tmpfs interleaved) and {data['host_runs']} on the host (each after one uncounted round).")
    w("")
    w("| where | operation | clock | time (s) | MiB/s |")
    w("|---|---|---|---|---|")

    def guest_row(where, op, key, bold=False):
        times = [r["guest_s"] for r in fs[key]]
        rates = stat([rate(n, t) for t in times], 2)
        w(f"| {where} | {op} | guest, around `dd` | {stat(times, 2)} | {f'**{rates}**' if bold else rates} |")

    def host_row(op, key, bold=False):
        times = host[key]
        rates = stat([rate(n, t) for t in times], 0)
        w(f"| host, the same directory | {op} | host, around `busybox dd` | {stat(times, 3)} | "
          f"{f'**{rates}**' if bold else rates} |")

    guest_row("**guest, virtio-fs share**", "write, `conv=fsync`", "share_write", True)
    guest_row("**guest, virtio-fs share**", "read, guest page cache dropped first", "share_read", True)
    guest_row("guest, its own tmpfs", "write, `conv=fsync`", "tmpfs_write", True)
    guest_row("guest, its own tmpfs", "read (tmpfs pages are the storage: a memory copy)", "tmpfs_read", True)
    dd_start = [r["guest_s"] for r in fs["dd_start"]]
    w(f"| guest | `dd count=0`: starting dd, no data (included in every guest row) | guest, around `dd` | "
      f"{stat(dd_start, 2)} | — |")
    host_row("write, `conv=fsync`", "write_s", True)
    host_row("read, the file's pages dropped first (`posix_fadvise` DONTNEED)", "read_cold_s")
    host_row("read, from the page cache (what virtiofsd reads from)", "read_cached_s", True)
    w("")

    def m(key):
        return med([rate(n, r["guest_s"]) for r in fs[key]])

    def net(key):
        t = med([r["guest_s"] for r in fs[key]]) - med(dd_start)
        return f"{rate(n, t):.2f}" if t > 0 else "n/a"

    hw = med([rate(n, t) for t in host["write_s"]])
    hr = med([rate(n, t) for t in host["read_cached_s"]])
    w(f"In medians: the share writes at {m('share_write'):.2f} MiB/s ({m('share_write') / m('tmpfs_write'):.2f}× "
      f"the guest's tmpfs, 1/{hw / m('share_write'):,.0f} of the host's {hw:.0f} MiB/s) and reads at "
      f"{m('share_read'):.2f} MiB/s ({m('share_read') / m('tmpfs_read'):.2f}× the tmpfs, "
      f"1/{hr / m('share_read'):,.0f} of the host's cached read at {hr:.0f} MiB/s). With dd's start-up "
      f"({med(dd_start):.2f} s) taken off: share write {net('share_write')}, read {net('share_read')}; "
      f"tmpfs write {net('tmpfs_write')}, read {net('tmpfs_read')} MiB/s.")
    w("")

    w("## Machine")
    w("")
    out.extend(machine_lines(facts))
    w(f"- before the run: {args.quiet_note}; load average {args.loadavg_before}")
    w(f"- during the run (polled every 2 s): other VMs: {args.during_note}; highest 1-minute load average "
      f"{args.max_load} (this benchmark's own VM alone keeps one core busy)")
    w(f"- load average after the run: {args.loadavg_after}")
    w(f"- guest kernel: {data['guest_kernel']} (`uname -r` in the guest); "
      f"`{args.kernel}`, {os.path.getsize(args.kernel):,} bytes")
    w(f"- guest image: `{args.initrd}`, {os.path.getsize(args.initrd):,} bytes")
    mem_total, mem_avail = fs.get("guest_mem_total_kib"), fs.get("guest_mem_available_kib")
    if mem_total and mem_avail:
        w(f"- guest memory before the throughput runs: MemTotal {mem_total / 1024:.1f} MiB, "
          f"MemAvailable {mem_avail / 1024:.1f} MiB")
    w(f"- busybox (bundles, host `dd`, guest image): `{args.busybox}`, {facts['busybox']}")
    w(f"- virtiofsd: `{data['virtiofsd']}`, {data['virtiofsd_version']}; run by the runtime with "
      "`--sandbox=namespace --seccomp=kill --cache=auto --announce-submounts`")
    w(f"- host directory under test: on {args.host_fs}")
    w("")
    w("Command line:")
    w("")
    w("```")
    w(shlex.join(args.command))
    w("```")
    w("")

    w("## Per run")
    w("")
    w("| boot | VM | ready (s) | `MountShare` (ms) | shutdown (s) |")
    w("|---|---|---|---|---|")
    for b in boots:
        mount = f"{b['mount_share_ms']:.0f}" if b["mount_share_ms"] is not None else "—"
        w(f"| {b['round']} | {'share' if b['share'] else 'bare'} | {b['ready_s']:.3f} | {mount} | "
          f"{b['shutdown_s']:.3f} |")
    w("")
    w("| container | share (ms) | create (ms) | start (ms) | start → exit (ms) | delete (ms) | unshare (ms) | "
      "total (ms) | then `true` without a container (ms) |")
    w("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(warm + runs):
        measured = i >= len(warm)
        label = f"{i - len(warm) + 1}" if measured else f"warm-up {i + 1}"
        after = f"{plain[i - len(warm)]:.1f}" if measured else "—"
        w(f"| {label} | {r['share_ms']:.1f} | {r['create_ms']:.1f} | {r['start_ms']:.1f} | "
          f"{r['start_exit_ms']:.1f} | {r['delete_ms']:.1f} | {r['unshare_ms']:.1f} | {r['total_ms']:.1f} | "
          f"{after} |")
    w("")
    w("| round | share write (s) | share read (s) | tmpfs write (s) | tmpfs read (s) | dd start (s) |")
    w("|---|---|---|---|---|---|")
    for i, rows in enumerate(zip(fs["share_write"], fs["share_read"], fs["tmpfs_write"], fs["tmpfs_read"],
                                 fs["dd_start"]), 1):
        w(f"| {i} | " + " | ".join(f"{r['guest_s']:.2f}" for r in rows) + " |")
    w("")
    w("| host round | write (s) | read, pages dropped (s) | pages still cached after the drop | "
      "read, cached (s) |")
    w("|---|---|---|---|---|")
    pages = n // 4096
    for i, (wr, cold, resident, cached) in enumerate(zip(host["write_s"], host["read_cold_s"],
                                                         host["cold_resident_pages"], host["read_cached_s"]), 1):
        w(f"| {i} | {wr:.4f} | {cold:.4f} | {resident} of {pages} | {cached:.4f} |")
    w("")

    w("## How measured")
    w("")
    w("`bench/containers.sh` waits until no other `runvm-vmm` or `qemu-system-*` process runs and the "
      "1-minute load average is low (the guest kernel's time is CPU-bound and the host has few cores), "
      "notes the load, and runs `runvm-containers-bench` (`bench/containers-bench/`), which drives the runtime "
      "library the way a runtime command does: `runvm::vm::MicroVm` boots the VM (with a share: "
      "`runvm::share` makes the share's mount namespace and starts virtiofsd first), `share_rootfs` / "
      "`unshare_rootfs` bind and unbind a rootfs, `runvm::container_client::ContainerClient` sends "
      "the container requests. Every step of a container is timed on the host with a monotonic clock; a "
      "container whose `true` does not exit 0 fails the benchmark. After every shutdown the benchmark "
      "checks that the VM's directory is gone and that the VMM and both virtiofsd processes have ended.")
    w("")
    w("Throughput: the guest's runs are `sh -c` scripts that read `/proc/uptime` (10 ms resolution) with "
      "the shell's `read` builtin before and after `dd`, so the time includes starting dd (the "
      "`count=0` row) but no process for the clock. Before each read the guest runs `sync` and "
      "`echo 3 > /proc/sys/vm/drop_caches`, so the share's read goes through virtiofsd (FUSE requests over "
      "virtio-fs, served from the host's page cache); tmpfs keeps its pages, so its "
      "read is a copy out of guest memory. The share is written through a writable bind (a second "
      "rootfs shared with `readonly: false`: the share's top is read-only to the guest); after every "
      "share write the host checks the file's size in the host directory. The host's `dd` is the same "
      "busybox binary in the same host directory, timed around the command (about a millisecond of "
      "process start-up); its cold read follows `posix_fadvise(DONTNEED)` on that file alone (the machine "
      "is shared: no global cache drop), and the per-run table shows how many pages stayed cached.")
    w("")
    w("Notes:")
    w("")
    w("- `runc spec` lists `CAP_AUDIT_WRITE`, `CAP_KILL` and `CAP_NET_BIND_SERVICE` as ambient but not as "
      "inheritable, which the kernel refuses to raise (`PR_CAP_AMBIENT_RAISE`: EPERM). runc 1.1.5 ignores "
      "that (its container runs with an empty ambient set); runvm's agent refuses the spec. The bundle "
      "here leaves the ambient list out, which gives the container what runc gives it.")
    w("- On this host every guest-kernel instruction is emulated (see README.md, \"Hosts whose KVM emulates "
      "guest-kernel code\"; guest user code runs natively): container set-up is guest-kernel work "
      "(clone with new namespaces, mounts, cgroup files) and every FUSE request costs guest-kernel time, so "
      "compare the share with the guest's own tmpfs to see what virtio-fs itself costs. The figures say "
      "nothing about hardware KVM.")
    w("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", required=True, help="runvm-containers-bench's output")
    ap.add_argument("--results", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--image", dest="initrd", required=True)
    ap.add_argument("--busybox", required=True)
    ap.add_argument("--host-fs", required=True, help="what the host directory is on, for the report")
    ap.add_argument("--loadavg-before", required=True)
    ap.add_argument("--loadavg-after", required=True)
    ap.add_argument("--max-load", required=True, help="highest 1-minute load average during the run")
    ap.add_argument("--quiet-note", required=True)
    ap.add_argument("--during-note", required=True)
    ap.add_argument("command", nargs="+", help="the runvm-containers-bench command line, for the report")
    args = ap.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    text = report(args, data, machine_facts(args.repo, busybox=args.busybox))
    write_section(args.results, CONTAINERS, text)
    print(text)


if __name__ == "__main__":
    try:
        main()
    except (OSError, KeyError, ValueError, IndexError) as e:
        print(f"bench/containers_report.py: error: {e}", file=sys.stderr)
        sys.exit(1)
