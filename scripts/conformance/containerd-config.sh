#!/bin/sh
# containerd 1.6's config for critest, as tests/tests/cri/env.rs writes it:
# state under DIR, a private socket, CNI bridge + host-local, and three
# handlers: runvm (runc shim, BinaryName), runc, and runvm's own shim.
# CNI: bridge + host-local, and portmap for the pods' host ports.
# registry.k8s.io and gcr.io come from registry-images.sh's local registry.
# RUNVM is the installed runvm (its shim beside it, on containerd's PATH).
set -eu
: "${DIR:?work dir}" "${RUNVM:?installed runvm binary}"
mkdir -p "$DIR/cni"
cat > "$DIR/cni/10-bridge.conflist" <<EOC
{
  "cniVersion": "1.0.0",
  "name": "conformance",
  "plugins": [{
    "type": "bridge", "bridge": "cnf0", "isGateway": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.81.0/24"}]],
             "dataDir": "$DIR/cni-ipam"}
  }, {
    "type": "portmap", "capabilities": {"portMappings": true}
  }]
}
EOC
cri='plugins."io.containerd.grpc.v1.cri"'
cat > "$DIR/config.toml" <<EOC
version = 2
root = "$DIR/root"
state = "$DIR/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$DIR/containerd.sock"
[$cri]
  sandbox_image = "registry.k8s.io/pause:3.6"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [$cri.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [$cri.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [$cri.containerd.runtimes.runc.options]
        Root = "/run/cnf-runc"
    [$cri.containerd.runtimes.runvm]
      runtime_type = "io.containerd.runc.v2"
      [$cri.containerd.runtimes.runvm.options]
        BinaryName = "$RUNVM"
        Root = "/run/cnf-runvm"
    [$cri.containerd.runtimes.runvm-shim]
      runtime_type = "io.containerd.runvm.v2"
  [$cri.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni"
    max_conf_num = 1
  [$cri.registry.mirrors."registry.k8s.io"]
    endpoint = ["http://127.0.0.1:5000"]
  [$cri.registry.mirrors."gcr.io"]
    endpoint = ["http://127.0.0.1:5000"]
EOC
