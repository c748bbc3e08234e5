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

from aimtest import AIMCTL, BUILD_DIR, MKSEG, assert_trees_equal, copy_tree, replay, run, wait_for
from powercut import power_cut
from servers import free_port, get_status, metrics
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


def power_cut_scenario(aimfs, workdir, pki, remotes, seed, cuts, extra="", retain=True):
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
    # retain keeps every segment for the final replay; without it the
    # journal is pruned behind the destination, but never past what the
    # backing files are synced to (a power cut redoes from there)
    conf = source_conf(workdir, "src.conf", {"dr1": (r, pki)}, status,
                       extra=("retain = 1h\n" if retain else "") + extra)
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
    if retain:
        target = os.path.join(workdir, "replayed")
        copy_tree(start, target)
        replay(m.journal, target)
        diff = differing_blocks(backing, target)
        assert not diff, f"{what}: the journal replayed onto the starting files differs from" \
                         f" the backing files in these 64 KiB blocks: {diff}"
        assert_trees_equal(backing, target)
    # a small journal may have overflowed before the cut: the destination
    # was resyncing for that already
    reasons = ("source power loss",) if retain else ("source power loss", "journal overflow")
    assert len(told) == 1 and told[0] in reasons, f"{what}: status during the resync: {told}"
    if told[0] == "source power loss":
        assert "source power loss" in m.output(), m.output()
    r.stop()


@pytest.mark.parametrize("seed,cuts,extra", [
    pytest.param(11, 1, "", id="one-cut"),
    pytest.param(23, 2, "", id="cut-during-resync"),
    pytest.param(37, 1, "", id="one-cut-b"),
    # 768 extents of 64 KiB for 128 slots: checkpoints give extents away
    # while the workload runs
    pytest.param(41, 1, "al_extents = 128\nal_extent_size = 64K\n", id="small-log"),
    # no retention, a small journal: pruned while the workload runs, so a
    # segment pruned past the backing files' last sync loses synced writes
    pytest.param(43, 2, "journal_max = 6M\nsegment_size = 256K\n", id="pruned"),
    # every fsync syncs the backing file too, as before backing_sync existed
    pytest.param(47, 1, "backing_sync = fsync\n", id="backing-sync-fsync"),
])
def test_power_cut_in_process(aimfs, workdir, pki, remotes, seed, cuts, extra):
    seed = int(os.environ.get("AIM_SEED", seed))
    power_cut_scenario(aimfs, workdir, pki, remotes, seed, cuts, extra,
                       retain="journal_max" not in extra)


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


@pytest.mark.parametrize("mode", ["checkpoint", "fsync"])
def test_an_fsync_syncs_the_journal_and_a_power_cut_redoes_it(aimfs, workdir, mode):
    """backing_sync=checkpoint (the default): an fsync of an image makes the
    journal durable and leaves its backing file to the activity log's next
    checkpoint, one device flush instead of two -- except for a file this
    mount created, whose directory entry may not be durable yet.  A power
    cut right after loses the backing file's unsynced pages; the next mount
    redoes the journal from the last checkpoint, so every fsynced write is
    there.  backing_sync=fsync syncs the backing file at every fsync."""
    from powercut import read_log
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    run([PCWORK, "init", backing, "1", "4M", "5"])
    mnt = os.path.join(workdir, "mnt")
    undo = os.path.join(workdir, "undo.log")
    env = {"AIM_POWERCUT_LOG": undo, "AIM_TEST_BOOT_ID": str(uuid.UUID(int=11, version=4))}
    # segments sealed by size as the writes go: their trailers say the
    # backing files have the writes (in the page cache), so only the
    # activity log's synced LSN tells the next mount to redo them
    m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env,
              options=[f"backing_sync={mode}", "segment_size=512K"])
    rnd = random.Random(f"fsync:{mode}")
    old, new = rnd.randbytes(3 << 20), rnd.randbytes(1 << 20)
    with open(os.path.join(mnt, "pc-0.img"), "r+b") as f:
        f.write(old)
        os.fsync(f.fileno())
    with open(os.path.join(mnt, "new.img"), "wb") as f:
        f.write(new)
        os.fsync(f.fileno())
    m.kill9()
    _, syncs, _, _ = read_log(undo)
    image = os.stat(os.path.join(backing, "pc-0.img"))
    created = os.stat(os.path.join(backing, "new.img"))
    assert ((image.st_dev, image.st_ino) in syncs) == (mode == "fsync"), syncs
    assert (created.st_dev, created.st_ino) in syncs, "a new file's fsync must sync it"
    power_cut(undo, [m.journal, backing], random.Random(1), "all")
    env = {"AIM_TEST_BOOT_ID": str(uuid.UUID(int=12, version=4))}
    m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env,
              log_path=os.path.join(workdir, "after.log"))
    with open(os.path.join(mnt, "pc-0.img"), "rb") as f:
        assert f.read(len(old)) == old, "an fsynced write to an image was lost"
    with open(os.path.join(mnt, "new.img"), "rb") as f:
        assert f.read() == new, "an fsynced write to a new file was lost"
    assert m.unmount() == 0


