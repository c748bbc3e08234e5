"""aim-remote end to end: segments journaled by a real aimfs mount reach
aim-remote over HTTPS (the curl command-line tool, as any client would) or
by cp + mv into its inbox, and the targets (image files, a loop block
device) become byte-for-byte the source; out-of-order arrival waits,
duplicates are recognised, restarts and kill -9 during apply converge; and
hostile requests and segments are refused with the right status, write
nothing outside the inbox and apply nothing.

Reproduce a failing kill -9 case with AIM_SEED=<seed> (in the message)."""
import os
import random
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
from datetime import datetime

import pytest

from aimtest import AIM_REMOTE, assert_trees_equal, copy_tree, run, wait_for
from remote_helpers import (PKI, Remote, free_port, inbox_deliver, journal_segments, mkseg,
                            seg_info, snapshot)
from servers import get_status

ZSTD = shutil.which("zstd")


@pytest.fixture(autouse=True)
def _need_remote():
    if not os.path.exists(AIM_REMOTE):
        pytest.fail(f"{AIM_REMOTE} is not built (set AIM_BUILD)")


@pytest.fixture
def remotes(workdir):
    """Factory: remotes(inbox=..., target=..., ...) -> Remote (not started);
    every one is stopped at teardown."""
    made = []

    def make(**kw):
        r = Remote(workdir, **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


@pytest.fixture
def pki(workdir):
    return PKI(os.path.join(workdir, "pki"))


# ---- sources: journals written by aimfs ----

class Source:
    def __init__(self, backing, start, journal, segs):
        self.backing = backing
        self.start = start
        self.journal = journal
        self.segs = segs
        self.infos = [seg_info(s) for s in segs]
        self.group = self.infos[0]["group"]
        self.last_lsn = self.infos[-1]["last_lsn"]
        assert [i["number"] for i in self.infos] == list(range(1, len(segs) + 1))


def make_source(aimfs, workdir, work, seed_fn=None, options=("segment_size=256K",), min_segs=3):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    if seed_fn:
        seed_fn(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    m = aimfs(options=list(options))
    work(m.mountpoint)
    assert m.unmount() == 0
    m.check_quiet()
    segs = journal_segments(m.journal)
    assert len(segs) >= min_segs, segs
    return Source(backing, start, m.journal, segs)


def seed_images(backing):
    os.makedirs(os.path.join(backing, "pool"))
    with open(os.path.join(backing, "old.raw"), "wb") as f:
        f.write(os.urandom(200000))


def mixed_work(seed, megabytes=3):
    """pwrites of random sizes into a sparse image (fsync now and then),
    plus the namespace operations a VM host does."""
    rng = random.Random(seed)

    def work(mnt):
        fd = os.open(os.path.join(mnt, "pool", "vm1.raw"), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, 16 << 20)
        written = 0
        i = 0
        while written < megabytes << 20:
            n = rng.choice((512, 4096, 65536, 200000))
            os.pwrite(fd, rng.randbytes(n), rng.randrange(0, (16 << 20) - n))
            written += n
            i += 1
            if i % 7 == 0:
                os.fsync(fd)
        os.close(fd)
        with open(os.path.join(mnt, "old.raw"), "r+b") as f:
            f.seek(1000)
            f.write(b"changed" * 100)
        os.truncate(os.path.join(mnt, "old.raw"), 150000)
        os.mkdir(os.path.join(mnt, "vms"))
        with open(os.path.join(mnt, "vms", "tmp.img"), "wb") as f:
            f.write(rng.randbytes(300000))
        os.rename(os.path.join(mnt, "vms", "tmp.img"), os.path.join(mnt, "vms", "vm2.img"))
        with open(os.path.join(mnt, "gone.img"), "wb") as f:
            f.write(b"x" * 5000)
        os.unlink(os.path.join(mnt, "gone.img"))
    return work


def target_copy(src, workdir, name="target"):
    target = os.path.join(workdir, name)
    copy_tree(src.start, target)
    return target


def state_row(state_dir, group):
    db = sqlite3.connect(f"file:{os.path.join(state_dir, 'remote.db')}?mode=ro", uri=True,
                         timeout=10)
    try:
        return db.execute('SELECT applied_segment, applied_lsn FROM groups WHERE "group" = ?',
                          (group,)).fetchone()
    finally:
        db.close()


# ---- replication ----

def test_https_curl_uploads_replicate_the_source(aimfs, workdir, pki, remotes):
    src = make_source(aimfs, workdir, mixed_work(1), seed_images, min_segs=8)
    target = target_copy(src, workdir)
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(inbox)
    r = remotes(inbox=inbox, target=target, listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--client-ca", pki.ca]).start()
    for i, seg in enumerate(src.segs):
        headers = ()
        body = seg
        if ZSTD and i % 2:
            # the transport compresses when it pays; so do we, every other one
            body = os.path.join(workdir, os.path.basename(seg) + ".zst")
            run([ZSTD, "-q", "-f", seg, "-o", body])
            headers = ("Content-Encoding: zstd",)
        code, text, err = r.put(src.group, body, name=os.path.basename(seg), headers=headers)
        assert code == 201, (seg, code, text, err)
    g = r.wait_applied(src.group, src.last_lsn)
    assert_trees_equal(target, src.backing)

    # status: truthful after convergence
    st = r.status()
    assert st["role"] == "remote" and st["version"] and st["inbox"] == inbox
    assert g["applied_segment"] == len(src.segs)
    assert g["applied_lsn"] == src.last_lsn
    assert g["state"] == "idle" and g["waiting_for"] is None and g["error"] is None
    assert g["lag_seconds"] == 0 and g["backlog_segments"] == 0 and g["backlog_bytes"] == 0
    assert g["quarantined"] == [] and g["segments_applied"] == len(src.segs)
    t = datetime.fromisoformat(g["last_applied_source_time"].replace("Z", "+00:00"))
    assert abs(t.timestamp() - time.time()) < 600, t
    rx = st["receiver"]
    assert rx["accepted"] == len(src.segs) and rx["rejected_total"] == 0
    metrics = r.metrics()
    assert f'aim_remote_applied_lsn{{group="{src.group}"}} {src.last_lsn}' in metrics
    assert f"aim_remote_received_segments_total {len(src.segs)}" in metrics
    # applied segments are gone from the inbox, the progress is in the state
    assert not [f for f in os.listdir(os.path.join(inbox, src.group)) if f.endswith(".aimj")]
    assert os.listdir(os.path.join(inbox, ".tmp")) == []
    assert state_row(inbox + ".state", src.group) == (len(src.segs), src.last_lsn)
    assert r.stop() == 0
    r.check_quiet()


def test_out_of_order_duplicates_conflicts_and_waiting(aimfs, workdir, pki, remotes):
    src = make_source(aimfs, workdir, mixed_work(2, megabytes=2), seed_images, min_segs=5)
    target = target_copy(src, workdir)
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(inbox)
    r = remotes(inbox=inbox, target=target, listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--retain"]).start()
    seg = {i["number"]: s for i, s in zip(src.infos, src.segs)}
    name = {n: os.path.basename(p) for n, p in seg.items()}

    def put(n, path=None, **kw):
        code, text, err = r.put(src.group, path or seg[n], name=name[n], cert=None, **kw)
        return code, text

    def forged(n, first_lsn):
        return mkseg(os.path.join(workdir, f"forged{n}.aimj"),
                     f"group {src.group}\nnumber {n}\nfirst_lsn {first_lsn}\n"
                     "image 1 evil.img\nwrite 1 0 6576696c\nflush\n")

    # 3 first: it waits for 1
    assert put(3)[0] == 201
    g = r.wait_group(src.group, lambda g: g["state"] == "waiting", what="waiting for 1")
    assert g["waiting_for"] == 1 and g["applied_segment"] == 0 and g["backlog_segments"] == 1
    assert g["lag_seconds"] >= 0
    assert put(3)[0] == 200                                  # identical copy in the inbox
    assert put(3, forged(3, src.infos[2]["first_lsn"]))[0] == 409  # different bytes, same name
    with open(os.path.join(inbox, src.group, name[3]), "rb") as a, open(seg[3], "rb") as b:
        assert a.read() == b.read(), "a conflicting upload changed the stored segment"
    # then 1: applied, now waiting for 2
    assert put(1)[0] == 201
    g = r.wait_group(src.group, lambda g: g["applied_segment"] == 1 and g["state"] == "waiting",
                     what="segment 1 applied")
    assert g["waiting_for"] == 2 and g["applied_lsn"] == src.infos[0]["last_lsn"]
    assert g["lag_seconds"] > 0
    # then 2 and the rest, last first
    assert put(2)[0] == 201
    for n in sorted(seg)[3:][::-1]:
        assert put(n)[0] == 201
    g = r.wait_applied(src.group, src.last_lsn)
    assert g["applied_segment"] == len(seg)
    assert_trees_equal(target, src.backing)
    # after apply: the same bytes again are fine, different ones are not
    assert put(1)[0] == 200
    assert put(2, extra=["-H", "Content-Type: application/octet-stream"])[0] == 200
    assert put(1, forged(1, 1))[0] == 409
    # --retain keeps them, and GET serves them
    applied = os.path.join(inbox, src.group, "applied")
    assert sorted(os.listdir(applied)) == sorted(name.values())
    out = os.path.join(workdir, "got.aimj")
    code, _, _ = r.curl(f"/aim/{src.group}/{name[2]}", cert=None, extra=["-o", out])
    assert code == 200
    with open(out, "rb") as a, open(seg[2], "rb") as b:
        assert a.read() == b.read()
    code, _, _ = r.curl(f"/aim/{src.group}/{99:020d}.aimj", cert=None)
    assert code == 404
    st = r.status()["receiver"]
    assert st["accepted"] == len(seg) and st["duplicates"] == 3
    assert st["rejected"].get("409") == 2
    assert_trees_equal(target, src.backing)                 # nothing forged was applied
    assert r.stop() == 0
    r.check_quiet()


def test_retain_keeps_a_segment_a_kill_left_in_the_inbox_after_its_apply(aimfs, workdir,
                                                                          remotes):
    """--retain moves each applied segment into applied/ after its last
    barrier is recorded.  A kill between the two left it in the inbox,
    numbered at most applied_segment, and the next start removed it as a
    duplicate: applied/ had a hole (point-in-time replays from it broke,
    a GET of it answered 404).  Now it is put where it belongs."""
    src = make_source(aimfs, workdir, mixed_work(4, megabytes=1), seed_images, min_segs=3)
    target = target_copy(src, workdir)
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(inbox)
    r = remotes(inbox=inbox, target=target, args=["--retain"]).start()
    for s in src.segs:
        inbox_deliver(inbox, src.group, s)
    r.wait_applied(src.group, src.last_lsn)
    assert r.stop() == 0
    # the state after a kill -9 between the last barrier and the move
    gdir = os.path.join(inbox, src.group)
    last = os.path.basename(src.segs[-1])
    os.rename(os.path.join(gdir, "applied", last), os.path.join(gdir, last))
    r.start()
    wait_for(lambda: not os.path.exists(os.path.join(gdir, last)), 30,
             what="the applied segment to leave the inbox")
    kept = sorted(os.listdir(os.path.join(gdir, "applied")))
    assert kept == sorted(os.path.basename(p) for p in src.segs), kept
    with open(os.path.join(gdir, "applied", last), "rb") as a, open(src.segs[-1], "rb") as b:
        assert a.read() == b.read()
    assert_trees_equal(target, src.backing)
    assert r.stop() == 0


def test_loop_block_device_target(aimfs, workdir, remotes):
    size = 4 << 20

    def seed(backing):
        with open(os.path.join(backing, "disk.raw"), "wb") as f:
            f.write(os.urandom(size))

    rng = random.Random(3)

    def work(mnt):
        fd = os.open(os.path.join(mnt, "disk.raw"), os.O_RDWR)
        for i in range(120):
            n = rng.choice((4096, 65536))
            os.pwrite(fd, rng.randbytes(n), rng.randrange(0, size - n) & ~511)
            if i % 10 == 0:
                os.fdatasync(fd)
        os.close(fd)
        with open(os.path.join(mnt, "side.img"), "wb") as f:
            f.write(rng.randbytes(100000))

    src = make_source(aimfs, workdir, work, seed)
    target = target_copy(src, workdir)
    os.unlink(os.path.join(target, "disk.raw"))    # the image lives on the device only
    loopfile = os.path.join(workdir, "loop.img")
    shutil.copyfile(os.path.join(src.start, "disk.raw"), loopfile)
    p = subprocess.run(["losetup", "-f", "--show", loopfile], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"no loop device: {p.stderr.strip()}")
    dev = p.stdout.strip()
    r = None
    try:
        inbox = os.path.join(workdir, "inbox")
        os.makedirs(inbox)
        r = remotes(inbox=inbox, target=target, args=["--map", f"disk.raw={dev}"]).start()
        for s in src.segs:
            inbox_deliver(inbox, src.group, s)
        r.wait_applied(src.group, src.last_lsn)
        with open(dev, "rb") as d, open(os.path.join(src.backing, "disk.raw"), "rb") as b:
            assert d.read(size) == b.read(), "the device differs from the source image"
        with open(os.path.join(target, "side.img"), "rb") as a, \
                open(os.path.join(src.backing, "side.img"), "rb") as b:
            assert a.read() == b.read()
        assert not os.path.exists(os.path.join(target, "disk.raw"))

        # A segment with a write that fits, then one past the device's end:
        # the group stops loudly and nothing of that segment is applied.
        n = len(src.segs) + 1
        bad = mkseg(os.path.join(workdir, "beyond.aimj"),
                    f"group {src.group}\nnumber {n}\nfirst_lsn {src.last_lsn + 1}\n"
                    f"image 1 disk.raw\nwrite 1 0 {'ab' * 512}\nflush\n"
                    f"write 1 {size - 512} @1024:0x5a\nflush\n")
        with open(dev, "rb") as d:
            before = d.read(size)
        r.expect_alarms = True
        inbox_deliver(inbox, src.group, bad, name=f"{n:020d}.aimj")
        g = r.wait_group(src.group, lambda g: g["state"] == "stopped", what="the group to stop")
        assert "beyond the end" in g["error"] and dev in g["error"], g["error"]
        assert g["applied_lsn"] == src.last_lsn
        with open(dev, "rb") as d:
            assert d.read(size) == before, "part of the refused segment was applied"
        errors = [line for line in r.output().splitlines() if "error" in line]
        assert len(errors) == 1 and "beyond the end" in errors[0], errors
        assert r.stop() == 0
    finally:
        if r:
            r.close()      # before detaching: the daemon holds the device open
        subprocess.run(["losetup", "-d", dev], check=False)


def test_restart_and_kill9_during_apply_converge(aimfs, workdir, remotes):
    seed = int(os.environ.get("AIM_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)

    def work(mnt):
        # fsync after every chunk: many barriers, so kills land between them
        fd = os.open(os.path.join(mnt, "big.img"), os.O_RDWR | os.O_CREAT, 0o644)
        wrng = random.Random(seed)
        for i in range(256):
            n = 128 << 10
            os.pwrite(fd, wrng.randbytes(n), wrng.randrange(0, 48 << 20) & ~4095)
            if i % 2:
                os.fsync(fd)
        os.close(fd)
        with open(os.path.join(mnt, "small.img"), "wb") as f:
            f.write(wrng.randbytes(70000))

    src = make_source(aimfs, workdir, work, options=("segment_size=2M",), min_segs=8)
    target = target_copy(src, workdir)
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(inbox)
    for s in src.segs:        # all there before the first start: the start-up scan finds them
        inbox_deliver(inbox, src.group, s)
    r = remotes(inbox=inbox, target=target)
    state_dir = inbox + ".state"
    progress = [(0, 0)]
    mid = inside = 0
    for round_ in range(6):
        r.start()
        # stop once the applied LSN passed a random point, plus a random
        # moment: the apply is then somewhere between two barriers
        done = progress[-1][1]
        mark = done + rng.randint(1, max(1, (src.last_lsn - done) // 3))
        r.wait_group(src.group, lambda g: g["applied_lsn"] >= mark or g["state"] == "idle",
                     timeout=60, what=f"LSN {mark}", interval=0.002)
        delay = rng.uniform(0, 0.01)
        time.sleep(delay)
        if round_ == 2:
            assert r.stop() == 0, f"SIGTERM in round {round_} (AIM_SEED={seed})"
        else:
            r.kill9()
        row = state_row(state_dir, src.group) or (0, 0)
        assert row >= progress[-1], (f"progress went back: {progress} -> {row} "
                                     f"(round {round_}, LSN {mark} + {delay:.3f}s, "
                                     f"AIM_SEED={seed})")
        if 0 < row[1] < src.last_lsn:
            mid += 1
        if row[0] < len(src.infos) and row[1] >= src.infos[row[0]]["first_lsn"]:
            inside += 1            # durable part-way into segment row[0] + 1
        progress.append(row)
    r.start()
    r.wait_applied(src.group, src.last_lsn, timeout=120)
    assert r.stop() == 0
    if inside:
        assert "resuming segment" in r.output()
    try:
        assert_trees_equal(target, src.backing)
    except AssertionError as e:
        raise AssertionError(f"{e} (AIM_SEED={seed}, progress {progress})") from None
    r.check_quiet()
    print(f"AIM_SEED={seed}: progress after each stop {progress}; {mid} stops mid-way, "
          f"{inside} inside a segment")


def test_watcher_applies_segments_put_there_by_others(aimfs, workdir, remotes):
    src = make_source(aimfs, workdir, mixed_work(4, megabytes=2), seed_images, min_segs=5)
    target = target_copy(src, workdir)
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(inbox)
    r = remotes(inbox=inbox, target=target).start()     # no --listen: watch only
    assert r.status()["receiver"]["enabled"] is False
    # the group directory appears after the start, as with an nginx WebDAV PUT
    for i, s in enumerate(src.segs):
        inbox_deliver(inbox, src.group, s, direct=(i % 2 == 1))
    # things that are not segments are left alone
    gdir = os.path.join(inbox, src.group)
    with open(os.path.join(gdir, "README.txt"), "w") as f:
        f.write("not a segment\n")
    with open(os.path.join(gdir, ".00000000000000000099.aimj.partial"), "wb") as f:
        f.write(b"half")
    r.wait_applied(src.group, src.last_lsn)
    assert_trees_equal(target, src.backing)
    assert sorted(os.listdir(gdir)) == [".00000000000000000099.aimj.partial", "README.txt"]
    assert r.stop() == 0
    r.check_quiet()


def test_segment_written_slowly_under_its_final_name_waits(aimfs, workdir, remotes):
    """A writer that creates the segment under its final name (cp, a WebDAV
    server without a temporary file) and is slow: the half-written file is
    waited for while its writer holds it open, then applied, never put aside."""
    src = make_source(aimfs, workdir, mixed_work(2, megabytes=1), seed_images, min_segs=3)
    target = target_copy(src, workdir)
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(inbox)
    r = remotes(inbox=inbox, target=target).start()
    gdir = os.path.join(inbox, src.group)
    os.makedirs(gdir)
    last = src.segs[-1]
    with open(last, "rb") as f:
        data = f.read()
    partial = open(os.path.join(gdir, os.path.basename(last)), "wb")
    try:
        partial.write(data[:len(data) // 2])
        partial.flush()
        # the earlier segments arrive whole and make the group look at its
        # directory, where it finds the half-written one
        for s in src.segs[:-1]:
            inbox_deliver(inbox, src.group, s)
        n = len(src.segs)
        g = r.wait_group(src.group, lambda g: g["applied_segment"] == n - 1,
                         what=f"segments 1..{n - 1} applied")
        time.sleep(1.5)     # several looks while the writer is still at work
        g = r.group(src.group)
        assert g["quarantined_total"] == 0, g
        assert g["applied_segment"] == n - 1, g
        partial.write(data[len(data) // 2:])
    finally:
        partial.close()
    r.wait_applied(src.group, src.last_lsn)
    assert r.group(src.group)["quarantined_total"] == 0
    assert_trees_equal(target, src.backing)
    assert r.stop() == 0
    r.check_quiet()


def test_aimfs_ships_to_aim_remote(aimfs, workdir, pki, remotes):
    """The whole pipeline: aimfs's own transport (zstd, client certificate,
    token) PUTs to aim-remote while the source is written."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    seed_images(backing)
    target = os.path.join(workdir, "target")
    copy_tree(backing, target)
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(inbox)
    r = remotes(inbox=inbox, target=target, listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--client-ca", pki.ca]).start()
    src_status = f"127.0.0.1:{free_port()}"
    conf = os.path.join(workdir, "aimfs.conf")
    with open(conf, "w") as f:
        f.write(f"[aimfs]\nstatus = {src_status}\nsegment_size = 256K\nsegment_age = 200ms\n\n"
                f"[destination dr1]\nurl = {r.base_url}/aim\nca_file = {pki.ca}\n"
                f"cert_file = {pki.client}\nkey_file = {pki.client_key}\n"
                f"token_file = {pki.token_file}\ncompress = zstd\n")
    m = aimfs(options=[f"config={conf}"])
    mixed_work(5, megabytes=2)(m.mountpoint)

    def source():
        return get_status(src_status)
    last = {}

    def in_sync():
        last["src"] = st = source()
        g = r.group(st["group"])
        last["dst"] = g
        return st["in_sync"] and g and g["applied_lsn"] == st["head_lsn"] and g["state"] == "idle"
    try:
        wait_for(in_sync, 60, what="the remote to catch up")
    except TimeoutError:
        raise AssertionError(f"not in sync: {last}\n{m.output()}\n{r.output()}") from None
    assert m.unmount() == 0
    m.check_quiet()
    assert_trees_equal(target, backing)
    assert r.stop() == 0
    r.check_quiet()


# ---- hostile input ----

def tls_raw_request(port, pki, raw):
    """Sends raw bytes over TLS (with the client certificate); returns the
    HTTP status (0 if none)."""
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(pki.client, pki.client_key)
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            t.sendall(raw)
            data = b""
            try:
                while b"\r\n" not in data:
                    chunk = t.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except (ssl.SSLError, ConnectionError):
                pass
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def test_hostile_requests_are_refused_and_write_nothing(workdir, pki, remotes):
    G = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
    H = "11111111-2222-4333-8444-555555555555"
    seg1 = f"{1:020d}.aimj"
    target = os.path.join(workdir, "target")
    os.makedirs(os.path.join(target, "vm"))
    with open(os.path.join(target, "vm", "disk.img"), "wb") as f:
        f.write(os.urandom(10000))
    sentinel = os.path.join(workdir, "sentinel")
    os.makedirs(os.path.join(sentinel, "etc"))
    with open(os.path.join(sentinel, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0\n")
    inbox = os.path.join(workdir, "spool", "inbox")
    os.makedirs(inbox)

    body = "image 1 vm/disk.img\nwrite 1 0 68656c6c6f\nflush\n"
    good = mkseg(os.path.join(workdir, "good.aimj"), f"group {G}\nnumber 1\nfirst_lsn 1\n" + body)
    other = mkseg(os.path.join(workdir, "other.aimj"),
                  f"group {H}\nnumber 1\nfirst_lsn 1\n" + body)
    forged = mkseg(os.path.join(workdir, "forged.aimj"),
                   f"group {G}\nnumber 1\nfirst_lsn 1\ntrailer 9 99\n" + body)
    unsafe = mkseg(os.path.join(workdir, "unsafe.aimj"),
                   f"group {G}\nnumber 1\nfirst_lsn 1\nnocheck-names\n"
                   "image 1 ../../sentinel/etc/passwd\nwrite 1 0 6f776e6564\n")
    far = mkseg(os.path.join(workdir, "far.aimj"),
                f"group {G}\nnumber 1\nfirst_lsn 1\nimage 1 vm/disk.img\n"
                "write 1 0x7ffffffffffffff0 6f776e6564206f776e6564206f776e6564\n")
    data = open(good, "rb").read()
    truncated = os.path.join(workdir, "truncated.aimj")
    with open(truncated, "wb") as f:
        f.write(data[:-9])
    flipped = os.path.join(workdir, "flipped.aimj")
    with open(flipped, "wb") as f:
        f.write(data[:100] + bytes([data[100] ^ 0x10]) + data[101:])
    big = os.path.join(workdir, "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(2 << 20))
    bomb = os.path.join(workdir, "bomb.zst")
    if ZSTD:
        with open(os.path.join(workdir, "zeros"), "wb") as f:
            f.truncate(8 << 20)
        run([ZSTD, "-q", "-f", os.path.join(workdir, "zeros"), "-o", bomb])
    r = remotes(inbox=inbox, target=target, listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--client-ca", pki.ca,
                      "--max-segment", "1M"]).start()
    skip = ("remote.log", "inbox.state", "inbox")
    before = snapshot(workdir, skip=skip)
    expected = {}

    def expect(code, what, path, upload=good, **kw):
        got, text, err = r.curl(path, upload=upload, **kw)
        assert got == code, f"{what}: expected {code}, got {got} ({text!r} {err!r})"
        expected[code] = expected.get(code, 0) + 1

    # names: traversal, encoded traversal, absolute-looking, overlong, bad characters
    asis = ["--path-as-is"]
    expect(400, "dot-dot", f"/aim/../../../sentinel/{G}/{seg1}", extra=asis)
    expect(400, "dot-dot as group", f"/aim/{G}/../{seg1}", extra=asis)
    expect(400, "dot-dot as file", f"/aim/{G}/..", extra=asis)
    expect(400, "encoded dot-dot", f"/aim/%2e%2e%2f%2e%2e%2f{G}/{seg1}")
    expect(400, "encoded slash", f"/aim/{G}/..%2f..%2fsentinel%2f{seg1}")
    expect(400, "encoded NUL", f"/aim/{G}/{seg1}%00.txt")
    expect(400, "absolute-looking", "//etc/passwd", extra=asis)
    expect(400, "absolute file", f"/aim/{G}//etc/passwd", extra=asis)
    expect(400, "overlong", "/" + "a" * 3000 + f"/{G}/{seg1}")
    expect(400, "uppercase group", f"/aim/{G.upper()}/{seg1}")
    expect(400, "short number", f"/aim/{G}/1.aimj")
    expect(400, "other suffix", f"/aim/{G}/{seg1[:-5]}.open")
    expect(400, "bad character", f"/aim/{G}/{seg1};rm")
    expect(400, "trailing slash", f"/aim/{G}/{seg1}/")
    expect(400, "segment zero", f"/aim/{G}/{0:020d}.aimj")
    expect(400, "only a file", f"/{seg1}")
    for raw in (f"PUT /aim/{G}/\x00../{seg1} HTTP/1.1\r\n".encode(),
                f"PUT /aim\\..\\{G}\\{seg1} HTTP/1.1\r\n".encode(),
                f"PUT https://127.0.0.1/aim/{G}/{seg1} HTTP/1.1\r\n".encode()):
        code = tls_raw_request(r.listen_port, pki, raw + b"Host: x\r\nContent-Length: 5\r\n"
                               + f"Authorization: Bearer {pki.token}\r\n\r\nhello".encode())
        assert code == 400, (raw, code)
    # authentication
    expect(401, "no token", f"/aim/{G}/{seg1}", token=None)
    expect(403, "wrong token", f"/aim/{G}/{seg1}", token="not-the-token")
    # a client certificate is required by the handshake itself: without a
    # good one there is no HTTP at all, and the connection is gone
    failures = r.status()["receiver"]["connections"]["handshake_failures"]
    for what, cert in (("no client certificate", None),
                       ("untrusted client certificate", (pki.rogue, pki.rogue_key)),
                       ("server certificate as client", (pki.server, pki.server_key))):
        got, text, err = r.curl(f"/aim/{G}/{seg1}", upload=good, cert=cert)
        assert got == 0 and not text, f"{what}: got HTTP {got} ({text!r} {err!r})"
    wait_for(lambda: r.status()["receiver"]["connections"]["handshake_failures"] >= failures + 3,
             10, what="the three handshake failures to be counted")
    # size and encoding
    expect(413, "oversize", f"/aim/{G}/{seg1}", upload=big)
    if ZSTD:
        expect(413, "zstd bomb", f"/aim/{G}/{seg1}", upload=bomb,
               headers=("Content-Encoding: zstd",))
    expect(415, "gzip", f"/aim/{G}/{seg1}", headers=("Content-Encoding: gzip",))
    # content
    expect(422, "truncated", f"/aim/{G}/{seg1}", upload=truncated)
    expect(422, "bit flipped", f"/aim/{G}/{seg1}", upload=flipped)
    expect(422, "forged trailer", f"/aim/{G}/{seg1}", upload=forged)
    expect(422, "unsafe image name", f"/aim/{G}/{seg1}", upload=unsafe)
    expect(422, "offset out of range", f"/aim/{G}/{seg1}", upload=far)
    expect(422, "another group's segment", f"/aim/{G}/{seg1}", upload=other)
    expect(422, "number mismatch", f"/aim/{G}/{2:020d}.aimj")
    expect(422, "empty body", f"/aim/{G}/{seg1}", upload=os.devnull)
    expect(405, "DELETE", f"/aim/{G}/{seg1}", upload=None, method="DELETE")

    time.sleep(0.3)
    st = r.status()
    assert st["groups"] == [], st["groups"]                  # nothing was applied
    rx = st["receiver"]
    assert rx["accepted"] == 0 and rx["duplicates"] == 0
    for code, n in expected.items():
        assert rx["rejected"].get(str(code), 0) >= n, (code, rx)
    # nothing outside the inbox changed (sentinel, target, inputs: names, sizes,
    # mtimes, bytes), and the inbox holds only the receiver's empty .tmp
    after = snapshot(workdir, skip=skip)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    assert os.listdir(inbox) == [".tmp"] and os.listdir(os.path.join(inbox, ".tmp")) == []
    # refusals are logged with their reason at info level: no alarm words
    assert "refused PUT" in r.output() and "403 the bearer token is wrong" in r.output()
    # and the receiver still works
    got, text, _ = r.curl(f"/aim/{G}/{seg1}", upload=good)
    assert got == 201, text
    r.wait_applied(G, 2)
    with open(os.path.join(target, "vm", "disk.img"), "rb") as f:
        assert f.read(5) == b"hello"
    assert r.stop() == 0
    r.check_quiet()


def test_hostile_segments_in_the_inbox_are_quarantined(workdir, remotes):
    target = os.path.join(workdir, "target")
    os.makedirs(target)
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(inbox)
    gids = [f"aaaaaaaa-0000-4000-8000-00000000000{i}" for i in range(5)]
    ok = "image 1 ok{g}.img\nwrite 1 0 6f6b\nflush\n"

    def seg(name, g, number, first, extra=""):
        return mkseg(os.path.join(workdir, name),
                     f"group {g}\nnumber {number}\nfirst_lsn {first}\n{extra}" +
                     ok.format(g=g[-1]))
    cases = {}
    # 0: bit flipped
    p = seg("flip.aimj", gids[0], 1, 1)
    data = bytearray(open(p, "rb").read())
    data[90] ^= 1
    open(p, "wb").write(data)
    cases[gids[0]] = (p, 1, "not a valid segment")
    # 1: a segment of another group in this group's directory
    cases[gids[1]] = (seg("alien.aimj", gids[4], 1, 1), 1, "belongs to group")
    # 2: segment 1 fine, segment 2 does not continue its LSNs
    inbox_deliver(inbox, gids[2], seg("s1.aimj", gids[2], 1, 1), name=f"{1:020d}.aimj")
    cases[gids[2]] = (seg("gap.aimj", gids[2], 2, 10), 2, "starts at LSN 10")
    # 3: the file name and the header disagree
    cases[gids[3]] = (seg("renamed.aimj", gids[3], 2, 1), 1, "file name says segment 1")
    # 5: valid, but its write lies beyond what any file can hold: the
    # group stops (nothing to quarantine), without writing anything
    far_gid = "aaaaaaaa-0000-4000-8000-000000000005"
    far = mkseg(os.path.join(workdir, "far.aimj"),
                f"group {far_gid}\nnumber 1\nfirst_lsn 1\nimage 1 far.img\n"
                "write 1 0x7ffffffffffff000 6f776e6564\nflush\n")
    r = remotes(inbox=inbox, target=target, expect_alarms=True).start()
    r.wait_applied(gids[2], 2)
    for g, (path, n, _) in cases.items():
        inbox_deliver(inbox, g, path, name=f"{n:020d}.aimj")
    for g, (path, n, why) in cases.items():
        st = r.wait_group(g, lambda s: s["state"] == "stopped", what=f"{g} to stop")
        assert why in st["error"], st
        assert st["quarantined"] and st["quarantined"][-1]["segment"] == n, st
        assert why in st["quarantined"][-1]["reason"]
        assert os.listdir(os.path.join(inbox, g, "quarantine")) == [f"{n:020d}.aimj"]
        assert not os.path.exists(os.path.join(inbox, g, f"{n:020d}.aimj"))
    inbox_deliver(inbox, far_gid, far, name=f"{1:020d}.aimj")
    st = r.wait_group(far_gid, lambda s: s["state"] == "stopped", what="the far write to stop")
    assert "write at" in st["error"] and st["applied_lsn"] == 0 and not st["quarantined"], st
    assert os.path.getsize(os.path.join(target, "far.img")) == 0
    # only group 2's good segment wrote to the targets
    assert sorted(os.listdir(target)) == ["far.img", "ok2.img"]
    out = r.output().splitlines()
    for g in cases:
        lines = [line for line in out if g in line and "error" in line]
        assert len(lines) == 1, lines                     # logged once, loudly
    assert r.stop() == 0
    os.unlink(os.path.join(inbox, far_gid, f"{1:020d}.aimj"))   # the operator's decision
    # after a restart the groups try again; the quarantine is remembered
    r.expect_alarms = False
    with open(r.log_path, "w"):
        pass
    r.start()
    for g, (path, n, why) in cases.items():
        st = r.wait_group(g, lambda s: s["state"] in ("idle", "waiting"), what=f"{g} to resume")
        assert st["quarantined_total"] == 1 and why in st["quarantined"][0]["reason"]
    assert r.stop() == 0
    r.check_quiet()


def test_bad_options_are_refused(workdir, pki):
    inbox = os.path.join(workdir, "inbox")
    target = os.path.join(workdir, "target")
    os.makedirs(inbox)
    os.makedirs(target)
    base = ["--inbox", inbox, "--target-dir", target, "--status", "off"]
    tls = ["--listen", "127.0.0.1:1", "--tls-cert", pki.server, "--tls-key", pki.server_key]
    cases = [
        (["--target-dir", target], "--inbox DIR is required"),
        (["--inbox", inbox], "--target-dir DIR is required"),
        (["--inbox", inbox + "/nope", "--target-dir", target], "nope"),
        (["--inbox", inbox, "--target-dir", target + "/nope"], "nope"),
        (base + ["--listen", "127.0.0.1:9"], "needs --tls-cert and --tls-key"),
        (base + ["--listen", "nonsense", "--tls-cert", pki.server, "--tls-key",
                 pki.server_key], "expected ADDR:PORT"),
        (["--inbox", inbox, "--target-dir", target, "--status", "nope"], "expected ADDR:PORT"),
        (base + tls[:4] + ["--tls-key", pki.dir + "/missing.key"], "missing.key"),
        (base + ["--listen", "127.0.0.1:1", "--tls-cert", pki.server, "--tls-key",
                 pki.client_key], "--tls-cert"),
        (base + tls + ["--token-file", pki.dir + "/missing-token"], "missing-token"),
        (base + tls + ["--client-ca", pki.token_file], "--client-ca"),
        (base + ["--token-file", pki.token_file], "give --listen too"),
        (base + ["--map", "noequals"], "--map takes IMAGE=PATH"),
        (base + ["--map", "../x=/tmp/x"], "not a valid image name"),
        (base + ["--map", f"a.img={workdir}/no/such/dir/a.img"], "does not exist"),
        (base + ["--max-segment", "12Q"], "--max-segment"),
        (base + tls + ["--tls-priority", "NORMAL:+NONSENSE"], "--tls-priority"),
        (base + ["--max-connections", "0"], "--max-connections 0"),
        (base + ["--max-per-address", "x"], "--max-per-address x"),
        (base + ["--max-connections", "10", "--max-unauthenticated", "10"],
         "must be below --max-connections"),
        (base + ["--handshake-timeout", "0"], "--handshake-timeout"),
        (base + ["--header-timeout", "10q"], "--header-timeout"),
        (base + ["--idle-timeout", "500ms"], "--idle-timeout"),
        (base + ["--min-rate", "fast"], "--min-rate"),
        (base + ["--max-uploads", "2", "--max-group-uploads", "3"], "--max-group-uploads 3"),
        (base + ["--max-temp", "1M", "--max-segment", "2M"], "--max-temp"),
        (base + ["--inbox-reserve", "-1"], "--inbox-reserve"),
        (base + ["extra"], "unexpected argument"),
    ]
    for args, needle in cases:
        p = subprocess.run([AIM_REMOTE, *args], capture_output=True, text=True, timeout=30)
        assert p.returncode != 0, f"aim-remote {' '.join(args)} started"
        assert needle in p.stderr, f"{args}: expected {needle!r} in {p.stderr!r}"
        assert p.stderr.startswith("aim-remote: "), p.stderr
    # nothing was created by the refusals but the state directory of the
    # one that got that far
    assert os.listdir(inbox) == []
    assert os.listdir(target) == []
    # one inbox, one daemon
    r = Remote(workdir, inbox, target)
    try:
        r.start()
        p = subprocess.run([AIM_REMOTE, "--inbox", inbox, "--target-dir", target, "--status",
                            "off", "--state", os.path.join(workdir, "other-state")],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and "in use by another aim-remote" in p.stderr, p.stderr
        assert r.stop() == 0
    finally:
        r.close()
    p = subprocess.run([AIM_REMOTE, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--inbox" in p.stdout and "--retain" in p.stdout


def test_a_full_state_disk_stops_a_group_until_space_is_freed(workdir, remotes):
    """The state database (remote.db) on a file system that fills: the
    group stops with the reason, and once space is freed it applies on by
    itself, without SIGHUP or a restart (it once stayed stopped, the full
    disk told as an I/O error).  Found by an audit with the inbox and the
    state on one small file system."""
    g = "bbbbbbbb-0000-4000-8000-000000000001"
    state = os.path.join(workdir, "state")
    os.makedirs(state)
    run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", state])
    r = None
    try:
        inbox, target = os.path.join(workdir, "inbox"), os.path.join(workdir, "target")
        os.makedirs(inbox)
        os.makedirs(target)
        r = remotes(inbox=inbox, target=target, state=state, expect_alarms=True).start()
        first = 1

        def deliver(n):
            nonlocal first
            lines = [f"group {g}", f"number {n}", f"first_lsn {first}", "image 1 vm.img"]
            for k in range(20):
                lines.append(f"write 1 {(n * 20 + k) % 256 * 4096} @4096:{n % 256}")
            lines.append("flush")
            first += 21
            path = mkseg(os.path.join(workdir, f"s{n}.aimj"), "\n".join(lines) + "\n")
            inbox_deliver(r.inbox, g, path, name=f"{n:020d}.aimj")
        deliver(1)
        r.wait_applied(g, first - 1)
        filler = os.path.join(state, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        os.close(fd)
        n = 1
        while r.group(g)["state"] != "stopped":
            assert n < 400, "the state database never ran out of space"
            n += 1
            deliver(n)
            r.wait_group(g, lambda s: s["state"] in ("idle", "stopped"), what="an apply")
        st = r.group(g)
        assert "No space left" in st["error"], st
        os.unlink(filler)
        st = r.wait_applied(g, first - 1, timeout=30)
        assert st["applied_segment"] == n, st
        assert "resuming" in r.output()
    finally:
        if r:
            r.stop()
        run(["umount", state], check=False)
