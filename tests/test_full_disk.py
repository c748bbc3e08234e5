"""A full source disk loses nothing and heals by itself (issue 12).

Two kinds of full disk:

  * the fault-injection build (tests/aimfs-faults, tests/faultio.c) fails
    chosen calls of aimfs's I/O table with ENOSPC, EDQUOT or EROFS: a
    segment's header, a record, a trailer, a backing write, a sync; a write
    cut in half; a truncate that fails too;
  * a real small filesystem (tmpfs with size=, an ext4 on a loop device)
    holding the backing directory and its journal, filled by a writer until
    it is full, then given space back by removing a ballast file.

What every case proves: the errno reaches the writer as itself (never EIO);
nothing is sticky (once the fault is gone, writes, opens and mkdir work on
the same mount); the journal and the backing files agree (an offline replay
of the journal onto the starting files equals them, after a clean unmount
and after a kill -9 and the recovery that follows); a replica equals the
source; /status and /metrics say what failed, since when, and when it
cleared.

The QEMU guest on such a disk is tests/test_full_disk_guest.py; more
threads than the old in-flight table had is test_inflight_slots.py."""
import errno
import mmap
import os
import shutil
import subprocess
import time

import pytest

from aimtest import AIMCTL, AIMFS, assert_trees_equal, is_mounted, replay, run, wait_for
from faults import AIMFS_FAULTS, Faults
from servers import free_port, get_status, metrics
from test_resync import pki, remotes, source_conf, start_remote, wait_converged  # noqa: F401

ERRNOS = {"ENOSPC": errno.ENOSPC, "EDQUOT": errno.EDQUOT, "EROFS": errno.EROFS}
MiB = 1 << 20


def expect_errno(err, fn, *args):
    """fn(*args) must fail with err (the errno, not EIO)."""
    try:
        fn(*args)
    except OSError as e:
        assert e.errno == err, f"{fn.__name__}{args[:1]}: {errno.errorcode[e.errno]}, " \
                               f"expected {errno.errorcode[err]}"
        return
    raise AssertionError(f"{fn.__name__}{args[:1]} succeeded, expected {errno.errorcode[err]}")


class Site:
    """aimfs-faults on workdir/backing, a status listener, an empty start
    directory to replay the journal onto."""

    def __init__(self, aimfs, workdir, options=(), remote_conf=None):
        self.workdir = workdir
        self.faults = Faults(os.path.join(workdir, "faults"))
        self.status = f"127.0.0.1:{free_port()}"
        self.start = os.path.join(workdir, "start")
        os.makedirs(self.start)
        self.aimfs = aimfs
        opts = [f"status={self.status}"] if not remote_conf else [f"config={remote_conf}"]
        self.options = opts + list(options)
        self.m = None

    def mount(self, binary=AIMFS_FAULTS):
        self.m = self.aimfs(options=self.options, binary=binary, env=self.faults.env,
                            expect_alarms=True)
        return self.m

    @property
    def mnt(self):
        return self.m.mountpoint

    def st(self):
        return get_status(self.status)

    def replay_equal(self, what):
        assert not [f for f in os.listdir(self.m.journal) if f.endswith(".open")], \
            f"{what}: an unsealed segment after a clean unmount"
        target = os.path.join(self.workdir, f"replayed-{time.monotonic_ns()}")
        shutil.copytree(self.start, target)
        replay(self.m.journal, target)
        try:
            assert_trees_equal(target, self.m.backing)
        except AssertionError as e:
            raise AssertionError(f"{what}: the journal replayed differs from the backing "
                                 f"files: {e}\n{self.m.output()[-4000:]}") from None


def write_file(path, data, flags=os.O_WRONLY | os.O_CREAT, off=0):
    fd = os.open(path, flags, 0o644)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)


# ---- the errno reaches the writer, and nothing is sticky ----------------------------

