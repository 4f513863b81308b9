use std::collections::HashMap;

use super::role::{from_annotations, namespace_pids};
use super::size::{self, check_member, for_owner};
use super::*;

/// A fresh directory for one test, removed at the end.
struct TestDir(std::path::PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("runvm-sandbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TestDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(value: serde_json::Value) -> oci_spec::runtime::Spec {
    let mut base = serde_json::json!({"ociVersion": "1.0.2"});
    if let (Some(base), Some(extra)) = (base.as_object_mut(), value.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(base).expect("spec")
}

fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn record(id: &str, sandbox: Option<&str>) -> Record {
    serde_json::from_value(serde_json::json!({
        "id": id, "bundle": "/b", "rootfs": "/b/rootfs", "created": "x",
        "owner": "", "status": "created", "monitor": null, "exit_status": null,
        "sandbox": sandbox,
    }))
    .expect("record")
}

#[test]
fn containerd_annotations() {
    let sandbox = annotations(&[
        ("io.kubernetes.cri.container-type", "sandbox"),
        ("io.kubernetes.cri.sandbox-id", "pod1"),
    ]);
    assert_eq!(
        from_annotations(&sandbox, "pod1").ok(),
        Some(Some(Role::Sandbox))
    );
    let member = annotations(&[
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-id", "pod1"),
    ]);
    assert_eq!(
        from_annotations(&member, "app").ok(),
        Some(Some(Role::Member("pod1".into())))
    );
}

#[test]
fn crio_annotations() {
    let member = annotations(&[
        ("io.kubernetes.cri-o.ContainerType", "container"),
        ("io.kubernetes.cri-o.SandboxID", "abc"),
    ]);
    assert_eq!(
        from_annotations(&member, "app").ok(),
        Some(Some(Role::Member("abc".into())))
    );
    let sandbox = annotations(&[("io.kubernetes.cri-o.ContainerType", "sandbox")]);
    assert_eq!(
        from_annotations(&sandbox, "abc").ok(),
        Some(Some(Role::Sandbox))
    );
}

#[test]
fn unmarked_and_bad_annotations() {
    assert_eq!(from_annotations(&HashMap::new(), "a").ok(), Some(None));
    let odd = annotations(&[("io.kubernetes.cri.container-type", "weird")]);
    assert_eq!(from_annotations(&odd, "a").ok(), Some(None));
    let nameless = annotations(&[("io.kubernetes.cri.container-type", "container")]);
    assert!(from_annotations(&nameless, "a").is_err());
    let escaping = annotations(&[
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-id", "../etc"),
    ]);
    let error = from_annotations(&escaping, "a")
        .err()
        .map(|e| e.to_string());
    assert!(error.is_some_and(|e| e.contains("../etc")));
}

#[test]
fn namespace_paths_name_pids() {
    let spec = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "network", "path": "/proc/42/ns/net"},
        {"type": "ipc", "path": "/proc/42/ns/ipc"},
        {"type": "uts", "path": "/run/netns/x"},
        {"type": "pid", "path": "/proc/self/ns/pid"},
        {"type": "mount"},
        {"type": "cgroup", "path": "/proc/7/ns/cgroup/extra"}
    ]}}));
    assert_eq!(namespace_pids(&spec), vec![42]);
}

#[test]
fn classify_finds_the_monitor_of_a_namespace_path() {
    let dir = TestDir::new("classify");
    let root = StateRoot::open(&dir.path().join("root")).expect("root");
    let owner = root.create("owner").expect("create");
    let mut owner_record = record("owner", None);
    owner_record.monitor = HostProcess_current();
    owner.save(&owner_record).expect("save");
    let pid = std::process::id();
    let joining = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "network", "path": format!("/proc/{pid}/ns/net")}
    ]}}));
    assert_eq!(
        classify(&joining, "b", &root).ok(),
        Some(Role::Member("owner".into()))
    );
    // A member of it leads to the same VM.
    let member = root.create("member").expect("create");
    let mut member_record = record("member", Some("owner"));
    member_record.monitor = HostProcess_current();
    owner_record.monitor = None;
    owner.save(&owner_record).expect("save");
    member.save(&member_record).expect("save");
    assert_eq!(
        classify(&joining, "b", &root).ok(),
        Some(Role::Member("owner".into()))
    );
    // Nobody's monitor: a VM of its own.
    let other = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "network", "path": "/proc/1/ns/net"}
    ]}}));
    assert_eq!(classify(&other, "b", &root).ok(), Some(Role::Standalone));
}

