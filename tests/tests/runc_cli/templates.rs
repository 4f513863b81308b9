//! VMs from a template (see runvm's `template` module), through the runc
//! command line with a template store of the test's own: the first
//! container's VM becomes the template and is restored from it, the next
//! one is restored too; each is its own machine (its own CID, random
//! output and current clock); `runvm template rm` removes templates
//! leaving nothing; a damaged template is refused, removed, and the
//! container still runs, from a cold boot. runvm only: skipped under
//! `RUNVM_TEST_RUNTIME`.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

/// What each container prints: 16 random bytes as hex, the time, then
/// its mounts (mount point, options, type, source, superblock options).
const SCRIPT: &str = "od -An -tx1 -N16 /dev/urandom | tr -d ' \\n'; echo; date +%s; \
    awk '{ for (i = 7; $i != \"-\"; i++) {}; print $5, $6, $(i+1), $(i+2), $(i+3) }' \
    /proc/self/mountinfo | sort";

struct Store {
    dir: PathBuf,
}

impl Store {
    fn command(&self, cli: &Cli, args: &[&str]) -> Command {
        let mut command = cli.command(args);
        command.env("RUNVM_TEMPLATE_DIR", &self.dir);
        command
    }

    /// The templates `runvm template list` names.
    fn listed(&self, cli: &Cli) -> Vec<String> {
        let output = run(&mut self.command(cli, &["template", "list"])).ok();
        output
            .stdout
            .lines()
            .filter_map(|line| line.split('\t').next())
            .map(String::from)
            .collect()
    }
}

/// The container's VM as it was started: the VMM's command line.
fn vmm_command_line(cli: &Cli) -> String {
    let root = cli.root.display().to_string();
    let vmms: Vec<String> = processes_referencing(std::slice::from_ref(&root))
        .into_iter()
        .map(|(_, line)| line)
        .filter(|line| line.contains("runvm-vmm") && line.contains("--vsock-socket"))
        .collect();
    assert!(!vmms.is_empty(), "no VMM under {root}");
    vmms[0].clone()
}

/// Every `vmm.log` under `dir`, concatenated.
fn vmm_logs(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            text.push_str(&vmm_logs(&path));
        } else if path.file_name().is_some_and(|n| n == "vmm.log") {
            text.push_str(&read_text(&path));
        }
    }
    text
}

fn cid_of(command_line: &str) -> String {
    command_line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("--vsock-cid="))
        .unwrap_or_else(|| panic!("no --vsock-cid in {command_line}"))
        .to_string()
}

