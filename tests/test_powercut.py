"""Power loss of the source, in process (docs/NOTES.md, "Power loss").

aimfs-powercut is aimfs with its I/O tables wrapped by an undo log
(tests/powercut_io.c).  A workload of O_DIRECT and buffered writes and
fsyncs (tests/pcwork.c) runs through it while it mirrors to a real
aim-remote; at a random moment the daemon is killed with SIGKILL, and
tests/powercut.py puts back every change that no sync had made durable yet
(all of them, or what a random writeback would have left): that is the
disk after a power cut.  Then the source "reboots" (a new boot id) and
mounts again, perhaps to be cut again during the resync.  In the end:

  * every write an acknowledged fsync covered is in the backing files;
  * the replica converges to exactly the backing files, and the status said
    why it was resynchronising ("source power loss");
  * an offline replay of the whole journal onto the starting files equals
    the backing files.

Reproduce a failure with AIM_SEED=<seed> (printed with every failure)."""
import os
import random
import shutil
import subprocess
import time
import uuid

import pytest

from aimtest import BUILD_DIR, assert_trees_equal, copy_tree, replay, run
from powercut import power_cut
from servers import free_port, get_status
from test_resync import pki, remotes, source_conf, start_remote, wait_converged  # noqa: F401

AIMFS_POWERCUT = os.path.join(BUILD_DIR, "tests", "aimfs-powercut")
PCWORK = os.path.join(BUILD_DIR, "tests", "pcwork")
FILES, SIZE, THREADS = 3, "16M", 4


def images(d):
    return sorted(f for f in os.listdir(d) if f.startswith("pc-"))


def snapshot_images(src, dst):
    os.makedirs(dst)
    for f in images(src):
        shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))


class Source:
    """The mirrored source across its boots: one undo log per boot."""

    def __init__(self, aimfs, workdir, conf, seed):
        self.aimfs = aimfs
        self.workdir = workdir
        self.backing = os.path.join(workdir, "backing")
        self.mnt = os.path.join(workdir, "mnt")
        self.conf = conf
        self.seed = seed
        self.boots = 0
        self.m = None
        self.undo = None

    def boot(self, boot_id=None):
        self.boots += 1
        self.boot_id = boot_id or str(uuid.UUID(int=random.Random(
            f"boot:{self.seed}:{self.boots}").getrandbits(128), version=4))
        self.undo = os.path.join(self.workdir, f"undo-{self.boots}.log")
        self.m = self.aimfs(backing=self.backing, mountpoint=self.mnt,
                            options=[f"config={self.conf}"], binary=AIMFS_POWERCUT,
                            env={"AIM_POWERCUT_LOG": self.undo,
                                 "AIM_TEST_BOOT_ID": self.boot_id},
                            log_path=os.path.join(self.workdir, f"aimfs-{self.boots}.log"))
        return self.m

    def power_cut(self, rng):
        """SIGKILL, then undo what was not durable.  Returns the mode used."""
        self.m.kill9()
        mode = rng.choice(("all", "random"))
        power_cut(self.undo, [self.m.journal, self.m.backing], rng, mode)
        return mode


def workload(mnt, run_seed, acks_path, seconds=30):
    return subprocess.Popen([PCWORK, "run", mnt, str(FILES), SIZE, str(run_seed), str(THREADS),
                             str(seconds)], stdout=open(acks_path, "w"), stderr=subprocess.PIPE)


def differing_blocks(a, b, block=64 << 10):
    """{image: number of 64 KiB blocks that differ} between two directories."""
    out = {}
    for f in images(a):
        with open(os.path.join(a, f), "rb") as x, open(os.path.join(b, f), "rb") as y:
            n = 0
            while True:
                p, q = x.read(block), y.read(block)
                if not p and not q:
                    break
                n += p != q
        if n:
            out[f] = n
    return out


def check_synced(backing, run_seed, acks, before, what, files=FILES, size=SIZE, threads=THREADS):
    p = run([PCWORK, "check", backing, str(files), size, str(run_seed), str(threads), acks,
             before], check=False)
    assert p.returncode == 0, f"{what}: a synced write is missing:\n{p.stdout}{p.stderr}"
    return p.stdout