#[allow(non_snake_case)]
fn HostProcess_current() -> Option<state::HostProcess> {
    state::HostProcess::current()
}

#[test]
fn joinable_names_the_sandbox() {
    let dir = TestDir::new("joinable");
    let root = StateRoot::open(&dir.path().join("root")).expect("root");
    let error = joinable(&root, "nopod", "app").err().map(|e| e.to_string());
    assert!(error
        .as_deref()
        .is_some_and(|e| e.contains("nopod") && e.contains("does not exist")));
    // A sandbox whose monitor is gone is stopped.
    let pod = root.create("pod").expect("create");
    let mut pod_record = record("pod", None);
    pod_record.monitor = None;
    pod_record.status = Status::Running;
    pod.save(&pod_record).expect("save");
    let error = joinable(&root, "pod", "app").err().map(|e| e.to_string());
    assert!(error.is_some_and(|e| e.contains("pod") && e.contains("stopped")));
    pod_record.monitor = state::HostProcess::current();
    pod.save(&pod_record).expect("save");
    assert!(joinable(&root, "pod", "app").is_ok());
    // A member cannot be joined as a sandbox.
    let member = root.create("m").expect("create");
    let mut member_record = record("m", Some("pod"));
    member_record.monitor = state::HostProcess::current();
    member.save(&member_record).expect("save");
    assert!(joinable(&root, "m", "app").is_err());
}

#[test]
fn homes_are_the_owners_directory() {
    let root = Path::new("/run/x");
    let owner = Home::of(root, &record("pod", None));
    let member = Home::of(root, &record("app", Some("pod")));
    assert_eq!(owner, member);
    assert_eq!(owner.vsock_socket(), Path::new("/run/x/pod/vm/vsock.sock"));
    assert_eq!(owner.control_socket(), Path::new("/run/x/pod/sandbox.sock"));
    assert_eq!(owner.vmm_log(), Path::new("/run/x/pod/vmm.log"));
}

#[test]
fn guest_memory_follows_the_limit() {
    let limited = |limit: Option<i64>| match limit {
        Some(limit) => {
            spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": limit}}}}))
        }
        None => spec(serde_json::json!({})),
    };
    assert_eq!(size::guest_memory_mib(&limited(None)), 128);
    assert_eq!(size::guest_memory_mib(&limited(Some(16 << 20))), 144);
    assert_eq!(size::guest_memory_mib(&limited(Some(512 << 20))), 640);
    assert_eq!(size::guest_memory_mib(&limited(Some(-1))), 128);
}

fn vm(memory_mib: u32, vcpus: u8) -> Option<VmSize> {
    Some(VmSize { memory_mib, vcpus })
}

#[test]
fn sandbox_sizes() {
    let with = |pairs: serde_json::Value| spec(serde_json::json!({"annotations": pairs}));
    let plain = for_owner(&with(serde_json::json!({})), true).ok();
    assert_eq!(plain, vm(256, 1));
    let containerd = with(serde_json::json!({
        "io.kubernetes.cri.sandbox-memory": "268435456",
        "io.kubernetes.cri.sandbox-cpu-quota": "150000",
        "io.kubernetes.cri.sandbox-cpu-period": "100000",
    }));
    assert_eq!(for_owner(&containerd, true).ok(), vm(384, 2));
    let crio = with(serde_json::json!({
        "io.kubernetes.cri-o.PodLinuxResources":
            "{\"cpu_period\":100000,\"cpu_quota\":300000,\"memory_limit_in_bytes\":134217728}",
    }));
    assert_eq!(for_owner(&crio, true).ok(), vm(256, 3));
    let own = with(serde_json::json!({
        "io.kubernetes.cri.sandbox-memory": "268435456",
        "io.runvm.vm.memory-mib": "512",
        "io.runvm.vm.vcpus": "4",
    }));
    assert_eq!(for_owner(&own, true).ok(), vm(512, 4));
    // A standalone container ignores the pod's figures, not runvm's own.
    assert_eq!(for_owner(&containerd, false).ok(), vm(128, 1));
    for bad in ["0", "-1", "lots", "99999999", "32"] {
        let spec = with(serde_json::json!({"io.runvm.vm.memory-mib": bad}));
        let error = for_owner(&spec, false).err().map(|e| e.to_string());
        assert!(
            error.is_some_and(|e| e.contains("io.runvm.vm.memory-mib")),
            "{bad}"
        );
    }
    let spec = with(serde_json::json!({"io.runvm.vm.vcpus": "100"}));
    assert!(for_owner(&spec, true).is_err());
    // Malformed CRI figures are ignored.
    let junk = with(serde_json::json!({
        "io.kubernetes.cri.sandbox-memory": "x",
        "pod-linux-resources.crio.io": "{",
    }));
    assert_eq!(for_owner(&junk, true).ok(), vm(256, 1));
}