@pytest.mark.parametrize("name", ERRNOS)
def test_full_quota_and_readonly_reach_the_writer_and_nothing_is_sticky(aimfs, workdir, name):
    """Every journal append fails with NAME: a write, an fsync, a create, a
    truncate and a mkdir get NAME (not EIO); /status and /metrics say so.
    The fault goes: the same mount takes all of them again, /status says
    when it cleared, and the journal replays to the backing files."""
    err = ERRNOS[name]
    s = Site(aimfs, workdir)
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    write_file(img, os.urandom(64 * 1024))
    fd = os.open(img, os.O_RDWR)
    s.faults.set(f"pwritev *.open {name}")
    expect_errno(err, os.pwrite, fd, b"x" * 4096, 8192)
    expect_errno(err, os.fsync, fd)
    expect_errno(err, os.truncate, img, 4096)
    expect_errno(err, os.mkdir, os.path.join(s.mnt, "dir"))
    expect_errno(err, write_file, os.path.join(s.mnt, "new.raw"), b"n")
    assert not os.path.exists(os.path.join(s.m.backing, "new.raw")), "an unjournaled create stayed"
    assert not os.path.exists(os.path.join(s.m.backing, "dir")), "an unjournaled mkdir stayed"
    st = s.st()
    assert st["journal_error"] and os.strerror(err) in st["journal_error"], st
    assert st["journal_error_at"] and st["journal_error_cleared_at"] is None, st
    mt = metrics(s.status)
    assert mt["aimfs_journal_failing"] == 1 and mt["aimfs_journal_error_errno"] == err, mt
    assert mt["aimfs_journal_error_timestamp_seconds"] > 0, mt

    s.faults.clear()
    os.pwrite(fd, b"y" * 4096, 8192)
    os.fsync(fd)
    os.truncate(img, 48 * 1024)
    os.mkdir(os.path.join(s.mnt, "dir"))
    write_file(os.path.join(s.mnt, "dir", "new.raw"), os.urandom(10000))
    os.close(fd)
    st = s.st()
    assert st["journal_error"] is None and st["journal_error_cleared_at"], st
    assert os.strerror(err) in st["journal_last_error"], st
    mt = metrics(s.status)
    assert mt["aimfs_journal_failing"] == 0, mt
    assert mt["aimfs_journal_error_cleared_timestamp_seconds"] > 0, mt
    assert s.m.unmount() == 0
    s.replay_equal(name)


def test_a_failed_segment_header_or_seal_is_not_sticky(aimfs, workdir):
    """tmpfs's finding: the header of a new segment cannot be written (the
    write gets ENOSPC, and no empty segment is left), then a trailer cannot
    be (the segment stays open and takes records; the seal is retried).
    After each, writes, opens and mkdir work on the same mount, and the
    segment seals once the trailer fits."""
    s = Site(aimfs, workdir, options=["segment_idle=100ms"])
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    write_file(img, os.urandom(8192))
    # sealed: no open segment, and its file renamed (the sealer does that
    # after it lets go of the segment)
    wait_for(lambda: s.st()["open_segment"] == 0 and
             not [f for f in os.listdir(s.m.journal) if f.endswith(".open")], 10,
             what="the idle segment to seal")
    s.faults.set("pwritev *.open ENOSPC off=0")
    expect_errno(errno.ENOSPC, write_file, img, b"h" * 4096, os.O_WRONLY, 0)
    assert not [f for f in os.listdir(s.m.journal) if f.endswith(".open")]
    assert "header" in s.st()["journal_error"]
    s.faults.clear()
    write_file(img, b"H" * 4096, os.O_WRONLY, 0)
    write_file(os.path.join(s.mnt, "b.raw"), b"b" * 5000)
    os.mkdir(os.path.join(s.mnt, "d1"))
    assert s.st()["journal_error"] is None

    durable = s.st()["durable_segment"]
    s.faults.set("pwritev *.open ENOSPC len=56")        # SEG_TRAILER_SIZE: only trailers
    write_file(img, b"s" * 4096, os.O_WRONLY, 4096)
    wait_for(lambda: (s.st()["journal_error"] or "").startswith("sealing"), 10,
             what="a seal to fail")
    write_file(img, b"t" * 4096, os.O_WRONLY, 8192)      # the open segment takes records
    os.mkdir(os.path.join(s.mnt, "d2"))
    assert s.st()["durable_segment"] == durable
    s.faults.clear()
    wait_for(lambda: s.st()["durable_segment"] > durable and s.st()["journal_error"] is None,
             10, what="the seal to be retried")
    write_file(os.path.join(s.mnt, "d2", "c.raw"), b"c" * 3000)
    assert s.m.unmount() == 0
    s.replay_equal("after a failed header and a failed seal")