def power_cut_scenario(aimfs, workdir, pki, remotes, seed, cuts, extra=""):
    rng = random.Random(f"powercut:{seed}")
    what = f"AIM_SEED={seed}"
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    run([PCWORK, "init", backing, str(FILES), SIZE, str(seed)])
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "src.conf", {"dr1": (r, pki)}, status,
                       extra="retain = 1h\n" + extra)
    src = Source(aimfs, workdir, conf, seed)
    m = src.boot()
    wait_converged(status, [r])
    told = None
    for cut in range(cuts):
        run_seed = seed * 100 + cut
        before = os.path.join(workdir, f"before-{cut}")
        snapshot_images(backing, before)
        acks = os.path.join(workdir, f"acks-{cut}")
        w = workload(m.mountpoint, run_seed, acks)
        delay = rng.uniform(0.3, 2.5)
        time.sleep(delay)
        mode = src.power_cut(rng)
        w.wait(60)
        what = f"AIM_SEED={seed}: cut {cut} after {delay:.2f}s ({mode} undone)"
        last = cut == cuts - 1
        if last:
            r.stop()            # the resync must wait: the status says why meanwhile
        m = src.boot()
        check_synced(backing, run_seed, acks, before, what)
        if last:
            st = get_status(status)
            told = [d.get("sync", {}).get("reason") for d in st["destinations"]]
            r.start()
    wait_converged(status, [r], timeout=300)
    assert m.unmount() == 0
    diff = differing_blocks(backing, r.target)
    assert not diff, f"{what}: the replica says it is in sync but differs from the source" \
                     f" in these 64 KiB blocks: {diff}"
    assert_trees_equal(backing, r.target)
    target = os.path.join(workdir, "replayed")
    copy_tree(start, target)
    replay(m.journal, target)
    diff = differing_blocks(backing, target)
    assert not diff, f"{what}: the journal replayed onto the starting files differs from the" \
                     f" backing files in these 64 KiB blocks: {diff}"
    assert_trees_equal(backing, target)
    assert told == ["source power loss"], f"{what}: status during the resync: {told}"
    assert "source power loss" in m.output(), m.output()
    r.stop()


@pytest.mark.parametrize("seed,cuts,extra", [
    pytest.param(11, 1, "", id="one-cut"),
    pytest.param(23, 2, "", id="cut-during-resync"),
    pytest.param(37, 1, "", id="one-cut-b"),
    # 768 extents of 64 KiB for 128 slots: checkpoints give extents away
    # while the workload runs
    pytest.param(41, 1, "al_extents = 128\nal_extent_size = 64K\n", id="small-log"),
])
def test_power_cut_in_process(aimfs, workdir, pki, remotes, seed, cuts, extra):
    seed = int(os.environ.get("AIM_SEED", seed))
    power_cut_scenario(aimfs, workdir, pki, remotes, seed, cuts, extra)


def test_daemon_crash_in_the_same_boot_keeps_the_exact_recovery(aimfs, workdir, pki, remotes):
    """kill -9 of aimfs without a power cut: the page cache kept every
    write, so recovery alone is exact and no destination resynchronises;
    every acknowledged write (synced or not) is in the backing files and
    on the replica."""
    seed = int(os.environ.get("AIM_SEED", 53))
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    run([PCWORK, "init", backing, str(FILES), SIZE, str(seed)])
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "src.conf", {"dr1": (r, pki)}, status)
    src = Source(aimfs, workdir, conf, seed)
    boot = str(uuid.uuid4())
    m = src.boot(boot)
    wait_converged(status, [r])
    before = os.path.join(workdir, "before")
    snapshot_images(backing, before)
    acks = os.path.join(workdir, "acks")
    w = workload(m.mountpoint, seed, acks)
    time.sleep(random.Random(seed).uniform(0.5, 2.0))
    m.kill9()
    w.wait(60)
    m = src.boot(boot)
    check_synced(backing, seed, acks, before, f"AIM_SEED={seed}")
    wait_converged(status, [r])
    assert m.unmount() == 0
    assert_trees_equal(backing, r.target)
    out = m.output()
    assert "stopped without unmounting during this boot" in out, out
    assert "power loss" not in out, out


@pytest.mark.soak
def test_power_cut_in_process_soak(aimfs, workdir, pki, remotes):  # noqa: F811
    """Many seeds in a row (AIM_SOAK_ROUNDS, default 30), one to three cuts
    each, some with a small activity log whose extents must be checkpointed
    and given away while the workload runs."""
    base = int(os.environ.get("AIM_SEED", 1000))
    for k in range(int(os.environ.get("AIM_SOAK_ROUNDS", 30))):
        seed = base + k
        sub = os.path.join(workdir, f"seed{seed}")
        os.makedirs(sub)
        extra = "al_extents = 128\nal_extent_size = 64K\n" if k % 3 == 2 else ""
        power_cut_scenario(aimfs, sub, pki, remotes, seed, 1 + k % 3, extra=extra)

