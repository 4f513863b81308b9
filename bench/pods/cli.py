"""What both pod benchmarks (bench/pods/start.py, bench/pods/net.py) share:
a runtime driven through its runc command line as conmon drives it (a
private `--root`, stdio of `create` in files, a pid file), busybox bundles
from the runtime's own `spec`, the runvm-vmm processes of a root, and the
optional host-wide VM lock. Python 3 stdlib only."""

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

BUSYBOX_DIRS = ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "run"]


class BenchError(Exception):
    pass


def busybox_rootfs(busybox, rootfs):
    """A busybox root filesystem: the binary, a link per applet, passwd, group."""
    for sub in BUSYBOX_DIRS:
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy(busybox, os.path.join(rootfs, "bin/busybox"))
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(rootfs, "etc/group"), "w") as f:
        f.write("root:x:0:\n")
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)


class Runtime:
    """One runtime (runvm or runc) with a private --root under `work`."""

    def __init__(self, name, path, work, env=None, step_timeout=600):
        self.name = name
        self.path = path
        self.is_runvm = name == "runvm"
        self.root = os.path.join(work, f"{name}-root")
        self.work = work
        self.env = dict(os.environ, **(env or {}))
        self.step_timeout = step_timeout

    def command(self, *args):
        return [self.path, "--root", self.root, *args]

    def run(self, *args, check=True):
        """Runs a command of the runtime; (seconds, stdout). Fails the
        benchmark, quoting stderr, if it fails and `check`."""
        start = time.perf_counter()
        try:
            out = subprocess.run(self.command(*args), env=self.env, capture_output=True, text=True,
                                 timeout=self.step_timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"{self.name} {' '.join(args)}: no answer within {self.step_timeout} s") from e
        took = time.perf_counter() - start
        if check and out.returncode != 0:
            raise BenchError(f"{self.name} {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
        return took, out.stdout

    def bundle(self, busybox, name, args, edit=None):
        """A busybox bundle `work/<runtime>-name` whose config.json is the
        runtime's `spec`, not on a terminal, running `args`, with a tmpfs on
        /tmp; `edit(config)` changes it further."""
        directory = os.path.join(self.work, f"{self.name}-{name}")
        busybox_rootfs(busybox, os.path.join(directory, "rootfs"))
        out = subprocess.run([self.path, "spec"], cwd=directory, env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise BenchError(f"{self.name} spec failed: {out.stderr.strip()}")
        path = os.path.join(directory, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["process"]["terminal"] = False
        config["process"]["args"] = args
        config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                 "options": ["nosuid", "nodev", "mode=1777"]})
        if edit:
            edit(config)
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
        return directory

    def create(self, bundle, cid):
        """`create` as conmon runs it, stdio in files; (seconds, out path, pid file)."""
        out = os.path.join(self.work, f"{cid}.out")
        err = os.path.join(self.work, f"{cid}.err")
        pid_file = os.path.join(self.work, f"{cid}.pid")
        start = time.perf_counter()
        with open(out, "wb") as o, open(err, "wb") as e:
            try:
                proc = subprocess.run(self.command("create", "--bundle", bundle, "--pid-file", pid_file, cid),
                                      env=self.env, stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                      timeout=self.step_timeout)
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"{self.name} create {cid}: no answer within {self.step_timeout} s") from exc
        took = time.perf_counter() - start
        if proc.returncode != 0:
            raise BenchError(f"{self.name} create {cid} failed ({proc.returncode}): {read(err)[-2000:]}")
        return took, out, pid_file

    def wait_output(self, cid, path, text, since):
        """Seconds from `since` until the file `path` contains `text`."""
        deadline = since + self.step_timeout
        while True:
            if text in read(path):
                return time.perf_counter() - since
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name} {cid}: {text!r} not printed within {self.step_timeout} s; "
                                 f"stdout {read(path)[-500:]!r}, stderr {read(path[:-4] + '.err')[-1500:]!r}")
            time.sleep(0.005)

    def remove_all(self):
        """Deletes (forcibly) every container of this root, members first."""
        _, listed = self.run("list", "-q", check=False)
        ids = listed.split()
        # Members were created after their sandbox; delete in reverse.
        for cid in reversed(ids):
            self.run("delete", "--force", cid, check=False)
        _, left = self.run("list", "-q", check=False)
        if left.strip():
            raise BenchError(f"{self.name}: containers left after delete --force: {left.split()}")

    def vmms(self):
        """The runvm-vmm processes of this root's VMs (a jailed VMM's child
        is not counted apart from it)."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if argv and os.path.basename(argv[0].decode(errors="replace")) == "runvm-vmm" and \
                    b"--kernel" in argv and any(self.root.encode() in a for a in argv):
                found[int(entry)] = ppid
        return sorted(pid for pid, ppid in found.items() if ppid not in found)


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


@contextlib.contextmanager
def vm_lock(path):
    """Holds the host-wide VM lock file `path` (flock) if one is given:
    helpers that boot VMs on this host take turns with it."""
    if not path:
        yield 0.0
        return
    start = time.perf_counter()
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - start
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def loadavg():
    return " ".join(read("/proc/loadavg").split()[:3]) or "? ? ?"


def write_report(args, data, text, marker):
    """Keeps the raw figures if asked, prints the report and puts it into
    RESULTS.md as the section starting with `marker`."""
    if args.raw:
        with open(args.raw, "w") as f:
            json.dump(data, f, indent=1)
    print(text)
    # Imported here: benchlib sits in bench/, which the drivers put on sys.path.
    from benchlib import write_section
    write_section(args.results, marker, text)


def run_main(main, name):
    """Runs a driver's `main`, a BenchError ending it with a message."""
    try:
        main()
    except BenchError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(1)


def add_common_args(ap):
    """The options both drivers take (bench/pods/common.sh passes them)."""
    for name in ("--runvm", "--runc", "--vmm", "--kernel", "--image", "--repo", "--results"):
        ap.add_argument(name, required=True)
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--step-timeout", type=int, default=600)
    ap.add_argument("--vm-lock", default="")
    ap.add_argument("--quiet-note", default="not checked")
    ap.add_argument("--raw", default="")


def runtimes(args, work):
    """(runvm, runc) as Runtimes with their roots under `work`."""
    env = {"RUNVM_VMM": args.vmm, "RUNVM_KERNEL": args.kernel, "RUNVM_IMAGE": args.image}
    return (Runtime("runvm", args.runvm, work, env, args.step_timeout),
            Runtime("runc", args.runc, work, None, args.step_timeout))


def run_facts(args):
    """What a report says about the run besides benchlib's machine facts;
    the load average now, so call it before measuring."""
    version = subprocess.run([args.runc, "--version"], capture_output=True, text=True).stdout
    return {"loadavg_before": loadavg(), "quiet_note": args.quiet_note, "runvm_path": args.runvm,
            "runc_path": args.runc, "vmm": args.vmm, "kernel": args.kernel, "image": args.image,
            "runc_version": version.split("\n")[0]}


def run_lines(data):
    """The Markdown bullets about the run, after benchlib's machine lines."""
    lines = [f"- before the run: {data['quiet_note']}; load average {data['loadavg_before']}",
             f"- load average after the run: {data['loadavg_after']}"]
    if data["lock_note"]:
        lines.append(f"- {data['lock_note']}")
    lines += [f"- runvm: `{data['runvm_path']}`, VMM `{data['vmm']}`, kernel `{data['kernel']}`, image "
              f"`{data['image']}`",
              f"- runc: `{data['runc_path']}`, {data['runc_version']}"]
    return lines