/// Creates and starts container `id` of `bundle` with the test's store,
/// checks the VMM's command line with `check_vmm` while it runs, and
/// returns what the container printed (random hex, its time, its mounts).
fn run_one(
    cli: &Cli,
    store: &Store,
    bundle: &Path,
    id: &str,
    check_vmm: impl FnOnce(&str),
) -> (String, u64, Vec<String>) {
    let (out, err) = (
        cli.scratch.join(format!("{id}.out")),
        cli.scratch.join(format!("{id}.err")),
    );
    let bundle = bundle.display().to_string();
    run_to_files(
        &mut store.command(cli, &["create", "--bundle", &bundle, id]),
        &out,
        &err,
    )
    .ok();
    check_vmm(&vmm_command_line(cli));
    run(&mut store.command(cli, &["start", id])).ok();
    wait_for("the container exits", || {
        (cli.status(id) == "stopped")
            .then_some(())
            .ok_or_else(|| "still running".to_string())
    });
    cli.run(&["delete", id]).ok();
    let printed = read_text(&out);
    let mut lines = printed.lines();
    let random = lines.next().unwrap_or_default().to_string();
    let time = lines.next().and_then(|t| t.trim().parse().ok());
    assert!(
        random.len() == 32 && time.is_some(),
        "{id} printed {printed:?}; stderr {:?}",
        read_text(&err)
    );
    let mounts: Vec<String> = lines.map(String::from).collect();
    assert!(mounts.len() > 5, "{id} listed no mounts: {printed:?}");
    (random, time.unwrap_or_default(), mounts)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn runvm_vms_from_a_template() {
    let _one = one_at_a_time();
    let cli = Cli::new("cli", "template");
    assert!(
        cli.runtime.is_runvm,
        "this test is about runvm's VM templates; run it without RUNVM_TEST_RUNTIME"
    );
    let store = Store {
        dir: cli.scratch.join("templates"),
    };
    let bundle = cli.bundle("bundle", &["sh", "-c", SCRIPT], |_| {});

    // The first VM is booted, saved as the template, and restored.
    let first_id = unique("tpl1");
    let mut first_cid = String::new();
    let (first_random, first_time, first_mounts) =
        run_one(&cli, &store, &bundle, &first_id, |vmm| {
            assert!(vmm.contains("--restore"), "not restored: {vmm}");
            first_cid = cid_of(vmm);
        });
    let templates = store.listed(&cli);
    assert_eq!(templates.len(), 1, "{templates:?}");
    // Its agent made mounts ahead for the first container (the mount
    // tables compared below show they are the ones a cold VM makes).
    let console = read_text(&store.dir.join(&templates[0]).join("console.log"));
    assert!(
        console.contains("warming up: 5 mounts staged"),
        "the template's agent staged no mounts: {console}"
    );

    // The next is restored from it, as a machine of its own.
    let second_id = unique("tpl2");
    let (second_random, second_time, _) = run_one(&cli, &store, &bundle, &second_id, |vmm| {
        assert!(vmm.contains("--restore"), "not restored: {vmm}");
        assert_ne!(cid_of(vmm), first_cid, "two restored VMs share a CID");
    });
    assert_ne!(
        first_random, second_random,
        "two restored VMs share random output"
    );
    for (what, time) in [("first", first_time), ("second", second_time)] {
        assert!(
            time.abs_diff(now()) < 120,
            "the {what} VM's clock says {time}, the host's {}",
            now()
        );
    }
    cli.assert_gone(&second_id);

    // `template rm` leaves an empty store (a copy is kept for what follows).
    let template = store.dir.join(&templates[0]);
    let kept = cli.scratch.join("kept");
    run(Command::new("cp")
        .arg("-a")
        .arg("--sparse=always")
        .arg(&template)
        .arg(&kept))
    .ok();
    run(&mut store.command(&cli, &["template", "rm", "--all"])).ok();
    assert!(store.listed(&cli).is_empty());
    assert_empty_dir(&store.dir);
    run(&mut store.command(&cli, &["template", "rm", "no-such-template"])).fails();

    // A damaged template: refused, removed, and the VM boots cold.
    std::fs::rename(&kept, &template).expect("put the template back");
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(template.join("memory"))
        .expect("the template's memory file");
    std::os::unix::fs::FileExt::write_all_at(&memory, &[0xa5; 4096], 1 << 20).expect("damage it");
    drop(memory);
    let third_id = unique("tpl3");
    let (third_random, _, third_mounts) = run_one(&cli, &store, &bundle, &third_id, |vmm| {
        assert!(
            !vmm.contains("--restore"),
            "booted from a damaged template: {vmm}"
        );
        let logs = vmm_logs(&cli.root);
        assert!(
            logs.contains("the restore from the template") && logs.contains("damaged"),
            "the VM's log does not say why it booted cold: {logs}"
        );
    });
    assert_ne!(third_random, first_random);
    // The first container of a restored VM moves mounts made ahead into
    // place (the agent's `staged`): it sees the mounts a cold VM's
    // container makes itself, with the same options.
    assert_eq!(
        first_mounts, third_mounts,
        "a restored VM's container has other mounts than a cold one's"
    );
    assert!(
        store.listed(&cli).is_empty(),
        "the damaged template is still there"
    );
    cli.assert_gone(&third_id);
}
