"""Resynchronisation end to end (docs/RESYNC.md), through the kernel and
HTTPS to a real aim-remote: images that exist before the mount, a
destination added later, a journal that overflows while the receiver is
away, and a pre-seeded replica that differs in a few extents.  Every case
ends with the replica byte-for-byte equal to the source and the remote
saying its copy is consistent."""
import glob
import os
import random
import re
import sqlite3
import subprocess
import threading
import time
import types
import urllib.error
import urllib.request

import pytest

from aimtest import AIMCTL, assert_trees_equal, change_in_place, copy_tree, run, wait_for
from remote_helpers import PKI, Remote
from servers import free_port, get_json, get_status
from workload import Workload, populate


def sparse_image(path, size, extents, seed):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(extents):
            f.seek(rnd.randrange(0, size - (1 << 20)))
            f.write(rnd.randbytes(rnd.randrange(1, 600000)))


def source_conf(workdir, name, remotes, status, extra=""):
    # extra may set these itself (a key given twice is refused)
    defaults = "".join(f"{k} = {v}\n" for k, v in (("segment_size", "1M"), ("segment_age", "300ms"))
                       if f"{k} =" not in extra)
    text = f"[aimfs]\nstatus = {status}\n{defaults}{extra}\n"
    for dest, (r, pki) in remotes.items():
        text += (f"[destination {dest}]\nurl = {r.base_url}/aim\nca_file = {pki.ca}\n"
                 f"cert_file = {pki.client}\nkey_file = {pki.client_key}\n"
                 f"token_file = {pki.token_file}\n")
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def start_remote(workdir, pki, name, target=None):
    inbox = os.path.join(workdir, name, "inbox")
    target = target or os.path.join(workdir, name, "images")
    os.makedirs(inbox, exist_ok=True)
    os.makedirs(target, exist_ok=True)
    r = Remote(workdir, inbox, target, name=name, listen=True, pki=pki,
               args=["--client-ca", pki.ca, "--token-file", pki.token_file])
    return r.start()


class StateLog:
    """Polls the source's status in the background and remembers every
    destination state it saw, so a test can say what the operator was told."""

    def __init__(self, status):
        self.status = status
        self.seen = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                for d in get_status(self.status)["destinations"]:
                    self.seen.setdefault(d["name"], set()).add(d["state"])
            except OSError:
                pass
            time.sleep(0.05)

    def close(self):
        self.stop.set()
        self.thread.join()


def wait_converged(status, remotes, timeout=180):
    """The source says in sync and every remote applied its head and is
    consistent."""
    last = {}

    def ok():
        st = get_status(status)
        last["source"] = st
        if st.get("in_sync") is not True:
            return False
        for r in remotes:
            gr = r.group(st["group"])
            last[r.name] = gr
            if not gr or gr["state"] != "idle" or gr.get("consistent") is False:
                return False
            if gr["applied_segment"] < max(d["acked_segment"] for d in st["destinations"]):
                return False
        return True
    try:
        wait_for(ok, timeout, 0.2, what="convergence")
    except TimeoutError:
        raise AssertionError(f"no convergence: {last}") from None
    return last["source"]


@pytest.fixture
def pki(workdir):
    return PKI(os.path.join(workdir, "pki"))


@pytest.fixture
def remotes():
    started = []
    yield started
    for r in started:
        r.close()


def test_initial_sync_of_existing_images_while_writing(aimfs, workdir, pki, remotes):
    backing = os.path.join(workdir, "backing")
    os.makedirs(os.path.join(backing, "pool"))
    sparse_image(os.path.join(backing, "pool", "vm1.raw"), 3 << 30, 30, 1)
    run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(backing, "vm2.qcow2"), "2G"])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 8M", "-c", "write -P 0x33 1G 3M",
         os.path.join(backing, "vm2.qcow2")])
    populate(backing, seed=7, threads=3)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    m = aimfs(options=[f"config={source_conf(workdir, 'a.conf', {'dr1': (r, pki)}, status)}"])
    log = StateLog(status)
    try:
        # the guests keep writing while the initial sync runs
        w = Workload(m.mountpoint, seed=7, threads=3)
        w.run(seconds=4)
        w.close()
        run(["qemu-io", "-t", "none", "-f", "qcow2", "-c", "write -P 0x77 512M 1M",
             os.path.join(m.mountpoint, "vm2.qcow2")])
        st = wait_converged(status, [r])
    finally:
        log.close()
    assert "resyncing" in log.seen["dr1"], log.seen
    sync = st["destinations"][0]["sync"]
    assert sync["state"] == "in_sync"
    assert m.unmount() == 0
    assert_trees_equal(backing, r.target)
    # holes travelled as ZERO records, not as data
    shipped = st["destinations"][0]["bytes_shipped"]
    assert shipped < 1 << 30, shipped
    r.check_quiet()