def test_an_image_is_synced_before_it_loses_its_name(aimfs, workdir):
    """Under backing_sync=checkpoint an fsynced write may be in the journal
    only until the next checkpoint.  An unlink or a rename that a power cut
    loses (nothing syncs the directory) would bring the old name back on a
    file without it, where the redo no longer looks: so an image is synced
    before it is unlinked, renamed or renamed over."""
    from powercut import read_log
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    run([PCWORK, "init", backing, "3", "1M", "5"])
    mnt = os.path.join(workdir, "mnt")
    undo = os.path.join(workdir, "undo.log")
    env = {"AIM_POWERCUT_LOG": undo, "AIM_TEST_BOOT_ID": str(uuid.UUID(int=31, version=4))}
    m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env)
    inodes = {}
    for name in ("pc-0.img", "pc-1.img", "pc-2.img"):
        st = os.stat(os.path.join(backing, name))
        inodes[name] = (st.st_dev, st.st_ino)
        with open(os.path.join(mnt, name), "r+b") as f:
            f.write(os.urandom(65536))
            os.fsync(f.fileno())
    os.unlink(os.path.join(mnt, "pc-0.img"))
    os.rename(os.path.join(mnt, "pc-1.img"), os.path.join(mnt, "renamed.img"))
    os.rename(os.path.join(mnt, "renamed.img"), os.path.join(mnt, "pc-2.img"))  # over pc-2
    m.kill9()
    _, syncs, _, _ = read_log(undo)
    for name, key in inodes.items():
        assert key in syncs, f"{name} lost its name without a sync of its data"


def test_the_status_shows_the_activity_log(aimfs, workdir):
    """An operator sizes al_extents from /status (and /metrics, and aimctl
    status): how many extents a power cut now would compare with every
    destination, how many are hot, how often the log is written and
    checkpointed, and how many writes waited for a checkpoint."""
    addr = f"127.0.0.1:{free_port()}"
    extent = 64 << 10
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    # made before the mount: a truncate through it would put the whole
    # image in the set
    with open(os.path.join(backing, "vm.img"), "wb") as f:
        f.truncate(4096 * extent)
    m = aimfs(backing=backing, options=[f"status={addr}", "al_extents=128", "al_extent_size=64K"])

    def log():
        return get_status(addr)["activity_log"]
    before = log()
    assert before["extents"] == 128 and before["extent_bytes"] == extent, before
    fd = os.open(os.path.join(m.mountpoint, "vm.img"), os.O_RDWR)
    try:
        # ten extents far apart (a miss also takes the next few, cold)
        for i in range(10):
            os.pwrite(fd, b"x" * 512, (100 + 10 * i) * extent)
        os.fsync(fd)  # under cache=writeback, the writes reach aimfs now
        st = log()
        assert st["extents_hot"] >= 10 and st["extents_in_set"] >= st["extents_hot"], st
        # each miss wrote the log or shared another writer's write
        assert st["log_writes"] > before["log_writes"], (before, st)
        assert (st["log_writes"] + st["log_writes_shared"] >=
                before["log_writes"] + before["log_writes_shared"] + 10), (before, st)
        # three times as many extents as the set holds: slots are given
        # again, after checkpoints
        for i in range(3 * 128):
            os.pwrite(fd, b"y" * 512, 2 * i * extent)
        os.fsync(fd)
        st = log()
        assert st["extents_in_set"] == 128 and st["checkpoints"] > before["checkpoints"], st
        # /metrics and /status are two reads: the log may checkpoint
        # between them (its timer, the kernel's writeback), so they are
        # compared when the status did not move across the metrics read
        for _ in range(50):
            first = log()
            mx = metrics(addr)
            st = log()
            if first == st:
                break
            time.sleep(0.1)
        for key, name in (("extents", "extents"), ("extents_in_set", "extents_in_set"),
                          ("log_writes", "writes_total"), ("checkpoints", "checkpoints_total"),
                          ("writes_that_waited_for_a_checkpoint", "stalls_total")):
            assert mx[f"aimfs_actlog_{name}"] == st[key], (key, mx, st)
        p = run([AIMCTL, "status", addr])
        assert "activity log 128 of 128 extents of 64.0 KiB in the set" in p.stdout, p.stdout
    finally:
        os.close(fd)
    assert m.unmount() == 0


