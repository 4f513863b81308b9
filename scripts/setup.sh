#!/usr/bin/env bash
# Installs what building and testing runvm needs on a fresh Debian 12 machine
# (run as root). Idempotent: packages already present are not touched, so a
# second run costs a dpkg query.
#
#   scripts/setup.sh          build and test dependencies
#   scripts/setup.sh --bench  also QEMU, for the side-by-side benchmarks
set -euo pipefail

# The vhost-user backend behind runvm-vmm's --fs (virtio-fs), built from
# crates.io with its own lock file. Pinned: bump it deliberately.
VIRTIOFSD_VERSION=1.14.0

packages=(
  # guest kernel build
  linux-source-6.1 build-essential bc flex bison libelf-dev libssl-dev cpio patch xz-utils
  # end-to-end tests; busybox-static gives the test image its tools
  util-linux busybox-static
  # the guest image is an ext4 filesystem (mke2fs -d, debugfs)
  e2fsprogs
  # virtiofsd, built below, links libseccomp and libcap-ng
  libseccomp-dev libcap-ng-dev
  # runc CLI tests (tests/tests/{podman,containerd,runc_cli}.rs): Debian's
  # podman and conmon (rootful, --network none: netavark is the network
  # stack containers-common needs), containerd 1.6 with its runc shim, runc
  # itself (to check the tests: RUNVM_TEST_RUNTIME=/usr/sbin/runc), and
  # procps and tar (`runc ps` runs ps; the test image is a tar)
  podman conmon netavark containerd runc procps tar
  # podman pods (tests/tests/podman.rs): the infra container's init
  catatonit
  # CRI test (tests/tests/cri.rs): containerd's CRI plugin runs the pods'
  # CNI (bridge, host-local), and the k8s-cri crate's build runs protoc
  containernetworking-plugins protobuf-compiler
  # network tests (tests/tests/network.rs, runtime's network module): ip
  # and tc set up and inspect the namespaces, veths and taps they make
  iproute2
  # scripts/e2e.sh reads cargo's JSON messages to find the test executables
  python3
)
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(qemu-system-x86)
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: installing packages needs root (apt-get); run as root or install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
# The agent is linked statically against glibc for x86_64-unknown-linux-gnu.
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-gnu; then
  rustup target add x86_64-unknown-linux-gnu
fi

virtiofsd=$(command -v virtiofsd || echo "${CARGO_HOME:-$HOME/.cargo}/bin/virtiofsd")
if [[ "$("$virtiofsd" --version 2>/dev/null)" != "virtiofsd $VIRTIOFSD_VERSION" ]]; then
  echo "setup: installing virtiofsd $VIRTIOFSD_VERSION (cargo install, about a minute)"
  cargo install virtiofsd --version "$VIRTIOFSD_VERSION" --locked --quiet
fi
echo "setup: ok"
