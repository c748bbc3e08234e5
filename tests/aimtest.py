"""Helpers for the integration tests: start aimfs for real, wait for its
mount, stop it cleanly (or brutally), and compare directory trees.

Everything a helper starts is stopped by the fixture that made it, by PID,
even when the test fails; mounts are undone with fusermount3 -u.  A failed
test prints the command lines that reproduce it.
"""
import filecmp
import os
import random
import re
import socket
import signal
import subprocess
import time

BUILD_DIR = os.environ.get(
    "AIM_BUILD", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build"))
AIMFS = os.path.join(BUILD_DIR, "aimfs", "aimfs")
AIMCTL = os.path.join(BUILD_DIR, "tools", "aimctl")
AIM_REMOTE = os.path.join(BUILD_DIR, "remote", "aim-remote")
MKSEG = os.path.join(BUILD_DIR, "tests", "mkseg")

# Words that must not appear in a daemon's output during normal operation.
ALARM_WORDS = ("error", "warning", "runtime error", "AddressSanitizer", "LeakSanitizer")


# Ports for the servers a test starts: from AIM_PORT_RANGE ("LO-HI"), which
# scripts/test.sh gives each of its side-by-side passes, below the kernel's
# ephemeral range so that no outgoing connection holds one.  A port is
# handed out once per process and only if nothing listens on it now.
_PORT_LO, _PORT_HI = (int(x) for x in os.environ.get("AIM_PORT_RANGE", "20000-32000").split("-"))
_ports_given = set()
_port_next = random.randrange(_PORT_LO, _PORT_HI)


def free_port():
    global _port_next
    for _ in range(_PORT_HI - _PORT_LO):
        port = _port_next
        _port_next = _PORT_LO + (_port_next + 1 - _PORT_LO) % (_PORT_HI - _PORT_LO)
        if port in _ports_given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise RuntimeError(f"no free port left in {_PORT_LO}-{_PORT_HI}")


# aimfs's buffered-write modes (-o cache=): "writeback" (opt-in: the
# kernel's FUSE writeback cache; a buffered write is acknowledged by the
# fsync that covers it) and "strict" (the default: each write reaches aimfs
# before it returns).  AIM_CACHE sets the mode of every Mount that does not name one;
# the crash and replay tests run in both (conftest.py: cache_mode).
CACHE_MODES = ("writeback", "strict")
DEFAULT_CACHE = os.environ.get("AIM_CACHE", "")
_cache_of_mount = {}
# AIM_IO_URING=on: every Mount that does not name io_uring asks for FUSE over
# io_uring (scripts/test.sh's sanitizer pass; the kernel's fuse module must
# have enable_uring=Y, which test.sh sets).
DEFAULT_IO_URING = os.environ.get("AIM_IO_URING", "")


def cache_mode(mountpoint):
    """The cache mode of the aimfs started by a Mount on mountpoint
    (strict, aimfs's default, for a mount made some other way)."""
    return _cache_of_mount.get(os.path.realpath(mountpoint), "strict")


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # mountinfo writes space, tab, newline and backslash as \ooo
            if re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]) == path:
                return True
    return False