def test_initial_sync_to_an_empty_remote_sends_data_without_hashing(aimfs, workdir, pki,
                                                                    remotes):
    """A remote that lists no target at all holds nothing to compare: the data
    goes at once, and only the data (holes as ZERO records)."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(os.path.join(backing, "pool"))
    sparse_image(os.path.join(backing, "pool", "vm1.raw"), 1 << 30, 12, 1)
    run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(backing, "vm2.qcow2"), "1G"])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4M", os.path.join(backing, "vm2.qcow2")])
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    m = aimfs(options=[f"config={source_conf(workdir, 'e.conf', {'dr1': (r, pki)}, status)}"])
    st = wait_converged(status, [r])
    assert m.unmount() == 0
    assert_trees_equal(backing, r.target)
    with open(m.log_path, errors="replace") as f:
        log_text = f.read()
    assert "dr1 can compare block hashes" in log_text, log_text
    sent, hashed = map(int, re.search(r"dr1 is in sync: (\d+) bytes of data sent, (\d+) hashed",
                                      log_text).groups())
    assert hashed == 0 and sent > 4 << 20, log_text
    assert st["destinations"][0]["bytes_shipped"] < sent + (2 << 20), st
    r.check_quiet()


def test_destination_added_later(aimfs, workdir, pki, remotes):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    sparse_image(os.path.join(backing, "disk.raw"), 512 << 20, 20, 2)
    populate(backing, seed=3, threads=2)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    r1 = start_remote(workdir, pki, "dr1")
    remotes.append(r1)
    status = f"127.0.0.1:{free_port()}"
    conf1 = source_conf(workdir, "one.conf", {"dr1": (r1, pki)}, status)
    m = aimfs(options=[f"config={conf1}"])
    w = Workload(m.mountpoint, seed=3, threads=2, namespace=False)
    w.run(seconds=2)
    w.close()
    wait_converged(status, [r1])
    assert m.unmount() == 0

    # a month later: a second site
    r2 = start_remote(workdir, pki, "dr2")
    remotes.append(r2)
    conf2 = source_conf(workdir, "two.conf", {"dr1": (r1, pki), "dr2": (r2, pki)}, status)
    m = aimfs(options=[f"config={conf2}"])
    log = StateLog(status)
    try:
        w = Workload(m.mountpoint, seed=4, threads=2, namespace=False)
        w.run(seconds=3)
        w.close()
        wait_converged(status, [r1, r2])
    finally:
        log.close()
    assert m.unmount() == 0
    # the first destination was never disturbed
    assert "resyncing" not in log.seen["dr1"] and "tracking" not in log.seen["dr1"], log.seen
    assert "resyncing" in log.seen["dr2"], log.seen
    assert_trees_equal(backing, r1.target)
    assert_trees_equal(backing, r2.target)


def test_full_journal_tracks_without_stalling_guests(aimfs, workdir, pki, remotes):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    populate(backing, seed=9, threads=2)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "t.conf", {"dr1": (r, pki)}, status,
                       "journal_max = 4M\nsegment_size = 256K\n")
    m = aimfs(options=[f"config={conf}"], expect_alarms=True)
    wait_converged(status, [r])
    r.stop()  # the WAN goes away
    log = StateLog(status)
    worst = 0.0
    try:
        # well past the limit: 10x journal_max, with barriers
        fd = os.open(os.path.join(m.mountpoint, "busy.img"), os.O_RDWR | os.O_CREAT)
        rnd = random.Random(5)
        for i in range(640):
            t0 = time.monotonic()
            os.pwrite(fd, rnd.randbytes(65536), rnd.randrange(0, 64 << 20) & ~4095)
            if i % 16 == 0:
                os.fsync(fd)
            worst = max(worst, time.monotonic() - t0)
        os.close(fd)
        w = Workload(m.mountpoint, seed=9, threads=2)
        w.run(seconds=2)
        w.close()
        st = get_status(status)
        assert st["destinations"][0]["state"] in ("tracking", "retrying"), st
        assert st["writes_that_waited"] == 0, st
        # pruned although dr1 has nothing: the resync engine's next rounds
        # prune what the last writes sealed (slow under ASan on 2 CPUs)
        wait_for(lambda: get_status(status)["journal_bytes"] < 40 << 20, timeout=60,
                 what="the journal pruned below 40 MiB while dr1 is away")
        r.start()  # the WAN is back
        st = wait_converged(status, [r])
    finally:
        log.close()
    print(f"slowest guest write while the receiver was away: {worst * 1000:.1f} ms")
    assert "tracking" in log.seen["dr1"] and "resyncing" in log.seen["dr1"], log.seen
    assert m.unmount() == 0
    assert "fell behind and the journal is full" in m.output()
    assert_trees_equal(backing, r.target)


def test_preseeded_replica_ships_only_the_differences(aimfs, workdir, pki, remotes):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    size = 128 << 20
    with open(os.path.join(backing, "big.raw"), "wb") as f:
        f.write(random.Random(11).randbytes(size))
    target = os.path.join(workdir, "dr1", "images")
    os.makedirs(os.path.dirname(target))
    copy_tree(backing, target)
    changed = 0
    with open(os.path.join(target, "big.raw"), "r+b") as f:  # drift behind our back
        for off in (4096, 50 << 20, 100 << 20):
            f.seek(off)
            f.write(b"\xee" * 65536)
            changed += 65536
    r = start_remote(workdir, pki, "dr1", target=target)
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    m = aimfs(options=[f"config={source_conf(workdir, 'p.conf', {'dr1': (r, pki)}, status)}"])
    st = wait_converged(status, [r])
    d = st["destinations"][0]
    assert m.unmount() == 0
    assert_trees_equal(backing, r.target)
    hashes = (size // 65536) * 8
    # on the wire: the changed blocks plus the hashes, and framing
    assert d["bytes_shipped"] <= 1.5 * (changed + 2 * 65536) + 2 * hashes + (256 << 10), d
    assert d["sync"]["state"] == "in_sync"
    # exactly the 64 KiB blocks the drift touched (the first change spans two)
    blocks = {o // 65536 for off in (4096, 50 << 20, 100 << 20) for o in (off, off + 65535)}
    with open(m.log_path, errors="replace") as f:
        assert f"dr1: {len(blocks) * 65536} bytes differ after comparison" in f.read()


def test_an_image_changed_while_aimfs_was_stopped_is_resynchronised(aimfs, workdir, pki,
                                                                    remotes):
    """An operator stops aimfs and changes an image in place on the backing
    filesystem: same name, inode and birth time, its mtime set back.
    Recovery matched it and shipped nothing, so the replica kept the old
    bytes while the source said in sync.  Its ctime is not the one noted at
    the unmount: the destination resyncs it (reason changed_offline),
    comparing hashes, so only the blocks that differ travel.  A restart that
    changes nothing resyncs nothing."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    size = 64 << 20
    sparse_image(os.path.join(backing, "vm.raw"), size, 10, 5)
    sparse_image(os.path.join(backing, "other.raw"), size, 4, 6)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "c.conf", {"dr1": (r, pki)}, status)
    m = aimfs(options=[f"config={conf}"])
    wait_converged(status, [r])
    assert m.unmount() == 0
    seen = len(m.output())
    m2 = aimfs(options=[f"config={conf}"])
    wait_converged(status, [r])
    assert m2.unmount() == 0
    out = m2.output()[seen:]
    assert "changed while aimfs was stopped" not in out, out
    assert "resynchronising" not in out, out
    change_in_place(os.path.join(backing, "vm.raw"), 20 << 20, b"\xab" * 100000)
    seen = len(m2.output())
    m3 = aimfs(options=[f"config={conf}"])
    log = StateLog(status)
    try:
        st3 = wait_converged(status, [r])
    finally:
        log.close()
    assert m3.unmount() == 0
    out = m3.output()[seen:]
    assert "image vm.raw changed while aimfs was stopped" in out, out
    assert "other.raw changed" not in out, out
    assert "an image changed while aimfs was stopped; resynchronising" in out, out
    assert_trees_equal(backing, r.target)
    # the 4 KiB blocks the change touched (25), and the hashes of one image
    d = st3["destinations"][0]
    assert d["bytes_shipped"] < (2 << 20), d
    assert "dr1: 102400 bytes differ after comparison" in out, out
    r.check_quiet()


