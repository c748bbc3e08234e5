"""Power loss of the source for real: aimfs runs inside a QEMU guest over a
data disk, mirroring to an aim-remote on the host, and the host kills qemu
in the middle of a workload.  The guest's page cache is lost; what reached
its virtual disk stays.  Then the host recovers that disk itself — a loop
device mounted at the path the guest used, the host's build of aimfs
mounted over it, as the source would come back after its reboot — and
checks:

  * every write an acknowledged fsync covered is in the backing files
    (tests/pcwork.c, whose acknowledgements the guest prints on a serial
    port as they happen);
  * the replica, which was receiving from the guest, converges to exactly
    the backing files, and the status said why it resynchronised;
  * an offline replay of the whole journal onto the starting files equals
    the backing files.

The guest (tests/guest.py: Debian's cloud kernel under TCG where KVM cannot
boot it, a busybox initramfs carrying aimfs and pcwork with the libraries
ldd lists, and the fuse and virtio_net modules) reaches the host's remote
through QEMU's user network at 10.0.2.2.  Rounds repeat on the same disk:
the host unmounts cleanly, the next guest boots, writes, is cut.

The default suite runs a few rounds; the `soak` version
(`pytest -m soak`, AIM_SOAK_ROUNDS, default 12) runs more.  AIM_SEED=<n>
reproduces the rounds' workloads and the moments of the cuts (it is in
every failure message); guest logs are kept on failure (tests/guest.py)."""
import os
import random
import subprocess
import time

import pytest

from aimtest import AIMFS, assert_trees_equal, copy_tree, replay, run
from guest import Disk, build_initramfs, guests, kernel  # noqa: F401 (fixture)
from remote_helpers import PKI
from servers import free_port, get_status
from test_powercut import PCWORK, check_synced, differing_blocks, snapshot_images
from test_resync import remotes, source_conf, start_remote, wait_converged  # noqa: F401

FILES, SIZE, THREADS = 3, "8M", 2
DISK_MB_PER_ROUND = 512      # sparse; the journal keeps every segment (retain) for the replay
BOOT_TIMEOUT = 600           # TCG on a shared machine
NET = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]

GUEST_SCRIPT = r"""
P={disk}
mkdir -p "$P" /mnt/aim
mount -t ext4 "$(disk data)" "$P"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
seed=$(sed -n 's/.*aimseed=\([0-9]*\).*/\1/p' /proc/cmdline)
{aimfs} -f -o config=/etc/aim/guest.conf "$P/backing" /mnt/aim > /dev/console 2>&1 &
n=0
until grep -q " /mnt/aim fuse" /proc/mounts; do
    n=$((n + 1)); [ $n -lt 3000 ] || die "aimfs did not mount"
    sleep 0.1
done
aimt MOUNTED
PCWORK_PREFIX="AIMT:ACK " {pcwork} run /mnt/aim {files} {size} "$seed" {threads} 3600 50 \
    > /dev/ttyS1 2> /dev/console &
aimt RUNNING
wait
"""


class LoopDisk:
    """A disk image mounted through a loop device at a fixed path, undone by
    umount and losetup -d (by device) whatever happens."""

    def __init__(self, image, path):
        self.image, self.path = image, path
        self.dev = None

    def mount(self):
        self.dev = run(["losetup", "-f", "--show", self.image]).stdout.strip()
        os.makedirs(self.path, exist_ok=True)
        run(["mount", "-t", "ext4", self.dev, self.path])

    def unmount(self):
        if self.dev is None:
            return
        if os.path.ismount(self.path):
            run(["umount", self.path])
        run(["losetup", "-d", self.dev])
        self.dev = None

    def close(self):
        try:
            if os.path.ismount(self.path):
                subprocess.run(["umount", "-l", self.path], check=False)
            if self.dev:
                subprocess.run(["losetup", "-d", self.dev], check=False)
        finally:
            self.dev = None


@pytest.fixture
def loopdisks(workdir):
    """Torn down after the mounts on them (tests name it before aimfs)."""
    made = []
    yield made
    for d in made:
        d.close()


def guest_conf(port, retain="1h"):
    return (f"[aimfs]\nstatus = off\nsegment_size = 1M\nsegment_age = 300ms\nretain = {retain}\n"
            f"[destination dr1]\nurl = https://10.0.2.2:{port}/aim\n"
            "ca_file = /etc/aim/ca.pem\ncert_file = /etc/aim/client.pem\n"
            "key_file = /etc/aim/client.key\ntoken_file = /etc/aim/token\n")


