#!/usr/bin/env bash
# Builds, once, a Debian bookworm arm64 root file system (what Raspberry Pi OS 64-bit is) for
# `make test-arm64`, and prints its path. Cached outside the repo; later runs reuse it at once.
#
#   EDGE_REC_ARM64_CACHE   cache folder (default ~/.cache/edge-recommender/arm64)
#   EDGE_REC_DEBIAN_MIRROR Debian mirror (default: the host's apt source, else deb.debian.org)
#
# Needs root (debootstrap, chroot, binfmt_misc). Installs qemu-user-static, binfmt-support and
# debootstrap with apt-get when missing. Progress goes to stderr; the rootfs path to stdout.
set -euo pipefail

CACHE="${EDGE_REC_ARM64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-recommender/arm64}"
ROOTFS="$CACHE/bookworm-arm64"
say() { echo "==> arm64 rootfs: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "make test-arm64 needs root (debootstrap, chroot, binfmt_misc)" >&2
    exit 1
fi

missing=()
for tool in qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support debootstrap:debootstrap; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Let the kernel run arm64 programs through qemu (a container may not have binfmt_misc mounted).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 >&2 || update-binfmts --import qemu-aarch64 >&2
fi

# What a Raspberry Pi OS Lite image has that docs/install.md's steps rely on (systemd for the unit's folder).
PACKAGES="python3 python3-venv python3-pip ca-certificates sudo systemd"

apt_install() {  # apt_install ROOT PACKAGES...: in the chroot, with /proc mounted
    local root="$1"; shift
    mount -t proc proc "$root/proc"
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $* >/dev/null \
               && update-ca-certificates >/dev/null && apt-get clean" >&2
    local status=$?
    umount --lazy "$root/proc"
    return $status
}

if [ -f "$ROOTFS/.edge-rec-complete" ]; then
    if [ "$(cat "$ROOTFS/.edge-rec-complete")" != "$PACKAGES" ]; then
        say "cached at $ROOTFS; installing the packages added since: $PACKAGES"
        apt_install "$ROOTFS" $PACKAGES
        echo "$PACKAGES" > "$ROOTFS/.edge-rec-complete"
    fi
    say "cached at $ROOTFS"
    echo "$ROOTFS"
    exit 0
fi

mirror="${EDGE_REC_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

partial="$ROOTFS.partial"
rm -rf "$partial"
mkdir -p "$CACHE"
started=$(date +%s)
say "debootstrap bookworm arm64 from $mirror, first stage (downloads)"
debootstrap --arch=arm64 --foreign --variant=minbase bookworm "$partial" "$mirror" >&2
cp "$(command -v qemu-aarch64-static)" "$partial/usr/bin/"
say "second stage under qemu (several minutes)"
chroot "$partial" /debootstrap/debootstrap --second-stage >&2
echo "deb $mirror bookworm main" > "$partial/etc/apt/sources.list"
# The host's extra CA certificates (an egress proxy's), so pip inside can reach PyPI.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$partial/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$partial/usr/local/share/ca-certificates/"
fi
say "apt-get install $PACKAGES"
apt_install "$partial" $PACKAGES
echo "$PACKAGES" > "$partial/.edge-rec-complete"
rm -rf "$ROOTFS"
mv "$partial" "$ROOTFS"
say "built in $(( $(date +%s) - started )) s at $ROOTFS"
echo "$ROOTFS"
