"""Helpers for the crash-consistency tests (test_consistency.py, the soak):
marks through a running aimfs, an ext4 file system in a raw image attached
through a loop device (on the mount), `aimctl check` runs parsed from its
JSON lines, and the records of a journal as `aimctl dump` lists them.

Everything attached or mounted here is undone by the object that did it,
by device and path, in `close()` -- which the tests call from `finally`."""
import hashlib
import json
import os
import re
import subprocess
from datetime import datetime, timezone

from aimtest import AIMCTL, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK_EXT4 = os.path.join(ROOT, "scripts", "check-ext4.sh")


# ---- marks ----

def mark(status_addr, name, check=True):
    """`aimctl mark`; returns the MARK's LSN (or the CompletedProcess when
    check is False)."""
    p = run([AIMCTL, "mark", "--status", status_addr, name], check=check)
    if not check:
        return p
    m = re.search(r"at LSN (\d+) \(segment (\d+)", p.stdout)
    assert m, p.stdout
    return int(m.group(1))


def hash_tree(root, skip=(".aimfs",)):
    """{relative path: sha256} of every regular file under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[os.path.relpath(p, root)] = h.hexdigest()
    return out


# ---- the journal's records ----

RECORD = re.compile(r"^\s*(\d+)\s+([A-Z_]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.*)$")


def records(segments):
    """[{lsn, type, offset, length, time_ns, rest}] of segment files, in
    order, from `aimctl dump`."""
    out = []
    for seg in sorted(segments):
        for line in run([AIMCTL, "dump", seg]).stdout.splitlines():
            m = RECORD.match(line)
            if not m or m.group(2) == "TYPE":
                continue
            t = m.group(6)
            out.append({"lsn": int(m.group(1)), "type": m.group(2),
                        "offset": None if m.group(3) == "-" else int(m.group(3)),
                        "length": None if m.group(4) == "-" else int(m.group(4)),
                        "time_ns": iso_ns(t), "time": t, "rest": m.group(7)})
    return out


def iso_ns(text):
    """'2024-05-01T12:00:00.123456789Z' -> ns since the epoch."""
    base, _, frac = text.rstrip("Z").partition(".")
    sec = int(datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
              .timestamp())
    return sec * 1_000_000_000 + int((frac + "000000000")[:9])


def ns_iso(ns):
    sec, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{frac:09d}Z"


def segments(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".aimj"))


# ---- aimctl check ----

class CheckRun:
    """One `aimctl check --json` run: .rc, .points (dicts), .summary, .err."""

    def __init__(self, args, timeout=600):
        self.cmd = [AIMCTL, "check", "--json", *map(str, args)]
        p = subprocess.run(self.cmd, capture_output=True, text=True, timeout=timeout)
        self.rc, self.out, self.err = p.returncode, p.stdout, p.stderr
        self.points, self.summary = [], None
        for line in p.stdout.splitlines():
            o = json.loads(line)
            if "summary" in o:
                self.summary = o["summary"]
            else:
                self.points.append(o)

    def __repr__(self):
        return (f"aimctl check (exit {self.rc}): {' '.join(self.cmd)}\nstderr:\n{self.err}\n"
                f"stdout (tail):\n" + "\n".join(self.out.splitlines()[-15:]))

    def failed(self):
        return [p for p in self.points if p["result"] != "ok"]


# ---- ext4 in a raw image through a loop device ----

def make_ext4(path, mnt, size="32M", dirs=()):
    """A fresh ext4 file system in a new raw image at path (not through any
    aimfs mount), holding directories dirs; mnt is a scratch mountpoint."""
    run(["truncate", "-s", size, path])
    run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", path])
    if dirs:
        with Ext4Loop(path, mnt) as fs:
            for d in dirs:
                os.makedirs(os.path.join(fs.mnt, d))


class Ext4Loop:
    """The ext4 in image `path`, attached to a loop device and mounted at
    mnt.  close() unmounts and detaches, whatever state the image's own
    file system is in (after aimfs under it was killed, I/O fails)."""

    def __init__(self, path, mnt):
        self.path, self.mnt = path, mnt
        self.dev = None
        self.mounted = False

    def open(self):
        os.makedirs(self.mnt, exist_ok=True)
        self.dev = run(["losetup", "-f", "--show", self.path]).stdout.strip()
        run(["mount", "-t", "ext4", self.dev, self.mnt])
        self.mounted = True
        return self

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def write_file(self, rel, data):
        """Writes rel with data and fsyncs it and its directory."""
        p = os.path.join(self.mnt, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(os.path.dirname(p), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def close(self):
        if self.mounted:
            r = subprocess.run(["umount", self.mnt], capture_output=True, timeout=120)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", self.mnt], capture_output=True, timeout=60)
            self.mounted = False
        if self.dev:
            subprocess.run(["losetup", "-d", self.dev], capture_output=True, timeout=60)
            self.dev = None