#[test]
fn members_must_fit() {
    let vm = VmSize {
        memory_mib: 256,
        vcpus: 1,
    };
    let member = |memory: i64, quota: i64| {
        spec(serde_json::json!({"linux": {"resources": {
            "memory": {"limit": memory},
            "cpu": {"quota": quota, "period": 100000}
        }}}))
    };
    assert!(check_member(&member(64 << 20, 50000), &vm).is_ok());
    assert!(check_member(&member(128 << 20, 100000), &vm).is_ok());
    let error = check_member(&member(129 << 20, 50000), &vm).err();
    assert!(error.is_some_and(|e| e.contains("129 MiB")));
    let error = check_member(&member(64 << 20, 150000), &vm).err();
    assert!(error.is_some_and(|e| e.contains("2 vCPUs")));
    assert!(check_member(&spec(serde_json::json!({})), &vm).is_ok());
}

/// What member `m` of the VM of `pod` shares: (type, container) pairs.
fn shared_of(
    root: &StateRoot,
    member: &oci_spec::runtime::Spec,
) -> Vec<(runvm_agent_api::oci::LinuxNamespaceType, String)> {
    let shared = namespaces::shared_namespaces(root, member, "pod", "m").expect("shared");
    shared.into_iter().map(|s| (s.typ, s.container)).collect()
}

#[test]
fn namespace_paths_become_shared_namespaces_of_containers() {
    use runvm_agent_api::oci::LinuxNamespaceType as Guest;
    let dir = TestDir::new("shared-ns");
    let root = StateRoot::open(&dir.path().join("root")).expect("root");
    let pod = root.create("pod").expect("create");
    let mut pod_record = record("pod", None);
    pod_record.monitor = state::HostProcess::current();
    pod.save(&pod_record).expect("save");
    let me = std::process::id();
    let member = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "network", "path": format!("/proc/{me}/ns/net")},
        {"type": "ipc", "path": format!("/proc/{me}/ns/ipc")},
        {"type": "uts", "path": format!("/proc/{me}/ns/uts")},
        {"type": "pid", "path": format!("/proc/{me}/ns/pid")},
        {"type": "mount", "path": format!("/proc/{me}/ns/mnt")},
        {"type": "cgroup", "path": "/proc/1/ns/cgroup"},
        {"type": "user"}
    ]}}));
    // Mount and cgroup stay the member's own.
    assert_eq!(
        shared_of(&root, &member),
        [
            (Guest::Network, "pod".into()),
            (Guest::Ipc, "pod".into()),
            (Guest::Uts, "pod".into()),
            (Guest::Pid, "pod".into())
        ]
    );
    // Paths that name no runvm container: new namespaces, as before pods.
    let foreign = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "network", "path": "/run/netns/cni-1"},
        {"type": "ipc", "path": "/proc/1/ns/ipc"}
    ]}}));
    let none = namespaces::shared_namespaces(&root, &foreign, "pod", "m").expect("shared");
    assert!(none.is_empty(), "{none:?}");
    // Another VM's container, or the wrong kind of namespace: refused.
    let error = namespaces::shared_namespaces(&root, &member, "otherpod", "m")
        .err()
        .map(|e| e.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("container pod") && e.contains("otherpod")),
        "{error:?}"
    );
    let crossed = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "uts", "path": format!("/proc/{me}/ns/ipc")}
    ]}}));
    let error = namespaces::shared_namespaces(&root, &crossed, "pod", "m")
        .err()
        .map(|e| e.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("ipc namespace")),
        "{error:?}"
    );
}

