#!/bin/bash
# The README's main command: a real mirror on this one machine.
#   1. installs the dependencies and builds,
#   2. makes a throwaway PKI (CA, server and client certificates, token),
#   3. starts aim-remote on loopback with TLS, client certificates and a token,
#   4. mounts aimfs over a demo image directory with that destination,
#   5. writes a qcow2 image with qemu-img + qemu-io (cache=none, as a VM
#      would) and a raw image with fio,
#   6. waits until the source's status says the destination is in sync and
#      shows both daemons' status with curl,
#   7. proves the replica equal to the source (qemu-img compare, cmp).
# Everything lives under demo/ (remade at each run); mounts and daemons are
# always stopped, by PID, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/demo
SRC_STATUS=127.0.0.1:9380
DST_STATUS=127.0.0.1:9381
LISTEN=127.0.0.1:9443

if [ "$(id -u)" -ne 0 ]; then
	echo "$0: needs root to mount FUSE filesystems (sudo $0)" >&2
	exit 2
fi
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing dependencies and building"
./scripts/install-deps.sh
if [ -d build ]; then meson setup --reconfigure build >/dev/null; else meson setup build >/dev/null; fi
ninja -C build aimfs/aimfs tools/aimctl remote/aim-remote >/dev/null
AIMFS=$ROOT/build/aimfs/aimfs
AIMCTL=$ROOT/build/tools/aimctl
AIM_REMOTE=$ROOT/build/remote/aim-remote

AIMFS_PID=
REMOTE_PID=
cleanup() {
	if mountpoint -q "$DEMO/images" 2>/dev/null; then
		fusermount3 -u "$DEMO/images" || fusermount3 -u -z "$DEMO/images"
	fi
	[ -n "$AIMFS_PID" ] && wait "$AIMFS_PID" 2>/dev/null || true
	if [ -n "$REMOTE_PID" ] && kill -0 "$REMOTE_PID" 2>/dev/null; then
		kill "$REMOTE_PID"
		wait "$REMOTE_PID" 2>/dev/null || true
	fi
}
trap cleanup EXIT

if mountpoint -q "$DEMO/images" 2>/dev/null; then fusermount3 -u "$DEMO/images"; fi
rm -rf "$DEMO"
mkdir -p "$DEMO/backing" "$DEMO/images" "$DEMO/remote/inbox" "$DEMO/remote/state"
# A VM image that exists before aimfs is mounted: the starting point, which
# the remote site already holds (as if restored from a backup).
qemu-img create -q -f raw "$DEMO/backing/old-vm.raw" 64M
cp -a --sparse=always "$DEMO/backing" "$DEMO/remote/images"

say "a throwaway PKI"
./scripts/mkpki.sh "$DEMO/pki"

say "aim-remote on https://$LISTEN (status on $DST_STATUS)"
"$AIM_REMOTE" --inbox "$DEMO/remote/inbox" --target-dir "$DEMO/remote/images" \
	--state "$DEMO/remote/state" --listen "$LISTEN" \
	--tls-cert "$DEMO/pki/server.pem" --tls-key "$DEMO/pki/server.key" \
	--client-ca "$DEMO/pki/ca.pem" --token-file "$DEMO/pki/token" \
	--status "$DST_STATUS" 2>"$DEMO/aim-remote.log" &
REMOTE_PID=$!
for _ in $(seq 100); do curl -sf "http://$DST_STATUS/status" >/dev/null && break; sleep 0.1; done
curl -sf "http://$DST_STATUS/status" >/dev/null || { cat "$DEMO/aim-remote.log"; exit 1; }

cat > "$DEMO/aimfs.conf" <<CONF
[aimfs]
status = $SRC_STATUS
segment_age = 1s

[destination dr1]
url = https://$LISTEN/aim
ca_file = $DEMO/pki/ca.pem
cert_file = $DEMO/pki/client.pem
key_file = $DEMO/pki/client.key
token_file = $DEMO/pki/token
compress = zstd
CONF
say "mounting aimfs: $DEMO/backing -> $DEMO/images, shipping to dr1"
cat "$DEMO/aimfs.conf"
"$AIMFS" -f -o config="$DEMO/aimfs.conf" "$DEMO/backing" "$DEMO/images" 2>"$DEMO/aimfs.log" &
AIMFS_PID=$!
for _ in $(seq 100); do mountpoint -q "$DEMO/images" && break; sleep 0.1; done
mountpoint -q "$DEMO/images" || { cat "$DEMO/aimfs.log"; exit 1; }

say "qemu-img + qemu-io (cache=none) on a qcow2 image through the mount"
qemu-img create -q -f qcow2 "$DEMO/images/vm1.qcow2" 256M
qemu-io -t none -f qcow2 \
	-c 'write -P 0xaa 0 4M' -c 'write -P 0x55 1M 64k' -c 'aio_write -P 0x33 128M 2M' \
	-c 'aio_flush' -c 'discard 2M 1M' -c 'flush' "$DEMO/images/vm1.qcow2"
qemu-img check -q "$DEMO/images/vm1.qcow2" && echo "qemu-img check: no errors"

say "fio: random 4 KiB writes, O_DIRECT, on a raw image through the mount"
fio --name=demo --filename="$DEMO/images/vm2.raw" --size=64M --bs=4k --rw=randwrite \
	--direct=1 --ioengine=libaio --iodepth=8 --runtime=5 --time_based \
	--output-format=terse --terse-version=3 |
	awk -F';' '{printf "fio: %s write IOPS for %s ms\n", $49, $50}'
qemu-io -t none -f raw -c 'write -P 0x77 1M 1M' "$DEMO/images/old-vm.raw" >/dev/null

say "waiting until the source says the destination is in sync"
head=0
for i in $(seq 240); do
	st=$(curl -sf "http://$SRC_STATUS/status")
	head=$(jq -r .head_lsn <<<"$st")
	applied=$(curl -sf "http://$DST_STATUS/status" | jq -r '[.groups[]?.applied_lsn] | max // 0')
	if [ "$(jq -r .in_sync <<<"$st")" = true ] && [ "$applied" = "$head" ]; then
		echo "in sync after ${i}x0.5 s: source head LSN $head, remote applied LSN $applied"
		break
	fi
	sleep 0.5
done
[ "$applied" = "$head" ] || { echo "not in sync"; cat "$DEMO/aimfs.log" "$DEMO/aim-remote.log"; exit 1; }

say "curl -s http://$SRC_STATUS/status | jq"
curl -s "http://$SRC_STATUS/status" | jq
say "curl -s http://$DST_STATUS/status | jq"
curl -s "http://$DST_STATUS/status" | jq
say "aimctl status (the same, for people)"
"$AIMCTL" status "$SRC_STATUS"

say "the replica equals the source"
for img in vm1.qcow2 vm2.raw old-vm.raw; do
	cmp "$DEMO/backing/$img" "$DEMO/remote/images/$img"
	echo "cmp $img: identical"
done
qemu-img compare -f qcow2 -F qcow2 "$DEMO/backing/vm1.qcow2" "$DEMO/remote/images/vm1.qcow2"

say "unmounting"
fusermount3 -u "$DEMO/images"
wait "$AIMFS_PID"; AIMFS_PID=
echo "done: source $DEMO/backing, replica $DEMO/remote/images, logs in $DEMO/*.log"
