#!/usr/bin/env python3
"""Pod network: TCP throughput host → pod and pod → host, one-byte TCP round
trips and HTTP GETs, to a container under runc and under runvm set up the
same way, in one run. Per runtime: two network namespaces made here, the
pod's and the "host's" (never the machine's own interfaces), a veth pair
between them as CNI's bridge plugin leaves a pod (`eth0` with the pod's
address and a default route in the pod's namespace), and a busybox bundle
whose config.json names the pod's namespace by path. runc puts the
container on that `eth0`; runvm attaches a tap to it with TC mirred and the
guest gets an `eth0` of its own. The container starts busybox servers (see
netclient.py) and bench/pods/netclient.py measures from the other end of the
veth. Writes the "Pod network" section of bench/RESULTS.md. Called by
bench/podnet.sh."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchlib import POD_NET as MARKER  # noqa: E402
from benchlib import machine_facts, machine_lines, stat  # noqa: E402
from cli import (BenchError, add_common_args, loadavg, read, run_facts, run_lines, run_main,  # noqa: E402
                 runtimes, vm_lock, write_report)

MIB = 1 << 20
POD_IP = "10.99.0.2"
PEER_IP = "10.99.0.1"
SERVERS = ("mkdir -p /tmp/www && echo hello from the pod > /tmp/www/index.html; "
           "nc -ll -p 5001 -e wc -c & "
           "nc -ll -p 5002 -e sh -c 'read n; exec head -c $n /dev/zero' & "
           "nc -ll -p 5003 -e cat & "
           "echo READY; exec httpd -f -p 8080 -h /tmp/www")


def ip(*args):
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


class PodNetwork:
    """A pod's network namespace and its peer's, joined by a veth as CNI
    leaves them; deleted (with everything in them) by `remove`."""

    def __init__(self, tag, mtu):
        self.pod = f"rvbench-{tag}-pod-{os.getpid()}"
        self.peer = f"rvbench-{tag}-peer-{os.getpid()}"
        ip("netns", "add", self.pod)
        try:
            ip("netns", "add", self.peer)
            for ns in (self.pod, self.peer):
                ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", self.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "vpeer", "netns", self.peer)
            ip("-n", self.pod, "link", "set", "eth0", "mtu", str(mtu), "up")
            ip("-n", self.pod, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
            ip("-n", self.pod, "route", "add", "default", "via", PEER_IP)
            ip("-n", self.peer, "link", "set", "vpeer", "mtu", str(mtu), "up")
            ip("-n", self.peer, "addr", "add", f"{PEER_IP}/24", "dev", "vpeer")
        except BenchError:
            self.remove()
            raise

    @property
    def path(self):
        return f"/run/netns/{self.pod}"

    def leftovers(self):
        """runvm's taps in the pod's namespace."""
        links = ip("-n", self.pod, "-o", "link")
        return [line.split(":")[1].strip() for line in links.splitlines() if "rvtap" in line]

    def remove(self):
        for ns in (self.pod, self.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def measure(rt, args, busybox, tag, client_args):
    """One container of `rt` on a fresh pod network; the client's figures."""
    net = PodNetwork(tag, args.mtu)
    cid = f"podnet-{tag}-{os.getpid()}"
    try:
        def edit(config):
            namespaces = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
            namespaces.append({"type": "network", "path": net.path})
            config["linux"]["namespaces"] = namespaces

        bundle = rt.bundle(busybox, tag, ["sh", "-c", SERVERS], edit)
        create_s, out, _ = rt.create(bundle, cid)
        taps = net.leftovers() if rt.is_runvm else []
        if rt.is_runvm and not taps:
            raise BenchError("runvm created the container but no tap (rvtap*) is in the pod's namespace")
        rt.run("start", cid)
        rt.wait_output(cid, out, "READY", time.perf_counter())
        print(f"podnet: {rt.name} container up (create {create_s:.1f} s), measuring", file=sys.stderr)
        client = subprocess.run(["ip", "netns", "exec", net.peer, sys.executable,
                                 os.path.join(os.path.dirname(os.path.abspath(__file__)), "netclient.py"),
                                 "--host", POD_IP, "--timeout", str(args.step_timeout), *client_args],
                                stdout=subprocess.PIPE, stderr=None, text=True)
        if client.returncode != 0:
            raise BenchError(f"{rt.name}: the client failed; container stderr: "
                             f"{read(out[:-4] + '.err')[-1500:]!r}")
        result = json.loads(client.stdout)
        result["taps_while_running"] = taps
        _, shown = rt.run("exec", cid, "ip", "-o", "link", "show", "eth0")
        # `ip -o` ends each continued line with a backslash.
        result["guest_link"] = " ".join(shown.replace("\\", " ").split())
        rt.remove_all()
        left = net.leftovers()
        if left:
            raise BenchError(f"{rt.name}: taps left in the pod's namespace after delete: {left}")
        return result
    finally:
        try:
            rt.remove_all()
        finally:
            net.remove()


