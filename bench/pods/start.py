#!/usr/bin/env python3
"""Pod start through the runc command line: a pod's sandbox created and
started (annotation `io.kubernetes.cri.container-type: sandbox`), then two
member containers (`container-type: container`, `sandbox-id`, and the
sandbox's network, IPC and UTS namespaces by `/proc/<pid>/ns` paths, as
containerd's CRI plugin sends them) each created and started, under runvm
and under runc, in rounds that alternate which runtime goes first. Per
container: `create` (call to return), `start` (call to return) and start
to its first line of output. After each container: how many runvm-vmm
processes the root has, and the guest's boot_id the container printed
(equal for every container of a runvm pod: one kernel). Writes the "Pod
start" section of bench/RESULTS.md. Called by bench/podstart.sh."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import POD_START as MARKER  # noqa: E402
from benchlib import machine_facts, machine_lines, stat  # noqa: E402
from cli import (BenchError, add_common_args, loadavg, run_facts, run_lines, run_main, runtimes,  # noqa: E402
                 vm_lock, write_report)

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
# Prints the kernel's boot id (one per VM), then stays up as a pause would.
SCRIPT = "cat /proc/sys/kernel/random/boot_id; echo up; exec sleep 1000000"
ROLES = ["sandbox", "member 1", "member 2"]
# How often the output file is polled (Runtime.wait_output).
POLL_S = 0.005


def pod_once(rt, args, bundles, round_no):
    """One pod: sandbox, member 1, member 2; each step's seconds."""
    pod = f"pod{round_no}-{os.getpid()}"
    result = {"containers": []}
    sandbox_pid = None
    try:
        for role in ROLES:
            cid = pod if role == "sandbox" else f"{pod}-{role.replace(' ', '')}"
            bundle = bundles[role](pod, sandbox_pid)
            create_s, out, pid_file = rt.create(bundle, cid)
            start_s, _ = rt.run("start", cid)
            started = time.perf_counter()
            up_s = rt.wait_output(cid, out, "up", started)
            if role == "sandbox":
                with open(pid_file) as f:
                    sandbox_pid = int(f.read().strip())
            boot_id = open(out).read().split("\n", 1)[0].strip()
            result["containers"].append({"role": role, "create_s": create_s, "start_s": start_s,
                                         "up_s": up_s, "vmms": len(rt.vmms()), "boot_id": boot_id})
            print(f"podstart: {rt.name} round {round_no} {role}: create {create_s:.3f} s, "
                  f"start {start_s:.3f} s, up {up_s:.3f} s, VMMs {result['containers'][-1]['vmms']}",
                  file=sys.stderr)
    finally:
        t = time.perf_counter()
        rt.remove_all()
        result["delete_all_s"] = time.perf_counter() - t
        result["vmms_after"] = len(rt.vmms())
    if rt.is_runvm:
        ids = {c["boot_id"] for c in result["containers"]}
        if len(ids) != 1 or result["containers"][0]["vmms"] != 1 or \
                any(c["vmms"] != 1 for c in result["containers"]):
            raise BenchError(f"runvm's pod did not stay in one VM: {result['containers']}")
        if result["vmms_after"]:
            raise BenchError("runvm-vmm left after the pod was deleted")
    return result


def make_bundles(rt, busybox):
    """Bundle factories per role: (pod id, sandbox's pid) -> bundle dir.
    The bundles are built once; only the annotations and the namespace
    paths change per pod."""
    base = {role: rt.bundle(busybox, role.replace(" ", ""), ["sh", "-c", SCRIPT]) for role in ROLES}

    def factory(role):
        def make(pod, sandbox_pid):
            path = os.path.join(base[role], "config.json")
            with open(path) as f:
                config = json.load(f)
            kind = "sandbox" if role == "sandbox" else "container"
            config["annotations"] = {CONTAINER_TYPE: kind, SANDBOX_ID: pod}
            if role != "sandbox":
                shared = {"network", "ipc", "uts"}
                config["linux"]["namespaces"] = [
                    {"type": n["type"], "path": f"/proc/{sandbox_pid}/ns/{ns_file(n['type'])}"}
                    if n["type"] in shared else n
                    for n in config["linux"]["namespaces"]]
            with open(path, "w") as f:
                json.dump(config, f, indent=2)
            return base[role]
        return make

    return {role: factory(role) for role in ROLES}


def ns_file(kind):
    return {"network": "net"}.get(kind, kind)


