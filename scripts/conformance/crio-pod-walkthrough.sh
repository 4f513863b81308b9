#!/bin/sh
# The CRI-O walkthrough of CONFORMANCE.md: a pod with two busybox containers
# on runvm, checked and torn down through crictl. Needs CRI-O started as
# CONFORMANCE.md says; CRICTL is a crictl command for its socket, NETNS the
# network namespace CRI-O runs in (its stream server listens there), DIR
# holds pod.json and ctr-a.json / ctr-b.json. Boots one VM: run it under
# `flock /tmp/runvm-vm.lock`.
set -eu
: "${CRICTL:?crictl command}" "${NETNS:?network namespace path}" "${DIR:?dir of the json files}"
cd "$DIR"
step() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; exit 1; }

step runp
pod=$($CRICTL runp --runtime runvm pod.json)
for n in a b; do
    id=$($CRICTL create "$pod" "ctr-$n.json" pod.json)
    $CRICTL start "$id" >/dev/null
    eval "ctr_$n=$id"
done
# shellcheck disable=SC2154 # set by eval
a=$ctr_a b=$ctr_b
probe='cat /proc/sys/kernel/random/boot_id; hostname; for n in ipc uts net pid; do readlink /proc/self/ns/$n; done'
step "exec (ExecSync) in both"
pa=$($CRICTL exec -s "$a" sh -c "$probe")
pb=$($CRICTL exec -s "$b" sh -c "$probe")
printf 'a: %s\nb: %s\n' "$(echo $pa)" "$(echo $pb)"
[ "$pa" = "$pb" ] || fail "the containers differ in boot_id, hostname or ipc/uts/net/pid namespaces"
step "pod IP on eth0"
ip=$($CRICTL inspectp -o go-template --template '{{.status.network.ip}}' "$pod")
$CRICTL exec -s "$a" ip -4 addr show eth0 | grep -q "inet $ip/" || fail "$ip not on eth0"
echo "$ip on eth0"
step "exec (streaming) exit status"
set +e
nsenter --net="$NETNS" $CRICTL exec "$b" sh -c 'echo streamed; exit 3'
status=$?
set -e
[ "$status" -eq 1 ] || fail "crictl exec: $status"
step logs
$CRICTL logs "$a" 2>&1 | grep -q started-a || fail "no log of a"
$CRICTL logs "$b" 2>&1 | grep -q to-stderr-b || fail "no stderr log of b"
step "stop (SIGTERM, trapped: exit 0), rm"
$CRICTL stop -t 30 "$a" >/dev/null
code=$($CRICTL inspect -o go-template --template '{{.status.exitCode}}' "$a")
[ "$code" = 0 ] || fail "a exited $code after stop"
$CRICTL rm "$a" >/dev/null
$CRICTL exec -s "$b" true || fail "b gone with a"
step "stopp, rmp"
$CRICTL stopp "$pod"
$CRICTL rmp "$pod"
[ -z "$($CRICTL pods -q)" ] || fail "pods left"
[ -z "$($CRICTL ps -aq)" ] || fail "containers left"
echo "OK"