@pytest.mark.parametrize("mounted", ["before", "after"])
def test_a_filesystem_mounted_inside_the_backing_directory_is_synced_too(aimfs, workdir,
                                                                          mounted):
    """A checkpoint syncs the backing filesystem with syncfs, which covers
    one filesystem; an image on an ext4 mounted below the backing directory
    (before aimfs started, or while it runs) needs its own.  An fsynced
    write is left to the checkpoints there too, and the next mount's redo
    starts after the last one: after a power cut it is there only if that
    checkpoint synced the nested filesystem."""
    from powercut import read_log
    from aimtest import is_mounted
    backing = os.path.join(workdir, "backing")
    sub = os.path.join(backing, "sub")
    os.makedirs(sub)
    fsimg = os.path.join(workdir, "nested.ext4")
    with open(fsimg, "wb") as f:
        f.truncate(64 << 20)
    run(["mkfs.ext4", "-q", "-F", fsimg])
    loop = run(["losetup", "-f", "--show", fsimg]).stdout.strip()
    mnt = os.path.join(workdir, "mnt")
    undo = os.path.join(workdir, "undo.log")
    env = {"AIM_POWERCUT_LOG": undo, "AIM_TEST_BOOT_ID": str(uuid.UUID(int=41, version=4))}
    try:
        if mounted == "after":
            m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env)
        run(["mount", "-t", "ext4", loop, sub])
        with open(os.path.join(sub, "vm.img"), "wb") as f:
            f.truncate(4 << 20)
        if mounted == "before":
            m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env)
        nested_dev, root_dev = os.stat(sub).st_dev, os.stat(backing).st_dev
        with open(os.path.join(mnt, "sub", "vm.img"), "r+b") as f:
            # adopted at its first lookup (if aimfs did not find it at
            # start), it counts as created by this mount until a checkpoint
            # that began after that has passed: wait for two
            for _ in range(2):
                seen = read_log(undo)[2].get(root_dev, 0)

                def next_checkpoint():
                    os.pwrite(f.fileno(), b"y", 2 << 20)   # keeps a checkpoint due
                    os.fdatasync(f.fileno())
                    return read_log(undo)[2].get(root_dev, 0) > seen
                wait_for(next_checkpoint, 20, what="a checkpoint")
            new = os.urandom(256 << 10)
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
            key = (nested_dev, os.fstat(f.fileno()).st_ino)
            written = max(u.seq for u in read_log(undo)[0][key])

            def checkpoint_after_the_write():
                undos, _, syncfs, _ = read_log(undo)
                last = max(u.seq for k, us in undos.items() if k[0] == nested_dev for u in us)
                os.pwrite(f.fileno(), b"x", 1 << 20)   # keeps a checkpoint due
                return syncfs.get(root_dev, 0) > last
            wait_for(checkpoint_after_the_write, 20, what="a checkpoint after the write")
        m.kill9()
        # the checkpoints covered it, not a sync at its fsync (an image on a
        # filesystem no checkpoint syncs gets that)
        assert read_log(undo)[1].get(key, 0) < written
        power_cut(undo, [m.journal, backing], random.Random(1), "all")
        env = {"AIM_TEST_BOOT_ID": str(uuid.UUID(int=42, version=4))}
        m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env,
                  log_path=os.path.join(workdir, "after.log"))
        with open(os.path.join(mnt, "sub", "vm.img"), "rb") as f:
            assert f.read(len(new)) == new, "an fsynced write on the nested filesystem was lost"
        assert m.unmount() == 0
    finally:
        for how in (["umount"], ["umount", "-l"]):
            if is_mounted(sub):
                subprocess.run(how + [sub], check=False, stderr=subprocess.DEVNULL)
        subprocess.run(["losetup", "-d", loop], check=False)