def report(args, data, facts):
    out = []
    w = out.append
    runs = {name: data["runs"][name] for name in ("runvm", "runc")}

    def steps(name, role, key):
        return [r["containers"][ROLES.index(role)][key] for r in runs[name]]

    def total(name, role):
        return [c["create_s"] + c["start_s"] for c in (r["containers"][ROLES.index(role)] for r in runs[name])]

    def med(values):
        values = sorted(values)
        n = len(values)
        return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2

    w("# Pod start: sandbox, then members, through the runc command line")
    w("")
    w(f"{args.runs} pods per runtime, in rounds alternating which runtime goes first. A pod: the sandbox "
      "(annotations `io.kubernetes.cri.container-type: sandbox`, `io.kubernetes.cri.sandbox-id`) created "
      "and started, then two members (`container-type: container`, the sandbox's id, and the sandbox's "
      "network, IPC and UTS namespaces as `/proc/<sandbox pid>/ns/...` paths, as containerd's CRI plugin "
      "sends them), each created and started. Every container is a busybox bundle from the runtime's own "
      "`spec` running `sh -c 'cat /proc/sys/kernel/random/boot_id; echo up; exec sleep 1000000'`. runvm: "
      f"{data['memory_note']}; runc ({data['runc_version']}) runs the same bundles as plain containers "
      "(it knows no sandboxes) and is the reference.")
    w("")
    w("## Per container")
    w("")
    w("min / median / max seconds. **create**: `create --bundle B --pid-file P ID` with stdio in files "
      "(as conmon runs it), until it returns; **start**: `start ID` until it returns; **start → output**: "
      "from `start` returning until the container's first line is in its stdout file (polled every 5 ms).")
    w("")
    w("| container | step | runvm (s) | runc (s) | runvm / runc (medians) |")
    w("|---|---|---|---|---|")
    for role in ROLES:
        for key, label in (("create_s", "create"), ("start_s", "start"), ("up_s", "start → output")):
            a, b = steps("runvm", role, key), steps("runc", role, key)
            # runc's output often comes before the first 5 ms poll.
            ratio = f"{med(a) / med(b):.0f}×" if med(b) >= POLL_S else "— (runc within the 5 ms poll)"
            w(f"| {role} | {label} | {stat(a, 3)} | {stat(b, 3)} | {ratio} |")
        a, b = total("runvm", role), total("runc", role)
        w(f"| {role} | **create + start** | **{stat(a, 3)}** | {stat(b, 3)} | {med(a) / med(b):.0f}× |")
    a, b = [r["delete_all_s"] for r in runs["runvm"]], [r["delete_all_s"] for r in runs["runc"]]
    w(f"| whole pod | `delete --force` of the three, members first | {stat(a, 3)} | {stat(b, 3)} | "
      f"{med(a) / med(b):.0f}× |")
    w("")
    sb, m1, m2 = (med(total("runvm", r)) for r in ROLES)
    w("## No VM boots for a member")
    w("")
    counts = sorted({tuple(c["vmms"] for c in r["containers"]) for r in runs["runvm"]})
    same = all(len({c["boot_id"] for c in r["containers"]}) == 1 for r in runs["runvm"])
    w(f"- runvm-vmm processes of the pod's root after the sandbox, member 1 and member 2 started, in every "
      f"pod: {', '.join(str(list(c)) for c in counts)}; after `delete`: "
      f"{sorted({r['vmms_after'] for r in runs['runvm']})}.")
    w(f"- The guest's `/proc/sys/kernel/random/boot_id` printed by the three containers of a pod: "
      f"{'equal in every pod (one kernel per pod)' if same else 'NOT equal'}; under runc all three print "
      "the host's.")
    w(f"- In medians, runvm's sandbox create + start takes {sb:.2f} s (it boots the pod's VM); member 1 "
      f"{m1:.2f} s ({m1 / sb:.0%} of the sandbox's), member 2 {m2:.2f} s ({m2 / sb:.0%}; "
      f"{m2 / m1:.2f}× member 1). runc: sandbox {med(total('runc', 'sandbox')):.3f} s, members "
      f"{med(total('runc', 'member 1')):.3f} s and {med(total('runc', 'member 2')):.3f} s.")
    w("")
    w("## Machine")
    w("")
    out.extend(machine_lines(facts))
    out.extend(run_lines(data))
    w(f"- busybox (bundles): {facts.get('busybox', 'unknown')}")
    w("")
    w("## Per pod")
    w("")
    w("| runtime | round | sandbox create / start / output (s) | member 1 | member 2 | VMMs after each | delete (s) |")
    w("|---|---|---|---|---|---|---|")
    for name in ("runvm", "runc"):
        for i, r in enumerate(runs[name], 1):
            cells = [" / ".join(f"{c[k]:.3f}" for k in ("create_s", "start_s", "up_s")) for c in r["containers"]]
            vm = ", ".join(str(c["vmms"]) for c in r["containers"])
            w(f"| {name} | {i} | {' | '.join(cells)} | {vm} | {r['delete_all_s']:.3f} |")
    w("")
    w("How to read it: a runvm sandbox's create boots the pod's VM (the guest kernel is emulated on this "
      "host, see the boot report), so it is compared with its members, which only ask the running agent for a "
      "container; runc's figures are what the same calls cost without a VM. The host's speed moves from day "
      "to day: compare ratios within one run.")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    add_common_args(ap)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    facts = machine_facts(args.repo, busybox=args.busybox)
    work = tempfile.mkdtemp(prefix="runvm-podstart.")
    runvm, runc = runtimes(args, work)
    data = dict(run_facts(args), runs={"runvm": [], "runc": []},
                memory_note="the pod VM's default size (no sizing annotations)")
    waited = []
    try:
        bundles = {rt.name: make_bundles(rt, args.busybox) for rt in (runvm, runc)}
        for r in range(args.runs):
            for rt in ((runvm, runc) if r % 2 == 0 else (runc, runvm)):
                # Only runvm boots VMs: runc's pods need no turn.
                with vm_lock(args.vm_lock if rt.is_runvm else "") as w:
                    waited.append(w)
                    data["runs"][rt.name].append(pod_once(rt, args, bundles[rt.name], r + 1))
    finally:
        for rt in (runvm, runc):
            try:
                rt.remove_all()
            except BenchError as e:
                print(f"podstart: {e}", file=sys.stderr)
        subprocess.run(["rm", "-rf", work])
    data["loadavg_after"] = loadavg()
    data["lock_note"] = (f"each runvm pod ran holding the host's VM lock `{args.vm_lock}` (other helpers' "
                         f"VM tests wait for it; waited {sum(waited):.0f} s in all)") if args.vm_lock else ""
    write_report(args, data, report(args, data, facts), MARKER)


if __name__ == "__main__":
    run_main(main, "podstart")