#[test]
fn the_pod_cgroup_gets_the_cri_sizing() {
    let with = |pairs: serde_json::Value| spec(serde_json::json!({"annotations": pairs}));
    assert_eq!(size::pod_limits(&with(serde_json::json!({}))), None);
    let limits = size::pod_limits(&with(serde_json::json!({
        "io.kubernetes.cri.sandbox-memory": "268435456",
        "io.kubernetes.cri.sandbox-cpu-quota": "150000",
        "io.kubernetes.cri.sandbox-cpu-period": "100000",
    })))
    .expect("limits");
    assert_eq!(
        serde_json::to_value(&limits).expect("json"),
        serde_json::json!({"memory": {"limit": 268435456},
                           "cpu": {"quota": 150000, "period": 100000}})
    );
}

#[test]
fn podmans_infra_container_is_sized_as_a_sandbox() {
    let infra = |manager: &str, args: serde_json::Value| {
        spec(serde_json::json!({
            "annotations": {"io.container.manager": manager},
            "process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0}}
        }))
    };
    assert!(role::is_podman_infra(&infra(
        "libpod",
        serde_json::json!(["/catatonit", "-P"])
    )));
    assert!(!role::is_podman_infra(&infra(
        "libpod",
        serde_json::json!(["sh", "-c", "catatonit -P"])
    )));
    assert!(!role::is_podman_infra(&infra(
        "other",
        serde_json::json!(["/catatonit", "-P"])
    )));
}

#[test]
fn crio_pinned_namespace_files_of_the_owner_are_shared() {
    use runvm_agent_api::oci::LinuxNamespaceType as Guest;
    let dir = TestDir::new("pinned-ns");
    let pinned = dir.path().join("ns");
    std::fs::create_dir_all(&pinned).expect("ns dir");
    for name in ["ipc", "uts", "net", "other"] {
        std::fs::write(pinned.join(name), "").expect("pinned file");
    }
    // The same namespace file reached by another path.
    std::fs::hard_link(pinned.join("ipc"), pinned.join("ipc-alias")).expect("link");
    let at = |name: &str| pinned.join(name).display().to_string();
    let process = serde_json::json!({"args": ["sleep"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let owner_spec = serde_json::json!({"ociVersion": "1.0.2", "process": process,
    "linux": {"namespaces": [
        {"type": "pid"},
        {"type": "network", "path": at("net")},
        {"type": "ipc", "path": at("ipc")},
        {"type": "uts", "path": at("uts")},
        {"type": "mount"}
    ]}});
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle");
    std::fs::write(bundle.join("config.json"), owner_spec.to_string()).expect("config.json");
    let root = StateRoot::open(&dir.path().join("root")).expect("root");
    let mut pod_record = record("pod", None);
    pod_record.bundle = bundle.clone();
    root.create("pod")
        .expect("create")
        .save(&pod_record)
        .expect("save");

    // As CRI-O writes a member: the pod's pinned files, a /proc path for
    // PID; here the IPC file by another path and a network file that is
    // not the owner's.
    let member = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "network", "path": at("other")},
        {"type": "ipc", "path": at("ipc-alias")},
        {"type": "uts", "path": at("uts")},
        {"type": "mount"}
    ]}}));
    assert_eq!(
        shared_of(&root, &member),
        [(Guest::Ipc, "pod".into()), (Guest::Uts, "pod".into())]
    );

    // The owner's file under another type's entry is not its namespace.
    let crossed = spec(serde_json::json!({"linux": {"namespaces": [
        {"type": "uts", "path": at("ipc")}
    ]}}));
    let shared = namespaces::shared_namespaces(&root, &crossed, "pod", "m").expect("shared");
    assert!(shared.is_empty(), "{shared:?}");

    // Without the owner's config.json the files name nothing runvm knows.
    std::fs::remove_file(bundle.join("config.json")).expect("rm");
    let shared = namespaces::shared_namespaces(&root, &member, "pod", "m").expect("shared");
    assert!(shared.is_empty(), "{shared:?}");
}