def test_an_fsync_into_a_reused_segment_file_survives_a_power_cut(aimfs, workdir):
    """With destinations, pruned segment files are reused: renamed to
    NNN.free, then to the new segment's NNN.open.  Overwriting a reused
    file's blocks changes nothing fdatasync must commit, so the renames
    can be lost in a power cut while the records are on disk -- and with
    backing_sync=checkpoint an fsync's write may be nowhere else yet.  The
    first sync of each open segment syncs the journal's directory too."""
    from powercut import read_log
    from servers import Nginx
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    mnt = os.path.join(workdir, "mnt")
    undo = os.path.join(workdir, "undo.log")
    ng = Nginx(workdir).start()
    try:
        conf = os.path.join(workdir, "aimfs.conf")
        with open(conf, "w") as f:
            f.write(f"[aimfs]\nsegment_size = 256K\n[destination dav]\nurl = {ng.url}\n")
        env = {"AIM_POWERCUT_LOG": undo, "AIM_TEST_BOOT_ID": str(uuid.UUID(int=21, version=4))}
        m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env,
                  options=[f"config={conf}"])
        rnd = random.Random("reused")
        with open(os.path.join(mnt, "vm.img"), "wb") as f:
            f.write(rnd.randbytes(2 << 20))
            os.fsync(f.fileno())

        def free_and_sealed():
            names = os.listdir(m.journal)
            return any(n.endswith(".free") for n in names) and \
                not any(n.endswith(".open") for n in names)
        wait_for(free_and_sealed, 30, what="pruned segment files kept for reuse")
        new = rnd.randbytes(64 << 10)
        with open(os.path.join(mnt, "vm.img"), "r+b") as f:
            f.write(new)
            os.fsync(f.fileno())
        m.kill9()
        renames = []
        read_log(undo, renames)
        assert any(a.endswith(".free") and b.endswith(".open") for _, _, a, b in renames), \
            "the fsynced write did not go into a reused file"
        power_cut(undo, [m.journal, backing], random.Random(1), "all")
        env = {"AIM_TEST_BOOT_ID": str(uuid.UUID(int=22, version=4))}
        m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env,
                  options=[f"config={conf}"], log_path=os.path.join(workdir, "after.log"))
        with open(os.path.join(mnt, "vm.img"), "rb") as f:
            assert f.read(len(new)) == new, "an fsynced write in a reused segment was lost"
        assert m.unmount() == 0
    finally:
        ng.stop()


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