def test_an_image_changed_after_a_crash_is_resynchronised(aimfs, workdir, pki, remotes):
    """aimfs is killed, so no ctime is noted, and an operator then changes
    an image on the backing filesystem (boots the VM from it directly, say).
    Recovery redid the journal, saw the same file and shipped nothing: the
    replica kept the old bytes while the source said in sync.  An image
    whose ctime is later than the last change the killed mount made is
    resynchronised.  One whose mode and times were changed through the
    mount just before the kill, which no record carries, is not: the mount
    stamped the journal."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    sparse_image(os.path.join(backing, "vm.raw"), 16 << 20, 4, 9)
    sparse_image(os.path.join(backing, "other.raw"), 16 << 20, 4, 10)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "k.conf", {"dr1": (r, pki)}, status)
    m = aimfs(options=[f"config={conf}"])
    for name in ("vm.raw", "other.raw"):
        with open(os.path.join(m.mountpoint, name), "r+b") as f:
            f.seek(1 << 20)
            f.write(os.urandom(70000))
    wait_converged(status, [r])
    slack = 2.5     # reconcile.c's CHANGED_SLACK_NS, and a little more

    def journal_quiet():
        # the mount's own files: segments, activity log (not the catalog)
        return time.time() - max(os.stat(os.path.join(m.journal, n)).st_mtime
                                 for n in os.listdir(m.journal)
                                 if not n.startswith("catalog")) > slack
    wait_for(journal_quiet, 30, 0.2, what="the journal to be still for a while")
    other = os.path.join(m.mountpoint, "other.raw")
    os.chmod(other, 0o600)
    os.utime(other, ns=(1_000_000_000, 2_000_000_000))
    m.kill9()
    time.sleep(slack)
    change_in_place(os.path.join(backing, "vm.raw"), 9 << 20, b"\xc3" * 100000)
    seen = len(m.output())
    m2 = aimfs(options=[f"config={conf}"])
    wait_converged(status, [r])
    assert m2.unmount() == 0
    assert_trees_equal(backing, r.target)
    out = m2.output()[seen:]
    assert "image vm.raw changed while aimfs was stopped (its ctime is later than the last" \
        " change the stopped mount made)" in out, out
    assert "other.raw changed" not in out, out
    assert "dr1: an image changed while aimfs was stopped; resynchronising" in out, out
    r.check_quiet()


def test_a_changed_image_no_destination_mirrors_is_journaled_not_resynced(aimfs, workdir, pki,
                                                                          remotes):
    """dr1 mirrors only vm.raw (images =).  other.raw, changed in place while
    aimfs was stopped, goes to no destination: it is journaled whole again
    (with some destination configured it used to go nowhere), and dr1,
    which does not mirror it, stays in sync without a resync."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    sparse_image(os.path.join(backing, "vm.raw"), 16 << 20, 4, 7)
    sparse_image(os.path.join(backing, "other.raw"), 16 << 20, 4, 8)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "f.conf", {"dr1": (r, pki)}, status, extra="retain = 1h")
    with open(conf, "a") as f:
        f.write("images = vm.raw\n")
    m = aimfs(options=[f"config={conf}"])
    wait_converged(status, [r])
    assert m.unmount() == 0
    path = os.path.join(backing, "other.raw")
    with open(path, "r+b") as f:
        f.seek(8 << 20)
        f.write(b"\x5a" * 5000)
    seen = len(m.output())
    journal = m.journal
    before = set(os.listdir(journal))
    m2 = aimfs(options=[f"config={conf}"])
    st = wait_converged(status, [r])
    assert m2.unmount() == 0
    out = m2.output()[seen:]
    assert "image other.raw changed while aimfs was stopped" in out, out
    assert "no destination mirrors what may differ: journaling it" in out, out
    assert "resynchronising" not in out, out
    assert st["destinations"][0]["sync"]["state"] == "in_sync", st
    assert not os.path.exists(os.path.join(r.target, "other.raw"))
    # the journal has other.raw's content again: a WRITE covering the change
    new = sorted(f for f in set(os.listdir(journal)) - before if f.endswith(".aimj"))
    dumped = "".join(run([AIMCTL, "dump", os.path.join(journal, f)]).stdout for f in new)
    writes = [(int(m.group(1)), int(m.group(2))) for m in re.finditer(
        r"^\s*\d+\s+WRITE\s+(\d+)\s+(\d+)\s.*\d+ other\.raw$", dumped, re.M)]
    assert any(off <= (8 << 20) and off + n >= (8 << 20) + 5000 for off, n in writes), \
        (writes, dumped[:3000])
    # both changed: vm.raw goes to dr1, other.raw into the journal (it used
    # to go nowhere as soon as one destination took something)
    for name in ("vm.raw", "other.raw"):
        with open(os.path.join(backing, name), "r+b") as f:
            f.seek(4 << 20)
            f.write(b"\x6b" * 3000)
    seen = len(m2.output())
    m3 = aimfs(options=[f"config={conf}"])
    wait_converged(status, [r])
    assert m3.unmount() == 0
    out = m3.output()[seen:]
    assert "dr1: an image changed while aimfs was stopped; resynchronising" in out, out
    assert "no destination mirrors what may differ: journaling it" in out, out
    c = subprocess.run(["cmp", os.path.join(backing, "vm.raw"), os.path.join(r.target, "vm.raw")],
                       capture_output=True, text=True)
    assert c.returncode == 0, c.stdout + c.stderr
    r.check_quiet()


