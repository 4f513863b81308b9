#!/usr/bin/env python3
"""VM templates (warm start) against cold boots, in one run on one build.
Called by bench/templates.sh. Python 3 stdlib only.

Round by round, in alternating order:
- time to agent-ready of a VM with a share, through the runtime library
  (`runvm-templates-bench`, one VM per call): booted cold
  (RUNVM_COLD_BOOT=1), the first VM with templates on (the store emptied
  first: a cold boot, the save, and the restore), and a VM restored from
  the template;
- `runvm run` of a trivial busybox bundle end to end, cold and from the
  template (the same one: a container's VM has the same inputs).
Then once: `--memory-vms` VMs running at once, restored from the template
and then booted cold, PSS summed over each VM's processes.

Every VM's origin is checked from the store: a restore must mark the
template used (its inputs.txt's mtime moves) and leave it in place (a
failed restore removes it and boots cold), a cold boot must leave the store
alone, and the runtime must have noted nothing in the VM's log.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import TEMPLATES as MARKER  # noqa: E402
from benchlib import machine_facts, machine_lines, stat, write_section  # noqa: E402

COLD, MAKE, RESTORE = "cold boot", "first VM with templates on: cold boot + save + restore", \
    "restore from the template"
RUN_COLD, RUN_TEMPLATE = "`runvm run`, cold boot", "`runvm run`, from the template"
TARGET_READY, TARGET_RUN = 0.05, 0.3
MIB = 1024.0


class BenchError(Exception):
    pass


def log(text):
    print(f"templates: {text}", file=sys.stderr, flush=True)


def templates_in(store):
    """{name: mtime_ns of inputs.txt} of the complete templates in `store`."""
    found = {}
    try:
        names = os.listdir(store)
    except FileNotFoundError:
        return found
    for name in names:
        inputs = os.path.join(store, name, "inputs.txt")
        if not name.startswith(".") and os.path.isfile(inputs):
            found[name] = os.stat(inputs).st_mtime_ns
    return found


def empty_store(store):
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(store, mode=0o700)


def check_origin(kind, before, after, what):
    """Raises unless the store changed as a VM of `kind` changes it."""
    if kind == "cold":
        if before != after:
            raise BenchError(f"{what}: a cold boot changed the template store ({before} -> {after})")
    elif kind == "make":
        if before or len(after) != 1:
            raise BenchError(f"{what}: expected the store to go from empty to one template, "
                             f"it went from {sorted(before)} to {sorted(after)}")
    elif kind == "restore":
        if len(before) != 1 or set(after) != set(before):
            raise BenchError(f"{what}: expected the one template to stay, the store went from "
                             f"{sorted(before)} to {sorted(after)} (a failed restore removes it)")
        name = next(iter(before))
        if after[name] <= before[name]:
            raise BenchError(f"{what}: the template was not used (its inputs.txt was not touched): "
                             "the VM booted cold")


def env_for(args, kind):
    env = dict(os.environ, RUNVM_TEMPLATE_DIR=args.store)
    env["RUNVM_COLD_BOOT"] = "1" if kind == "cold" else "0"
    return env


def bench_vms(args, kind, vms=1, parallel=1):
    """`runvm-templates-bench` with `vms` VMs: its JSON."""
    before = templates_in(args.store)
    work = os.path.join(args.work, f"vms-{time.monotonic_ns()}")
    cmd = [args.bench, "--vmm", args.vmm, "--kernel", args.kernel, "--image", args.image,
           "--dir", work, "--memory-mib", str(args.memory_mib), "--vms", str(vms),
           "--parallel", str(parallel), "--timeout-s", str(int(args.timeout))]
    out = subprocess.run(cmd, env=env_for(args, kind), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=args.timeout * max(1, vms))
    if out.returncode != 0:
        raise BenchError(f"runvm-templates-bench ({kind}) failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    check_origin(kind, before, templates_in(args.store), f"{kind} ({vms} VM(s))")
    for vm in result["vms"]:
        if vm["notes"]:
            raise BenchError(f"{kind}: the runtime noted {vm['notes']}")
    return result


def run_once(args, kind, index):
    """One `runvm run` of the trivial bundle: wall seconds to exit."""
    before = templates_in(args.store)
    env = env_for(args, kind)
    env.update(RUNVM_VMM=args.vmm, RUNVM_KERNEL=args.kernel, RUNVM_IMAGE=args.image)
    cmd = [args.runvm, "--root", args.state, "run", "--bundle", args.bundle,
           f"templates-{os.getpid()}-{kind}-{index}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                         timeout=args.timeout)
    wall = time.perf_counter() - start
    if out.returncode != 0 or b"hello from container" not in out.stdout:
        raise BenchError(f"runvm run ({kind}) failed ({out.returncode}): {out.stdout[-500:]!r} "
                         f"{out.stderr[-2000:]!r}")
    if b"runvm: " in out.stderr:
        raise BenchError(f"runvm run ({kind}): the runtime noted {out.stderr[-2000:]!r}")
    check_origin(kind, before, templates_in(args.store), f"runvm run ({kind})")
    return wall


def one_vm(args, kind):
    vm = bench_vms(args, kind)["vms"][0]
    return {"ready_s": vm["ready_s"], "insn": vm["counters"].get("insn_emulation"),
            "mount_share_ms": vm["mount_share_ms"], "shutdown_s": vm["shutdown_s"]}


def median(values):
    return statistics.median(values)


def main():
    ap = argparse.ArgumentParser()
    for flag in ("bench", "runvm", "vmm", "kernel", "image", "bundle", "state", "store", "work",
                 "repo", "results"):
        ap.add_argument(f"--{flag}", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory-vms", type=int, default=10)
    ap.add_argument("--memory-parallel", type=int, default=2)
    ap.add_argument("--memory-mib", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--quiet-note", default="")
    ap.add_argument("--raw")
    args = ap.parse_args()

    facts = machine_facts(args.repo, virtiofsd=shutil.which("virtiofsd") or
                          os.path.expanduser("~/.cargo/bin/virtiofsd"))
    ready = {COLD: [], MAKE: [], RESTORE: []}
    runs = {RUN_COLD: [], RUN_TEMPLATE: []}
    empty_store(args.store)
    for r in range(args.rounds):
        steps = [("cold", COLD), ("make", MAKE), ("restore", RESTORE)]
        container = [("cold", RUN_COLD), ("restore", RUN_TEMPLATE)]
        if r % 2:
            steps = steps[1:] + steps[:1]
            container.reverse()
        for kind, name in steps:
            if kind == "make":
                empty_store(args.store)
            got = one_vm(args, kind)
            ready[name].append(got)
            log(f"round {r + 1}/{args.rounds} {name}: ready {got['ready_s']:.3f} s")
        for kind, name in container:
            wall = run_once(args, kind, r)
            runs[name].append(wall)
            log(f"round {r + 1}/{args.rounds} {name}: {wall:.3f} s")
    template_files = template_sizes(args.store)
    memory = {}
    for kind in ("restore", "cold"):
        log(f"memory: {args.memory_vms} VMs ({kind}), {args.memory_parallel} started at a time")
        memory[kind] = bench_vms(args, kind, args.memory_vms, args.memory_parallel)
        log(f"memory ({kind}): PSS {sum_pss(memory[kind]) / MIB:.1f} MiB over "
            f"{args.memory_vms} VMs")
    facts["loadavg_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
    if args.raw:
        with open(args.raw, "w") as f:
            json.dump({"ready": ready, "runs": runs, "memory": memory, "facts": facts,
                       "template_files": template_files}, f, indent=1)
    text = report(args, ready, runs, memory, template_files, facts)
    write_section(args.results, MARKER, text)
    print(text)
    log(f"report written to {args.results}")


def template_sizes(store):
    """{file: (apparent bytes, allocated bytes)} of the one template."""
    names = list(templates_in(store))
    if len(names) != 1:
        raise BenchError(f"expected one template in {store}, found {names}")
    out = {}
    top = os.path.join(store, names[0])
    for name in sorted(os.listdir(top)):
        st = os.stat(os.path.join(top, name))
        out[name] = (st.st_size, st.st_blocks * 512)
    return out


def sum_pss(result, key="Pss"):
    return sum(vm["memory"]["total_kib"].get(key, 0) for vm in result["vms"])


def role_pss(result, role):
    return sum(p["kib"].get("Pss", 0) for vm in result["vms"] for p in vm["memory"]["processes"]
               if p["role"] == role)


def host_delta(result, key):
    return result["host_meminfo_running_kib"][key] - result["host_meminfo_before_kib"][key]


def report(args, ready, runs, memory, template_files, facts):
    cold = median([g["ready_s"] for g in ready[COLD]])
    run_cold = median(runs[RUN_COLD])
    restore_ratio = median([g["ready_s"] for g in ready[RESTORE]]) / cold
    run_ratio = median(runs[RUN_TEMPLATE]) / run_cold
    met = lambda ratio, target: "met" if ratio <= target else "**not met**"
    store_fs = subprocess.run(["stat", "-f", "-c", "%T", args.store], capture_output=True,
                              text=True).stdout.strip() or "unknown"
    lines = [
        "# VM templates: cold boot vs restore (warm start)",
        "",
        f"One run of `bench/templates.sh`: {args.rounds} rounds, each in alternating order, on one "
        f"build. Every VM has {args.memory_mib} MiB, 1 vCPU and a share (virtiofsd), as a "
        "container's VM has, and boots `build/runvm-agent` (the VMM's init program). Cold boots have `RUNVM_COLD_BOOT=1`; "
        f"the others use the benchmark's own template store (`RUNVM_TEMPLATE_DIR`, on {store_fs}), "
        "emptied before each round's first VM with templates on. Every VM's origin is checked from "
        "the store (a restore marks the template used and leaves it in place; a failed one would "
        "remove it and boot cold). Ratios are of medians within this run.",
        "",
        "## Time to agent-ready",
        "",
        "Through the runtime library (`runvm-templates-bench`: `MicroVm::boot` to `connect_agent` "
        "returning: the template's key, virtiofsd, the VMM, boot or restore, and for a restored VM "
        "its reseeding), one VM at a time. Emulated instructions: KVM's `insn_emulation` of the VMM "
        "process running at ready (a restored VM's count starts at its restore). MountShare: the "
        "agent mounting the share afterwards (not in the time to ready).",
        "",
        "| VM | ready (s) min / median / max | × cold | emulated instructions (M, median) | MountShare (ms, median) |",
        "|---|---|---|---|---|",
    ]
    for name, got in ready.items():
        walls = [g["ready_s"] for g in got]
        insn = [g["insn"] for g in got if g["insn"] is not None]
        lines.append(f"| {name} | {stat(walls, 3)} | {median(walls) / cold:.3f} "
                     f"| {median(insn) / 1e6:.2f} | {median([g['mount_share_ms'] for g in got]):.0f} |")
    lines += [
        "",
        f"Restore / cold: **{restore_ratio:.3f}** (issue 15's target ≤ {TARGET_READY}: "
        f"{met(restore_ratio, TARGET_READY)}).",
        "",
        "## A trivial container end to end",
        "",
        "`runvm run` of `make run`'s busybox bundle (prints one line), from spawning `runvm` to its "
        "exit: VM (cold or restored), virtiofsd, share, container create, start, exit, power-off, "
        "clean-up.",
        "",
        "| what | seconds min / median / max | × cold |",
        "|---|---|---|",
    ] + [f"| {name} | {stat(walls, 3)} | {median(walls) / run_cold:.3f} |"
         for name, walls in runs.items()] + [
        "",
        f"From the template / cold: **{run_ratio:.3f}** (issue 15's target ≤ {TARGET_RUN}: "
        f"{met(run_ratio, TARGET_RUN)}).",
    ]
    lines += memory_lines(args, memory, template_files)
    lines += ["", "## Machine", ""] + machine_lines(facts) + [
        f"- virtiofsd: {facts.get('virtiofsd', 'unknown')}",
        f"- load average before / after: {facts['loadavg']} / {facts['loadavg_after']}",
    ]
    if args.quiet_note:
        lines.append(f"- {args.quiet_note}")
    lines += ["", "## Per run", "", "| VM | # | ready (s) | emulated instructions | MountShare (ms) |",
              "|---|---|---|---|---|"]
    for name, got in ready.items():
        for i, g in enumerate(got, 1):
            insn = f"{g['insn']:,}" if g["insn"] is not None else "—"
            lines.append(f"| {name} | {i} | {g['ready_s']:.3f} | {insn} | {g['mount_share_ms']:.0f} |")
    for name, walls in runs.items():
        for i, wall in enumerate(walls, 1):
            lines.append(f"| {name} | {i} | {wall:.3f} | — | — |")
    return "\n".join(lines) + "\n"


def memory_lines(args, memory, template_files):
    n = args.memory_vms
    lines = [
        "",
        f"## Memory: {n} VMs at once",
        "",
        f"{n} VMs restored from the template, all running (each agent answered and mounted the "
        f"share), then shut down; then {n} booted cold the same way ({args.memory_parallel} started "
        "at a time). PSS (proportional set size: a page shared by k processes counts 1/k in each) "
        "summed over each VM's processes — the jail's supervisor, runvm-vmm, virtiofsd's two — from "
        "`/proc/PID/smaps_rollup`, 2 s after the last VM was ready. The host's MemAvailable drop "
        "and Shmem rise are from `/proc/meminfo` before the first VM and with all running (the "
        "machine is shared: indicative only).",
        "",
        "| VMs | all ready after (s) | PSS sum (MiB) | PSS per VM (MiB, median) | runvm-vmm | jail supervisor | virtiofsd | Pss_Anon | Pss_File | Pss_Shmem | RSS sum (MiB) | host MemAvailable drop (MiB) | host Shmem rise (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, label in (("restore", "restored from the template"), ("cold", "cold boots")):
        m = memory[kind]
        per_vm = [vm["memory"]["total_kib"].get("Pss", 0) for vm in m["vms"]]
        cells = [f"{m['all_ready_s']:.1f}", f"{sum_pss(m) / MIB:.1f}", f"{median(per_vm) / MIB:.1f}"]
        cells += [f"{role_pss(m, role) / MIB:.1f}" for role in ("runvm-vmm", "jail supervisor", "virtiofsd")]
        cells += [f"{sum_pss(m, key) / MIB:.1f}" for key in ("Pss_Anon", "Pss_File", "Pss_Shmem", "Rss")]
        cells += [f"{-host_delta(m, 'MemAvailable') / MIB:.1f}", f"{host_delta(m, 'Shmem') / MIB:.1f}"]
        lines.append(f"| {n} {label} | " + " | ".join(cells) + " |")
    ratio = sum_pss(memory["restore"]) / sum_pss(memory["cold"])
    size = lambda n: f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"
    files = ", ".join(f"`{name}` {size(length)} ({size(blocks)} allocated)"
                      for name, (length, blocks) in template_files.items())
    lines += [
        "",
        f"PSS, restored / cold: **{ratio:.3f}**. The template on disk: {files}. A VM restored with "
        "a share does not map the template's memory file copy-on-write: virtiofsd must map guest "
        "RAM, so the VMM copies the file's data into a memfd of its own (shared memory, counted in "
        "Pss_Shmem between the VMM and virtiofsd), and only the VMs restored without a share share "
        "the template's pages. A cold VM's guest RAM is a memfd shared with virtiofsd too, "
        "holding what its boot touched; a restored VM's holds the template's non-zero pages.",
    ]
    return lines


if __name__ == "__main__":
    try:
        main()
    except (BenchError, subprocess.TimeoutExpired) as e:
        print(f"templates: {e}", file=sys.stderr)
        sys.exit(1)