def test_segment_after_a_gap_is_dropped_and_a_mount_without_destinations_journals_hot_extents(
        aimfs, workdir):
    """A power cut can keep the first pages of segment N+1 and lose the end
    of segment N (sealed in the page cache, not fsynced yet).  Recovery must
    keep the journal a prefix: it seals N where it ends and drops N+1 (forged
    here with tests/mkseg: N ends at LSN L+1, N+1 starts at L+4).  With no
    destination the power loss is repaired in the journal itself: the hot
    extents' content is journaled, so a replay equals the backing files."""
    import sqlite3

    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    run([PCWORK, "init", backing, str(FILES), SIZE, "7"])
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    mnt = os.path.join(workdir, "mnt")
    env = {"AIM_TEST_BOOT_ID": str(uuid.UUID(int=1, version=4))}
    m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env,
              options=["segment_idle=100ms"])
    with open(os.path.join(mnt, "pc-0.img"), "r+b") as f:
        for k in range(8):
            f.seek(k * 3000)
            f.write(os.urandom(2000))
    with open(os.path.join(mnt, "pc-1.img"), "r+b") as f:
        f.seek(5 << 20)
        f.write(os.urandom(5000))
    time.sleep(1)                       # sealed and durable: no .open left
    m.kill9()
    journal = m.journal
    assert not [f for f in os.listdir(journal) if f.endswith(".open")]
    db = sqlite3.connect(os.path.join(journal, "catalog.db"))
    group = db.execute("SELECT value FROM meta WHERE key = 'group'").fetchone()[0]
    number, last = db.execute("SELECT max(number), max(last_lsn) FROM segments").fetchone()
    ids = dict(db.execute("SELECT name, id FROM images WHERE live"))
    db.close()
    table = "".join(f"image {ids[n]} {n}\n" for n in sorted(ids, key=ids.get))
    pc0 = ids["pc-0.img"]
    for n, first, data in ((number + 1, last + 1, "@4096:0x11"), (number + 2, last + 4, "@4096:0x22")):
        spec = (f"group {group}\nnumber {n}\nfirst_lsn {first}\n{table}"
                f"write {pc0} {4096 * (n - number)} {data}\nunsealed\n")
        path = os.path.join(journal, f"{n:020d}.open")
        subprocess.run([MKSEG, path], input=spec, text=True, check=True)
    # the next boot
    env = {"AIM_TEST_BOOT_ID": str(uuid.UUID(int=2, version=4))}
    m = aimfs(backing=backing, mountpoint=mnt, binary=AIMFS_POWERCUT, env=env,
              log_path=os.path.join(workdir, "after.log"))
    with open(os.path.join(mnt, "pc-0.img"), "rb") as f:
        f.seek(4096)
        assert f.read(4096) == b"\x11" * 4096, "the record before the gap was not redone"
        assert f.read(4096) != b"\x22" * 4096, "the record after the gap was redone"
    assert m.unmount() == 0
    out = m.output()
    assert f"{number + 2:020d}.open starts at LSN {last + 4}" in out, out
    assert "power loss, and no destination mirrors what may differ" in out, out
    segs = sorted(f for f in os.listdir(journal) if f.endswith(".aimj"))
    nums = [int(s[:20]) for s in segs]
    assert nums == list(range(1, len(nums) + 1)), f"segment numbers not contiguous: {nums}"
    target = os.path.join(workdir, "replayed")
    copy_tree(start, target)
    replay(journal, target)
    assert_trees_equal(backing, target)


