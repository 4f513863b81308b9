#!/bin/sh
# The containerd side of a critest run, as CONFORMANCE.md describes it:
#   containerd-env.sh up    network namespace, local registry with the
#                           images (registry-images.sh), containerd's
#                           config (containerd-config.sh), containerd
#   containerd-env.sh down  containerd and the registry stopped, then
#                           what they may leave checked and removed
# DIR: work dir; CRICTL: crictl (default: on PATH); PREFIX: runvm's `make install` prefix (its bin dir goes
# first on containerd's PATH, for containerd-shim-runvm-v2). VM templates
# go to a store of their own, removed by `down`.
set -eu
: "${DIR:?work dir}" "${PREFIX:?runvm install prefix}"
NAME=ctrd-t
NETNS=/run/netns/$NAME
TEMPLATES=/run/cnf-templates
here=$(dirname "$(readlink -f "$0")")
export DIR NETNS

up() {
    ip netns add $NAME
    ip -n $NAME link set lo up
    "$here/registry-images.sh"
    RUNVM=$PREFIX/bin/runvm "$here/containerd-config.sh"
    PATH=$PREFIX/bin:$PATH RUNVM_TEMPLATE_DIR=$TEMPLATES \
        nsenter --net=$NETNS containerd --config "$DIR/config.toml" \
        > "$DIR/containerd.log" 2>&1 < /dev/null &
    echo $! > "$DIR/containerd.pid"
    for _ in $(seq 60); do
        ctr --address "$DIR/containerd.sock" version > /dev/null 2>&1 && break
        sleep 1
    done
    echo "containerd: pid $(cat "$DIR/containerd.pid"), socket $DIR/containerd.sock"
}

stop_pid() { # pid file
    [ -f "$1" ] || return 0
    kill "$(cat "$1")" 2> /dev/null || true
    while kill -0 "$(cat "$1")" 2> /dev/null; do sleep 1; done
    rm -f "$1"
}

down() {
    # Pods a failed spec left: stopped and removed through CRI, so that
    # their shims end and clean up.
    crictl="${CRICTL:-crictl} -r unix://$DIR/containerd.sock"
    if [ -f "$DIR/containerd.pid" ] && [ -n "$($crictl pods -q)" ]; then
        $crictl rmp --force --all || true
    fi
    stop_pid "$DIR/containerd.pid"
    stop_pid "$DIR/registry.pid"
    left=$(ps -eo pid=,args= | grep -E 'runvm-vmm|virtiofsd|containerd-shim' | grep -E "$DIR|/run/cnf-" | grep -v grep || true)
    [ -z "$left" ] || echo "left running: $left"
    # runvm-shim's state root is machine-wide: reported, not removed.
    ls -A /run/runvm-shim/k8s.io 2> /dev/null | sed 's/^/runvm-shim state left: /'
    grep -E " ($DIR|/run/cnf-)" /proc/self/mountinfo | awk '{print $5}' | sort -r |
        while read -r mount; do umount "$mount" && echo "unmounted $mount"; done
    rm -rf /run/cnf-runc /run/cnf-runvm "$TEMPLATES" /run/conformance-podman
    # containerd's cgroups of pods without a cgroup parent (critest's).
    rmdir /sys/fs/cgroup/*/k8s.io/* /sys/fs/cgroup/*/k8s.io 2> /dev/null || true
    ip netns del $NAME 2> /dev/null || true
}

"$1"
