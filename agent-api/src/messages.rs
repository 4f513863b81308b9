//! Requests, responses and stream greetings.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host; echoed in the response.
    pub id: u64,
    pub body: RequestBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RequestBody {
    /// The agent's version and protocol; also a health check.
    Version,
    /// Start a process. Its streams must already be connected.
    Exec(ExecRequest),
    /// Send a signal to a process.
    Signal {
        process: u64,
        signal: i32,
    },
    /// Wait for a process to end; answered when it has.
    Wait {
        process: u64,
    },
    /// End of input for the process (closes its stdin).
    CloseStdin {
        process: u64,
    },
    ResizeTerminal {
        process: u64,
        rows: u16,
        columns: u16,
    },
    ListProcesses,
    /// Power the VM off.
    Shutdown,

    // Containers (see [`crate::containers`]). Added in protocol 1 without a
    // bump: an older agent answers these with `InvalidRequest`.
    /// Create a container and hold its init process before the user
    /// program runs (namespaces, mounts, user and capabilities are set up),
    /// like `runc create`. Answered with `Started` (the init's process id
    /// and pid); `Wait` on that process id, or `WaitContainer`, sees it end.
    CreateContainer(Box<CreateContainerRequest>),
    /// Let the init process of a created container run its program.
    StartContainer {
        id: String,
    },
    /// Run another process in a container's namespaces and cgroup, like
    /// `runc exec`; answered with `Started`.
    ExecInContainer(Box<ExecInContainerRequest>),
    /// Signal the init process, or with `all` every process of the
    /// container.
    SignalContainer {
        id: String,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Wait for the container's init process to end; answered with
    /// `Exited`. May be asked any number of times until the container is
    /// deleted.
    WaitContainer {
        id: String,
    },
    /// Remove a container: kill what is left of it, remove its cgroup and
    /// forget it. A running container needs `force` (its processes are
    /// killed); a created or stopped one does not.
    DeleteContainer {
        id: String,
        #[serde(default)]
        force: bool,
    },
    /// Status and pid of a container (`ContainerState`).
    ContainerState {
        id: String,
    },
    /// Resource usage from the container's cgroup (`ContainerStats`).
    ContainerStats {
        id: String,
    },
    /// Long poll: answered with the first event whose sequence number is
    /// greater than `after` (0 for the oldest still kept), once there is
    /// one. Events are numbered from 1; the agent keeps the latest 256.
    WaitEvent {
        #[serde(default)]
        after: u64,
    },
    /// Mount the virtio-fs device with this tag at [`crate::GUEST_SHARE_DIR`]
    /// (the host's per-VM share, where container root filesystems are
    /// bound: see [`crate::shared_rootfs`]). Answered with `Done`, also when
    /// that tag is mounted there already; another tag there is a
    /// `Conflict`. The host asks once, before the first container that
    /// needs the share, so a VM that never uses it pays nothing at boot.
    MountShare {
        tag: String,
    },
    /// Freeze (`frozen`) or thaw every process of a container through its
    /// cgroup (cgroup.freeze), answered with `Done` once the kernel reports
    /// it done, like `runc pause` / `runc resume`.
    FreezeContainer {
        id: String,
        frozen: bool,
    },
    /// Every live process of a container (its cgroup and the cgroups
    /// below), like `runc ps`: answered with `ContainerProcesses`.
    ContainerProcesses {
        id: String,
    },
    /// New cgroup limits for a container, like `runc update`: an OCI
    /// `linux.resources` object (fields left out are not changed).
    UpdateContainer {
        id: String,
        resources: Box<crate::oci::LinuxResources>,
    },
    /// Make a VM restored from a template its own machine, before anything
    /// else runs in it: mix the host's random `entropy` into the kernel's
    /// pool and reseed its generator (so no two VMs of one template share
    /// random output), and set the wall clock to `realtime_ns` (nanoseconds
    /// since the Unix epoch; the template's clock stopped when it was
    /// saved), and give each network card in `cards` its own MAC (the
    /// template's cards all had placeholders; see
    /// [`crate::network::CardMac`]), before any interface is configured.
    /// Answered with `Done`. `entropy` must hold between
    /// [`MIN_RESEED_BYTES`] and [`MAX_RESEED_BYTES`] bytes.
    Reseed {
        entropy: Vec<u8>,
        realtime_ns: u64,
        #[serde(default)]
        cards: Vec<crate::network::CardMac>,
    },
}

/// Fewest bytes of host entropy a [`RequestBody::Reseed`] carries: the
/// kernel's generator wants 256 bits to count as seeded.
pub const MIN_RESEED_BYTES: usize = 32;
/// Most bytes a [`RequestBody::Reseed`] may carry (the kernel's pool takes
/// no more at once).
pub const MAX_RESEED_BYTES: usize = 512;

/// `CreateContainer`: an OCI runtime spec (`config.json`) and where the
/// container's root filesystem is in the guest. `spec.root.path` is
/// ignored: `rootfs` says where the root is. With `spec.process.terminal`,
/// `stdin` names the one stream that carries the terminal both ways and
/// `stdout`/`stderr` must be unset, as for [`ExecRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateContainerRequest {
    pub id: String,
    pub spec: crate::oci::Spec,
    /// Absolute guest path of the root filesystem.
    pub rootfs: String,
    pub stdin: Option<u64>,
    pub stdout: Option<u64>,
    pub stderr: Option<u64>,
    /// The pod's network, for the container that owns the pod's network
    /// namespace (a sandbox, or a container with a VM of its own): the
    /// agent gives the guest's virtio-net devices the pod's interfaces
    /// before the container's program runs. Added without a protocol bump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::GuestNetwork>,
    /// The pod the container is part of (added in protocol 1 without a
    /// bump; without it the container is a pod of none, as before pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodPlacement>,
    /// `process.args[0]` as the host found it in the process's PATH, an
    /// absolute path in the container, when no mount can change what that
    /// search finds (see the runtime's `program_path`): the agent runs it
    /// instead of searching through virtio-fs when the process may run it
    /// (else it searches).
    /// Added in protocol 1 without a bump; without it the agent searches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
}