def test_a_segment_finished_after_a_failure_does_not_clear_it(aimfs, workdir):
    """CI's finding: the sealer was still syncing the last sealed segment
    when a new segment's header failed; the finish then succeeded and said
    the journal wrote again, so /status showed no error for a write that
    had just failed.  Only a success that began after the failure ends the
    episode: here the finish is held at its fsync while the header fails."""
    s = Site(aimfs, workdir, options=["segment_idle=100ms"])
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    durable = s.st()["durable_segment"]
    s.faults.set("fsync *.open stall")
    write_file(img, os.urandom(8192))
    wait_for(lambda: s.st()["open_segment"] == 0, 10, what="the idle segment to seal")
    s.faults.set("fsync *.open stall", "pwritev *.open ENOSPC off=0")
    expect_errno(errno.ENOSPC, write_file, img, b"h" * 4096, os.O_WRONLY, 0)
    assert "header" in s.st()["journal_error"]
    s.faults.set("pwritev *.open ENOSPC off=0")          # the finish goes on
    wait_for(lambda: s.st()["durable_segment"] > durable, 10, what="the segment to finish")
    st = s.st()
    assert st["journal_error"] and "header" in st["journal_error"], st
    s.faults.clear()
    write_file(img, b"H" * 4096, os.O_WRONLY, 0)
    assert s.st()["journal_error"] is None
    assert s.m.unmount() == 0
    s.replay_equal("after a header failed while a segment was finished")


def test_an_unmount_whose_last_seal_fails_leaves_the_activity_log_unclean(aimfs, workdir):
    """At unmount the last segment's trailer cannot be written (a full
    disk): the segment stays open and was never synced.  The activity log
    was still marked clean, so after a power cut before the next mount
    recovery would have skipped the redo from the last synced LSN and the
    hand-over of the hot extents.  It now stays unclean: the next mount
    (the same boot here, so recovery is exact) says so, finishes the
    segment, and the journal replays to the backing files."""
    s = Site(aimfs, workdir)
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    write_file(img, os.urandom(3 * 4096))
    s.faults.set("pwritev *.open ENOSPC len=56")        # SEG_TRAILER_SIZE: only trailers
    s.m.unmount()
    out = s.m.output()
    assert "not every record reached a finished segment" in out, out[-3000:]
    assert [f for f in os.listdir(s.m.journal) if f.endswith(".open")]
    s.faults.clear()
    seen = len(out)
    s.mount()
    out = s.m.output()[seen:]
    assert "stopped without unmounting during this boot" in out, out
    assert s.m.unmount() == 0
    s.replay_equal("after a seal that failed at unmount")


def test_a_seal_cut_short_during_recovery_fails_the_mount_and_loses_nothing(aimfs, workdir):
    """After a kill -9 recovery seals the open segment.  A trailer write
    the disk cuts short (half written, no error) was taken for a success:
    the segment was published with half a trailer.  Now the mount fails
    with the reason, and once the disk takes it, the next one finishes the
    segment and the journal replays to the backing files."""
    s = Site(aimfs, workdir, options=["segment_idle=1h", "segment_age=1h"])
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    write_file(img, os.urandom(5 * 4096))
    s.m.kill9()
    assert [f for f in os.listdir(s.m.journal) if f.endswith(".open")]
    s.faults.set("pwrite *.open ENOSPC len=56 partial")
    with pytest.raises(RuntimeError) as e:
        s.mount()
    assert "cannot seal" in str(e.value), str(e.value)[-3000:]
    s.faults.clear()
    s.mount()
    assert s.m.unmount() == 0
    s.replay_equal("after a seal cut short during recovery")


def catalog_states(journal):
    """{segment: state} from the source's catalog, opened read-only."""
    import sqlite3
    db = sqlite3.connect(f"file:{os.path.join(journal, 'catalog.db')}?mode=ro", uri=True,
                         timeout=10)
    try:
        return dict(db.execute("SELECT number, state FROM segments").fetchall())
    finally:
        db.close()


