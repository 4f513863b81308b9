#!/usr/bin/env python3
"""Cold start: what a guest costs to boot, by image, next to the least a
guest can boot (a tiny static init), and a whole trivial container through
`runvm run` next to that same tiny-init boot. Called by bench/coldstart.sh.

Per boot run: wall time from just before runvm-vmm is spawned to the ready
line on its console, and the VM's KVM counters at that moment (read with
runvm-guest-counters while the guest idles; then the VMM is stopped). On a
host whose KVM emulates the guest kernel, `insn_emulation` counts the guest
kernel's work in units that do not move with the host's speed of the day.

Per container run: wall time of `runvm run` from spawn to exit (the
container prints one line and exits 0). Per floor run (runvm-floor-bench):
the same bundle's process run from the share by the agent of a cold VM,
outside any container, from boot to its exit: the least a `runvm run`
could cost, measured between the same rounds.

Runs are interleaved round by round so that a drift of the host's speed
hits every variant alike. Python 3 stdlib only.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import COLDSTART as MARKER  # noqa: E402
from benchlib import machine_facts, machine_lines, stat, write_section  # noqa: E402
COUNTERS = ["insn_emulation", "exits", "mmio_exits", "irq_injections", "pf_taken"]


class BenchError(Exception):
    pass


def boot_once(args, variant, workdir):
    """One boot: (ready seconds, counters at ready)."""
    vsock = os.path.join(workdir, "vsock.sock")
    cmd = [variant["vmm"], "--kernel", variant["kernel"], variant["flag"], variant["image"],
           "--memory", str(args.memory_mib), "--vcpus", "1", "--vsock-socket", vsock]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    ready = None
    counters = None
    console = []
    try:
        deadline = start + args.timeout
        for line in proc.stdout:
            console.append(line.decode(errors="replace"))
            if variant["ready"].encode() in line:
                ready = time.perf_counter() - start
                counters = read_counters(args, proc.pid)
                break
            if time.perf_counter() > deadline:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if ready is None:
        raise BenchError(f"{variant['name']}: no ready line; console:\n{''.join(console)[-2000:]}"
                         f"\nstderr:\n{proc.stderr.read().decode(errors='replace')[-2000:]}")
    return ready, counters


def read_counters(args, pid):
    """The VM's counters, or None from a VMM that holds no statistics
    descriptors (one built before it did)."""
    out = subprocess.run([args.counters, str(pid)], capture_output=True, text=True)
    if out.returncode != 0:
        if "no KVM vCPU statistics descriptor" in out.stderr:
            return None
        raise BenchError(f"runvm-guest-counters failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def container_once(args, setup, index):
    """One `runvm run` of the trivial bundle: wall seconds to exit."""
    # RUNVM_INITRD for a runvm from before the image was renamed.
    env = dict(os.environ, RUNVM_VMM=setup["vmm"], RUNVM_KERNEL=setup["kernel"],
               RUNVM_IMAGE=setup["image"], RUNVM_INITRD=setup["image"])
    cmd = [setup["runvm"], "--root", args.state, "run", "--bundle", args.bundle,
           f"coldstart-{os.getpid()}-{index}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                         timeout=args.timeout)
    wall = time.perf_counter() - start
    if out.returncode != 0 or b"hello from container" not in out.stdout:
        raise BenchError(f"runvm run failed ({out.returncode}): {out.stdout[-500:]!r} {out.stderr[-2000:]!r}")
    return wall


def floor_once(args, setup, workdir):
    """One runvm-floor-bench run: its JSON (seconds from boot to ready, to
    the rootfs shared, to the process's exit, to the VM stopped) and, as
    `wall_s`, the binary's own wall time from spawn to exit, timed as
    `runvm run` is."""
    env = dict(os.environ, RUNVM_COLD_BOOT="1")
    cmd = [setup["binary"], "--vmm", setup["vmm"], "--kernel", setup["kernel"], "--image", setup["image"],
           "--bundle", args.bundle, "--dir", os.path.join(workdir, "floor"),
           "--memory-mib", str(args.memory_mib), "--timeout-s", str(int(args.timeout))]
    start = time.perf_counter()
    # --timeout-s bounds each of its steps; this only catches a hang, late
    # enough that the binary's own timeouts (and clean-up) come first.
    out = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                         timeout=2 * args.timeout + 60)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise BenchError(f"runvm-floor-bench failed ({out.returncode}): {out.stderr[-2000:]!r}")
    result = json.loads(out.stdout)
    if "hello from container" not in result.get("stdout", ""):
        raise BenchError(f"runvm-floor-bench: unexpected output {result.get('stdout')!r}")
    result["wall_s"] = wall
    return result


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counters")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME|VMM|KERNEL|FLAG|IMAGE|READY-TEXT: a boot to measure (the first is the reference)")
    ap.add_argument("--container", action="append", default=[],
                    help="NAME|RUNVM|VMM|KERNEL|IMAGE: a `runvm run` set-up to measure")
    ap.add_argument("--floor", action="append", default=[],
                    help="NAME|RUNVM-FLOOR-BENCH|VMM|KERNEL|IMAGE: the bundle's process without a container")
    ap.add_argument("--bundle")
    ap.add_argument("--state")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--container-runs", type=int, default=3)
    ap.add_argument("--memory-mib", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--quiet-note", default="")
    ap.add_argument("--raw", help="also write every measurement here, as JSON")
    ap.add_argument("--from-raw", help="measure nothing: write the report again from a --raw file")
    args = ap.parse_args()
    if args.from_raw:
        with open(args.from_raw) as f:
            raw = json.load(f)
        boots = {name: [tuple(run) for run in runs] for name, runs in raw["boots"].items()}
        args.runs = max(len(runs) for runs in boots.values())
        args.container_runs = max([len(w) for w in raw["containers"].values()] or [0])
        args.quiet_note = args.quiet_note or raw["facts"].get("quiet_note", "")
        write_section(args.results, MARKER,
                      report(args, raw["variants"], boots, raw["containers"], raw["facts"],
                             raw.get("floors", {})))
        print(f"coldstart: report written again to {args.results}", file=sys.stderr)
        return
    if not (args.counters and args.bundle and args.state):
        ap.error("--counters, --bundle and --state are needed to measure")

    variants = []
    for spec in args.variant:
        name, vmm, kernel, flag, image, ready = spec.split("|", 5)
        variants.append({"name": name, "vmm": vmm, "kernel": kernel, "flag": flag, "image": image,
                         "ready": ready, "image_bytes": os.path.getsize(image),
                         "kernel_bytes": os.path.getsize(kernel)})
    setups = []
    for spec in args.container:
        name, runvm, vmm, kernel, image = spec.split("|", 4)
        setups.append({"name": name, "runvm": runvm, "vmm": vmm, "kernel": kernel, "image": image})
    floor_setups = []
    for spec in args.floor:
        name, binary, vmm, kernel, image = spec.split("|", 4)
        floor_setups.append({"name": name, "binary": binary, "vmm": vmm, "kernel": kernel, "image": image})
    facts = machine_facts(args.repo)
    facts["container_images"] = {c["name"]: c["image"] for c in setups}
    facts["floor_images"] = {f["name"]: f["image"] for f in floor_setups}
    floors = {f["name"]: [] for f in floor_setups}
    boots = {v["name"]: [] for v in variants}
    containers = {c["name"]: [] for c in setups}
    workdir = tempfile.mkdtemp(prefix="runvm-coldstart.")
    try:
        # One uncounted round first: the page cache holds every file after it.
        for v in variants:
            boot_once(args, v, workdir)
        for r in range(args.runs):
            order = variants if r % 2 == 0 else list(reversed(variants))
            for v in order:
                wall, counters = boot_once(args, v, workdir)
                boots[v["name"]].append((wall, counters))
                insn = f"{counters['insn_emulation'] / 1e6:.2f} M" if counters else "no count of"
                print(f"coldstart: round {r + 1} {v['name']}: ready {wall:.3f} s, "
                      f"{insn} emulated instructions", file=sys.stderr)
            if r < args.container_runs:
                for c in (setups if r % 2 == 0 else list(reversed(setups))):
                    wall = container_once(args, c, r)
                    containers[c["name"]].append(wall)
                    print(f"coldstart: round {r + 1} runvm run ({c['name']}): {wall:.3f} s", file=sys.stderr)
                for f in floor_setups:
                    result = floor_once(args, f, workdir)
                    floors[f["name"]].append(result)
                    print(f"coldstart: round {r + 1} floor ({f['name']}): {result['total_s']:.3f} s", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    facts["loadavg_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
    facts["quiet_note"] = args.quiet_note
    if args.raw:
        with open(args.raw, "w") as f:
            json.dump({"variants": variants, "boots": boots, "containers": containers,
                       "floors": floors, "facts": facts}, f, indent=1)
    write_section(args.results, MARKER, report(args, variants, boots, containers, facts, floors))
    print(f"coldstart: report written to {args.results}", file=sys.stderr)


def hardware_on_paper(variants, boots):
    """What the counts say about hardware KVM, where the guest kernel runs
    natively: an estimate from stated assumptions, not a measurement."""
    counted = {v["name"]: [c for _, c in boots[v["name"]] if c] for v in variants}
    counted = {name: runs for name, runs in counted.items() if runs}
    if not counted:
        return []
    lines = [
        "",
        "On paper, for hardware KVM (not measured here): there the guest kernel runs natively, so a "
        "boot's guest-kernel work is its emulated-instruction count above at native speed, taken as "
        "1 to 3 G instructions/s; its MMIO exits, each handled in runvm-vmm, at 5 to 10 µs each. The "
        "other exits of this host (it switches to the host for the guest kernel's privileged "
        "instructions, interrupts and timer ticks) have no counterpart of that cost there.",
        "",
        "| variant | guest-kernel instructions (M) | at 1-3 G/s (ms) | MMIO exits | at 5-10 µs (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, runs in counted.items():
        insn = median([c["insn_emulation"] for c in runs])
        mmio = median([c["mmio_exits"] for c in runs])
        lines.append(
            f"| {name} | {insn / 1e6:.2f} | {insn / 3e6:.1f} to {insn / 1e6:.1f} "
            f"| {mmio:,.0f} | {mmio * 5e-3:.2f} to {mmio * 10e-3:.2f} |")
    return lines


def floor_lines(floors, containers, setups_image, floor_images, ref_wall):
    """The floor under `runvm run`, and what it leaves of a 1.3× budget."""
    if not any(floors.values()):
        return []
    lines = [
        "",
        "### The floor under it: the same process with no container",
        "",
        "`runvm-floor-bench`: a cold VM as `runvm run` boots it (the agent, virtiofsd, a share), the "
        "bundle's rootfs shared, and the bundle's process (its paths moved into the share) run by the "
        "agent from the share outside any container (no cgroup, namespaces, mounts or pivot_root, no "
        "create or start), until it exits; then the VM is stopped. Timed as `runvm run` is, from "
        "spawning the binary to its exit: the least a `runvm run` of this bundle could cost with this "
        "guest kernel, VM and share. Measured between the same rounds.",
        "",
        "| what | seconds min / median / max | × reference boot |",
        "|---|---|---|",
    ]
    for name, runs in floors.items():
        if not runs:
            continue
        parts = [
            (f"floor, {name}: spawn to exit", [r["wall_s"] for r in runs]),
            ("of which boot to agent-ready", [r["ready_s"] for r in runs]),
            ("of which the share mounted and the rootfs shared",
             [r["shared_s"] - r["ready_s"] for r in runs]),
            ("of which the streams, the exec and the process until it exits",
             [r["total_s"] - r["shared_s"] for r in runs]),
            ("of which the VM stopped", [r["stopped_s"] - r["total_s"] for r in runs]),
        ]
        for what, values in parts:
            lines.append(f"| {what} | {stat(values, 3)} | {median(values) / ref_wall:.3f} |")
        floor = median(parts[0][1])
        budget = 1.3 * ref_wall
        margin = budget - floor
        adds = "its cgroup, namespaces, mounts and pivot_root, and the create, start and wait round trips"
        if margin >= 0:
            verdict = (f"which leaves {margin:.2f} s ({margin / ref_wall:.3f}× of the reference boot) "
                       f"for what a container adds: {adds}.")
        else:
            verdict = (f"over that budget by {-margin:.2f} s ({-margin / ref_wall:.3f}× of the reference "
                       f"boot) before a container adds anything ({adds}).")
        lines += [
            "",
            f"A `runvm run` at 1.3× the reference boot may take {budget:.2f} s; this floor ({name}) "
            f"takes {floor:.2f} s ({floor / ref_wall:.3f}×), {verdict}",
        ]
        for cname, walls in containers.items():
            if walls and setups_image.get(cname) == floor_images.get(name):
                lines += ["", f"`runvm run` ({cname}, the same image) takes {median(walls) - floor:.2f} s "
                          "more than this floor."]
    return lines


def report(args, variants, boots, containers, facts, floors):
    ref_name = variants[0]["name"]
    ref_wall = median([w for w, _ in boots[ref_name]])
    ref_insn = median([c["insn_emulation"] for _, c in boots[ref_name]])
    lines = [
        "# Cold start: boot by guest image, and a trivial container, next to a tiny init",
        "",
        f"One run of `bench/coldstart.sh`: {args.runs} measured boots of each variant "
        "(after one uncounted round), interleaved round by round, and "
        f"{args.container_runs} `runvm run` of a trivial busybox container per set-up between the rounds. "
        f"{args.memory_mib} MiB, 1 vCPU, a vsock device in every boot. Variants marked *before* are "
        "the tree as it was before the cold-start work (its kernel, VMM, agent and runtime), built "
        "beside this one and measured in the same run.",
        "",
        f"The reference is `{ref_name}`: the same kernel booting a static C program that only "
        "prints its ready line (the least a guest can run as PID 1). Ratios are of medians, "
        "measured in this one run.",
        "",
        "## Boot to ready",
        "",
        "| variant | image | ready (s) min / median / max | × reference | emulated instructions (M, median) | × reference | exits | MMIO exits | page faults |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        runs = boots[v["name"]]
        walls = [w for w, _ in runs]
        counted = [c for _, c in runs if c]
        if not counted:
            lines.append(
                f"| {v['name']} | `{os.path.basename(v['image'])}` ({v['image_bytes']:,} B, {v['flag']}), "
                f"kernel {v['kernel_bytes']:,} B "
                f"| {stat(walls, 3)} | {median(walls) / ref_wall:.3f} | — | — | — | — | — |")
            continue
        med = lambda key: median([c[key] for c in counted])
        lines.append(
            f"| {v['name']} | `{os.path.basename(v['image'])}` ({v['image_bytes']:,} B, {v['flag']}), "
            f"kernel {v['kernel_bytes']:,} B "
            f"| {stat(walls, 3)} | {median(walls) / ref_wall:.3f} "
            f"| {med('insn_emulation') / 1e6:.2f} | {med('insn_emulation') / ref_insn:.3f} "
            f"| {med('exits'):,.0f} | {med('mmio_exits'):,.0f} | {med('pf_taken'):,.0f} |")
    lines += hardware_on_paper(variants, boots)
    if any(containers.values()):
        lines += [
            "",
            "## A trivial container end to end",
            "",
            "`runvm run` of a busybox bundle whose process prints one line (`make run`'s), "
            "from spawning `runvm` to its exit: VM boot, virtiofsd, share, container create, "
            "start, exit, VM power-off and clean-up.",
            "",
            "| what | seconds min / median / max | × reference boot |",
            "|---|---|---|",
        ] + [
            f"| `runvm run`, {name} | {stat(walls, 3)} | {median(walls) / ref_wall:.3f} |"
            for name, walls in containers.items()
        ] + [
            f"| reference: {ref_name} boot to ready | {stat([w for w, _ in boots[ref_name]], 3)} | 1.000 |",
        ]
    lines += floor_lines(floors, containers, facts.get("container_images", {}),
                         facts.get("floor_images", {}), ref_wall)
    lines += ["", "## Machine", ""] + machine_lines(facts) + [
        f"- load average before / after: {facts['loadavg']} / {facts['loadavg_after']}",
    ]
    if args.quiet_note:
        lines.append(f"- {args.quiet_note}")
    lines += [
        "",
        "## Per run",
        "",
        "| variant | # | ready (s) | " + " | ".join(COUNTERS) + " |",
        "|---|---|---|" + "---|" * len(COUNTERS),
    ]
    for v in variants:
        for i, (wall, c) in enumerate(boots[v["name"]], 1):
            cells = [f"{c[k]:,}" for k in COUNTERS] if c else ["—"] * len(COUNTERS)
            lines.append(f"| {v['name']} | {i} | {wall:.3f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Counters are KVM's per-vCPU statistics (`KVM_GET_STATS_FD`), summed over the VM's "
        "vCPUs, read by `runvm-guest-counters` from the descriptors runvm-vmm holds, at the moment "
        "the ready line arrived (— for a VMM from before it held them). `insn_emulation` is the number of guest instructions KVM emulated: "
        "on this host every guest-kernel instruction (each REP iteration counts), so it measures the "
        "guest kernel's work independently of the host's speed; on hardware KVM it is near zero.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"coldstart: {e}", file=sys.stderr)
        sys.exit(1)