def wait_for(cond, timeout=20.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _config_sets_status(path):
    try:
        with open(path) as f:
            return any(line.split("=")[0].strip() == "status" for line in f)
    except OSError:
        return False


class Mount:
    """One aimfs process serving BACKING on MOUNTPOINT."""

    def __init__(self, backing, mountpoint, options=(), log_path=None, expect_alarms=False,
                 binary=None, env=None):
        """binary: another build of aimfs (default AIMFS); env: variables added
        to its environment."""
        self.backing = str(backing)
        self.binary = binary or AIMFS
        self.env = dict(env or {})
        self.mountpoint = str(mountpoint)
        self.options = list(options)
        self.log_path = log_path or os.path.join(os.path.dirname(self.mountpoint),
                                                 os.path.basename(self.mountpoint) + ".log")
        self.expect_alarms = expect_alarms
        self.proc = None
        self.cmdline = None

    def start(self, timeout=30.0):
        cmd = [self.binary, "-f"]
        options = list(self.options)
        # Tests run side by side: no status listener unless a test asks
        # (an option, or a status key in its config file).
        if not any(o.startswith("status=") or (o.startswith("config=") and
                                               _config_sets_status(o[7:]))
                   for o in options):
            options.append("status=off")
        cache = next((o[6:] for o in options if o.startswith("cache=")), None)
        if cache is None and DEFAULT_CACHE:
            cache = DEFAULT_CACHE
            options.append(f"cache={cache}")
        _cache_of_mount[os.path.realpath(self.mountpoint)] = cache or "strict"
        if DEFAULT_IO_URING and not any(o.startswith("io_uring=") for o in options):
            options.append(f"io_uring={DEFAULT_IO_URING}")
        cmd += ["-o", ",".join(options)]
        cmd += [self.backing, self.mountpoint]
        self.cmdline = cmd
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, **self.env} if self.env else None)

        def ready():
            if self.proc.poll() is not None:
                envs = "".join(f"{k}={v} " for k, v in self.env.items())
                raise RuntimeError(
                    f"aimfs exited with {self.proc.returncode} before mounting:\n"
                    f"  {envs}{' '.join(cmd)}\n{self.output()}")
            return is_mounted(self.mountpoint)
        wait_for(ready, timeout, what=f"aimfs to mount {self.mountpoint}")
        return self

    def output(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    @property
    def journal(self):
        for opt in self.options:
            if opt.startswith("journal="):
                return opt[len("journal="):]
        return os.path.join(self.backing, ".aimfs")

    def unmount(self, timeout=60.0):
        """Clean unmount; returns aimfs's exit status."""
        if self.proc is None:
            return None
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", self.mountpoint], check=False)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError(f"aimfs did not exit after unmount:\n{self.output()}")
        finally:
            self.log.close()
        self.proc = None
        if rc != 0:
            # pytest shows what a failed test printed: the reason is here
            # (a sanitizer's report, say), not in the exit status
            print(f"aimfs exited with {rc} after unmount:\n  {' '.join(self.cmdline)}\n"
                  f"{self.output()[-20000:]}")
        return rc

    def kill9(self):
        """kill -9 by PID, then detach the dead mount."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.log.close()
        # The kernel keeps a dead FUSE mount until it is detached.
        subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], check=False,
                       stderr=subprocess.DEVNULL)
        wait_for(lambda: not is_mounted(self.mountpoint), 10, what="dead mount to go")

    def stop(self):
        """For teardown: unmount however we can, never raise."""
        try:
            if self.proc is not None:
                if is_mounted(self.mountpoint):
                    subprocess.run(["fusermount3", "-u", self.mountpoint], check=False,
                                   stderr=subprocess.DEVNULL)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                self.log.close()
                self.proc = None
            if is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], check=False,
                               stderr=subprocess.DEVNULL)
        except Exception:
            pass

    def check_quiet(self):
        out = self.output()
        if self.expect_alarms:
            return
        bad = [l for l in out.splitlines() if any(w in l for w in ALARM_WORDS)]
        assert not bad, "aimfs complained:\n" + "\n".join(bad) + f"\ncommand: {' '.join(self.cmdline)}"

    def command_line(self):
        """The command line that reproduces this mount, environment included."""
        return "".join(f"{k}={v} " for k, v in self.env.items()) + " ".join(self.cmdline or [])


def run(cmd, check=True, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def tree(root, skip=(".aimfs",)):
    """{relative path: ('f', size) | ('d',)} of regular files and directories."""
    out = {}
    root = str(root)
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
            rel = ""
        for d in dirnames:
            out[os.path.join(rel, d)] = ("d",)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            out[os.path.join(rel, f)] = ("f", os.path.getsize(p))
    return out


def change_in_place(path, offset, data):
    """What an operator does to an image behind aimfs's back (dd
    conv=notrunc, qemu-img without the mount): data written at offset, the
    file's times set back as they were.  Only its ctime tells."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def assert_trees_equal(a, b, skip=(".aimfs",)):
    """Same file set, same sizes, same bytes (cmp), same directories."""
    ta, tb = tree(a, skip), tree(b, skip)
    only_a = sorted(set(ta) - set(tb))
    only_b = sorted(set(tb) - set(ta))
    assert not only_a and not only_b, f"file sets differ: only in {a}: {only_a}; only in {b}: {only_b}"
    for rel, kind in ta.items():
        assert tb[rel] == kind, f"{rel}: {kind} vs {tb[rel]}"
        if kind[0] == "f":
            pa, pb = os.path.join(a, rel), os.path.join(b, rel)
            if not filecmp.cmp(pa, pb, shallow=False):
                r = subprocess.run(["cmp", pa, pb], capture_output=True, text=True)
                raise AssertionError(f"{rel} differs: {r.stdout.strip()}")


def copy_tree(src, dst):
    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True)


def replay(journal, target, extra=()):
    return run([AIMCTL, "replay", "--target-dir", str(target), *extra, str(journal)])
