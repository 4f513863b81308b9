#!/usr/bin/env bash
# Writes a small OCI bundle for `make run`: a rootfs with Debian's static
# busybox and a config.json from `runvm spec`, set to print where it runs.
set -euo pipefail
runvm=$(realpath "$1")
bundle=$2
rm -rf "$bundle"
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/etc" "$bundle/rootfs/proc" \
    "$bundle/rootfs/sys" "$bundle/rootfs/dev" "$bundle/rootfs/tmp"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$bundle/rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$bundle/rootfs/etc/passwd"
echo 'root:x:0:' > "$bundle/rootfs/etc/group"
(cd "$bundle" && "$runvm" spec)
python3 - "$bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["process"]["terminal"] = False
config["process"]["args"] = ["sh", "-c",
    'echo "hello from container $(hostname), pid $$, kernel $(uname -r)"']
json.dump(config, open(path, "w"), indent=2)
PY
