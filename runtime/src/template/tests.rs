use super::*;

struct Files {
    dir: PathBuf,
    /// The VMM, kernel and image.
    inputs: [PathBuf; 3],
}

impl Files {
    fn new(name: &str) -> Files {
        let dir =
            std::env::temp_dir().join(format!("runvm-template-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for file in ["vmm", "kernel", "image"] {
            fs::write(dir.join(file), file).unwrap();
        }
        let inputs = ["vmm", "kernel", "image"].map(|f| dir.join(f));
        Files { dir, inputs }
    }

    /// Inputs of a VM of `memory_mib` from these files.
    fn inputs<'a>(&'a self, memory_mib: u32, share_tag: Option<&'a str>) -> TemplateInputs<'a> {
        TemplateInputs {
            vmm: &self.inputs[0],
            kernel: &self.inputs[1],
            image: &self.inputs[2],
            memory_mib,
            vcpus: 1,
            cmdline: &[],
            share_tag,
            net_cards: 0,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn key(files: &Files, memory_mib: u32, cmdline: &[String]) -> TemplateKey {
    key_with_cards(files, memory_mib, cmdline, 0)
}

fn key_with_cards(
    files: &Files,
    memory_mib: u32,
    cmdline: &[String],
    net_cards: usize,
) -> TemplateKey {
    TemplateKey::of(&TemplateInputs {
        vmm: &files.path("vmm"),
        kernel: &files.path("kernel"),
        image: &files.path("image"),
        memory_mib,
        vcpus: 1,
        cmdline,
        share_tag: Some("runvm"),
        net_cards,
    })
    .unwrap()
}

#[test]
fn every_input_changes_the_name() {
    let files = Files::new("key");
    let base = key(&files, 128, &[]);
    assert_eq!(base, key(&files, 128, &[]));
    assert_eq!(base.name.len(), 32);
    assert_ne!(base.name, key(&files, 256, &[]).name);
    assert_ne!(base.name, key(&files, 128, &["ipv6.disable=1".into()]).name);
    assert_ne!(base.name, key_with_cards(&files, 128, &[], 1).name);
    fs::write(files.path("image"), "a new image").unwrap();
    assert_ne!(base.name, key(&files, 128, &[]).name);
    // The same bytes elsewhere, written later: the same template.
    fs::write(files.path("image"), "image").unwrap();
    fs::rename(files.path("kernel"), files.path("moved")).unwrap();
    fs::copy(files.path("moved"), files.path("kernel")).unwrap();
    assert_eq!(base.name, key(&files, 128, &[]).name);
    assert!(
        base.described.contains("memory 128 MiB"),
        "{}",
        base.described
    );
}

#[test]
fn a_missing_input_is_named() {
    let files = Files::new("missing");
    fs::remove_file(files.path("kernel")).unwrap();
    let err = TemplateKey::of(&files.inputs(128, None)).unwrap_err();
    assert!(err.contains("kernel"), "{err}");
}

#[test]
fn the_first_vm_makes_the_template_others_boot_cold_then_restore() {
    let files = Files::new("plan");
    let store = files.path("store");
    let inputs = files.inputs(128, Some("runvm"));
    let Plan::Make(maker) = plan_in(&store, &inputs) else {
        panic!("the first VM should make the template");
    };
    // While it is being made, another VM does not wait for it.
    assert!(
        matches!(plan_in(&store, &inputs), Plan::Cold(reason) if reason.contains("another VM"))
    );
    fs::write(maker.snapshot_dir().join("state"), "saved").unwrap();
    let partial = maker.snapshot_dir().to_owned();
    let console = files.path("console.log");
    fs::write(&console, "booted\n").unwrap();
    let dir = maker.publish(&console).unwrap();
    assert!(!partial.exists());
    assert_eq!(
        fs::read_to_string(dir.join(CONSOLE_FILE)).unwrap(),
        "booted\n"
    );
    let Plan::Restore(found) = plan_in(&store, &inputs) else {
        panic!("the next VM should restore");
    };
    assert_eq!(found, dir);

    let listed = list(&store).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].inputs.contains("share Some(\"runvm\")"),
        "{}",
        listed[0].inputs
    );
    assert!(remove(&store, "../x").is_err());
    assert!(remove(&store, "nothing")
        .unwrap_err()
        .contains("no template"));
    remove(&store, &listed[0].name).unwrap();
    assert!(list(&store).unwrap().is_empty());
    assert_eq!(lock_files(&store), Vec::<String>::new());
}

fn lock_files(store: &Path) -> Vec<String> {
    fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".lock"))
        .collect()
}

