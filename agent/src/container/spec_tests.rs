//! Tests of `spec`: OCI specs as runc, podman and the CRI write them,
//! turned into plans or refused with a reason.

use super::*;

/// What `runc spec` writes, trimmed: the shape podman and containerd
/// send too.
pub const RUNC_SPEC: &str = r#"{
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": false,
        "user": {"uid": 1000, "gid": 100, "additionalGids": [10, 20], "umask": 18},
        "args": ["sh", "-c", "echo hi"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
            "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL"],
            "ambient": ["CAP_KILL"]
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true,
        "oomScoreAdj": 100
    },
    "root": {"path": "rootfs", "readonly": true},
    "hostname": "runc",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/data", "source": "/srv/data", "options": ["rbind", "ro"]}
    ],
    "linux": {
        "resources": {"memory": {"limit": 33554432}, "pids": {"limit": 64}},
        "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                       {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
        "maskedPaths": ["/proc/acpi", "/proc/kcore", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/sys"],
        "sysctl": {"net.ipv4.ip_forward": "1"},
        "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}],
        "seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]}
    }
}"#;

fn spec(json: &str) -> Spec {
    serde_json::from_str(json).unwrap()
}

fn plan(json: &str) -> Result<ContainerPlan, String> {
    container_plan(&spec(json), Path::new("/run/c/rootfs"), &[])
}

fn edit(f: impl FnOnce(&mut serde_json::Value)) -> Result<ContainerPlan, String> {
    let mut v: serde_json::Value = serde_json::from_str(RUNC_SPEC).unwrap();
    f(&mut v);
    plan(&v.to_string())
}

