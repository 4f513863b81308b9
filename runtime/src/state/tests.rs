use super::*;

#[test]
fn dates_are_rfc3339_utc() {
    assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
    // 2000-02-29 (a leap day in a century year divisible by 400).
    assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
    assert_eq!(
        rfc3339(1_795_460_767, 123_456_789),
        "2026-11-23T19:06:07.123456789Z"
    );
}

#[test]
fn this_process_is_alive_and_a_made_up_one_is_not() {
    let me = HostProcess::current().expect("our own stat");
    assert!(me.is_alive());
    let reused = HostProcess {
        pid: me.pid,
        start_time: me.start_time + 1,
    };
    assert!(!reused.is_alive(), "a reused pid is another process");
}

#[test]
fn a_root_that_others_can_write_or_own_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!("runvm-root-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    let meta = |mode| {
        fs::set_permissions(&base, fs::Permissions::from_mode(mode)).unwrap();
        fs::metadata(&base).unwrap()
    };
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(unsafe_root_problem(&meta(0o700), me), None);
    assert_eq!(unsafe_root_problem(&meta(0o711), me), None);
    assert_eq!(
        unsafe_root_problem(&meta(0o777), me).as_deref(),
        Some("it is writable by group or others (mode 0777)")
    );
    assert_eq!(
        unsafe_root_problem(&meta(0o1770), me).as_deref(),
        Some("it is writable by group or others (mode 1770)")
    );
    let problem = unsafe_root_problem(&meta(0o700), me + 1).expect("another owner");
    assert!(
        problem.starts_with(&format!("it is owned by uid {me}, not by")),
        "{problem}"
    );
    fs::set_permissions(&base, fs::Permissions::from_mode(0o777)).unwrap();
    let refused = StateRoot::open(&base).expect_err("mode 0777");
    assert!(
        refused.to_string().contains(&base.display().to_string()),
        "{refused}"
    );
    fs::write(base.join("file"), "").unwrap();
    let refused = StateRoot::open(&base.join("file")).expect_err("a file");
    assert!(refused.to_string().contains("cannot create"), "{refused}");
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_symlink_planted_at_the_path_is_replaced_not_followed() {
    let base = std::env::temp_dir().join(format!("runvm-write-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    fs::write(base.join("victim"), "precious").unwrap();
    std::os::unix::fs::symlink(base.join("victim"), base.join("pid")).unwrap();
    write_atomically(&base.join("pid"), b"42").expect("write");
    assert_eq!(fs::read_to_string(base.join("victim")).unwrap(), "precious");
    assert!(fs::symlink_metadata(base.join("pid")).unwrap().is_file());
    assert_eq!(fs::read_to_string(base.join("pid")).unwrap(), "42");
    // Only the two files: no temporary one is left.
    assert_eq!(fs::read_dir(&base).unwrap().count(), 2);
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn ids_are_claimed_once_and_locked() {
    let base = std::env::temp_dir().join(format!("runvm-state-test-{}", std::process::id()));
    let root = StateRoot::open(&base).expect("root");
    assert!(matches!(root.create("../x"), Err(StateError::InvalidId(_))));
    let container = root.create("a").expect("claim a");
    assert!(matches!(root.create("a"), Err(StateError::Exists(_))));
    let record = Record {
        id: "a".into(),
        bundle: "/b".into(),
        rootfs: "/b/rootfs".into(),
        created: rfc3339_now(),
        owner: String::new(),
        annotations: BTreeMap::new(),
        status: Status::Created,
        monitor: HostProcess::current(),
        helpers: Vec::new(),
        cgroup: None,
        exit_status: None,
        hooks: None,
        sandbox: None,
        vm: None,
        netns: None,
    };
    container.save(&record).expect("save");
    assert_eq!(root.ids().expect("ids"), ["a"]);
    // Records of before sandboxes read as owning their VM.
    let loaded = container.load().expect("load");
    assert!(loaded.sandbox.is_none() && loaded.vm.is_none());
    assert_eq!(container.home(&loaded).dir(), base.join("a"));
    // Held: another call gives up after its patience, naming the id.
    let busy = Container::lock_within("a", base.join("a"), Duration::from_millis(100));
    let Err(StateError::Busy { id, waited }) = busy else {
        panic!("the lock is held, yet it was taken");
    };
    assert_eq!(id, "a");
    assert!(waited >= Duration::from_millis(100));
    let seen = peek(&root, "a").expect("peek");
    assert_eq!(seen.status(), Status::Created);
    assert_eq!(seen.oci_state()["pid"], std::process::id());
    // A monitor that is gone means stopped, pid 0.
    let mut gone = seen.clone();
    gone.monitor = Some(HostProcess {
        pid: i32::MAX,
        start_time: 1,
    });
    assert_eq!(gone.status(), Status::Stopped);
    assert_eq!(gone.oci_state()["pid"], 0);
    container.remove().expect("remove");
    assert!(matches!(
        root.open_container("a"),
        Err(StateError::NotFound)
    ));
    assert!(root.ids().expect("ids").is_empty());
    fs::remove_dir(&base).expect("the root is empty");
}