def med(values):
    return statistics.median(values)


def rate(nbytes, seconds):
    return nbytes / MIB / seconds if seconds > 0 else float("inf")


def report(args, data, facts):
    out = []
    w = out.append
    vm, rc = data["runvm"], data["runc"]
    n = vm["bytes"]
    mib = n / MIB
    w("# Pod network: TCP throughput and latency, runvm next to runc on the same veth")
    w("")
    w(f"Per runtime, a pod network made the way CNI's bridge plugin leaves one, in namespaces this benchmark "
      f"creates: the pod's namespace holds `eth0` (one end of a veth, {POD_IP}/24, MTU {args.mtu}, default "
      f"route via {PEER_IP}), the other end ({PEER_IP}) is in a second namespace, where the measuring client "
      "runs (`bench/pods/netclient.py`, Python sockets, TCP_NODELAY). The container is a busybox bundle from "
      "the runtime's `spec` whose config.json names the pod's namespace by path; it runs busybox servers: "
      "`nc -ll -e wc -c` (host → pod: the client sends N bytes, closes its side, and reads the count back), "
      "`nc -ll -e sh -c 'read n; exec head -c $n /dev/zero'` (pod → host), `nc -ll -e cat` (one-byte round "
      "trips on one connection) and `httpd` (a GET of a 19-byte page per new connection). runc runs the "
      "servers on the veth itself; runvm attaches a tap to the pod's `eth0` with TC mirred both ways and the "
      f"guest's virtio-net `eth0` carries the pod's address ({data['runvm_taps']}). runc ran first, then "
      "runvm, each in a namespace pair of its own.")
    w("")
    w(f"## Throughput, {mib:g} MiB per transfer")
    w("")
    w(f"min / median / max over {len(vm['to_pod'])} rounds (MiB/s per run). Every transfer is a new "
      "connection, and the pod's `nc` starts a process for it (`wc`, or `sh` then `head`): the empty "
      "transfers show what that costs, and the summary takes it off.")
    w("")
    w("| direction | clock | runvm (s) | runvm MiB/s | runc (s) | runc MiB/s |")
    w("|---|---|---|---|---|---|")

    def row(label, clock, a, b, nbytes):
        ra, rb = [rate(nbytes, x) for x in a], [rate(nbytes, x) for x in b]
        return (f"| {label} | {clock} | {stat(a, 3)} | **{stat(ra, 2)}** | {stat(b, 4)} | {stat(rb, 0)} |")

    w(row("host → pod", "connect to the pod's count", vm["to_pod"], rc["to_pod"], n))
    w(f"| host → pod, 0 bytes | the same (connection + `wc`) | {stat(vm['to_pod_empty'], 3)} | — | "
      f"{stat(rc['to_pod_empty'], 4)} | — |")
    w(row("pod → host", "connect to end of file", [x["total_s"] for x in vm["from_pod"]],
          [x["total_s"] for x in rc["from_pod"]], n))
    w(row("pod → host", "first byte to end of file", [x["streaming_s"] for x in vm["from_pod"]],
          [x["streaming_s"] for x in rc["from_pod"]], n))
    w(f"| pod → host, 0 bytes | connect to end of file (connection + `sh` + `head`) | "
      f"{stat(vm['from_pod_empty'], 3)} | — | {stat(rc['from_pod_empty'], 4)} | — |")
    if rc.get("to_pod_large"):
        big = rc["large_bytes"]
        w(f"| host → pod, runc only, {big / MIB:g} MiB | connect to the pod's count | — | — | "
          f"{stat(rc['to_pod_large'], 3)} | {stat([rate(big, x) for x in rc['to_pod_large']], 0)} |")
        w(f"| pod → host, runc only, {big / MIB:g} MiB | first byte to end of file | — | — | "
          f"{stat(rc['from_pod_large'], 3)} | {stat([rate(big, x) for x in rc['from_pod_large']], 0)} |")
    w("")
    to_vm = rate(n, med(vm["to_pod"]) - med(vm["to_pod_empty"]))
    from_vm = rate(n, med([x["streaming_s"] for x in vm["from_pod"]]))
    if rc.get("to_pod_large"):
        to_rc = rate(rc["large_bytes"], med(rc["to_pod_large"]))
        from_rc = rate(rc["large_bytes"], med(rc["from_pod_large"]))
        basis = f"runc's {rc['large_bytes'] / MIB:g} MiB transfers"
    else:
        to_rc = rate(n, med(rc["to_pod"]))
        from_rc = rate(n, med([x["streaming_s"] for x in rc["from_pod"]]))
        basis = f"runc's {mib:g} MiB transfers"
    w(f"In medians: host → pod {to_vm:.2f} MiB/s under runvm (the empty transfer's time taken off) against "
      f"{to_rc:.0f} MiB/s under runc ({basis}): 1/{to_rc / to_vm:,.0f}; pod → host {from_vm:.2f} MiB/s "
      f"(first byte to end of file) against {from_rc:.0f} MiB/s: 1/{from_rc / from_vm:,.0f}.")
    w("")
    w("## Latency")
    w("")
    w("min / median / max, and the 90th percentile, in ms.")
    w("")
    w("| probe | runvm (ms) | runvm p90 | runc (ms) | runc p90 | runvm / runc (medians) |")
    w("|---|---|---|---|---|---|")
    for key, label in (("round_trip_ms", f"TCP round trip: 1 byte to the pod's `cat` and back, one connection "
                                          f"({len(vm['round_trip_ms'])} in a row)"),
                       ("get_ms", f"HTTP/1.0 GET from busybox `httpd`, a new connection each "
                                  f"({len(vm['get_ms'])} in a row)")):
        a, b = vm[key], rc[key]
        w(f"| {label} | {stat(a, 2)} | {p90(a):.2f} | {stat(b, 3)} | {p90(b):.3f} | {med(a) / med(b):,.0f}× |")
    w("")
    w("## Machine")
    w("")
    out.extend(machine_lines(facts))
    out.extend(run_lines(data))
    w(f"- the guest's `eth0` (runvm): `{vm['guest_link']}`; the container's (runc): `{rc['guest_link']}`")
    w(f"- busybox (bundles, the servers): {facts.get('busybox', 'unknown')}")
    w("")
    w("How to read it: on this host the guest kernel's every instruction is emulated (see the boot report), "
      "and each packet crosses the guest's TCP stack and virtio-net driver, the VMM's tap queue and the TC "
      "redirect, so runvm's figures measure mostly that emulation; runc's are the host's own stack over a "
      "veth. The host's speed moves from day to day: compare the ratios within one run.")
    return "\n".join(out) + "\n"


