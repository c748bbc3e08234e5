"""Invariant 2 under kill -9: aimfs is killed at random moments during a
multi-threaded workload, several times, and remounted (recovery runs at
mount).  After each remount nothing acknowledged is lost (each thread's
region of acks.img holds exactly its acknowledged writes, or the bytes of
the one operation in flight at the kill; acknowledged creates, renames and
unlinks are there), and after a final clean unmount an offline replay of the
whole journal onto a copy of the starting directory equals the backing
directory.

Reproduce a failing case with AIM_SEED=<seed> (in every failure message;
the kill delays come from the same seed)."""
import mmap
import os
import random
import re
import shutil
import subprocess
import threading
import time

import pytest

from aimtest import AIMCTL, AIMFS, MKSEG, is_mounted, run, wait_for
from test_aimfs_workloads import journal_segments, replay_equal, start_dir
from workload import (CRASH_ERRNOS, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
                      FALLOC_FL_ZERO_RANGE, Workload, fallocate)


def open_segments(journal):
    return sorted(f for f in os.listdir(journal) if f.endswith(".open"))


def crash_rounds(aimfs, seed, threads, options, rounds, workload_kw=None):
    """rounds x (mount, workload, kill -9 after a random delay), then a
    remount, a little more work and a clean unmount.  Returns the last Mount
    and the Workload."""
    rng = random.Random(f"kills:{seed}")
    w = None
    for r in range(rounds):
        m = aimfs(options=options)
        if w is None:
            w = Workload(m.mountpoint, seed, threads=threads, **(workload_kw or {}))
        else:
            w.check_acked(m.backing)       # after the previous kill and this recovery
            w.resync(m.mountpoint)
        delay = rng.uniform(0.05, 1.5)
        w.start(seconds=60)
        time.sleep(delay)
        m.kill9()
        try:
            w.join(crash=True)
        except AssertionError as e:
            raise AssertionError(f"round {r}, kill after {delay:.2f}s: {e}") from None
    m = aimfs(options=options)
    w.check_acked(m.backing)
    w.resync(m.mountpoint)
    try:
        w.run(ops=40)
    finally:
        w.close()
    assert m.unmount() == 0
    w.check_acked(m.backing)
    return m, w


@pytest.mark.parametrize("seed,options", [
    pytest.param(4242, ["segment_size=256K", "segment_age=200ms"], id="seed4242-256K"),
    pytest.param(5151, [], id="seed5151-default-segments"),
])
def test_kill9_during_workload_loses_nothing(aimfs, workdir, seed, options):
    seed = int(os.environ.get("AIM_SEED", seed))
    threads = 4
    backing, start = start_dir(workdir, seed, threads)
    m, w = crash_rounds(aimfs, seed, threads, options, rounds=5)
    assert w.total_ops() > 200, f"seed {seed}: only {w.total_ops()} operations"
    m.check_quiet()
    replay_equal(m, start, f"crash workload seed={seed} options={options}")