def power_cut_rounds(loopdisks, aimfs, workdir, remotes, guests, seed, rounds):  # noqa: F811
    rng = random.Random(f"guest-powercut:{seed}")
    kern = kernel()
    pki = PKI(os.path.join(workdir, "pki"), ips=("127.0.0.1", "10.0.2.2"))
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    host_conf = source_conf(workdir, "host.conf", {"dr1": (r, pki)}, status,
                            extra="retain = 1h\n")
    # The disk, its ext4 and the starting images, made on the host; the first
    # mount (on the host) starts the group and syncs the replica.
    image = os.path.join(workdir, "data.img")
    with open(image, "wb") as f:
        f.truncate((256 + DISK_MB_PER_ROUND * rounds) << 20)
    run(["mkfs.ext4", "-q", "-F", image])
    path = os.path.join(workdir, "disk")          # the same path in the guest
    disk = LoopDisk(image, path)
    loopdisks.append(disk)
    disk.mount()
    backing = os.path.join(path, "backing")
    os.makedirs(backing)
    run([PCWORK, "init", backing, str(FILES), SIZE, str(seed)])
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    mnt = os.path.join(workdir, "mnt")
    m = aimfs(backing=backing, mountpoint=mnt, options=[f"config={host_conf}"])
    wait_converged(status, [r])
    assert m.unmount() == 0
    before = os.path.join(workdir, "before-0")
    snapshot_images(backing, before)
    disk.unmount()

    script = GUEST_SCRIPT.format(disk=path, aimfs=AIMFS, pcwork=PCWORK, files=FILES, size=SIZE,
                                 threads=THREADS)
    initrd = build_initramfs(
        os.path.join(workdir, "guest.cpio.gz"), script, kern,
        modules=("virtio_pci", "virtio_blk", "ext4", "fuse", "virtio_net"),
        extra_binaries=[AIMFS, PCWORK],
        files={"/etc/aim/ca.pem": pki.ca, "/etc/aim/client.pem": pki.client,
               "/etc/aim/client.key": pki.client_key, "/etc/aim/token": pki.token_file},
        data={"/etc/aim/guest.conf": guest_conf(r.listen_port)})
    for k in range(rounds):
        run_seed = seed * 100 + k
        g = guests(f"round{k}", kern, initrd, disks=[Disk(image, serial="data")], memory=512,
                   append=f"aimseed={run_seed}", extra_args=NET)
        g.wait_result("RUNNING", BOOT_TIMEOUT)
        # a few acknowledged syncs first, so the cut finds the workload going
        g.wait_count("ACK ", 3, BOOT_TIMEOUT)
        delay = rng.uniform(0.5, 6.0)
        time.sleep(delay)
        g.kill()
        what = f"AIM_SEED={seed} round {k}: cut {delay:.1f}s after the first acknowledgements"
        acks = os.path.join(workdir, f"acks-{k}")
        with open(acks, "w") as f:
            for line in g.results:
                if line.startswith("ACK "):
                    f.write(line[4:] + "\n")

        # The source's next boot, on the host.
        disk.mount()
        r.stop()                # the resync waits: the status says why meanwhile
        m = aimfs(backing=backing, mountpoint=mnt, options=[f"config={host_conf}"],
                  log_path=os.path.join(workdir, f"host-{k}.log"))
        out = check_synced(backing, run_seed, acks, before, what, FILES, SIZE, THREADS)
        st = get_status(status)
        told = [d.get("sync", {}).get("reason") for d in st["destinations"]]
        r.start()
        wait_converged(status, [r], timeout=600)
        assert m.unmount() == 0
        diff = differing_blocks(backing, r.target)
        assert not diff, f"{what}: the replica says it is in sync but differs from the" \
                         f" source in these 64 KiB blocks: {diff}\n{out}"
        assert_trees_equal(backing, r.target)
        target = os.path.join(workdir, f"replayed-{k}")
        copy_tree(start, target)
        replay(m.journal, target)
        diff = differing_blocks(backing, target)
        assert not diff, f"{what}: the journal replayed onto the starting files differs from" \
                         f" the backing files in these 64 KiB blocks: {diff}"
        assert told == ["source power loss"], f"{what}: status after the cut: {told}"
        assert "source power loss" in m.output(), m.output()
        before = os.path.join(workdir, f"before-{k + 1}")
        snapshot_images(backing, before)
        disk.unmount()


def test_power_cut_of_a_guest_running_aimfs(loopdisks, aimfs, workdir, remotes,  # noqa: F811
                                            guests):
    seed = int(os.environ.get("AIM_SEED", 5))
    power_cut_rounds(loopdisks, aimfs, workdir, remotes, guests, seed, rounds=2)


@pytest.mark.soak
def test_power_cut_of_a_guest_running_aimfs_soak(loopdisks, aimfs, workdir,  # noqa: F811
                                                 remotes, guests):
    seed = int(os.environ.get("AIM_SEED", 17))
    rounds = int(os.environ.get("AIM_SOAK_ROUNDS", 12))
    power_cut_rounds(loopdisks, aimfs, workdir, remotes, guests, seed, rounds)
