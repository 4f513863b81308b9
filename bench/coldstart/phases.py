#!/usr/bin/env python3
"""Where one `runvm run` spends its time and its guest's emulated
instructions, phase by phase: a diagnostic beside bench/coldstart.sh.

    bench/coldstart/phases.py RUNVM BUNDLE STATE_DIR [NAME]

(RUNVM_VMM, RUNVM_KERNEL, RUNVM_IMAGE as for runvm; root; needs strace and
target/release/runvm-guest-counters.) `runvm run` runs under a light strace
(connect, accept4, kill, execve only, through seccomp-bpf) while the VM's
KVM counters are polled every 50 ms; the phases are cut at the host-side
events that start them:
  spawn          runvm's own processes, virtiofsd and the share, until the
                 VMM is executed
  boot           VMM start to the agent's readiness connection
  share+create   the control connection, MountShare, the rootfs bind and
                 CreateContainer, until `runvm run` asks to start
  start..exit    StartContainer until the host stops the VM (the container
                 ran and exited, its output drained)
  stop           SIGTERM to the VMM until runvm has exited
Counters are the last sample before each cut (up to 50 ms late).
Python 3 stdlib only.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COUNTERS = os.path.join(HERE, "..", "..", "target", "release", "runvm-guest-counters")


def counters(pid):
    out = subprocess.run([COUNTERS, str(pid)], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def poll(samples, stop):
    """Samples (time, insn_emulation, irq_injections) of whichever
    runvm-vmm process holds KVM statistics descriptors."""
    vmm = None
    while not stop.is_set():
        if vmm is None:
            for entry in os.listdir("/proc"):
                try:
                    if entry.isdigit() and open(f"/proc/{entry}/comm").read().strip() == "runvm-vmm" \
                            and counters(entry) is not None:
                        vmm = entry
                except OSError:
                    pass
        else:
            c = counters(vmm)
            if c is None:
                vmm = None
            else:
                samples.append((time.time(), c["insn_emulation"], c["irq_injections"]))
        time.sleep(0.05)


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    runvm, bundle, state = sys.argv[1:4]
    name = sys.argv[4] if len(sys.argv) == 5 else f"phases-{os.getpid()}"
    trace = tempfile.NamedTemporaryFile(prefix="runvm-phases.", suffix=".trace", delete=False).name
    cmd = ["strace", "-f", "--seccomp-bpf", "-ttt", "-qq", "-o", trace,
           "-e", "trace=connect,accept4,kill,execve",
           runvm, "--root", state, "run", "--bundle", bundle, name]
    samples, stop = [], threading.Event()
    poller = threading.Thread(target=poll, args=(samples, stop))
    poller.start()
    start = time.time()
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    end = time.time()
    stop.set()
    poller.join()
    if out.returncode != 0:
        sys.exit(f"runvm run failed ({out.returncode}): {out.stderr.decode(errors='replace')[-2000:]}")
    cuts = {}
    top = None
    for line in open(trace):
        fields = line.split(None, 2)
        if len(fields) < 3 or "resumed" in fields[2] or "= -1" in fields[2]:
            continue
        pid, at, call = int(fields[0]), float(fields[1]), fields[2]
        top = top or pid
        if call.startswith("execve(") and "runvm-vmm" in call.split(",")[0]:
            cuts.setdefault("vmm", at)
        elif call.startswith("connect(") and "vsock.sock_" in call:
            # The VMM passing on the agent's readiness connection.
            cuts.setdefault("ready", at)
        elif call.startswith("connect(") and pid == top and "vsock.sock" in call:
            cuts.setdefault("start", at)
        elif call.startswith("kill(") and "SIGTERM" in call:
            cuts.setdefault("stop", at)
    os.unlink(trace)
    missing = [k for k in ("vmm", "ready", "start", "stop") if k not in cuts]
    if missing:
        sys.exit(f"cannot find {missing} in the trace")

    def at(t):
        before = [s for s in samples if s[0] <= t]
        return before[-1] if before else (t, 0, 0)

    marks = [("spawn", start, cuts["vmm"]), ("boot", cuts["vmm"], cuts["ready"]),
             ("share+create", cuts["ready"], cuts["start"]),
             ("start..exit", cuts["start"], cuts["stop"]), ("stop", cuts["stop"], end)]
    last = samples[-1] if samples else (end, 0, 0)
    print("| phase | seconds | emulated instructions (M) | irq injections |")
    print("|---|---|---|---|")
    for label, a, b in marks:
        ca, cb = at(a), (last if label == "stop" else at(b))
        print(f"| {label} | {b - a:.3f} | {(cb[1] - ca[1]) / 1e6:.2f} | {cb[2] - ca[2]} |")
    print(f"| total | {end - start:.3f} | {last[1] / 1e6:.2f} | {last[2]} |")


if __name__ == "__main__":
    main()