/// Where a container goes in the VM's pod. Its cgroup is made below the
/// pod's (`<cgroup root>/<pod id>/<container id>`), which the first
/// container of the pod creates and the last one deleted removes; it
/// joins the namespaces it shares with other containers of the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlacement {
    /// The pod's id: the id of the container that owns the VM (its
    /// sandbox), a valid container id.
    pub id: String,
    /// The pod's own limits, written to the pod's cgroup (fields left out
    /// are not changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<crate::oci::LinuxResources>>,
    /// Namespaces taken from other containers of the VM instead of being
    /// created. Each type must also be in `spec.linux.namespaces` (without
    /// a path): network, IPC, UTS or PID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_namespaces: Vec<SharedNamespace>,
}

/// "Join namespace `typ` of container `container`'s init": resolved by
/// the agent to that init (which must exist and not have stopped), never
/// to a guest pid the host could not know is still the same process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedNamespace {
    #[serde(rename = "type")]
    pub typ: crate::oci::LinuxNamespaceType,
    pub container: String,
}

/// `ExecInContainer`: an OCI process (args, env, cwd, user, terminal,
/// capabilities, rlimits, no_new_privileges) to run in container `id`. The
/// container's seccomp filter applies to it too. Streams as for
/// [`CreateContainerRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInContainerRequest {
    pub id: String,
    pub process: crate::oci::Process,
    pub stdin: Option<u64>,
    pub stdout: Option<u64>,
    pub stderr: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// `NAME=value` entries: the process's whole environment.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// With a terminal, `stdin` names the one stream that carries it both
    /// ways and `stdout`/`stderr` are unused.
    pub terminal: bool,
    /// Tokens of the stream connections (see [`StreamHello`]); `None` gives
    /// the process /dev/null.
    pub stdin: Option<u64>,
    pub stdout: Option<u64>,
    pub stderr: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub result: Result<ResponseBody, AgentError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResponseBody {
    Version { agent: String, protocol: u32 },
    Started { process: u64, pid: i32 },
    Exited { process: u64, status: ExitStatus },
    Processes { processes: Vec<ProcessInfo> },
    ContainerProcesses { processes: Vec<GuestProcess> },
    Done,
    ContainerState(ContainerState),
    ContainerStats(ContainerStats),
    Event { seq: u64, event: ContainerEvent },
}

