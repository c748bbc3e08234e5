"""Stopping is explicit (issue 12, item 8).

SIGTERM is aimfs's graceful stop: an unmount as umount(8) does it, which
the kernel refuses while anything on the mount is open.  With an image open
(a guest running) aimfs refuses, says which files are open, and keeps
serving them; once they are closed the same signal stops it cleanly.  The
forced stop is asked for explicitly: the signal again within 10 seconds of
a refusal.  The systemd unit in examples/ uses the graceful path only.

Before, libfuse's handler ended the session on the first SIGTERM whatever
was open, and the guests' disks went from under them."""
import errno
import os
import shutil
import signal
import time

import pytest

from aimtest import assert_trees_equal, free_port, is_mounted, replay, wait_for
from test_examples import UNIT_DIR, unit_settings

FORCE_WINDOW_S = 10     # aimfs/main.c


def refused(m, count):
    return m.output().count("not unmounting") >= count


def replay_equal(m, workdir):
    target = os.path.join(workdir, "replayed")
    os.makedirs(target)
    replay(m.journal, target)
    assert_trees_equal(target, m.backing)
    shutil.rmtree(target)


def test_sigterm_refuses_while_an_image_is_open_then_stops_once_closed(aimfs, workdir):
    """SIGTERM with vm.raw open: aimfs stays, says vm.raw is open and how to
    force, and the open image keeps working.  Once it is closed, SIGTERM
    unmounts, and aimfs exits 0 with its journal sealed."""
    m = aimfs(expect_alarms=True)
    img = os.path.join(m.mountpoint, "vm.raw")
    fd = os.open(img, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"a" * 65536, 0)
        m.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(m, 1) or m.proc.poll() is not None, 30,
                 what="aimfs to answer SIGTERM")
        assert m.proc.poll() is None, f"aimfs stopped with an image open:\n{m.output()}"
        assert is_mounted(m.mountpoint)
        line = [ln for ln in m.output().splitlines() if "not unmounting" in ln][-1]
        assert "SIGTERM" in line and "vm.raw" in line and "1 file is open" in line, line
        assert "again within" in line, line
        # the guest's disk still works, writes are still journaled
        os.pwrite(fd, b"b" * 4096, 8192)
        os.fsync(fd)
        assert os.pread(fd, 4096, 8192) == b"b" * 4096
    finally:
        os.close(fd)
    # the kernel sends the RELEASE of a closed file asynchronously: a
    # SIGTERM within the force window could still find it open and force;
    # after the window it is a first SIGTERM again, and the file is closed
    time.sleep(10.5)
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(60) == 0, m.output()
    m.proc = None
    m.log.close()
    assert not is_mounted(m.mountpoint)
    assert not [f for f in os.listdir(m.journal) if f.endswith(".open")], "unsealed segment"
    replay_equal(m, workdir)


def test_sigterm_twice_forces_the_stop_and_the_next_mount_recovers(aimfs, workdir):
    """The forced stop: SIGTERM is refused (an image is open), and SIGTERM
    again within 10 seconds ends aimfs; the mount goes and the open file
    fails from then on.  What was written before is on the backing file,
    and the next mount recovers the journal."""
    m = aimfs(expect_alarms=True)
    img = os.path.join(m.mountpoint, "vm.raw")
    fd = os.open(img, os.O_RDWR | os.O_CREAT, 0o644)
    data = os.urandom(65536)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        m.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(m, 1) or m.proc.poll() is not None, 30,
                 what="aimfs to answer SIGTERM")
        assert m.proc.poll() is None, f"the first SIGTERM stopped aimfs:\n{m.output()}"
        m.proc.send_signal(signal.SIGTERM)
        try:
            m.proc.wait(FORCE_WINDOW_S * 3)
        except Exception:
            raise AssertionError(f"SIGTERM twice did not force the stop:\n{m.output()}")
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 0)
        assert e.value.errno in (errno.ENOTCONN, errno.EIO), e.value
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    m.stop()           # detaches whatever the forced stop left
    assert not is_mounted(m.mountpoint)
    with open(os.path.join(m.backing, "vm.raw"), "rb") as f:
        assert f.read() == data
    m2 = aimfs()
    assert m2.unmount() == 0
    replay_equal(m2, workdir)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def blocked_signals(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        mask = int(next(ln for ln in f if ln.startswith("SigBlk:")).split()[1], 16)
    return {s for s in STOP_SIGNALS if mask & (1 << (s - 1))}


def test_only_the_main_thread_takes_the_stop_signals(aimfs, workdir):
    """The kernel gives a signal sent to a process to any thread that does
    not block it.  A SIGTERM that landed on, say, the sealer would end the
    FUSE session without waking the main thread's wait, and a forced stop
    would hang (CI saw it once).  So every thread but the main one blocks
    the stop signals: the workers, the sealer, the activity log's cooler,
    a destination's worker, the resynchronisation engine, the stopper and
    the status listener's threads."""
    conf = os.path.join(workdir, "aimfs.conf")
    with open(conf, "w") as f:
        # a destination nobody answers: its worker and the resync engine run
        f.write(f"[aimfs]\nstatus = 127.0.0.1:{free_port()}\n"
                f"[destination nowhere]\nurl = https://127.0.0.1:{free_port()}/aim\n")
    m = aimfs(options=[f"config={conf}"], expect_alarms=True)
    img = os.path.join(m.mountpoint, "vm.raw")
    with open(img, "wb") as f:          # workers start as requests need them
        f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    pid = m.proc.pid
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    assert len(tids) >= 6, tids
    assert blocked_signals(pid, pid) == set(), "the main thread blocks a stop signal"
    taking = [t for t in tids if t != pid and blocked_signals(pid, t) != set(STOP_SIGNALS)]
    names = {}
    for t in taking:
        with open(f"/proc/{pid}/task/{t}/comm") as f:
            names[t] = f.read().strip()
    assert not taking, f"threads that can take a stop signal: {names}"
    assert m.unmount() == 0


def test_the_systemd_unit_stops_gracefully_only():
    """aimfs@.service: SIGTERM (the graceful stop), never SIGKILL after the
    timeout, no ExecStop that detaches lazily or kills, and a stop timeout
    longer than the window in which a second SIGTERM would force."""
    path = os.path.join(UNIT_DIR, "aimfs@.service")
    if not os.path.exists(path):
        pytest.fail(f"{path} is not built")
    s = unit_settings(path)
    assert s.get("KillSignal", "SIGTERM") == "SIGTERM", s
    assert s.get("SendSIGKILL") == "no", s
    assert s.get("KillMode", "control-group") in ("control-group", "mixed", "process"), s
    assert "ExecStop" not in s, s
    timeout = s.get("TimeoutStopSec", "90")
    assert timeout.isdigit() and int(timeout) > FORCE_WINDOW_S, s
