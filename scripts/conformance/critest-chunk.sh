#!/bin/sh
# One critest chunk against containerd (started as CONFORMANCE.md says):
# critest-chunk.sh HANDLER NAME FOCUS. Each spec boots a VM with runvm's
# handlers: the VM lock is held for the chunk only, so others can test
# between chunks. JUnit report: $DIR/reports/HANDLER-NAME.xml.
set -eu
: "${DIR:?containerd work dir}" "${NETNS:?network namespace path}" "${CRITEST:?critest binary}"
handler=$1 name=$2 focus=$3
mkdir -p "$DIR/reports"
lock=flock
[ "$handler" = runc ] && lock=
$lock ${lock:+/tmp/runvm-vm.lock} nsenter --net="$NETNS" "$CRITEST" \
    -runtime-endpoint "unix://$DIR/containerd.sock" -image-endpoint "unix://$DIR/containerd.sock" \
    -runtime-handler "$handler" -ginkgo.no-color -ginkgo.focus "$focus" \
    -ginkgo.junit-report "$DIR/reports/$handler-$name.xml" || true
python3 "$(dirname "$0")/junit-summary.py" "$DIR/reports/$handler-$name.xml"
