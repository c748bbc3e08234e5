#!/bin/bash
# The README's main command: on this one machine, sets everything up and
# shows aimfs at work on a demo image directory:
#   1. installs the dependencies and builds aimfs,
#   2. mounts aimfs over demo/images (backing dir demo/backing),
#   3. creates a qcow2 image through the mount and writes to it with qemu-io
#      (cache=none, as a VM would), and a raw image with fio,
#   4. unmounts and shows the journal with `aimctl dump`,
#   5. replays the journal offline onto a copy of the starting directory
#      and proves it equal to the source (qemu-img compare, cmp).
# Everything it makes lives under demo/ (removed at the start of each run);
# the mount is always undone, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/demo

if [ "$(id -u)" -ne 0 ]; then
	echo "$0: needs root to mount FUSE filesystems (sudo $0)" >&2
	exit 2
fi
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing dependencies and building"
./scripts/install-deps.sh
if [ -d build ]; then meson setup --reconfigure build >/dev/null; else meson setup build >/dev/null; fi
ninja -C build aimfs/aimfs tools/aimctl >/dev/null
AIMFS=$ROOT/build/aimfs/aimfs
AIMCTL=$ROOT/build/tools/aimctl

AIMFS_PID=
cleanup() {
	if mountpoint -q "$DEMO/images" 2>/dev/null; then
		fusermount3 -u "$DEMO/images" || fusermount3 -u -z "$DEMO/images"
	fi
	if [ -n "$AIMFS_PID" ] && kill -0 "$AIMFS_PID" 2>/dev/null; then
		wait "$AIMFS_PID" || true
	fi
}
trap cleanup EXIT

if mountpoint -q "$DEMO/images" 2>/dev/null; then fusermount3 -u "$DEMO/images"; fi
rm -rf "$DEMO"
mkdir -p "$DEMO/backing" "$DEMO/images"
# A VM image that exists before aimfs is mounted: the starting point.
qemu-img create -q -f raw "$DEMO/backing/old-vm.raw" 64M
cp -a --sparse=always "$DEMO/backing" "$DEMO/start"

say "mounting aimfs: $DEMO/backing -> $DEMO/images"
"$AIMFS" -f -o segment_age=1s "$DEMO/backing" "$DEMO/images" 2>"$DEMO/aimfs.log" &
AIMFS_PID=$!
for _ in $(seq 100); do mountpoint -q "$DEMO/images" && break; sleep 0.1; done
mountpoint -q "$DEMO/images" || { cat "$DEMO/aimfs.log"; exit 1; }
cat "$DEMO/aimfs.log"

say "qemu-img + qemu-io (cache=none) on a qcow2 image through the mount"
qemu-img create -q -f qcow2 "$DEMO/images/vm1.qcow2" 256M
qemu-io -t none -f qcow2 \
	-c 'write -P 0xaa 0 4M' -c 'write -P 0x55 1M 64k' -c 'aio_write -P 0x33 128M 2M' \
	-c 'aio_flush' -c 'discard 2M 1M' -c 'flush' "$DEMO/images/vm1.qcow2"
qemu-img check -q "$DEMO/images/vm1.qcow2" && echo "qemu-img check: no errors"

say "fio random 4 KiB writes (O_DIRECT) on a raw image through the mount"
fio --name=demo --filename="$DEMO/images/vm2.raw" --size=64M --bs=4k --rw=randwrite \
	--direct=1 --ioengine=libaio --iodepth=8 --runtime=5 --time_based \
	--output-format=terse --terse-version=3 | awk -F';' '{printf "fio: %s write IOPS over %s ms\n", $49, $50}'
qemu-io -t none -f raw -c 'write -P 0x77 1M 1M' "$DEMO/images/old-vm.raw" >/dev/null

say "unmounting (the open segment is sealed)"
fusermount3 -u "$DEMO/images"
wait "$AIMFS_PID"; AIMFS_PID=

say "the journal"
ls -l "$DEMO/backing/.aimfs"
first=$(ls "$DEMO/backing/.aimfs"/*.aimj | head -1)
"$AIMCTL" dump "$first" | head -25 || true
echo "..."
sqlite3 -header -column "$DEMO/backing/.aimfs/catalog.db" \
	"SELECT i.name AS image, count(*) AS records, sum(w.length) AS bytes
	 FROM writes w JOIN images i ON i.id = w.image GROUP BY i.name;"

say "offline replay onto a copy of the starting directory"
"$AIMCTL" replay --target-dir "$DEMO/start" "$DEMO/backing/.aimfs"
for img in vm1.qcow2 vm2.raw old-vm.raw; do
	cmp "$DEMO/start/$img" "$DEMO/backing/$img"
	echo "cmp $img: identical"
done
qemu-img compare -f qcow2 -F qcow2 "$DEMO/start/vm1.qcow2" "$DEMO/backing/vm1.qcow2"
say "the replica equals the source"