/// Where a container is in its life, as runc names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    /// Set up and held; `StartContainer` lets its program run.
    Created,
    Running,
    /// The init process has ended.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: ContainerStatus,
    /// The init process's id in the agent's process table, and its pid in
    /// the guest.
    pub process: u64,
    pub pid: i32,
    pub rootfs: String,
    /// How the init ended, once it has.
    pub exited: Option<ExitStatus>,
}

/// Figures from the container's cgroup (v2). A limit of `None` is
/// unlimited ("max"); a figure the kernel does not offer is 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// memory.current, bytes.
    pub memory_usage: u64,
    /// memory.max, bytes.
    pub memory_limit: Option<u64>,
    /// oom_kill from memory.events.
    pub oom_kills: u64,
    /// cpu.stat usage_usec, user_usec, system_usec.
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    /// pids.current and pids.max.
    pub pids_current: u64,
    pub pids_limit: Option<u64>,
}

/// Something that happened to a container, for `WaitEvent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContainerEvent {
    /// The kernel's OOM killer killed a process of the container;
    /// `oom_kills` is the container's total so far.
    Oom { id: String, oom_kills: u64 },
    /// The container's init process ended.
    Exited { id: String, status: ExitStatus },
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// A process of a container as the guest's /proc describes it (pids are
/// the guest's, seen from the agent's pid namespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcess {
    pub pid: i32,
    pub ppid: i32,
    /// Real uid.
    pub uid: u32,
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: String,
    /// The command name (`comm`), for a process without arguments.
    pub name: String,
    pub argv: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub process: u64,
    pub pid: i32,
    pub argv: Vec<String>,
    pub exited: Option<ExitStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed or inconsistent request.
    InvalidRequest,
    /// No such process or stream.
    NotFound,
    /// The protocol versions differ.
    Unsupported,
    /// A system call in the guest failed.
    System,
    /// The request does not fit the current state: a container id in use,
    /// a container that is not in the state the request needs.
    Conflict,
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for AgentError {}

/// The first line on a stream connection: `STREAM <token>\n`. The host
/// picks tokens unique within the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHello {
    pub token: u64,
}

impl StreamHello {
    /// Longest valid line, newline included.
    pub const MAX_LEN: usize = 7 + 20 + 1;

    pub fn to_line(self) -> String {
        format!("STREAM {}\n", self.token)
    }