def test_kill9_mid_segment_recovers_quietly(aimfs, workdir):
    """Tiny segments, small writes (many records a segment) and a long age:
    the kill always finds an open (unsealed) segment.  Recovery seals it,
    says so at info level only, and the replay still equals the backing
    directory."""
    seed = int(os.environ.get("AIM_SEED", 777))
    threads = 3
    backing, start = start_dir(workdir, seed, threads)
    # sealed by size only: idleness (the workload stalls on a loaded
    # machine) once sealed the last segment before the kill
    options = ["segment_size=64K", "segment_age=1h", "segment_idle=0", "segment_eager=0"]
    rng = random.Random(f"mid:{seed}")
    m = aimfs(options=options)
    w = Workload(m.mountpoint, seed, threads=threads, max_len=3000)
    found = []
    for r in range(3):
        w.start(seconds=60)
        time.sleep(rng.uniform(0.1, 0.8))
        m.kill9()
        w.join(crash=True)
        opened = open_segments(m.journal)
        # a kill between a segment's seal and the next record finds none
        # (the workload's threads all in an fsync or a rename, say)
        found.append(opened or journal_segments(m.journal)[-3:])
        m = aimfs(options=options)
        # recovery sealed what the kill left open (the new mount may have
        # opened the next segment already, for records of its own)
        head = max(int(f[:20]) for f in os.listdir(m.journal) if f[:20].isdigit())
        left = [f for f in opened if f in open_segments(m.journal) and int(f[:20]) != head]
        assert not left, f"seed {seed} round {r}: recovery left {left} unsealed"
        w.check_acked(m.backing)
        w.resync(m.mountpoint)
    assert any(f and f[0].endswith(".open") for f in found), \
        f"seed {seed}: no kill found an open segment: {found}"
    try:
        w.run(ops=20)
    finally:
        w.close()
    assert m.unmount() == 0
    w.check_acked(m.backing)
    m.check_quiet()
    # every segment, including the ones recovery sealed, is whole and dumps
    segs = journal_segments(m.journal)
    assert len(segs) >= 10, segs
    nums = [int(s[:20]) for s in segs]
    assert nums == list(range(1, len(nums) + 1)), f"segment numbers not contiguous: {nums}"
    for s in segs:
        run([AIMCTL, "dump", os.path.join(m.journal, s)])
    replay_equal(m, start, f"mid-segment kill seed={seed}")