#[test]
fn the_runc_spec_translates_whole() {
    let p = plan(RUNC_SPEC).unwrap();
    // Not CLONE_NEWNET: the VM's network namespace is the container's.
    assert_eq!(
        p.clone_flags(),
        libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWCGROUP
    );
    assert!(p.readonly_root);
    assert_eq!(p.root_propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
    assert_eq!(p.hostname.as_deref(), Some("runc"));
    assert_eq!(p.mounts.len(), 8);
    assert_eq!(p.mounts[6].kind, MountKind::Cgroup);
    assert_eq!(
        p.mounts[7].kind,
        MountKind::Bind {
            source: PathBuf::from("/srv/data")
        }
    );
    assert!(p.mounts[7].options.flags.contains(MsFlags::MS_REC));
    assert_eq!(
        p.mounts[1].kind,
        MountKind::Fs {
            fstype: "tmpfs".into(),
            source: "tmpfs".into()
        }
    );
    assert_eq!(p.mounts[1].options.data, "mode=755,size=65536k");
    assert!(p.setup_dev);
    assert_eq!(p.devices.len(), DEFAULT_DEVICES.len() + 1);
    assert_eq!(p.devices.last().unwrap().mode, libc::S_IFCHR | 0o666);
    assert_eq!(p.masked_paths[1], PathBuf::from("/proc/kcore"));
    assert_eq!(p.readonly_paths.len(), 2);
    assert_eq!(
        p.sysctl,
        vec![(
            PathBuf::from("/proc/sys/net/ipv4/ip_forward"),
            "1".to_string()
        )]
    );
    assert_eq!(p.resources.len(), 2);
    assert_eq!(p.seccomp.as_ref().unwrap().filters.len(), 1);
    // No vsock, and runc's device list (plus /dev/fuse, which it creates).
    assert_eq!(p.guard.as_ref().unwrap().filters.len(), 1);
    assert!(p.device_program.is_some());

    let proc_ = &p.process;
    assert_eq!(proc_.args[0].to_str().unwrap(), "sh");
    assert_eq!((proc_.uid, proc_.gid), (1000, 100));
    assert_eq!(proc_.additional_gids, vec![10, 20]);
    assert_eq!(proc_.umask, Some(0o22));
    assert!(proc_.no_new_privileges);
    assert_eq!(proc_.oom_score_adj, Some(100));
    assert_eq!(
        proc_.rlimits,
        vec![Rlimit {
            resource: libc::RLIMIT_NOFILE as libc::c_int,
            soft: 1024,
            hard: 1024
        }]
    );
    let caps = proc_.caps.as_ref().unwrap();
    assert_eq!(
        caps.bounding,
        vec![
            caps::Capability::CAP_KILL,
            caps::Capability::CAP_NET_BIND_SERVICE,
            caps::Capability::CAP_AUDIT_WRITE
        ]
    );
    assert_eq!(caps.ambient, vec![caps::Capability::CAP_KILL]);
    assert!(caps.inheritable.is_empty());
}

#[test]
fn every_capability_name_maps_to_the_kernel_number() {
    for cap in caps::all() {
        let name = cap.to_string();
        assert_eq!(capability(&name), Ok(cap), "{name}");
        let bare = name.trim_start_matches("CAP_").to_ascii_lowercase();
        assert_eq!(capability(&bare), Ok(cap), "{bare}");
    }
    assert!(capability("CAP_NO_SUCH_THING")
        .unwrap_err()
        .contains("CAP_NO_SUCH_THING"));
}

#[test]
fn inherited_variables_fill_in_but_do_not_override() {
    let inherited = vec![
        ("GLIBC_TUNABLES".to_string(), "x=1".to_string()),
        ("TERM".to_string(), "dumb".to_string()),
    ];
    let p = container_plan(&spec(RUNC_SPEC), Path::new("/r"), &inherited).unwrap();
    assert!(p.process.env.contains(&"GLIBC_TUNABLES=x=1".to_string()));
    assert!(p.process.env.contains(&"TERM=xterm".to_string()));
    assert!(!p.process.env.contains(&"TERM=dumb".to_string()));
}

#[test]
fn user_namespaces_need_their_mappings() {
    let with_userns = |v: &mut serde_json::Value| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
    };
    assert!(edit(with_userns).unwrap_err().contains("Mappings"));
    let p = edit(|v| {
        with_userns(v);
        v["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        v["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    })
    .unwrap();
    assert_eq!(p.uid_map.as_deref(), Some("0 100000 65536\n"));
    assert!(p.clone_flags() & libc::CLONE_NEWUSER != 0);
    let err = edit(|v| {
        v["linux"]["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 1, "size": 1}]);
    })
    .unwrap_err();
    assert!(err.contains("without a new user namespace"));
}

#[test]
fn a_new_network_namespace_is_the_vms_own() {
    let p = edit(|_| {}).unwrap();
    assert!(!p.has_namespace(libc::CLONE_NEWNET));
    assert_eq!(p.clone_flags() & libc::CLONE_NEWNET, 0);
    assert_ne!(p.clone_flags() & libc::CLONE_NEWPID, 0);
}

#[test]
fn joined_namespaces_are_not_created() {
    let p = edit(|v| {
        v["linux"]["namespaces"][1] =
            serde_json::json!({"type": "network", "path": "/proc/1/ns/net"});
    })
    .unwrap();
    assert_eq!(p.clone_flags() & libc::CLONE_NEWNET, 0);
    assert!(p.has_namespace(libc::CLONE_NEWNET));
    assert_eq!(p.namespaces[1].path, Some(PathBuf::from("/proc/1/ns/net")));
}

#[test]
fn only_the_containers_own_sysctls_are_accepted() {
    let with = |sysctl: serde_json::Value| {
        edit(move |v| v["linux"]["sysctl"] = sysctl).map(|p| p.sysctl.len())
    };
    // The network namespace is asked for (though the VM's is used), IPC
    // and UTS are the container's.
    assert_eq!(
        with(
            serde_json::json!({"net.core.somaxconn": "1024", "kernel.shmmax": "65536",
                                "fs.mqueue.msg_max": "20", "kernel.domainname": "d"})
        ),
        Ok(4)
    );
    let e = with(serde_json::json!({"kernel.randomize_va_space": "0"})).unwrap_err();
    assert!(
        e.contains("kernel.randomize_va_space") && e.contains("not namespaced"),
        "{e}"
    );
    let e = with(serde_json::json!({"vm.overcommit_memory": "1"})).unwrap_err();
    assert!(e.contains("vm.overcommit_memory"), "{e}");
    // runc's hostname field says it already.
    let e = with(serde_json::json!({"kernel.hostname": "x"})).unwrap_err();
    assert!(e.contains("hostname"), "{e}");
    // Without the namespace, a namespaced sysctl is the guest's.
    let e = edit(|v| {
        v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "uts"}]);
        v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
    })
    .unwrap_err();
    assert!(
        e.contains("net.ipv4.ip_forward") && e.contains("network"),
        "{e}"
    );
    let e = edit(|v| {
        v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "uts"}]);
        v["linux"]["sysctl"] = serde_json::json!({"kernel/sem": "1 2 3 4"});
    })
    .unwrap_err();
    assert!(e.contains("kernel/sem") && e.contains("IPC"), "{e}");
}

