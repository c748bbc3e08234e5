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

from aimtest import assert_trees_equal, is_mounted, replay, wait_for
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