def test_a_catalog_the_sealer_cannot_open_is_opened_again(aimfs, workdir, pki, remotes):
    """The sealer indexes each segment it finishes in the catalog, through a
    connection of its own.  One it could not open at the start it never
    tried again: no segment of that mount was indexed, and pruning, which
    stops at a segment the catalog has not indexed, stopped until the next
    mount, so the journal only grew.  Now it is opened again a few seconds
    later, the segments sealed meanwhile go in, and pruning goes on."""
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "src.conf", {"dr1": (r, pki)}, status)
    faults = Faults(os.path.join(workdir, "faults"))
    faults.set("catalog_open */catalog.db EIO count=1")
    m = aimfs(options=[f"config={conf}"], binary=AIMFS_FAULTS, env=faults.env,
              expect_alarms=True)
    img = os.path.join(m.mountpoint, "vm.raw")
    write_file(img, os.urandom(256 << 10))
    wait_converged(status, [r])
    assert "the sealer cannot open the catalog" in m.output(), m.output()[-3000:]
    first = get_status(status)["durable_segment"]
    assert first >= 1 and first not in catalog_states(m.journal)
    n = 0

    def caught_up():
        nonlocal n
        write_file(img, os.urandom(4096), os.O_WRONLY, (n % 64) * 4096)
        n += 1
        states = catalog_states(m.journal)
        return "the sealer opened the catalog" in m.output() and \
            all(i in states for i in range(1, get_status(status)["durable_segment"] + 1)) and \
            states.get(first) == "pruned"
    wait_for(caught_up, 30, 0.5, what="the catalog to be opened again and the segments"
                                      " sealed without it indexed and pruned")
    wait_converged(status, [r])
    assert m.unmount() == 0
    assert_trees_equal(r.target, m.backing)


@pytest.mark.parametrize("end", ["unmount", "kill9"])
def test_a_record_cut_in_half_never_precedes_another(aimfs, workdir, end):
    """A record whose append writes half and then fails, and whose undo
    (the truncate) fails too: the write gets ENOSPC, the next record is
    written over the half, and the sealer cuts the file at its end.  Every
    segment validates, and the journal replays to the backing files, after a
    clean unmount or after kill -9 and recovery."""
    s = Site(aimfs, workdir, options=["segment_idle=0", "segment_age=1h"])
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    write_file(img, os.urandom(64 * 1024))
    s.faults.set("pwritev *.open ENOSPC partial count=1", "ftruncate *.open EIO count=1")
    expect_errno(errno.ENOSPC, write_file, img, b"P" * 32768, os.O_WRONLY, 0)
    s.faults.clear()
    write_file(img, b"q" * 512, os.O_WRONLY, 100)          # shorter than the half left there
    write_file(img, os.urandom(20000), os.O_WRONLY, 30000)
    if end == "kill9":
        s.m.kill9()
        s.mount(binary=AIMFS)
    assert s.m.unmount() == 0
    for f in sorted(os.listdir(s.m.journal)):
        if f.endswith(".aimj"):
            run([AIMCTL, "dump", os.path.join(s.m.journal, f)])
    s.replay_equal(f"a half record, then {end}")


# ---- a failed backing write: the journal ends up saying what the file holds ----

@pytest.mark.parametrize("how", ["nothing-written", "short", "short-direct", "kill9-while-owed"])
def test_a_failed_backing_write_is_not_left_in_the_journal(aimfs, workdir, how):
    """The record is journaled, then the backing write fails (ENOSPC; or
    writes half: a short write), and the records of what the file really
    holds cannot be journaled either (the disk is full).  The writer gets
    ENOSPC (or the short count; a direct writer gets ENOSPC, since the
    kernel turns a short asynchronous direct write into EIO); they are
    owed, /status says so, and the next write gets ENOSPC too while they
    cannot be journaled.  Once the
    disk has room, the next write journals them first.  Or aimfs is killed
    while they are owed, after a seal: the next mount redoes the record.
    Either way the journal replays to the backing files (before: 'its
    replicas need a resync' in the log, and a replay 767 KiB off)."""
    s = Site(aimfs, workdir, options=["segment_idle=100ms"])
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    write_file(img, os.urandom(256 * 1024))
    fd = os.open(img, os.O_RDWR | (os.O_DIRECT if how == "short-direct" else 0))
    partial = " partial" if how.startswith("short") else ""
    # the backing write fails; then every header-only record (TRUNCATE,
    # ZERO: the start of the correction) cannot be journaled
    s.faults.set(f"pwrite */backing/vm.raw ENOSPC count=1{partial}", "pwritev *.open ENOSPC len=64")
    data = mmap.mmap(-1, 192 * 1024)            # aligned, for O_DIRECT
    data.write(os.urandom(192 * 1024))
    if how == "short":
        n = os.pwrite(fd, data, 200 * 1024)
        assert n == len(data) // 2, n
    else:
        expect_errno(errno.ENOSPC, os.pwrite, fd, data, 200 * 1024)
    st = s.st()
    assert st["journal_owed_records"] == 1 and "after a failed write" in st["journal_error"], st
    expect_errno(errno.ENOSPC, os.pwrite, fd, b"z" * 4096, 0)
    if how == "kill9-while-owed":
        # a seal claims how far the backing files are complete: not past
        # the record they do not hold
        seg = st["open_segment"]
        wait_for(lambda: s.st()["durable_segment"] >= seg, 10, what="the segment to seal")
        # close's barrier record cannot be journaled either (the fd goes)
        expect_errno(errno.ENOSPC, os.close, fd)
        s.m.kill9()
        s.faults.clear()
        s.mount(binary=AIMFS)
    else:
        s.faults.clear()
        os.pwrite(fd, b"w" * 4096, 0)
        st = s.st()
        assert st["journal_owed_records"] == 0 and st["journal_error"] is None, st
        os.close(fd)
    assert s.m.unmount() == 0
    s.replay_equal(how)