#[test]
fn vsock_is_for_specs_that_ask() {
    let guard = |annotations: serde_json::Value| {
        edit(move |v| v["annotations"] = annotations).map(|p| p.guard.is_some())
    };
    assert_eq!(guard(serde_json::json!({})), Ok(true));
    assert_eq!(
        guard(serde_json::json!({"io.runvm.vsock": "deny"})),
        Ok(true)
    );
    assert_eq!(
        guard(serde_json::json!({"io.runvm.vsock": "allow"})),
        Ok(false)
    );
    let e = guard(serde_json::json!({"io.runvm.vsock": "yes"})).unwrap_err();
    assert!(e.contains("io.runvm.vsock") && e.contains("yes"), "{e}");
}

#[test]
fn device_rules_become_a_program_even_when_all_is_allowed() {
    let program = |devices: serde_json::Value| {
        edit(move |v| v["linux"]["resources"] = serde_json::json!({ "devices": devices }))
            .map(|p| p.device_program.is_some())
    };
    assert_eq!(
        program(serde_json::json!([{"allow": false, "access": "rwm"}])),
        Ok(true)
    );
    // The guest's /dev/mem and /dev/port stay out (see devices.rs).
    assert_eq!(
        program(serde_json::json!([{"allow": true, "access": "rwm"}])),
        Ok(true)
    );
    let e = program(serde_json::json!([{"allow": true, "access": "rwx"}])).unwrap_err();
    assert!(e.contains("linux.resources.devices[0]"), "{e}");
}

#[test]
fn bad_specs_are_refused_with_a_reason() {
    type Change = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|v| v["process"]["args"] = serde_json::json!([])),
            "args",
        ),
        (
            Box::new(|v| v["process"]["cwd"] = serde_json::json!("rel")),
            "cwd",
        ),
        (
            Box::new(|v| v["process"]["env"] = serde_json::json!(["NOVALUE"])),
            "NAME=value",
        ),
        (
            Box::new(|v| {
                v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}])
            }),
            "UTS",
        ),
        (
            Box::new(|v| v["linux"]["namespaces"] = serde_json::json!([{"type": "uts"}])),
            "mount namespace",
        ),
        (
            Box::new(|v| {
                v["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"type": "pid"}))
            }),
            "twice",
        ),
        (
            Box::new(|v| v["linux"]["sysctl"] = serde_json::json!({"net.../x": "1"})),
            "sysctl",
        ),
        (
            Box::new(|v| v["mounts"][7]["source"] = serde_json::json!("relative/src")),
            "absolute",
        ),
        (
            Box::new(|v| v["mounts"][0]["options"] = serde_json::json!(["idmap"])),
            "idmap",
        ),
        (
            Box::new(|v| v["linux"]["rootfsPropagation"] = serde_json::json!("sideways")),
            "propagation",
        ),
        (
            Box::new(|v| v["linux"]["personality"] = serde_json::json!({"domain": "SVR4"})),
            "personality",
        ),
        (
            Box::new(|v| {
                v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"})
            }),
            "NOTIFY",
        ),
        (
            Box::new(|v| v["linux"]["resources"] = serde_json::json!({"blockIO": {"weight": 1}})),
            "block I/O weight",
        ),
        (
            Box::new(|v| {
                v["linux"]["resources"] =
                    serde_json::json!({"hugepageLimits": [{"pageSize": "2M", "limit": 0}]})
            }),
            "hugepage size",
        ),
    ];
    for (change, expected) in cases {
        let err = edit(change).unwrap_err();
        assert!(
            err.contains(expected),
            "{err:?} should mention {expected:?}"
        );
    }
}