def test_open_segment_with_another_segments_header_is_dropped(aimfs, workdir):
    """A recycled segment file whose new header never reached the disk (a
    power cut: header write and rename are not ordered on disk) carries an
    older segment's header under the open segment's name.  Recovery must
    not seal it as that number: it drops it, says why, and the journal stays
    whole (every segment dumps, numbers contiguous)."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    options = ["segment_size=64K", "segment_age=1h"]
    m = aimfs(options=options)
    with open(os.path.join(m.mountpoint, "vm.img"), "wb") as f:
        for _ in range(8):
            f.write(os.urandom(30000))
            f.flush()
            os.fsync(f.fileno())
    m.kill9()
    opened = open_segments(m.journal)
    assert opened, journal_segments(m.journal)
    # what a power cut can leave: the old file's content under the new name
    shutil.copyfile(os.path.join(m.journal, journal_segments(m.journal)[0]),
                    os.path.join(m.journal, opened[-1]))
    m = aimfs(options=options)
    assert f"{opened[-1]} holds the header of segment 1" in m.output(), m.output()
    assert m.unmount() == 0
    segs = journal_segments(m.journal)
    nums = [int(s[:20]) for s in segs]
    assert nums == list(range(1, len(nums) + 1)), f"segment numbers not contiguous: {nums}"
    for s in segs:
        run([AIMCTL, "dump", os.path.join(m.journal, s)])


# ---- kill -9 inside the windows of one operation (deterministic, with gdb) --
#
# aimfs does a namespace syscall before its journal record, and a data
# record before its backing syscall.  gdb stops aimfs exactly in between
# (at the entry of the journal function, or on its return) and the daemon
# is killed there.  Recovery must bring backing dir and journal back into
# agreement: the replay of the journal equals the backing directory.

GDB = shutil.which("gdb")


def _prepare_tree(mnt):
    os.mkdir(os.path.join(mnt, "d"))
    for rel, n in (("a.img", 70000), ("b.img", 5000), ("d/x.img", 9000)):
        with open(os.path.join(mnt, rel), "wb") as f:
            f.write(os.urandom(n))
    os.mkdir(os.path.join(mnt, "empty"))


def _pwrite(rel, data, off, flags=0):
    def act(mnt):
        fd = os.open(os.path.join(mnt, rel), os.O_RDWR | flags)
        try:
            if flags & os.O_DIRECT:
                buf = mmap.mmap(-1, len(data))
                buf[:] = data
                os.pwrite(fd, buf, off)
            else:
                os.pwrite(fd, data, off)
        finally:
            os.close(fd)
    return act


def _fallocate(rel, mode, off, n):
    def act(mnt):
        fd = os.open(os.path.join(mnt, rel), os.O_RDWR)
        try:
            fallocate(fd, mode, off, n)
        finally:
            os.close(fd)
    return act


def _create(mnt):
    fd = os.open(os.path.join(mnt, "d", "new.img"), os.O_RDWR | os.O_CREAT | os.O_EXCL)
    os.close(fd)


WINDOWS = {
    # name: (function, finish (stop after it returned), action on the mount)
    "mkdir": ("journal_mkdir", False, lambda mnt: os.mkdir(os.path.join(mnt, "newdir"))),
    "rmdir": ("journal_rmdir", False, lambda mnt: os.rmdir(os.path.join(mnt, "empty"))),
    "rename_dir": ("journal_rename_dir", False,
                   lambda mnt: os.rename(os.path.join(mnt, "d"), os.path.join(mnt, "e"))),
    "rename": ("journal_rename", False,
               lambda mnt: os.rename(os.path.join(mnt, "a.img"), os.path.join(mnt, "d", "c.img"))),
    "rename_replace": ("journal_rename", False,
                       lambda mnt: os.rename(os.path.join(mnt, "a.img"),
                                             os.path.join(mnt, "b.img"))),
    "unlink": ("journal_unlink", False, lambda mnt: os.unlink(os.path.join(mnt, "b.img"))),
    "create": ("journal_create", False, _create),
    "write": ("journal_write", True, _pwrite("a.img", b"W" * 10000, 30000)),
    "write_grow": ("journal_write", True, _pwrite("b.img", b"G" * 3000, 100000)),
    "write_direct": ("journal_write", True,
                     _pwrite("a.img", b"D" * 8192, 4096, os.O_DIRECT)),
    "truncate": ("journal_truncate", True,
                 lambda mnt: os.truncate(os.path.join(mnt, "a.img"), 1234)),
    "punch": ("journal_zero", True,
              _fallocate("a.img", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 5000, 20000)),
    "zero_range": ("journal_zero", True, _fallocate("a.img", FALLOC_FL_ZERO_RANGE, 60000, 50000)),
    # the sealer: a segment sealed (trailer written) but not yet renamed
    # NNN.open -> NNN.aimj, and one renamed but not yet in the catalog
    "seal_not_renamed": ("sealer_finish_file", False, _pwrite("b.img", b"S" * 100000, 0)),
    "renamed_not_indexed": ("sealer_index", False, _pwrite("b.img", b"I" * 100000, 7)),
}


BREAK_SET = "AIMTEST-BREAKPOINT-SET"


def _traced_and_running(pid, log):
    """gdb has attached, set its breakpoint and let aimfs run again: the
    marker it echoes after the breakpoint is in its log, and every thread
    is traced and out of the stop.  (Reading the main thread's state alone
    could catch the moment between PTRACE_ATTACH and its stop, before the
    breakpoint existed: the action then ran unobserved and gdb waited.)"""
    with open(log, errors="replace") as f:
        if BREAK_SET not in f.read():
            return False
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                st = dict(l.split(":\t", 1) for l in f.read().splitlines() if ":\t" in l)
        except FileNotFoundError:
            continue
        if st.get("TracerPid", "0").strip() == "0" or st["State"].startswith("t"):
            return False
    return True


def kill_inside(m, function, finish, action):
    """Run action(mountpoint) with aimfs stopped by gdb at function (or on
    its return) and killed -9 there.  Returns the action's exception."""
    log = m.log_path + ".gdb"
    cmds = ["set pagination off", "set confirm off", f"break {function}",
            f"echo {BREAK_SET}\\n", "continue"]
    if finish:
        cmds.append("finish")
    cmds.append("kill")
    args = [GDB, "-p", str(m.proc.pid), "-batch", "-nx"]
    for c in cmds:
        args += ["-ex", c]
    with open(log, "wb") as out:
        gdb = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    result = {}

    def act():
        try:
            action(m.mountpoint)
        except BaseException as e:  # noqa: BLE001
            result["error"] = e
    th = threading.Thread(target=act, daemon=True)
    try:
        wait_for(lambda: _traced_and_running(m.proc.pid, log) or gdb.poll() is not None, 30,
                 what="gdb to attach")
        assert gdb.poll() is None, open(log, errors="replace").read()
        if not finish and function.startswith("journal_"):
            # Killed before its record: recovery finds the change by the
            # image's ctime against the journal's newest mtime, with 2 s
            # of slack.  Attaching gdb on a loaded machine took longer
            # than that once after the preparation's writes, so a journaled
            # write just before the action keeps the gap the action's own.
            _pwrite("d/x.img", b"t", 0)(m.mountpoint)
        th.start()
        # gdb stops, finishes and kills in well under a second; 120 s is
        # for an ASan build under a loaded machine (30 s was once too few)
        try:
            gdb.wait(120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"gdb did not stop aimfs inside {function} within 120 s:\n"
                                 + open(log, errors="replace").read()) from None
    finally:
        if gdb.poll() is None:
            gdb.kill()
            gdb.wait()
    out = open(log, errors="replace").read()
    assert m.proc.poll() is not None, f"aimfs was not killed inside {function}:\n{out}"
    assert re.search(r"Breakpoint 1[,.]", out), f"gdb never stopped in {function}:\n{out}"
    m.kill9()          # reap and detach the dead mount
    th.join(30)
    assert not th.is_alive(), "the operation is still blocked after the kill"
    return result.get("error")


