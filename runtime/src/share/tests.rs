use super::*;

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn ids_that_could_leave_the_share_are_refused_before_anything_is_mounted() {
    // No share is needed to refuse them: the check comes first.
    let mut share = Share {
        dir: PathBuf::from("/nonexistent/share"),
        namespace: None,
        under: None,
        bound: false,
        virtiofsd: None,
        exited: None,
        log: PathBuf::from("/nonexistent/log"),
        rootfs: BTreeSet::new(),
        binds: BTreeMap::new(),
    };
    for id in ["", ".", "..", "../x", "a/b", "/abs", "a\0b"] {
        assert!(
            matches!(
                share.add_rootfs(id, Path::new("/"), true),
                Err(ShareError::InvalidId(_))
            ),
            "{id:?}"
        );
    }
    assert!(matches!(
        share.remove_rootfs("c"),
        Err(ShareError::NotShared(_))
    ));
}

/// The mount plumbing without a VM: a share with a stand-in for
/// virtiofsd, a read-only and a writable rootfs, their flags in the
/// share's namespace, none of it in ours, and nothing left after.
#[test]
fn binds_are_made_flagged_and_undone() {
    if !is_root() {
        eprintln!("skipped: binding rootfs directories needs root");
        return;
    }
    let base = std::env::temp_dir().join(format!("runvm-share-unit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(base.join("vm")).unwrap();
    let bundle = base.join("bundle");
    fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
    fs::write(bundle.join("rootfs/etc/hostname"), "x\n").unwrap();
    let vm = base.join("vm");
    // `sleep --fd=N ...` exits at once with a usage error: enough to
    // stand in for a virtiofsd that leaves.
    let mut share = Share::start(
        Path::new("/bin/sleep"),
        &vm.join("share"),
        &vm.join("fs.sock"),
        &vm.join("fs.log"),
        None,
    )
    .expect("start");
    let guest = share
        .add_rootfs("ro", &bundle.join("rootfs"), true)
        .expect("bind ro");
    assert_eq!(guest, "/run/runvm/share/ro/rootfs");
    share
        .add_rootfs("rw", &bundle.join("rootfs"), false)
        .expect("bind rw");
    assert!(matches!(
        share.add_rootfs("rw", &bundle.join("rootfs"), false),
        Err(ShareError::Exists(_))
    ));
    // Only in the share's namespace.
    assert!(mounts_below(&base).is_empty(), "{:?}", mounts_below(&base));
    assert!(!vm.join("share/ro/rootfs/etc").exists());
    let mountinfo = share.mountinfo().expect("mountinfo");
    let options = |point: &Path| -> String {
        let point = point.to_str().unwrap();
        mountinfo
            .lines()
            .find(|line| line.split(' ').nth(4) == Some(point))
            .and_then(|line| line.split(' ').nth(5))
            .unwrap_or_else(|| panic!("{point} is not mounted:\n{mountinfo}"))
            .to_owned()
    };
    let top = options(&vm.join("share"));
    assert!(top.starts_with("ro,nosuid,nodev,noexec"), "{top}");
    let ro = options(&vm.join("share/ro/rootfs"));
    assert!(ro.starts_with("ro,nosuid,nodev"), "{ro}");
    let rw = options(&vm.join("share/rw/rootfs"));
    assert!(rw.starts_with("rw,nosuid,nodev"), "{rw}");
    let ns = share.ns().unwrap();
    let seen = in_namespace(ns, || -> io::Result<_> {
        Ok((
            fs::read_to_string(vm.join("share/ro/rootfs/etc/hostname"))?,
            // Nothing can be made at the top, even by root.
            fs::create_dir(vm.join("share/planted")).is_err(),
            fs::write(vm.join("share/ro/rootfs/new"), "").is_err(),
            fs::write(vm.join("share/rw/rootfs/new"), "").is_ok(),
        ))
    })
    .unwrap();
    assert_eq!(seen, ("x\n".to_owned(), true, true, true));
    assert!(bundle.join("rootfs/new").exists());

    share.remove_rootfs("rw").expect("unbind rw");
    assert!(!vm.join("share/rw").exists());
    assert!(!share.mountinfo().unwrap().contains("/share/rw/rootfs"));
    share.stop(Duration::from_secs(1)).expect("stop");
    assert!(!vm.join("share").exists());
    assert!(
        bundle.join("rootfs/etc/hostname").exists(),
        "the bundle is untouched"
    );
    fs::remove_dir_all(&base).unwrap();
}

/// Bind sources: `bind` takes the source's mount alone, `rbind` the
/// mounts below it too (as runc does), a file source becomes a file, and
/// what is bound is the object opened, even if the path is swapped for a
/// symlink before the share binds it.
#[test]
fn binds_follow_bind_or_rbind_and_the_object_opened() {
    if !is_root() {
        eprintln!("skipped: binding needs root");
        return;
    }
    let base = std::env::temp_dir().join(format!("runvm-share-binds-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(base.join("vm")).unwrap();
    fs::create_dir_all(base.join("rootfs")).unwrap();
    fs::create_dir_all(base.join("volume/sub")).unwrap();
    fs::create_dir_all(base.join("elsewhere")).unwrap();
    fs::write(base.join("elsewhere/secret"), "no").unwrap();
    fs::write(base.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    // A mount below the volume, in a namespace of the test's own so that
    // the host never sees it; the share is made from the same thread.
    let ns = new_namespace().expect("a namespace for the test");
    let sub = base.join("volume/sub");
    let share = in_namespace(ns.as_raw_fd(), || -> Result<_, ShareError> {
        let target = sys::cstr(&sub)?;
        // SAFETY: mount(2) with C strings and no data.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            return Err(ShareError::Namespace(io::Error::last_os_error()));
        }
        fs::write(sub.join("inner"), "below").map_err(ShareError::Namespace)?;
        let volume = MountSource::open(&base.join("volume")).map_err(ShareError::Namespace)?;
        let hosts = MountSource::open(&base.join("hosts")).map_err(ShareError::Namespace)?;
        // Swapped after it was opened: the share still binds the volume.
        fs::rename(base.join("volume"), base.join("volume.old")).map_err(ShareError::Namespace)?;
        std::os::unix::fs::symlink(base.join("elsewhere"), base.join("volume"))
            .map_err(ShareError::Namespace)?;
        let vm = base.join("vm");
        let mut share = Share::start(
            Path::new("/bin/sleep"),
            &vm.join("share"),
            &vm.join("fs.sock"),
            &vm.join("fs.log"),
            None,
        )?;
        share.add_rootfs("c", &base.join("rootfs"), true)?;
        let flat = BindFlags {
            readonly: true,
            recursive: false,
        };
        let deep = BindFlags {
            readonly: false,
            recursive: true,
        };
        let guest = share.add_bind("c", &volume, flat)?;
        assert_eq!(guest, format!("{GUEST_SHARE_DIR}/c/mounts/0"));
        share.add_bind("c", &volume, deep)?;
        share.add_bind("c", &hosts, flat)?;
        Ok(share)
    })
    .expect("binds");
    let mut share = share;
    let mounts = base.join("vm/share/c/mounts");
    let seen = in_namespace(share.ns().unwrap(), || -> io::Result<_> {
        Ok((
            fs::read_to_string(mounts.join("0/sub/inner")).ok(),
            fs::read_to_string(mounts.join("1/sub/inner")).ok(),
            mounts.join("0/secret").exists() || mounts.join("1/secret").exists(),
            fs::read_to_string(mounts.join("2"))?,
            fs::write(mounts.join("0/new"), "").is_err(),
        ))
    })
    .unwrap();
    assert_eq!(
        seen,
        (
            None,
            Some("below".to_owned()),
            false,
            "127.0.0.1 localhost\n".to_owned(),
            true
        )
    );
    share.stop(Duration::from_secs(1)).expect("stop");
    drop(ns);
    assert!(!base.join("vm/share").exists());
    fs::remove_dir_all(&base).unwrap();
}
