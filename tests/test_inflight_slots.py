"""A write is never acknowledged untracked (issue 12, item 7).

The journal keeps a table of the data records that are journaled but not
yet on the backing files; a segment's trailer claims the backing files hold
everything below the lowest of them (backing_lsn), and recovery after a
crash redoes only the records above it.  The table had 256 slots whatever
-o max_threads said: with more FUSE threads than that writing at once, the
rest were journaled untracked, so a trailer could claim the backing files
held records they did not, and a kill -9 then lost them from the backing
files for good (the journal and its replicas have them, the source not).

The fault-injection build (tests/aimfs-faults) holds backing writes in
place ("stall") so that the test decides which writes are in flight."""
import os
import shutil
import threading

from aimtest import AIMFS, assert_trees_equal, replay, wait_for
from faults import AIMFS_FAULTS, Faults
from servers import free_port, get_status

FIRST = 260     # more than the old table's 256 slots: they take all of them
LATER = 40      # journaled while the first are in flight: untracked before
THREADS = 400


def writer(path, data, errors):
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
    except OSError as e:
        errors.append((path, e))


def test_more_threads_than_the_old_table_never_write_untracked(aimfs, workdir):
    """-o max_threads=400: 260 writes to a*.raw are journaled and held
    before their backing writes, then 40 to b*.raw; the a*.raw writes are
    let go and the segment seals while the b*.raw writes are still held;
    aimfs is killed (-9).  The trailer must not claim the b*.raw records
    reached the backing files: recovery redoes them, and the journal
    replays to the backing files.  Before, the b*.raw records had no slot,
    the trailer claimed them, and recovery left those files empty."""
    faults = Faults(os.path.join(workdir, "faults"))
    status = f"127.0.0.1:{free_port()}"
    opts = [f"status={status}", f"max_threads={THREADS}", "segment_idle=100ms",
            "segment_age=1h"]
    m = aimfs(options=opts, binary=AIMFS_FAULTS, env=faults.env, expect_alarms=True)
    names = [f"a{i:03}.raw" for i in range(FIRST)] + [f"b{i:03}.raw" for i in range(LATER)]
    for n in names:
        os.close(os.open(os.path.join(m.mountpoint, n), os.O_WRONLY | os.O_CREAT, 0o644))
    data = {n: os.urandom(4096) for n in names}

    def journaled():
        return get_status(status)["records_journaled"]

    threads, errors = [], []

    def launch(group):
        for n in group:
            t = threading.Thread(target=writer, args=(os.path.join(m.mountpoint, n), data[n],
                                                      errors), daemon=True)
            t.start()
            threads.append(t)

    try:
        base = journaled()
        faults.set("pwrite */backing/a*.raw stall", "pwrite */backing/b*.raw stall")
        launch(names[:FIRST])
        wait_for(lambda: journaled() >= base + FIRST, 60,
                 what=f"{FIRST} writes to be journaled and held")
        launch(names[FIRST:])
        wait_for(lambda: journaled() >= base + FIRST + LATER, 60,
                 what=f"{LATER} more writes to be journaled")
        # the first writes reach their files; the later ones stay held
        faults.set("pwrite */backing/b*.raw stall")
        for t in threads[:FIRST]:
            t.join(60)
        assert not errors, errors
        assert all(not t.is_alive() for t in threads[:FIRST])
        sealed = get_status(status)["durable_segment"]
        wait_for(lambda: get_status(status)["durable_segment"] > sealed, 30,
                 what="the segment holding the held writes to seal")
        assert all(t.is_alive() for t in threads[FIRST:]), "a held write finished"
        m.kill9()
    finally:
        faults.clear()
    for t in threads:
        t.join(30)
    # recovery: the normal build redoes what the trailers say is not on the
    # backing files
    m2 = aimfs(options=["segment_idle=100ms"], binary=AIMFS)
    assert m2.unmount() == 0
    for n in names[:FIRST]:
        with open(os.path.join(m.backing, n), "rb") as f:
            assert f.read() == data[n], f"{n}: an acknowledged write is not in its file"
    lost = []
    for n in names[FIRST:]:
        with open(os.path.join(m.backing, n), "rb") as f:
            if f.read() != data[n]:
                lost.append(n)
    assert not lost, f"journaled but not redone after the crash: {lost}\n{m2.output()[-3000:]}"
    start = os.path.join(workdir, "replayed")
    os.makedirs(start)
    replay(m.journal, start)
    assert_trees_equal(start, m.backing)
    shutil.rmtree(start)