@pytest.mark.skipif(GDB is None, reason="gdb is not installed")
@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_kill9_inside_operation_window(aimfs, workdir, window):
    function, finish, action = WINDOWS[window]
    backing, start = start_dir(workdir, 1, 1)
    # no sealing but by size: the sealer must not reach a breakpoint on its
    # own with the preparation's writes before the action runs (segment_age
    # did once, on a loaded machine where attaching gdb took over 2 s)
    m = aimfs(options=["segment_size=64K", "segment_idle=0", "segment_age=1h",
                       "segment_eager=0"])
    _prepare_tree(m.mountpoint)
    err = kill_inside(m, function, finish, action)
    assert err is None or (isinstance(err, OSError) and err.errno in CRASH_ERRNOS), repr(err)
    m2 = aimfs(options=["segment_size=64K"])
    assert m2.unmount() == 0
    m2.check_quiet()
    replay_equal(m2, start, f"kill -9 inside {function} ({window})")


def mount_killed_in(aimfs, workdir, options, function, timeout=60):
    """Start aimfs under gdb and kill it -9 when it reaches function, which
    recovery calls before the mount is served.  Returns gdb's output."""
    backing = os.path.join(workdir, "backing")
    mnt = os.path.join(workdir, "mnt")
    cmd = [AIMFS, "-f", "-o", ",".join(options), backing, mnt]
    args = [GDB, "-batch", "-nx", "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", f"break {function}", "-ex", "run", "-ex", "kill", "--args", *cmd]
    gdb = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, text=True)
    try:
        out, _ = gdb.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # it mounted without reaching function: unmount, which ends it
        subprocess.run(["fusermount3", "-u", mnt], check=False)
        out, _ = gdb.communicate(timeout=30)
        raise AssertionError(f"aimfs never reached {function} during recovery:\n{out}")
    finally:
        if gdb.poll() is None:
            gdb.kill()
            gdb.wait()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)
    assert re.search(r"Breakpoint 1[,.]", out), f"gdb never stopped in {function}:\n{out}"
    return out


RECOVERY_CASES = {
    # first kill (inside an operation), then a kill inside recovery
    "redo": ("write", "apply_record_data"),
    "redo_truncate": ("truncate", "apply_record_data"),
    "adopt": ("create", "journal_adopt"),
    "rename_fix": ("rename", "journal_rename"),
    "unlink_gone": ("unlink", "journal_unlink"),
}


@pytest.mark.skipif(GDB is None, reason="gdb is not installed")
@pytest.mark.parametrize("case", sorted(RECOVERY_CASES))
def test_kill9_during_recovery(aimfs, workdir, case):
    """A crash while recovery redoes the journal's tail (or journals what the
    kill left unrecorded) is recovered by the next mount."""
    window, function = RECOVERY_CASES[case]
    options = ["segment_size=64K", "segment_idle=0"]
    backing, start = start_dir(workdir, 1, 1)
    m = aimfs(options=options)
    _prepare_tree(m.mountpoint)
    # something journaled but not yet applied, for recovery to redo
    err = kill_inside(m, *WINDOWS[window])
    assert err is None or (isinstance(err, OSError) and err.errno in CRASH_ERRNOS), repr(err)
    mount_killed_in(aimfs, workdir, options, function)
    m2 = aimfs(options=options)
    assert m2.unmount() == 0
    m2.check_quiet()
    replay_equal(m2, start, f"kill -9 inside {window}, then inside recovery's {function}")


