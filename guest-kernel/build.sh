#!/usr/bin/env bash
# Build runvm's guest kernel (an uncompressed vmlinux, booted through its PVH
# note) from Debian's linux-source-6.1, our patch series and our config
# fragments.
#
# usage: guest-kernel/build.sh [OUTPUT]     (default: <repo>/build/vmlinux)
#
# Results are cached by a hash of every input in
#   ${RUNVM_CACHE_DIR:-$HOME/.cache/runvm}/kernel/<hash>/{vmlinux,config}
# so a second run with unchanged inputs only copies the file.
set -euo pipefail

GK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$GK_DIR")
SELF="$GK_DIR/$(basename "${BASH_SOURCE[0]}")"
OUTPUT=${1:-$REPO_DIR/build/vmlinux}

SOURCE_PKG=linux-source-6.1
SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
APT_PACKAGES="linux-source-6.1 build-essential bc flex bison libelf-dev libssl-dev cpio"
CACHE_DIR=${RUNVM_CACHE_DIR:-$HOME/.cache/runvm}/kernel

die() {
    echo "guest kernel: error: $*" >&2
    exit 1
}

missing_packages() {
    die "$1; install the build dependencies with:
    apt-get install $APT_PACKAGES"
}

# --- inputs ----------------------------------------------------------------

shopt -s nullglob
FRAGMENTS=("$GK_DIR"/config/*.config)
PATCHES=("$GK_DIR"/patches/*.patch)
shopt -u nullglob
[ ${#FRAGMENTS[@]} -gt 0 ] || die "no config fragments in $GK_DIR/config"

SOURCE_VERSION=$(dpkg-query -W -f='${Version}' "$SOURCE_PKG" 2>/dev/null || true)
[ -n "$SOURCE_VERSION" ] && [ -f "$SOURCE_TARBALL" ] ||
    missing_packages "$SOURCE_PKG is not installed ($SOURCE_TARBALL missing)"
for tool in make gcc ld flex bison bc patch tar xz; do
    command -v "$tool" >/dev/null || missing_packages "'$tool' not found"
done
[ -f /usr/include/gelf.h ] || missing_packages "libelf headers (gelf.h) not found, objtool needs them"
GCC_VERSION=$(gcc --version | head -n 1)
LD_VERSION=$(ld --version | head -n 1)

# Everything that determines the result. Files are named relative to
# guest-kernel/ so the hash does not depend on where the repository lives.
inputs() {
    local f
    for f in "${FRAGMENTS[@]}" "${PATCHES[@]}" "$SELF"; do
        printf '%s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "${f#"$GK_DIR"/}"
    done
    printf '%s %s\n' "$SOURCE_PKG" "$SOURCE_VERSION"
    printf 'gcc: %s\n' "$GCC_VERSION"
    printf 'ld: %s\n' "$LD_VERSION"
}
HASH=$(inputs | sha256sum | cut -d' ' -f1)
ENTRY="$CACHE_DIR/$HASH"

install_output() {
    mkdir -p "$(dirname "$OUTPUT")"
    cp "$ENTRY/vmlinux" "$OUTPUT.tmp.$$"
    mv -f "$OUTPUT.tmp.$$" "$OUTPUT"
}

if [ -f "$ENTRY/vmlinux" ]; then
    install_output
    echo "guest kernel: cached $HASH"
    exit 0
fi

# --- build -----------------------------------------------------------------

mkdir -p "$CACHE_DIR"
WORK=$(mktemp -d "$CACHE_DIR/work.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

echo "guest kernel: building $HASH (inputs: ${#FRAGMENTS[@]} fragments, ${#PATCHES[@]} patches, $SOURCE_PKG $SOURCE_VERSION)"
START=$SECONDS

echo "guest kernel: extracting $SOURCE_TARBALL"
tar -xf "$SOURCE_TARBALL" -C "$WORK"
SRC="$WORK/linux-source-6.1"
OBJ="$WORK/obj"
[ -f "$SRC/Makefile" ] || die "unexpected layout of $SOURCE_TARBALL (no linux-source-6.1/Makefile)"

for p in "${PATCHES[@]}"; do
    echo "guest kernel: applying ${p#"$GK_DIR"/}"
    # --fuzz=0: a hunk whose context does not match exactly is rejected,
    # never applied somewhere close.
    if ! out=$(patch -d "$SRC" -p1 --forward --batch --fuzz=0 \
                     --no-backup-if-mismatch -r - <"$p" 2>&1); then
        echo "$out" >&2
        die "patch ${p#"$GK_DIR"/} does not apply to $SOURCE_PKG $SOURCE_VERSION"
    fi
    # An offset (same context, other line numbers) is still exact; say so,
    # the series wants regenerating against this source version.
    if grep -qi 'offset' <<<"$out"; then
        echo "$out" | sed 's/^/    /'
    fi
done

# Reproducible version string (uname -v) regardless of who builds where.
export KBUILD_BUILD_USER=runvm KBUILD_BUILD_HOST=runvm
export KBUILD_BUILD_TIMESTAMP="$SOURCE_PKG $SOURCE_VERSION"
KMAKE=(make -C "$SRC" O="$OBJ" -s)

echo "guest kernel: configuring (tinyconfig + fragments)"
"${KMAKE[@]}" tinyconfig >/dev/null
# -m: only merge; olddefconfig below resolves dependencies.
"$SRC/scripts/kconfig/merge_config.sh" -m -O "$OBJ" "$OBJ/.config" "${FRAGMENTS[@]}" >"$WORK/merge.log" 2>&1 ||
    { cat "$WORK/merge.log" >&2; die "merge_config.sh failed"; }
"${KMAKE[@]}" olddefconfig >/dev/null

# tinyconfig silently drops an option whose dependencies are not met, so
# check that every option set by a fragment is in the final .config as given.
bad=0
for frag in "${FRAGMENTS[@]}"; do
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            sym=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
            sym=${BASH_REMATCH[1]} want=n
        else
            continue
        fi
        got=$(grep -m1 "^$sym=" "$OBJ/.config" | cut -d= -f2- || true)
        [ -n "$got" ] || got=n
        if [ "$got" != "$want" ]; then
            echo "guest kernel: ${frag#"$GK_DIR"/}: $sym=$want, but .config has $sym=$got" >&2
            bad=1
        fi
    done <"$frag"
done
[ $bad -eq 0 ] || die "config fragments not honoured (missing dependencies?); see above"

JOBS=$(nproc)
echo "guest kernel: make -j$JOBS vmlinux (log: build.log)"
if ! "${KMAKE[@]}" -j"$JOBS" vmlinux >"$WORK/build.log" 2>&1; then
    tail -n 60 "$WORK/build.log" >&2
    die "kernel build failed (last lines of the log above)"
fi

# Store atomically: fill a temporary directory, then rename it into place.
NEW=$(mktemp -d "$CACHE_DIR/new.XXXXXX")
cp "$OBJ/vmlinux" "$NEW/vmlinux"
cp "$OBJ/.config" "$NEW/config"
chmod 755 "$NEW"
if ! mv -T "$NEW" "$ENTRY" 2>/dev/null; then
    # A concurrent build stored the same hash first; keep that one.
    rm -rf "$NEW"
    [ -f "$ENTRY/vmlinux" ] || die "cannot store the result in $ENTRY"
fi
install_output
echo "guest kernel: built $HASH in $((SECONDS - START)) s"
