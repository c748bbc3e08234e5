#!/bin/sh
# Installs every build, test and benchmark dependency of aimfs from Debian 12's
# packages. Safe to run again; needs root (or sudo).
set -eu
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
PKGS="build-essential meson ninja-build pkg-config clang
  libfuse3-dev fuse3 libsqlite3-dev sqlite3 libcurl4-openssl-dev curl
  libmicrohttpd-dev libinotifytools0-dev libjansson-dev libzstd-dev
  libxxhash-dev libinih-dev libclang-rt-14-dev
  python3 python3-pytest python3-xxhash qemu-utils fio bindfs openssl jq nginx-light rsync
  iproute2 util-linux e2fsprogs gdb zstd
  qemu-system-x86 busybox-static cpio"
missing=
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends $missing
fi