def test_aimctl_verify_finds_a_byte_changed_behind_the_remotes_back(aimfs, workdir, pki, remotes):
    from aimtest import AIMCTL
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    sparse_image(os.path.join(backing, "vm.raw"), 64 << 20, 10, 3)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    m = aimfs(options=[f"config={source_conf(workdir, 'v.conf', {'dr1': (r, pki)}, status)}"])
    with open(os.path.join(m.mountpoint, "vm.raw"), "r+b") as f:
        f.seek(12345)
        f.write(b"live write")
    wait_converged(status, [r])
    ok = subprocess.run([AIMCTL, "verify", "--status", status, "--timeout", "120s"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "dr1: equal" in ok.stdout, ok.stdout
    # one byte changes on the replica, behind everyone's back
    with open(os.path.join(r.target, "vm.raw"), "r+b") as f:
        f.seek(40 << 20)
        old = f.read(1)
        f.seek(40 << 20)
        f.write(bytes([old[0] ^ 0xff]))
    bad = subprocess.run([AIMCTL, "verify", "--status", status, "--timeout", "120s", "vm.raw"],
                         capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "dr1: differs" in bad.stdout, bad.stdout
    block = (40 << 20) // 65536 * 65536
    assert f"vm.raw: 65536 bytes differ at offset {block}" in bad.stdout, bad.stdout
    # requests while one runs: none is freed under the engine (ASan would
    # say), and the last asked for is the one that ends
    import urllib.request
    for _ in range(3):
        urllib.request.urlopen(urllib.request.Request(f"http://{status}/verify", method="POST"),
                               timeout=5).close()
    last = subprocess.run([AIMCTL, "verify", "--status", status, "--timeout", "120s"],
                          capture_output=True, text=True)
    assert last.returncode == 1 and "dr1: differs" in last.stdout, last.stdout + last.stderr
    assert m.unmount() == 0


def test_scheduled_verification_reports_drift(aimfs, workdir, pki, remotes):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    sparse_image(os.path.join(backing, "vm.raw"), 16 << 20, 5, 4)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "s.conf", {"dr1": (r, pki)}, status, "verify_every = 10s\n")
    m = aimfs(options=[f"config={conf}"], expect_alarms=True)
    wait_converged(status, [r])
    with open(os.path.join(r.target, "vm.raw"), "r+b") as f:
        f.seek(1 << 20)
        f.write(b"drift")
    wait_for(lambda: "destination dr1 differs" in m.output(), 90, 0.5,
             what="a scheduled verification to find the drift")
    try:
        v = get_json(status, "verify")
    except OSError as e:
        # seen once under ASan in CI (connection refused): say what aimfs said
        raise AssertionError(f"GET /verify: {e}; aimfs alive: {m.proc.poll() is None}; "
                             f"its log:\n{m.output()[-4000:]}") from None
    assert v["done"] and v["destinations"][0]["state"] == "differs", v
    assert m.unmount() == 0


def small_journal_via_proxy(aimfs, workdir, pki, remotes, size, seed, direct=()):
    """A source whose journal holds 2 MiB (it fills fast) with one image of
    size random bytes, mirrored to dr1 through a proxy the test cuts (and
    to the destinations named in direct without one: remotes[1:]), in
    sync: (backing, remote, proxy, status address, mount).  The caller
    stops the proxy."""
    from proxy import Proxy

    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    with open(os.path.join(backing, "vm.img"), "wb") as f:
        f.write(random.Random(seed).randbytes(size))
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    proxy = Proxy(r.listen_port).start()
    try:
        status = f"127.0.0.1:{free_port()}"
        via = types.SimpleNamespace(base_url=f"https://127.0.0.1:{proxy.port}")
        dests = {"dr1": (via, pki)}
        for name in direct:
            remotes.append(start_remote(workdir, pki, name))
            dests[name] = (remotes[-1], pki)
        conf = source_conf(workdir, "o.conf", dests, status,
                           "journal_max = 2M\nsegment_size = 256K\nsegment_age = 100ms\n")
        m = aimfs(options=[f"config={conf}"], expect_alarms=True)
        try:
            wait_converged(status, remotes)
        except AssertionError as e:
            raise AssertionError(f"{e}\nthe source's log:\n{m.output()[-8000:]}") from None
    except BaseException:
        proxy.stop()
        raise
    return backing, r, proxy, status, m


def fill_journal(fd, rnd, size, status):
    """Writes 3x the 2 MiB journal of small_journal_via_proxy while dr1 is
    cut off: it turns tracking."""
    for i in range(96):
        os.pwrite(fd, rnd.randbytes(65536), rnd.randrange(0, size - 65536) & ~4095)
        if i % 16 == 15:
            os.fsync(fd)
    wait_for(lambda: get_status(status)["destinations"][0]["sync"]["state"] == "tracking",
             timeout=60, what="dr1 tracking")


def remote_post(r, path):
    """POST to aim-remote's status listener (hold, release); its HTTP status."""
    req = urllib.request.Request(f"http://127.0.0.1:{r.status_port}{path}", data=b"",
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def assert_dr1_settles_in_sync(status, timeout, m=None):
    """dr1 ends in sync, not stopped (waits for whichever comes first).  If
    it does not settle, the failure says where it was and what aimfs said."""
    seen = {}

    def settled():
        seen["dr1"] = get_status(status)["destinations"][0]
        return seen["dr1"]["state"] in ("in_sync", "stopped")
    try:
        wait_for(settled, timeout=timeout, what="dr1 in sync or stopped")
    except TimeoutError:
        raise AssertionError(f"dr1 did not settle in {timeout}s: {get_status(status)}\n"
                             f"{m.output()[-6000:] if m else ''}") from None
    assert seen["dr1"]["state"] == "in_sync", seen


def test_an_overflow_in_the_middle_of_a_resync_loses_nothing(aimfs, workdir, pki, remotes):
    """The journal fills while dr1 is away (tracking); dr1 comes back and
    its resync hashes what it missed -- the engine counts those extents as
    done once their HASH records are journaled -- and the journal fills
    again before dr1 reports which blocks differ.  Those extents must be
    compared again: the resync that follows once ended "in sync" and
    consistent with megabytes of stale data (an audit's fio and kill -9).
    A hold on the remote makes the window wide: a held group receives and
    acknowledges but applies nothing, so it cannot report yet."""
    size = 24 << 20
    backing, r, proxy, status, m = small_journal_via_proxy(aimfs, workdir, pki, remotes, size, 21)
    rnd = random.Random(22)

    def sync_state():
        return get_status(status)["destinations"][0]["sync"]

    def overflow(fd):
        proxy.cut()
        fill_journal(fd, rnd, size, status)
        proxy.restore()

    try:
        gid = get_status(status)["group"]
        assert remote_post(r, f"/hold/{gid}") == 200
        r.wait_group(gid, lambda g: g["state"] == "held", what="dr1 held")
        fd = os.open(os.path.join(m.mountpoint, "vm.img"), os.O_RDWR)
        overflow(fd)
        wait_for(lambda: sync_state().get("phase") == "comparing", timeout=60,
                 what="dr1's resync waiting for its comparison")
        assert sync_state()["done_bytes"] > 0
        # cut between two segments, not in the middle of an upload
        wait_for(lambda: get_status(status)["destinations"][0]["backlog_segments"] == 0,
                 timeout=60, what="dr1 acknowledging its HASH records (held: not applied)")
        overflow(fd)
        assert remote_post(r, f"/release/{gid}") == 200
        os.fsync(fd)
        os.close(fd)
        st = wait_converged(status, [r])
        assert st["destinations"][0]["sync"]["state"] == "in_sync"
        assert m.unmount() == 0
        assert_trees_equal(backing, r.target)
    finally:
        proxy.stop()


def test_a_segment_whose_reply_was_lost_is_not_replaced_by_its_skeleton(
        aimfs, workdir, pki, remotes):
    """The link drops after dr1 took a segment but before its answer came
    back, and the journal fills before the link returns: dr1 goes tracking.
    The source cannot know whether dr1 has that segment; sending a skeleton
    of it in its place made dr1 refuse it (409: "a different segment ...
    was applied already") and the destination stopped for good."""
    size = 16 << 20
    backing, r, proxy, status, m = small_journal_via_proxy(aimfs, workdir, pki, remotes, size, 31)
    rnd = random.Random(32)
    try:
        fd = os.open(os.path.join(m.mountpoint, "vm.img"), os.O_RDWR)
        proxy.drop_next_reply()
        os.pwrite(fd, rnd.randbytes(192 << 10), 1 << 20)
        os.fsync(fd)
        # the worker tries again after a second: the link is gone by then
        wait_for(lambda: proxy.stats["replies_dropped"] == 1, timeout=30, interval=0.005,
                 what="a reply lost")
        proxy.cut()
        fill_journal(fd, rnd, size, status)
        proxy.restore()
        os.fsync(fd)
        os.close(fd)

        assert_dr1_settles_in_sync(status, timeout=120, m=m)
        wait_converged(status, [r])
        assert m.unmount() == 0
        assert_trees_equal(backing, r.target)
    finally:
        proxy.stop()


def test_a_restart_while_tracking_goes_on_from_the_skeletons(aimfs, workdir, pki, remotes):
    """aimfs unmounted and mounted again while dr1 is tracking: the
    segments its skeletons stand for are pruned, and the skeletons carry it
    on.  The mount used to see a gap ("journal segments it needed are
    gone") and resynchronise every image whole (found by the overflow
    soak)."""
    size = 16 << 20
    backing, r, proxy, status, m = small_journal_via_proxy(aimfs, workdir, pki, remotes, size, 51)
    rnd = random.Random(52)
    try:
        fd = os.open(os.path.join(m.mountpoint, "vm.img"), os.O_RDWR)
        proxy.cut()
        fill_journal(fd, rnd, size, status)
        os.close(fd)
        # the skeletons are stored and the segments they stand for pruned
        wait_for(lambda: get_status(status)["journal_bytes"] < (2 << 20), timeout=60,
                 what="the journal pruned behind the skeletons")
        assert m.unmount() == 0
        m.start()
        proxy.restore()
        wait_converged(status, [r])
        assert "segments it needed are gone" not in m.output(), m.output()
        assert m.unmount() == 0
        assert_trees_equal(backing, r.target)
    finally:
        proxy.stop()


@pytest.mark.parametrize("which", ["first", "last", "last+dr2"])
def test_a_damaged_skeleton_ends_in_a_resync_not_a_pinned_journal(aimfs, workdir, pki, remotes,
                                                                  which):
    """A skeleton stored while dr1 was away is damaged (a race once stored
    another file's bytes over one).  The first one to be shipped stopped the
    destination for good; the last one stored kept the next from being made
    after it, and the journal was never pruned again (7.2 GB against a
    journal_max of 24M in the overflow soak).  What a damaged skeleton stood
    for is lost either way: dr1 must be resynchronised and the journal stay
    bounded meanwhile.  A second destination that keeps up (dr2) must not
    pay for it: while dr1 holds the journal until its resync begins, an
    overflow must not make dr2 tracking instead."""
    size = 16 << 20
    backing, r, proxy, status, m = small_journal_via_proxy(
        aimfs, workdir, pki, remotes, size, 61, direct=["dr2"] if "dr2" in which else ())
    rnd = random.Random(62)
    log = StateLog(status)

    def journal_pruned():
        return get_status(status)["journal_bytes"] < (2 << 20)

    try:
        fd = os.open(os.path.join(m.mountpoint, "vm.img"), os.O_RDWR)
        proxy.cut()
        fill_journal(fd, rnd, size, status)
        wait_for(journal_pruned, timeout=60, what="the journal pruned behind the skeletons")
        with sqlite3.connect(f"file:{backing}/.aimfs/catalog.db?mode=ro", uri=True) as db:
            number, = db.execute("SELECT number FROM destinations WHERE name = 'dr1'").fetchone()
        skeletons = sorted(glob.glob(os.path.join(backing, ".aimfs", "skel", str(number),
                                                  "*.aimj")))
        assert len(skeletons) >= 2, skeletons
        victim = skeletons[0] if which == "first" else skeletons[-1]
        with open(victim, "r+b") as f:
            length = os.fstat(f.fileno()).st_size
            f.seek(length // 3)
            f.write(bytes(length // 3))
        # as much again while dr1 is away: its next skeletons follow the
        # damaged one; slower, so that dr2 keeps up with a 2 MiB journal
        # (the burst before may have made it track: not what is tested).
        # 256 KiB/s: at 640 KiB/s a CI machine under load once let dr2 lag
        # 2 MiB, and a destination that holds the oldest segment of a full
        # journal is rightly made tracking.
        if "dr2" in which:
            wait_for(lambda: get_status(status)["destinations"][1]["state"] == "in_sync",
                     timeout=120, what="dr2 in sync")
            log.seen.pop("dr2", None)
        for i in range(96):
            os.pwrite(fd, rnd.randbytes(65536), rnd.randrange(0, size - 65536) & ~4095)
            if i % 16 == 15:
                os.fsync(fd)
            if "dr2" in which:
                time.sleep(0.25)
        try:
            wait_for(journal_pruned, timeout=60, what="the journal pruned again")
        except TimeoutError:
            raise AssertionError(f"journal pinned: {get_status(status)}\n"
                                 f"{m.output()[-6000:]}") from None
        proxy.restore()
        os.fsync(fd)
        os.close(fd)
        assert_dr1_settles_in_sync(status, timeout=180, m=m)
        wait_converged(status, remotes)
        assert "is damaged" in m.output(), m.output()[-4000:]
        assert m.unmount() == 0
        for each in remotes:
            assert_trees_equal(backing, each.target)
    finally:
        log.close()
        proxy.stop()
    if "dr2" in which:
        assert log.seen["dr2"] <= {"in_sync", "shipping"}, log.seen


def test_a_second_destination_slower_than_a_resync_is_not_made_tracking(
        aimfs, workdir, pki, remotes):
    """dr1 comes back after an overflow and is resynchronised; dr2, in sync
    and reachable, ships the resync's records too (as SKIPs) but answers
    slowly meanwhile (its aim-remote stopped for a while).  dr1's resync
    once went on filling the journal past dr2 because dr2 "lagged
    further", and the overflow made the healthy dr2 tracking and resync
    (CI, twice, in the damaged-skeleton test under load).  A reachable
    destination drains the journal by itself: the resync waits for it."""
    import signal
    size = 16 << 20
    backing, r, proxy, status, m = small_journal_via_proxy(
        aimfs, workdir, pki, remotes, size, 71, direct=["dr2"])
    dr2 = remotes[-1]
    rnd = random.Random(72)
    log = StateLog(status)
    stopped = False
    try:
        fd = os.open(os.path.join(m.mountpoint, "vm.img"), os.O_RDWR)
        proxy.cut()
        fill_journal(fd, rnd, size, status)
        os.fsync(fd)
        os.close(fd)
        # the burst may have made dr2 tracking too: not what is tested
        wait_for(lambda: get_status(status)["destinations"][1]["state"] == "in_sync",
                 timeout=120, what="dr2 in sync")
        log.seen.pop("dr2", None)
        dr2.proc.send_signal(signal.SIGSTOP)
        stopped = True
        proxy.restore()
        # dr1's resync begins and journals what it missed; dr2's uploads of
        # it hang, well inside its 60 s low-speed limit (still reachable)
        wait_for(lambda: get_status(status)["journal_bytes"] >= (1 << 20), timeout=60,
                 what="the resync to fill half the journal")
        time.sleep(4)
        st = get_status(status)
        assert st["journal_bytes"] < st["journal_max"], st
        dr2.proc.send_signal(signal.SIGCONT)
        stopped = False
        assert_dr1_settles_in_sync(status, timeout=180, m=m)
        wait_converged(status, remotes)
        assert m.unmount() == 0
        for each in remotes:
            assert_trees_equal(backing, each.target)
    finally:
        if stopped:
            dr2.proc.send_signal(signal.SIGCONT)
        log.close()
        proxy.stop()
    assert log.seen["dr2"] <= {"in_sync", "shipping"}, log.seen


def test_a_journal_that_fills_while_a_segment_is_on_the_wire_keeps_shipping(
        aimfs, workdir, pki, remotes):
    """A writer faster than a rate-limited link fills the journal while the
    worker is sending a segment whole: the destination turns tracking
    meanwhile.  The skeletons after that segment must follow the LSN it
    was acknowledged with; skeletons made by the pruner from the ack
    before it broke the chain, the remote refused the next one (422) and
    the destination stopped for good (found by an audit, 4 runs of 4)."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    size = 32 << 20
    with open(os.path.join(backing, "vm.img"), "wb") as f:
        f.truncate(size)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    conf = source_conf(workdir, "w.conf", {"dr1": (r, pki)}, status,
                       "journal_max = 3M\nsegment_size = 512K\n")
    with open(conf, "a") as f:
        f.write("rate = 4M\n")   # the destination's section is the last one
    m = aimfs(options=[f"config={conf}"], expect_alarms=True)
    wait_converged(status, [r])
    log = StateLog(status)
    try:
        rnd = random.Random(31)
        fd = os.open(os.path.join(m.mountpoint, "vm.img"), os.O_RDWR)
        for i in range(320):
            os.pwrite(fd, rnd.randbytes(65536), rnd.randrange(0, size - 65536) & ~4095)
            if i % 8 == 7:
                os.fsync(fd)
        os.close(fd)
        wait_converged(status, [r])
    finally:
        log.close()
    assert "stopped" not in log.seen["dr1"], log.seen
    assert m.unmount() == 0
    assert "HTTP 422" not in m.output(), m.output()
    assert_trees_equal(backing, r.target)


def test_a_remote_that_receives_but_cannot_apply_is_not_called_in_sync(
        aimfs, workdir, pki, remotes):
    """The replica's file system fills: aim-remote still receives segments
    (its inbox is elsewhere) but its group stops applying them.  The source
    used to say in_sync (everything acknowledged) while the replica was
    behind; it now asks the remote what it applied and says remote_stopped,
    with the remote's reason, until the group applies again (aim-remote
    tries again by itself once space is freed)."""
    target = os.path.join(workdir, "replica")
    os.makedirs(target)
    run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", target])
    try:
        backing = os.path.join(workdir, "backing")
        os.makedirs(backing)
        r = start_remote(workdir, pki, "dr1", target=target)
        r.expect_alarms = True
        remotes.append(r)
        status = f"127.0.0.1:{free_port()}"
        conf = source_conf(workdir, "o.conf", {"dr1": (r, pki)}, status)
        m = aimfs(options=[f"config={conf}"], expect_alarms=True)
        image = os.path.join(m.mountpoint, "vm.img")
        with open(image, "wb") as f:
            f.write(random.Random(41).randbytes(1 << 20))
            os.fsync(f.fileno())
        wait_converged(status, [r])
        # unbuffered: a buffered file keeps what did not fit, and its
        # close raised ENOSPC again (CI, once)
        with open(os.path.join(target, "filler"), "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        with open(image, "r+b") as f:
            f.seek(2 << 20)
            f.write(random.Random(42).randbytes(1 << 20))
            os.fsync(f.fileno())
        seen = {}

        def remote_stopped():
            seen["st"] = get_status(status)
            return seen["st"]["destinations"][0]["state"] == "remote_stopped"
        wait_for(remote_stopped, timeout=60, what="the source to say remote_stopped")
        d = seen["st"]["destinations"][0]
        assert seen["st"]["in_sync"] is False, seen
        assert d["remote"]["state"] == "stopped", d
        assert "No space left" in d["remote"]["error"], d
        assert d["remote"]["applied_all"] is False, d
        with urllib.request.urlopen(f"http://{status}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert 'aimfs_destination_state{destination="dr1",state="remote_stopped"} 1' in metrics
        out = run([AIMCTL, "status", status], check=False).stdout
        assert "REMOTE STOPPED" in out and "No space left" in out, out
        os.unlink(os.path.join(target, "filler"))
        st = wait_converged(status, [r])
        d = st["destinations"][0]
        assert d["state"] == "in_sync" and d["remote"]["applied_all"] is True, d
        assert m.unmount() == 0
        with open(os.path.join(backing, "vm.img"), "rb") as a, \
                open(os.path.join(target, "vm.img"), "rb") as b:
            assert a.read() == b.read()
    finally:
        for r in remotes:
            r.close()
        run(["umount", target], check=False)