/// The lean wire types keep what the agent refuses, so a spec asking
/// for it is refused by name rather than run without it.
#[test]
fn unsupported_features_are_refused_not_dropped() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("intelRdt", serde_json::json!({"closID": "g"}), "intelRdt"),
        (
            "memoryPolicy",
            serde_json::json!({"mode": "MPOL_BIND", "nodes": "0"}),
            "memoryPolicy",
        ),
        (
            "timeOffsets",
            serde_json::json!({"monotonic": {"secs": 1}}),
            "timeOffsets",
        ),
        (
            "netDevices",
            serde_json::json!({"eth0": {"name": "eth1"}}),
            "netDevices",
        ),
    ];
    for (field, value, expected) in cases {
        let err = edit(|v| v["linux"][field] = value).unwrap_err();
        assert!(err.contains(expected), "{err:?} should mention {expected}");
    }
    let err = edit(|v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "time"}))
    })
    .unwrap_err();
    assert!(err.contains("time namespaces"), "{err}");
    let err = edit(|v| {
        v["mounts"][7]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 1, "size": 1}])
    })
    .unwrap_err();
    assert!(err.contains("id-mapped"), "{err}");
    for (resources, expected) in [
        (
            serde_json::json!({"rdma": {"mlx5_1": {"hcaHandles": 3}}}),
            "RDMA",
        ),
        (serde_json::json!({"network": {"classID": 1}}), "network"),
    ] {
        let err = edit(|v| v["linux"]["resources"] = resources).unwrap_err();
        assert!(err.contains(expected), "{err:?} should mention {expected}");
    }
    // Empty lists and maps ask for nothing.
    assert!(edit(|v| {
        v["linux"]["timeOffsets"] = serde_json::json!({});
        v["linux"]["netDevices"] = serde_json::json!({});
        v["linux"]["resources"]["hugepageLimits"] = serde_json::json!([]);
    })
    .is_ok());
}

/// What kubelet (through containerd or CRI-O) and podman send on every
/// container is accepted: hugepage limits of 0, block I/O weights,
/// tmpfs mounts with tmpcopyup, recursive read-only binds.
#[test]
fn what_cri_and_podman_send_is_accepted() {
    let p = edit(|v| {
        v["linux"]["resources"]["hugepageLimits"] = serde_json::json!([
            {"pageSize": "2MB", "limit": 0}, {"pageSize": "1GB", "limit": 0}
        ]);
        v["linux"]["resources"]["blockIO"] = serde_json::json!({"weight": 500});
        let mounts = v["mounts"].as_array_mut().unwrap();
        for dir in ["/run", "/tmp", "/var/tmp"] {
            mounts.push(serde_json::json!({
                "destination": dir, "type": "tmpfs", "source": "tmpfs",
                "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]
            }));
        }
        mounts.push(serde_json::json!({
            "destination": "/vol", "type": "bind", "source": "/srv/vol",
            "options": ["rbind", "rprivate", "rro"]
        }));
    })
    .unwrap();
    assert!(p.mounts[8].options.tmpcopyup);
    assert_eq!(p.mounts[8].options.data, "");
    assert!(!p.mounts[11].options.recursive.is_empty());
    // memory, pids; 2 files per page size; io.bfq.weight or io.weight.
    assert_eq!(p.resources.len(), 2 + 4 + 2);
}

#[test]
fn a_bind_mounted_dev_is_left_alone() {
    let p = edit(|v| {
        v["mounts"][1] =
            serde_json::json!({"destination": "/dev", "source": "/dev", "options": ["rbind"]});
    })
    .unwrap();
    assert!(!p.setup_dev);
}

#[test]
fn the_hosts_program_is_taken_only_when_the_search_could_give_it() {
    let found = |hint: &str, args0: &std::ffi::CStr| found_by_host(Some(hint), args0);
    assert_eq!(found("/bin/sh", c"sh").as_deref(), Some(c"/bin/sh"));
    assert_eq!(
        found("/usr/local/bin/x", c"x").as_deref(),
        Some(c"/usr/local/bin/x")
    );
    assert_eq!(found("/bin/bash", c"sh"), None, "another name");
    assert_eq!(found("/bin/sh", c"/bin/sh"), None, "args[0] with a slash");
    assert_eq!(found("bin/sh", c"sh"), None, "a relative path");
    assert_eq!(found("/bin/../etc/sh", c"sh"), None, "a `..` step");
    assert_eq!(found("/binsh", c"sh"), None);
    assert_eq!(found_by_host(None, c"sh"), None);
}