def p90(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    add_common_args(ap)
    ap.add_argument("--mib", type=float, default=2)
    ap.add_argument("--runc-large-mib", type=float, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-trips", type=int, default=100)
    ap.add_argument("--gets", type=int, default=20)
    ap.add_argument("--mtu", type=int, default=1500)
    args = ap.parse_args()

    facts = machine_facts(args.repo, busybox=args.busybox)
    work = tempfile.mkdtemp(prefix="runvm-podnet.")
    runvm, runc = runtimes(args, work)
    common = ["--mib", str(args.mib), "--rounds", str(args.rounds), "--round-trips", str(args.round_trips),
              "--gets", str(args.gets)]
    data = run_facts(args)
    try:
        data["runc"] = measure(runc, args, args.busybox, "runc",
                               common + ["--large-mib", str(args.runc_large_mib)])
        with vm_lock(args.vm_lock) as waited:
            data["runvm"] = measure(runvm, args, args.busybox, "runvm", common)
    finally:
        subprocess.run(["rm", "-rf", work])
    taps = data["runvm"]["taps_while_running"]
    data["runvm_taps"] = (f"runvm's tap in the pod's namespace while the container ran: {', '.join(taps)}; "
                          "none after `delete`")
    data["loadavg_after"] = loadavg()
    data["lock_note"] = (f"the runvm container ran holding the host's VM lock `{args.vm_lock}` (waited "
                         f"{waited:.0f} s for it)") if args.vm_lock else ""
    write_report(args, data, report(args, data, facts), MARKER)


if __name__ == "__main__":
    run_main(main, "podnet")
