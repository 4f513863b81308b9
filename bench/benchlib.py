"""What every benchmark report shares: the machine's facts, min / median /
max cells, and the sections of bench/RESULTS.md. Imported by measure.py
(boot), exec_report.py (agent channel) and containers_report.py
(containers and virtio-fs) and the others; Python 3 stdlib only.

bench/RESULTS.md holds the boot report first, then one section per other
benchmark, each starting with its marker line (below) and running to the
next marker or the end of the file. A benchmark rewrites only its own
part; the others stay as they are, in the order of SECTIONS.
"""

import os
import platform
import statistics
import subprocess
from datetime import datetime, timezone

# Marker lines of the sections after the boot report, in file order. The
# first one's wording predates the others; it stays so that existing
# RESULTS.md files keep their section.
AGENT_CHANNEL = "<!-- agent-channel section: written by bench/exec.sh, kept by bench/boot.sh -->"
CONTAINERS = "<!-- containers section: written by bench/containers.sh, kept by the other benchmarks -->"
COLDSTART = "<!-- coldstart section: written by bench/coldstart.sh, kept by the other benchmarks -->"
POD_START = "<!-- pod-start section: written by bench/podstart.sh, kept by the other benchmarks -->"
POD_NET = "<!-- pod-network section: written by bench/podnet.sh, kept by the other benchmarks -->"
TEMPLATES = "<!-- templates section: written by bench/templates.sh, kept by the other benchmarks -->"
SECTIONS = [AGENT_CHANNEL, CONTAINERS, COLDSTART, POD_START, POD_NET, TEMPLATES]


def sh(cmd):
    """A command's stdout, stripped; None if it cannot run or fails."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_commit(repo):
    """The short commit, naming the top-level entries with uncommitted changes."""
    commit = sh(["git", "-C", repo, "rev-parse", "--short", "HEAD"]) or "none (no commits yet)"
    try:
        # Not stripped: each line starts with its two status columns.
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain"], capture_output=True,
                               text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        dirty = ""
    if dirty.strip():
        # "XY path" or "XY from -> to"; only the top-level entry is named.
        tops = sorted({line[3:].split(" -> ")[-1].split("/")[0] for line in dirty.splitlines() if line})
        commit += " + uncommitted changes in " + ", ".join(tops)
    return commit


def read_first(path, default="unknown"):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def loadavg():
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    return " ".join(read_first("/proc/loadavg", "? ? ?").split()[:3])


def first_line(text):
    return text.splitlines()[0] if text else "unknown"


def machine_facts(repo, qemu=None, busybox=None, virtiofsd=None):
    """Facts about the host a report quotes. The load average is read now:
    call this before the measurement (or pass the load the script noted)."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    pvm = "not loaded"
    if os.path.isdir("/sys/module/kvm_pvm"):
        params = []
        for p in ("pvm_native", "pvm_emul_batch"):
            value = read_first(f"/sys/module/kvm_pvm/parameters/{p}", None)
            if value is not None:
                params.append(f"{p}={value}")
        pvm = "loaded (" + ", ".join(params) + ")"
    facts = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "commit": git_commit(repo),
        "kernel": platform.release(),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "kvm_pvm": pvm,
        "thp": read_first("/sys/kernel/mm/transparent_hugepage/enabled"),
        "loadavg": loadavg(),
    }
    if qemu:
        facts["qemu"] = first_line(sh([qemu, "--version"]))
    if busybox:
        # busybox without an applet prints its banner first.
        facts["busybox"] = first_line(sh([busybox]))
    if virtiofsd:
        facts["virtiofsd"] = first_line(sh([virtiofsd, "--version"]))
    return facts


def machine_lines(facts):
    """The Markdown bullets every report's "Machine" section starts with."""
    return [
        f"- date: {facts['date']}",
        f"- git commit: {facts['commit']}",
        f"- host kernel: {facts['kernel']}",
        f"- CPU: {facts['cpu']}, nproc {facts['nproc']}",
        f"- kvm_pvm: {facts['kvm_pvm']}",
        f"- transparent hugepages: {facts['thp']}",
    ]


def stat(values, digits):
    """`min / median / max` of `values`, each with `digits` decimals."""
    return " / ".join(f"{x:.{digits}f}" for x in (min(values), statistics.median(values), max(values)))


def _split(text):
    """(boot report, {marker: section text}) of a RESULTS.md text."""
    found = sorted((text.find(m), m) for m in SECTIONS if text.find(m) >= 0)
    head = text[:found[0][0]] if found else text
    sections = {}
    for i, (at, marker) in enumerate(found):
        end = found[i + 1][0] if i + 1 < len(found) else len(text)
        sections[marker] = text[at:end].rstrip("\n") + "\n"
    return head, sections


def _join(head, sections):
    parts = [head.rstrip("\n") + "\n"] if head.strip() else []
    parts += [sections[m] for m in SECTIONS if m in sections]
    return "\n".join(parts)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_boot_report(path, report):
    """Replaces the boot report at the top of `path`; the sections stay."""
    _, sections = _split(_read(path))
    _write(path, _join(report, sections))


def write_section(path, marker, section):
    """Replaces (or adds) the section that starts with `marker`."""
    if marker not in SECTIONS:
        raise ValueError(f"unknown RESULTS.md section marker {marker!r}: add it to SECTIONS")
    head, sections = _split(_read(path))
    sections[marker] = marker + "\n\n" + section.rstrip("\n") + "\n"
    _write(path, _join(head, sections))