@pytest.mark.parametrize("size", [4096, 1 << 20])
def test_a_truncate_the_backing_file_refuses_leaves_the_journal_true(aimfs, workdir, size):
    """The TRUNCATE record is journaled before the backing ftruncate; when
    that fails, the file kept its size and content, and the journal must
    say so again: its size, and what the record cut off (shrinking) or
    nothing more (growing).  It once recorded the old size and a ZERO of
    length 0, which replayed the image as zeros and which no decoder
    accepts, so the segment could not be indexed or applied."""
    s = Site(aimfs, workdir, options=["segment_idle=100ms"])
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    data = os.urandom(256 * 1024)
    write_file(img, data)
    s.faults.set("ftruncate */backing/vm.raw EIO count=1")
    expect_errno(errno.EIO, os.truncate, img, size)
    with open(img, "rb") as f:
        assert f.read() == data
    st = s.st()
    assert st["journal_owed_records"] == 0 and st["journal_error"] is None, st
    write_file(img, b"after" * 100, os.O_WRONLY, off=4096)   # the journal goes on
    s.faults.clear()
    seg = s.st()["open_segment"]
    wait_for(lambda: s.st()["durable_segment"] >= seg, 20, what="the segment to seal")
    st = s.st()
    assert st["journal_error"] is None, st      # sealed, and indexed
    assert s.m.unmount() == 0
    s.replay_equal(f"truncate to {size} refused")