/// Makers remove their lock file before they let go of it, so none pile
/// up in the store; a lock on a file removed meanwhile is worth nothing;
/// the lock files a dead maker left go at the next publish.
#[test]
fn lock_files_do_not_pile_up() {
    let files = Files::new("locks");
    let store = files.path("store");
    let inputs = files.inputs(96, None);
    let name = TemplateKey::of(&inputs).unwrap().name;
    let Plan::Make(maker) = plan_in(&store, &inputs) else {
        panic!("expected to make it");
    };
    assert_eq!(lock_files(&store), [format!(".{name}.lock")]);
    // A second process that opened the file before the maker let go and
    // removed it gets the lock of a file no longer in the store: worth
    // nothing, whether a new one is there or not.
    let early = File::open(lock_path(&store, &name)).unwrap();
    let early_too = File::open(lock_path(&store, &name)).unwrap();
    assert!(lock_if_current(early, &lock_path(&store, &name))
        .unwrap()
        .is_none());
    drop(maker);
    assert_eq!(lock_files(&store), Vec::<String>::new());
    let fresh = take_lock(&lock_path(&store, &name)).unwrap();
    assert!(fresh.is_some());
    assert!(lock_if_current(early_too, &lock_path(&store, &name))
        .unwrap()
        .is_none());
    drop(fresh);
    fs::remove_file(lock_path(&store, &name)).unwrap();
    // Left by makers that died (and older versions): gone after a publish.
    fs::write(store.join(".0123.lock"), "").unwrap();
    let Plan::Make(maker) = plan_in(&store, &files.inputs(97, None)) else {
        panic!("expected to make it");
    };
    maker.publish(&files.path("no-console")).unwrap();
    assert_eq!(lock_files(&store), Vec::<String>::new());
    let Plan::Restore(_) = plan_in(&store, &files.inputs(97, None)) else {
        panic!("expected to restore");
    };
    assert_eq!(lock_files(&store), Vec::<String>::new());
}

#[test]
fn an_unpublished_save_is_removed_and_a_dead_makers_too() {
    let files = Files::new("partial");
    let store = files.path("store");
    let inputs = files.inputs(64, None);
    let name = TemplateKey::of(&inputs).unwrap().name;
    // What a maker killed with SIGKILL left.
    let dead = store.join(format!(".{name}.999999"));
    fs::create_dir_all(&dead).unwrap();
    let Plan::Make(maker) = plan_in(&store, &inputs) else {
        panic!("expected to make it");
    };
    assert!(!dead.exists());
    let partial = maker.snapshot_dir().to_owned();
    assert!(partial.is_dir());
    drop(maker);
    assert!(!partial.exists());
    assert!(matches!(plan_in(&store, &inputs), Plan::Make(_)));
}

#[test]
fn the_least_recently_used_templates_go_beyond_the_limit() {
    let files = Files::new("evict");
    let store = files.path("store");
    let mut names = Vec::new();
    for memory_mib in 1..=(MAX_TEMPLATES as u32 + 1) {
        let inputs = files.inputs(memory_mib, None);
        let Plan::Make(maker) = plan_in(&store, &inputs) else {
            panic!("expected to make {memory_mib}");
        };
        let dir = maker.publish(&files.path("no-console")).unwrap();
        // Distinct, ordered use times; the first is used again last.
        let when =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000 + u64::from(memory_mib));
        File::options()
            .append(true)
            .open(dir.join(INPUTS_FILE))
            .unwrap()
            .set_modified(when)
            .unwrap();
        names.push(dir.file_name().unwrap().to_string_lossy().into_owned());
        if memory_mib == 1 {
            mark_used(&dir);
        }
    }
    let left: Vec<String> = list(&store).unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(left.len(), MAX_TEMPLATES, "{left:?}");
    // The second made is the least recently used.
    assert!(!left.contains(&names[1]), "{left:?}");
    assert!(
        left.contains(&names[0]) || left.contains(&names[MAX_TEMPLATES]),
        "{left:?}"
    );
}

#[test]
fn placeholder_macs_are_distinct_local_unicast_addresses() {
    let macs: Vec<[u8; 6]> = (0..crate::network::MAX_INTERFACES)
        .map(placeholder_mac)
        .collect();
    for (index, mac) in macs.iter().enumerate() {
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered unicast: {mac:?}");
        assert!(!macs[..index].contains(mac), "{mac:?} twice");
    }
}
