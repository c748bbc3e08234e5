"""sd_notify for real: each daemon runs with NOTIFY_SOCKET pointing at a unix
datagram socket this test binds, as systemd does for a Type=notify unit.
READY=1 must come only once the daemon serves (aimfs: the mount is in
/proc/self/mountinfo and its status listener answers; aim-remote: its
receiver and status listener accept), and STOPPING=1 when it stops."""
import os
import signal
import socket
import subprocess
import time
import urllib.request

from aimtest import AIMFS, is_mounted
from remote_helpers import PKI, Remote, free_port


class NotifySocket:
    """What systemd listens on: a datagram socket; messages in arrival order."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def receive(self, timeout):
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)

    def wait_for(self, key, proc, timeout=30):
        """The first message with key, checking that the daemon is alive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.receive(0.2)
            except socket.timeout:
                assert proc.poll() is None, f"daemon exited with {proc.returncode} before {key}"
                continue
            if key in msg:
                return msg
        raise AssertionError(f"no {key} within {timeout}s")

    def close(self):
        self.sock.close()


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status


def test_aimfs_is_ready_only_once_mounted_and_stopping_at_unmount(workdir):
    backing, mnt = os.path.join(workdir, "backing"), os.path.join(workdir, "mnt")
    os.makedirs(backing)
    os.makedirs(mnt)
    ns = NotifySocket(os.path.join(workdir, "notify"))
    port = free_port()
    env = dict(os.environ, NOTIFY_SOCKET=ns.path)
    cmd = [AIMFS, "-f", "-o", f"status=127.0.0.1:{port}", backing, mnt]
    log = open(os.path.join(workdir, "aimfs.log"), "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        msg = ns.wait_for("READY", proc)
        # At READY=1 the mount is there and the status listener answers at
        # once: no retry, unlike a script that only waits for the mount.
        assert msg["READY"] == "1"
        assert is_mounted(mnt), f"READY=1 before {mnt} was mounted: {cmd}"
        assert get(f"http://127.0.0.1:{port}/status") == 200
        assert mnt in msg.get("STATUS", "")
        with open(os.path.join(mnt, "vm.raw"), "wb") as f:
            f.write(b"x" * 4096)
        subprocess.run(["fusermount3", "-u", mnt], check=True)
        assert ns.wait_for("STOPPING", proc)["STOPPING"] == "1"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)
            proc.kill()
            proc.wait()
        log.close()
        ns.close()


def test_aim_remote_is_ready_only_once_listening_and_stopping_at_sigterm(workdir):
    inbox, target = os.path.join(workdir, "inbox"), os.path.join(workdir, "target")
    os.makedirs(inbox)
    os.makedirs(target)
    pki = PKI(os.path.join(workdir, "pki"))
    ns = NotifySocket(os.path.join(workdir, "notify"))
    r = Remote(workdir, inbox, target, listen=True, pki=pki)
    cmd = r.command()
    log = open(r.log_path, "wb")
    proc = subprocess.Popen(cmd, env=dict(os.environ, NOTIFY_SOCKET=ns.path), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert ns.wait_for("READY", proc)["READY"] == "1"
        # Both listeners accept at READY=1, without any retry.
        socket.create_connection(("127.0.0.1", r.listen_port), 2).close()
        assert get(f"http://127.0.0.1:{r.status_port}/status") == 200
        proc.send_signal(signal.SIGTERM)
        assert ns.wait_for("STOPPING", proc)["STOPPING"] == "1"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        ns.close()