def test_power_cut_remote_is_inconsistent_until_the_resync_ends_and_only_differences_ship(
        aimfs, workdir, pki, remotes):
    """What the remote says, and what travels, during the resync a power cut
    starts.  The source reboots with its receiver away; the receiver comes
    back through a proxy.  As soon as it applied the resync's SYNC_BEGIN
    its group says consistent == false; the link is cut right then, so that
    the window stays open (the source cannot fetch the comparison or send
    SYNC_END): the remote still says not consistent once it applied all it
    has, and the source does not say in sync.  What it holds then is the
    replica the resync starts from: the 64 KiB blocks where it differs from
    the backing files are all the resync may send.  After the link is back:
    consistent == true, the replica equals the backing files, and the
    segments shipped after that point (sizes on the wire, from the catalog)
    are bounded by the differing blocks plus hashes and framing -- far below
    the hot extents a full copy would send."""
    import sqlite3
    import types

    from proxy import Proxy

    seed = int(os.environ.get("AIM_SEED", 61))
    rng = random.Random(f"powercut-remote:{seed}")
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    run([PCWORK, "init", backing, str(FILES), SIZE, str(seed)])
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    proxy = Proxy(r.listen_port).start()
    try:
        status = f"127.0.0.1:{free_port()}"
        via = types.SimpleNamespace(base_url=f"https://127.0.0.1:{proxy.port}")
        conf = source_conf(workdir, "src.conf", {"dr1": (via, pki)}, status,
                           extra="retain = 1h\n")
        src = Source(aimfs, workdir, conf, seed)
        m = src.boot()
        wait_converged(status, [r])
        before = os.path.join(workdir, "before")
        snapshot_images(backing, before)
        acks = os.path.join(workdir, "acks")
        w = workload(m.mountpoint, seed, acks)
        try:
            delay = rng.uniform(1.0, 2.5)
            time.sleep(delay)
            mode = src.power_cut(rng)
            w.wait(60)
        finally:
            if w.poll() is None:        # by its PID, whatever went wrong
                w.kill()
                w.wait()
        what = f"AIM_SEED={seed}: cut after {delay:.2f}s ({mode} undone)"
        r.stop()
        m = src.boot()
        check_synced(backing, seed, acks, before, what)
        st = get_status(status)
        gid = st["group"]
        sync = st["destinations"][0]["sync"]
        assert sync["reason"] == "source power loss", f"{what}: {sync}"
        hot = sync["total_bytes"]
        # the remote comes back; the first moment its group is inconsistent
        # because of a resync (a group still loading its state is not
        # claimed consistent either, without a SYNC_BEGIN), the link goes down
        r.start()
        g = r.wait_group(gid, lambda g: g["consistent"] is False and
                         g["sync_since_lsn"] is not None, timeout=60, interval=0.005,
                         what="the remote to say its copy is not consistent")
        proxy.cut()
        since = g["sync_since_lsn"]
        # an upload the cut caught at its very end may still land: the
        # remote has applied all it has once it stood still for 0.5 s
        last = {}

        def still():
            g = r.group(gid)
            if g["state"] not in ("idle", "waiting") or g["applying"]:
                last.clear()
                return False
            if last.get("applied_segment") != g["applied_segment"]:
                last.update(g, at=time.monotonic())
                return False
            return time.monotonic() - last["at"] >= 0.5
        wait_for(still, 30, 0.05, what="the remote to apply what it has and stand still")
        g = r.group(gid)
        assert g["consistent"] is False and g["sync_since_lsn"] == since, \
            f"{what}: consistent before the resync ended: {g}"
        frozen = g["applied_segment"]
        pre = os.path.join(workdir, "pre-resync")
        copy_tree(r.target, pre)
        g = r.group(gid)
        assert g["consistent"] is False and g["applied_segment"] == frozen, \
            f"{what}: the remote went on without a link: {g}"
        st = get_status(status)
        assert st.get("in_sync") is not True and \
            st["destinations"][0]["sync"]["reason"] == "source power loss", f"{what}: {st}"
        differ = sum(differing_blocks(pre, backing).values()) * (64 << 10)
        proxy.restore()
        wait_converged(status, [r], timeout=120)
        g = r.group(gid)
        assert g["consistent"] is True and g["sync_since_lsn"] is None, f"{what}: {g}"
        assert m.unmount() == 0
        assert_trees_equal(backing, r.target)
        db = sqlite3.connect(os.path.join(m.journal, "catalog.db"))
        after, segs = db.execute("SELECT coalesce(sum(bytes), 0), count(*) FROM shipments"
                                 " WHERE destination = 'dr1' AND segment > ?",
                                 (frozen,)).fetchone()
        db.close()
        hashes = (hot // (64 << 10) + 1) * 32
        bound = 1.1 * differ + hashes + segs * 4096 + (256 << 10)
        print(f"{what}: hot extents {hot} bytes, {differ} bytes in blocks that differ, "
              f"{after} bytes in {segs} segments after the remote stood inconsistent "
              f"(bound {bound:.0f})")
        assert after <= bound, \
            f"{what}: the resync shipped {after} bytes in {segs} segments for {differ} bytes" \
            f" of differing blocks ({hot} bytes of hot extents)"
        assert hot >= 4 * bound, f"{what}: too few hot extents ({hot} bytes) to tell a full" \
                                 f" copy from differences (bound {bound:.0f})"
    finally:
        proxy.stop()
    assert r.stop() == 0, r.output()[-5000:]