def test_a_kill_in_the_middle_of_an_adoption_journals_the_whole_file_at_recovery(
        aimfs, workdir):
    """A file copied into the backing directory behind the mount is adopted
    at its first lookup: CREATE, its size, then its content, 1 MiB at a
    time.  aimfs killed after the CREATE left an image the next mount
    matched by inode number, with the rest of its content never journaled:
    the replica read zeros there for good.  The adoption is marked first,
    and recovery journals a marked image's content again."""
    from faults import AIMFS_FAULTS, Faults
    from servers import free_port
    faults = Faults(os.path.join(workdir, "faults"))
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    start = os.path.join(workdir, "start")
    os.makedirs(start)
    status = f"127.0.0.1:{free_port()}"
    m = aimfs(options=[f"status={status}"], binary=AIMFS_FAULTS, env=faults.env,
              expect_alarms=True)
    data = os.urandom(4 << 20)
    with open(os.path.join(backing, "big.img"), "wb") as f:   # behind the mount
        f.write(data)
    # the content waits: only CREATE and TRUNCATE are in
    faults.set(f"pwritev *.open stall len={64 + (1 << 20)}")
    looked = threading.Thread(target=lambda: os.path.exists(os.path.join(m.mountpoint,
                                                                         "big.img")),
                              daemon=True)
    looked.start()
    # (the stalled append holds the journal lock: no status until the kill)
    wait_for(lambda: "stalled" in m.output(), 30, what="the adoption's content to stall")
    m.kill9()
    faults.clear()
    looked.join(30)
    m2 = aimfs()
    assert m2.unmount() == 0
    assert "adoption of big.img was cut short" in m2.output(), m2.output()
    replay_equal(m2, start, "a kill in the middle of an adoption")


def test_an_open_segment_after_a_gap_survives_a_crash_in_the_same_boot(aimfs, workdir):
    """Recovery drops an unfinished segment that starts after a gap: after a
    power cut that is what survived past a lost end.  But the catalog can
    lack segments (ones the sealer could not index, pruned since), and in a
    crash without a power loss the page cache kept every page, so a gap
    there is the catalog's: the segment, fsynced and acknowledged, was
    deleted.  It is kept now (forged here with tests/mkseg)."""
    import sqlite3

    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    m = aimfs(options=["segment_idle=100ms"])
    with open(os.path.join(m.mountpoint, "a.img"), "wb") as f:
        f.write(os.urandom(3 * 4096))
    time.sleep(1)                       # sealed: no .open left
    m.kill9()
    journal = m.journal
    db = sqlite3.connect(os.path.join(journal, "catalog.db"))
    group = db.execute("SELECT value FROM meta WHERE key = 'group'").fetchone()[0]
    number, last = db.execute("SELECT max(number), max(last_lsn) FROM segments").fetchone()
    image = db.execute("SELECT id FROM images WHERE name = 'a.img'").fetchone()[0]
    db.close()
    n = number + 2
    spec = (f"group {group}\nnumber {n}\nfirst_lsn {last + 4}\nimage {image} a.img\n"
            f"write {image} 4096 @4096:0x22\nunsealed\n")
    subprocess.run([MKSEG, os.path.join(journal, f"{n:020d}.open")], input=spec, text=True,
                   check=True)
    m2 = aimfs()
    with open(os.path.join(m2.mountpoint, "a.img"), "rb") as f:
        f.seek(4096)
        assert f.read(4096) == b"\x22" * 4096, "the segment after the gap was dropped"
    assert m2.unmount() == 0
    assert f"{n:020d}.open starts at LSN {last + 4}" in m2.output(), m2.output()
    assert os.path.exists(os.path.join(journal, f"{n:020d}.aimj"))
