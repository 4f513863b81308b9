//! End-to-end checks of the `runvm-rootfs-builder` binary, read back with
//! the system's `cpio` (GNU cpio) where it is installed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use runvm_rootfs_builder::elf::synthetic_elf;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("runvm-rootfs-builder-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn builder(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runvm-rootfs-builder"))
        .args(args)
        .output()
        .expect("run runvm-rootfs-builder")
}

/// A fake static agent: a valid ELF header with a PT_LOAD and some payload.
fn fake_agent(dir: &Path) -> PathBuf {
    let mut bin = synthetic_elf(2, &[1]);
    bin.extend((0..4099u32).map(|i| (i % 251) as u8));
    let path = dir.join("agent");
    fs::write(&path, bin).expect("write agent");
    path
}

fn build(dir: &Path, agent: &Path, out: &str, compress: &str) -> PathBuf {
    let output = dir.join(out);
    let o = builder(&[
        Path::new("--agent"),
        agent,
        Path::new("--output"),
        &output,
        Path::new("--compress"),
        Path::new(compress),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    output
}

/// GNU cpio reads the archives back; `make setup` installs it.
fn require_cpio() {
    assert!(
        Command::new("cpio").arg("--version").output().is_ok(),
        "GNU cpio is needed to read the archive back: run `make setup` (apt-get install cpio)"
    );
}

fn cpio_listing(image: &Path) -> String {
    let o = Command::new("cpio")
        .args(["-t", "-v", "--quiet", "-F"])
        .arg(image)
        .output()
        .expect("run cpio");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn cpio_lists_the_expected_members() {
    require_cpio();
    let tmp = TempDir::new("list");
    let agent = fake_agent(&tmp.0);
    let image = build(&tmp.0, &agent, "initramfs.cpio", "none");

    let listing = cpio_listing(&image);
    let lines: Vec<&str> = listing.lines().collect();
    let names: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(
        names,
        ["dev", "dev/console", "init", "proc", "run", "sys", "tmp"],
        "{listing}"
    );
    let perms: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        perms,
        [
            "drwxr-xr-x",
            "crw-------",
            "-rwxr-xr-x",
            "drwxr-xr-x",
            "drwxr-xr-x",
            "drwxr-xr-x",
            "drwxrwxrwt"
        ],
        "{listing}"
    );
    assert!(lines[1].contains("5,"), "console is 5,1: {}", lines[1]);

    // /init holds the agent byte for byte.
    let o = Command::new("cpio")
        .args(["-i", "--to-stdout", "--quiet", "-F"])
        .arg(&image)
        .arg("init")
        .output()
        .expect("run cpio");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, fs::read(&agent).expect("read agent"));
}

/// Debian's busybox-static, which `make setup` installs.
const BUSYBOX: &str = "/bin/busybox";

#[test]
fn busybox_and_its_applets_go_under_bin() {
    require_cpio();
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: run `make setup` (apt-get install busybox-static)"
    );
    let tmp = TempDir::new("busybox");
    let agent = fake_agent(&tmp.0);
    let image = tmp.0.join("tools.cpio");
    let o = builder(&[
        Path::new("--agent"),
        &agent,
        Path::new("--busybox"),
        Path::new(BUSYBOX),
        Path::new("--output"),
        &image,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = cpio_listing(&image);
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} not in the archive:\n{listing}"))
            .to_owned()
    };
    assert!(line("bin/busybox").starts_with("-rwxr-xr-x"));
    assert!(
        line("bin/sh").starts_with("lrwxrwxrwx"),
        "{}",
        line("bin/sh")
    );
    assert!(line("bin/sh").ends_with("bin/sh -> busybox"));
    assert!(line("bin/cat").ends_with("bin/cat -> busybox"));
    assert!(line("init").starts_with("-rwxr-xr-x"));
}

#[test]
fn missing_busybox_is_named_in_the_error() {
    let tmp = TempDir::new("nobusybox");
    let agent = fake_agent(&tmp.0);
    let busybox = tmp.0.join("no-busybox");
    let out = tmp.0.join("out.cpio");
    let o = builder(&[
        Path::new("--agent"),
        &agent,
        Path::new("--busybox"),
        &busybox,
        Path::new("--output"),
        &out,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&busybox.display().to_string()), "{err}");
    assert!(!out.exists());
}

#[test]
fn two_builds_are_identical_and_gzip_matches() {
    let tmp = TempDir::new("repro");
    let agent = fake_agent(&tmp.0);
    let a = fs::read(build(&tmp.0, &agent, "a.cpio", "none")).expect("read a");
    let b = fs::read(build(&tmp.0, &agent, "b.cpio", "none")).expect("read b");
    assert_eq!(a, b);
    let ga = fs::read(build(&tmp.0, &agent, "a.cpio.gz", "gzip")).expect("read ga");
    let gb = fs::read(build(&tmp.0, &agent, "b.cpio.gz", "gzip")).expect("read gb");
    assert_eq!(ga, gb);
    assert_eq!(&ga[..2], &[0x1f, 0x8b]);
    // No temporary files are left behind.
    let mut left: Vec<_> = fs::read_dir(&tmp.0)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["a.cpio", "a.cpio.gz", "agent", "b.cpio", "b.cpio.gz"]
    );
}

#[test]
fn missing_agent_is_named_in_the_error() {
    let tmp = TempDir::new("missing");
    let agent = tmp.0.join("no-such-agent");
    let out = tmp.0.join("out.cpio");
    let o = builder(&[Path::new("--agent"), &agent, Path::new("--output"), &out]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&agent.display().to_string()), "{err}");
    assert!(!out.exists());
}

#[test]
fn dynamic_agent_is_rejected() {
    let tmp = TempDir::new("dynamic");
    let agent = tmp.0.join("dyn");
    fs::write(&agent, synthetic_elf(3, &[6, 3, 1])).expect("write");
    let out = tmp.0.join("out.cpio");
    let o = builder(&[Path::new("--agent"), &agent, Path::new("--output"), &out]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("dynamically linked") && err.contains("dyn"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn usage_errors_exit_2() {
    let o = builder(&[Path::new("--agent")]);
    assert_eq!(o.status.code(), Some(2));
}