def test_a_read_only_open_with_o_trunc_truncates_through_the_journal(aimfs, workdir):
    """open(O_RDONLY | O_TRUNC) truncates a file on Linux (write permission
    is checked for it).  aimfs's read-only descriptor cannot: the truncate
    failed with EINVAL, after its record, and the replica lost the image."""
    s = Site(aimfs, workdir)
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    write_file(img, os.urandom(64 * 1024))
    fd = os.open(img, os.O_RDONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(img).st_size == 0
    assert os.stat(os.path.join(s.m.backing, "vm.raw")).st_size == 0
    write_file(img, b"again" * 1000)
    assert s.m.unmount() == 0
    s.replay_equal("O_RDONLY | O_TRUNC")


def test_an_unlink_or_rename_done_on_a_full_disk_is_journaled_later(aimfs, workdir):
    """rm, mv and rmdir on a full disk: the syscall is done (rm frees
    space; it succeeds, as it would without aimfs), its record is owed, and
    a later namespace change fails with ENOSPC, undone, rather than overtake
    it.  Once the disk has room, the next operation journals what is owed
    before its own."""
    s = Site(aimfs, workdir)
    s.mount()
    for n in ("a.raw", "b.raw", "c.raw"):
        write_file(os.path.join(s.mnt, n), os.urandom(30000))
    os.mkdir(os.path.join(s.mnt, "d"))
    os.mkdir(os.path.join(s.mnt, "e"))
    s.faults.set("pwritev *.open ENOSPC")
    os.unlink(os.path.join(s.mnt, "a.raw"))
    assert s.st()["journal_owed_records"] == 1
    expect_errno(errno.ENOSPC, os.rename, os.path.join(s.mnt, "b.raw"),
                 os.path.join(s.mnt, "d", "b2.raw"))
    assert os.path.exists(os.path.join(s.m.backing, "b.raw"))
    s.faults.clear()
    os.rename(os.path.join(s.mnt, "b.raw"), os.path.join(s.mnt, "d", "b2.raw"))
    assert s.st()["journal_owed_records"] == 0
    s.faults.set("pwritev *.open ENOSPC")
    os.rename(os.path.join(s.mnt, "c.raw"), os.path.join(s.mnt, "c2.raw"))
    expect_errno(errno.ENOSPC, os.rmdir, os.path.join(s.mnt, "e"))
    s.faults.clear()
    os.rmdir(os.path.join(s.mnt, "e"))
    s.faults.set("pwritev *.open ENOSPC")
    os.rename(os.path.join(s.mnt, "d"), os.path.join(s.mnt, "d2"))
    assert s.st()["journal_owed_records"] == 1
    s.faults.clear()
    write_file(os.path.join(s.mnt, "a.raw"), b"a new a" * 1000)
    write_file(os.path.join(s.mnt, "d2", "b2.raw"), b"more" * 1000, os.O_WRONLY, 50000)
    assert s.st()["journal_owed_records"] == 0
    assert s.m.unmount() == 0
    s.replay_equal("owed namespace records")


def test_a_failed_sync_is_retried_and_the_segment_rewritten(aimfs, workdir):
    """The sealer's fsync of a segment fails once, and so does a guest's
    fsync of the open segment: that fsync gets EIO, the segment is read
    back, checked and written again before it counts as durable, the next
    fsync succeeds, and nothing needs a remount."""
    s = Site(aimfs, workdir, options=["segment_idle=100ms"])
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    fd = os.open(img, os.O_RDWR | os.O_CREAT)
    os.pwrite(fd, os.urandom(100000), 0)
    s.faults.set("fsync *.open EIO count=1")
    durable = s.st()["durable_segment"]
    wait_for(lambda: s.st()["durable_segment"] > durable, 10, what="the segment, retried")
    assert "finishing a segment" in s.st()["journal_last_error"]
    os.pwrite(fd, os.urandom(50000), 4096)
    s.faults.set("fdatasync *.open EIO count=1")
    expect_errno(errno.EIO, os.fsync, fd)
    s.faults.clear()
    os.pwrite(fd, os.urandom(5000), 200000)
    os.fsync(fd)
    os.close(fd)
    assert s.st()["journal_error"] is None
    assert s.m.unmount() == 0
    s.replay_equal("failed syncs")


@pytest.mark.parametrize("whose", ["an image's", "another file's"])
def test_a_write_back_error_fails_fsyncs_and_the_next_mount_redoes(aimfs, workdir, whose):
    """A checkpoint's syncfs of the backing filesystem fails.  syncfs reports
    any file's write-back error there, so aimfs asks every image's own
    descriptor.  If an image lost pages (which the next syncfs would not
    say), no later fsync says all is well, the activity log keeps the
    synced LSN where it was and notes a redo, and the next mount -- even in
    the same boot, after a clean unmount -- redoes the journal from it.  If
    the error was another file's (the journal's, say), nothing latches."""
    s = Site(aimfs, workdir)
    img_backing = os.path.join(workdir, "backing", "vm.raw")
    os.makedirs(os.path.dirname(img_backing))
    for path in (img_backing, os.path.join(s.start, "vm.raw")):
        with open(path, "wb") as f:
            f.truncate(4 << 20)
    s.mount()
    img = os.path.join(s.mnt, "vm.raw")
    fd = os.open(img, os.O_RDWR)
    os.pwrite(fd, os.urandom(1 << 20), 0)
    os.fsync(fd)
    assert s.st()["backing_writeback_lost"] is False
    image_fails = whose == "an image's"
    rules = ["syncfs * EIO count=1"]
    if image_fails:
        rules.append("fdatasync */vm.raw EIO count=1")
    s.faults.set(*rules)
    os.pwrite(fd, os.urandom(1 << 20), 1 << 20)

    def syncfs_failed():
        os.pwrite(fd, os.urandom(4096), 0)      # writes go on: a checkpoint is due
        return "aimfs-faults: syncfs" in s.m.output()
    wait_for(syncfs_failed, 20, what="a checkpoint to meet the write-back error")
    if not image_fails:
        os.pwrite(fd, os.urandom(4096), 8192)
        os.fsync(fd)
        assert s.st()["backing_writeback_lost"] is False
        assert "but no image lost a write" in s.m.output()
        os.close(fd)
        assert s.m.unmount() == 0
        s.replay_equal("after another file's write-back error")
        return
    wait_for(lambda: s.st()["backing_writeback_lost"], 10, what="the latch")
    s.faults.clear()
    expect_errno(errno.EIO, os.fsync, fd)
    os.pwrite(fd, os.urandom(4096), 8192)
    expect_errno(errno.EIO, os.fsync, fd)        # until the next mount
    assert metrics(s.status)["aimfs_backing_writeback_lost"] == 1
    os.close(fd)
    s.m.unmount()
    assert "failed to write back an image" in s.m.output()
    s.mount()
    assert "the last mount saw them fail to write back" in s.m.output()
    assert s.st()["backing_writeback_lost"] is False
    fd = os.open(img, os.O_RDWR)
    os.pwrite(fd, os.urandom(4096), 0)
    os.fsync(fd)
    os.close(fd)
    assert s.m.unmount() == 0
    s.replay_equal("after a write-back error")


def test_a_file_removed_behind_the_mount_is_not_kept_open(aimfs, workdir):
    """aimfs keeps a descriptor of every image open (to ask it for write-back
    errors).  An image removed from the backing directory behind the
    mount's back, to free space say, must not stay allocated: the next
    checkpoint closes it."""
    s = Site(aimfs, workdir)
    ballast = os.path.join(workdir, "backing", "old.img")
    os.makedirs(os.path.dirname(ballast))
    with open(ballast, "wb") as f:
        f.write(b"\xee" * (1 << 20))
    s.mount()

    def held():
        d = f"/proc/{s.m.proc.pid}/fd"
        found = []
        for n in os.listdir(d):
            try:                        # a descriptor closed since the listing
                target = os.readlink(os.path.join(d, n))
            except FileNotFoundError:
                continue
            if target == ballast + " (deleted)":
                found.append(n)
        return found
    assert not held()
    os.unlink(ballast)
    assert held(), "the image's descriptor is not open: nothing to test"
    fd = os.open(os.path.join(s.mnt, "vm.raw"), os.O_RDWR | os.O_CREAT)

    def let_go():
        os.pwrite(fd, os.urandom(4096), 0)       # writes go on: checkpoints are due
        return not held()
    wait_for(let_go, 20, what="aimfs to close the removed file")
    os.close(fd)
    assert s.m.unmount() == 0


# ---- a real filesystem that fills up -------------------------------------------------

class SmallFs:
    """A filesystem of SIZE MiB at DIR: tmpfs (size=), or ext4 on a loop
    device.  close() unmounts it and detaches the loop device, always."""

    def __init__(self, workdir, kind, size_mb):
        self.dir = os.path.join(workdir, f"small-{kind}")
        os.makedirs(self.dir)
        self.loop = None
        self.kind = kind
        if kind == "tmpfs":
            run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", self.dir])
        else:
            img = os.path.join(workdir, "small.ext4")
            with open(img, "wb") as f:
                f.truncate(size_mb * MiB)
            run(["mkfs.ext4", "-q", "-F", "-m", "0", img])
            self.loop = run(["losetup", "-f", "--show", img]).stdout.strip()
            run(["mount", "-t", "ext4", self.loop, self.dir])

    def free(self):
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def close(self):
        if is_mounted(self.dir):
            subprocess.run(["umount", self.dir], check=False)
        if is_mounted(self.dir):
            subprocess.run(["umount", "-l", self.dir], check=False)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], check=False)
            self.loop = None


