#!/bin/sh
# Installs every build, test and benchmark dependency of aimfs from Debian 12's
# packages. Safe to run again; needs root (or sudo).
# ceph-mon, ceph-osd and radosgw (~35 s, without recommends) run the
# throwaway single-node Ceph cluster whose RADOS Gateway the object-store
# tests and bench/s3-bench.sh use (tests/ceph_rgw.py); faketime puts that
# gateway's clock off for the clock-skew test.
set -eu
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
PKGS="build-essential meson ninja-build pkg-config clang
  libfuse3-dev fuse3 liburing-dev libsqlite3-dev sqlite3 libcurl4-openssl-dev curl
  libmicrohttpd-dev libinotifytools0-dev libjansson-dev libzstd-dev
  libxxhash-dev libinih-dev libclang-rt-14-dev
  python3 python3-pytest python3-xxhash qemu-utils fio bindfs openssl jq nginx-light rsync
  iproute2 util-linux e2fsprogs gdb zstd strace
  qemu-system-x86 busybox-static cpio
  libsystemd-dev libvirt-clients prometheus systemd libcap2-bin groff-base
  ceph-mon ceph-osd radosgw faketime"
# liburing-dev: FUSE over io_uring (-o io_uring=on).  libsystemd-dev: sd_notify for the Type=notify units.  libvirt-clients:
# virt-xml-validate (its schemas come with libvirt0) for the libvirt
# examples.  prometheus: promtool, which checks the alert rules and the
# /metrics text (Debian has no smaller package with promtool; without
# recommends it is the server and promtool only — on a host booted with
# systemd, installing it enables prometheus.service).  systemd:
# systemd-analyze and systemd-fstab-generator for the units and the fstab
# line; libcap2-bin: capsh; groff-base: the man pages' format check.
missing=
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends $missing
fi