    pub fn parse(line: &[u8]) -> Option<StreamHello> {
        let text = std::str::from_utf8(line).ok()?;
        let token = text.strip_suffix('\n')?.strip_prefix("STREAM ")?;
        Some(StreamHello {
            token: token.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_tagged_and_readable() {
        let request = Request {
            id: 3,
            body: RequestBody::Signal {
                process: 1,
                signal: 9,
            },
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            json,
            r#"{"id":3,"body":{"op":"signal","process":1,"signal":9}}"#
        );
    }

    #[test]
    fn errors_travel_as_structured_results() {
        let response = Response {
            id: 4,
            result: Err(AgentError {
                kind: ErrorKind::NotFound,
                message: "no process 9".into(),
            }),
        };
        let json = serde_json::to_string(&response).unwrap();
        let back: Response = serde_json::from_str(&json).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn a_container_request_carries_the_spec_as_oci_json() {
        let config = r#"{
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 1000, "gid": 1000}, "args": ["sh"], "cwd": "/",
                        "terminal": true},
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "box",
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}],
                      "maskedPaths": ["/proc/kcore"]}
        }"#;
        let spec: crate::oci::Spec = serde_json::from_str(config).unwrap();
        let request = Request {
            id: 9,
            body: RequestBody::CreateContainer(Box::new(CreateContainerRequest {
                id: "c1".into(),
                spec,
                rootfs: "/run/c1/rootfs".into(),
                stdin: Some(5),
                ..CreateContainerRequest::default()
            })),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["body"]["op"], "create_container");
        assert_eq!(json["body"]["spec"]["hostname"], "box");
        assert_eq!(
            json["body"]["spec"]["linux"]["maskedPaths"][0],
            "/proc/kcore"
        );
        assert_eq!(json["body"]["spec"]["process"]["user"]["uid"], 1000);
        let back: Request = serde_json::from_value(json).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn a_pod_placement_is_optional_and_names_containers() {
        let plain: CreateContainerRequest =
            serde_json::from_str(r#"{"id":"c","spec":{},"rootfs":"/r"}"#).unwrap();
        assert_eq!(plain.pod, None);
        assert!(!serde_json::to_string(&plain).unwrap().contains("pod"));
        let member: CreateContainerRequest = serde_json::from_str(
            r#"{"id":"m","spec":{},"rootfs":"/r","pod":{"id":"s",
                "shared_namespaces":[{"type":"network","container":"s"}]}}"#,
        )
        .unwrap();
        let pod = member.pod.as_ref().unwrap();
        assert_eq!(pod.id, "s");
        assert_eq!(pod.resources, None);
        assert_eq!(
            pod.shared_namespaces,
            [SharedNamespace {
                typ: crate::oci::LinuxNamespaceType::Network,
                container: "s".into()
            }]
        );
        let json = serde_json::to_string(&member).unwrap();
        assert_eq!(
            serde_json::from_str::<CreateContainerRequest>(&json).unwrap(),
            member
        );
    }

    #[test]
    fn container_answers_and_defaults_round_trip() {
        let signal: RequestBody =
            serde_json::from_str(r#"{"op":"signal_container","id":"c","signal":15}"#).unwrap();
        assert_eq!(
            signal,
            RequestBody::SignalContainer {
                id: "c".into(),
                signal: 15,
                all: false
            }
        );
        let share: RequestBody =
            serde_json::from_str(r#"{"op":"mount_share","tag":"runvm"}"#).unwrap();
        assert_eq!(
            share,
            RequestBody::MountShare {
                tag: "runvm".into()
            }
        );
        let wait: RequestBody = serde_json::from_str(r#"{"op":"wait_event"}"#).unwrap();
        assert_eq!(wait, RequestBody::WaitEvent { after: 0 });
        for body in [
            ResponseBody::ContainerState(ContainerState {
                id: "c".into(),
                status: ContainerStatus::Stopped,
                process: 3,
                pid: 77,
                rootfs: "/r".into(),
                exited: Some(ExitStatus::Signal(9)),
            }),
            ResponseBody::ContainerStats(ContainerStats {
                memory_limit: Some(1 << 20),
                ..ContainerStats::default()
            }),
            ResponseBody::Event {
                seq: 4,
                event: ContainerEvent::Oom {
                    id: "c".into(),
                    oom_kills: 2,
                },
            },
        ] {
            let json = serde_json::to_string(&body).unwrap();
            let back: ResponseBody = serde_json::from_str(&json).unwrap();
            assert_eq!(back, body, "{json}");
        }
        let event = serde_json::to_value(ResponseBody::Event {
            seq: 1,
            event: ContainerEvent::Oom {
                id: "c".into(),
                oom_kills: 1,
            },
        })
        .unwrap();
        assert_eq!(event["kind"], "event");
        assert_eq!(event["event"]["type"], "oom");
    }

    #[test]
    fn exit_status_reads_like_a_shell() {
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }

    #[test]
    fn stream_hello_round_trips_and_rejects_junk() {
        let hello = StreamHello { token: u64::MAX };
        assert!(hello.to_line().len() <= StreamHello::MAX_LEN);
        assert_eq!(StreamHello::parse(hello.to_line().as_bytes()), Some(hello));
        assert_eq!(StreamHello::parse(b"STREAM x\n"), None);
        assert_eq!(StreamHello::parse(b"STREAM 1"), None);
        assert_eq!(StreamHello::parse(b"HELLO 1\n"), None);
    }
}