@pytest.fixture
def small_fs(workdir):
    made = []

    def make(kind, size_mb):
        fs = SmallFs(workdir, kind, size_mb)
        made.append(fs)
        return fs
    yield make
    for fs in reversed(made):
        fs.close()


def fill(path, nbytes):
    """A ballast file of nbytes, written (not sparse)."""
    with open(path, "wb") as f:
        chunk = b"\xee" * MiB
        while nbytes > 0:
            f.write(chunk[:min(nbytes, MiB)])
            nbytes -= MiB
        f.flush()
        os.fsync(f.fileno())


def chunk_data(i):
    return (i.to_bytes(4, "little") * (MiB // 4))[:MiB]


@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_a_real_disk_fills_up_and_heals(small_fs, aimfs, workdir, pki, remotes, kind):
    """The backing directory and its journal on a small filesystem, mirrored
    to an aim-remote elsewhere.  A writer writes 1 MiB chunks with an fsync
    every 4 until the disk is full: it gets ENOSPC (never EIO), /status says
    the journal fails; a mkdir or create meanwhile fails cleanly or works.
    The ballast is removed: on the same mount the writer's next chunk,
    mkdir and create work, /status says when the error cleared, and the
    writer finishes.  The image holds every chunk, the replica equals the
    source and the journal replays to it."""
    fs = small_fs(kind, 128)
    backing = os.path.join(fs.dir, "backing")
    os.makedirs(backing)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "src.conf", {"dr1": (r, pki)}, status)
    # retain: the journal keeps acknowledged segments, to replay them all
    m = aimfs(backing=backing, options=[f"config={conf}", "retain=1h"], expect_alarms=True)
    start = os.path.join(workdir, "start")
    os.makedirs(start)
    ballast = os.path.join(fs.dir, "ballast")
    fill(ballast, fs.free() - 40 * MiB)
    img = os.path.join(m.mountpoint, "vm.raw")
    fd = os.open(img, os.O_RDWR | os.O_CREAT, 0o644)
    # 40 MiB free: full after ~20 chunks (the image and the journal both
    # grow); the ballast gives back ~88 MiB, room for the rest of 40 twice
    chunks, i, done, enospc, full_at = 40, 0, 0, 0, None
    while i < chunks:
        try:
            # a short write (the backing file took part of it) is told
            # as such; the writer goes on with the rest, as QEMU does
            done += os.pwrite(fd, chunk_data(i)[done:], i * MiB + done)
            if done < MiB:
                continue
            if i % 4 == 3:
                os.fsync(fd)
            i, done = i + 1, 0
            continue
        except OSError as e:
            assert e.errno == errno.ENOSPC, \
                f"chunk {i}: {errno.errorcode[e.errno]}, not ENOSPC\n{m.output()[-3000:]}"
        enospc += 1
        if enospc == 1:
            full_at = i
            st = get_status(status)
            # the error is shown, or shown as cleared if an operation
            # succeeded since (the correction of a failed backing write,
            # once ext4 found room for it)
            assert st["journal_error_at"], st
            assert os.strerror(errno.ENOSPC) in (st["journal_error"] or
                                                 st["journal_last_error"]), st
            # the disk is full: a mkdir and a create fail cleanly, or work
            for what, fn in (("mkdir", lambda: os.mkdir(os.path.join(m.mountpoint, "full-dir"))),
                             ("create", lambda: write_file(os.path.join(m.mountpoint,
                                                                        "full.raw"), b"f" * 8192))):
                try:
                    fn()
                except OSError as e:
                    assert e.errno == errno.ENOSPC, f"{what}: {e}"
        elif enospc == 2:
            # still full, still ENOSPC; now free the space
            os.unlink(ballast)
        else:
            raise AssertionError(f"chunk {i}: ENOSPC after space was freed\n{m.output()[-3000:]}")
    assert full_at is not None, "the disk never filled up"
    os.fsync(fd)
    os.close(fd)
    os.makedirs(os.path.join(m.mountpoint, "after"), exist_ok=True)
    write_file(os.path.join(m.mountpoint, "after", "new.raw"), os.urandom(100000))
    st = get_status(status)
    assert st["journal_error"] is None and st["journal_error_cleared_at"], st
    with open(os.path.join(backing, "vm.raw"), "rb") as f:
        for k in range(chunks):
            assert f.read(MiB) == chunk_data(k), f"chunk {k} of the image is not what was written"
    wait_converged(status, [r], timeout=300)
    assert_trees_equal(backing, r.target)
    assert m.unmount() == 0
    replay(m.journal, start)
    assert_trees_equal(start, backing)
    r.stop()
