//! The part of containerd's config the containerd and CRI tests share:
//! state under the test's scratch dir, a private socket, and only the
//! plugins the tests use (no /opt, no snapshotters but overlayfs).

/// containerd's config.toml for a test whose scratch dir is `scratch`,
/// with the CRI plugin when `cri` (its section is the caller's to add).
pub fn base(scratch: &str, cri: bool) -> String {
    let cri_disabled = if cri {
        ""
    } else {
        "\n  \"io.containerd.grpc.v1.cri\","
    };
    format!(
        r#"# Written by the runvm containerd tests.
version = 2
root = "{scratch}/root"
state = "{scratch}/state"
disabled_plugins = [{cri_disabled}
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.native",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{scratch}/containerd.sock"
"#
    )
}
