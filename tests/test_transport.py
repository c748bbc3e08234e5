"""The transport with a receiver nobody here wrote: nginx's WebDAV PUT over
TLS.  Segments land in nginx's inbox, `aimctl replay` of that inbox equals
the source; a receiver that goes away makes the source say "retrying" with
the reason and converges when it comes back; bad configurations are
refused at start with a reason."""
import os
import re
import socket
import subprocess
import time
import urllib.request

import pytest


from aimtest import AIMCTL, AIMFS, assert_trees_equal, copy_tree, run, wait_for
from servers import Nginx, free_port, get_status, make_pki, wait_in_sync


def write_config(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def dav_config(workdir, ng, pki, status, aimfs_lines="", dest_lines=""):
    """aimfs.conf: status on status, one destination: nginx's WebDAV over TLS."""
    return write_config(os.path.join(workdir, "aimfs.conf"),
                        f"[aimfs]\nstatus = {status}\n{aimfs_lines}\n[destination dav]\n"
                        f"url = {ng.url}\nca_file = {pki['ca.pem']}\n{dest_lines}")


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def replica_from_inbox(nginx, group, start, target):
    """Replays what nginx received.  A WebDAV server stores a zstd-encoded
    upload as it came (only aim-remote decodes), so decode those first."""
    copy_tree(start, target)
    segs = [os.path.join(nginx.inbox, group, s) for s in nginx.segments(group)]
    assert segs, "nothing was shipped"
    for seg in segs:
        with open(seg, "rb") as f:
            if f.read(4) == ZSTD_MAGIC:
                run(["zstd", "-q", "-d", "-f", seg, "-o", seg + ".plain"])
                os.replace(seg + ".plain", seg)
    run([AIMCTL, "replay", "--target-dir", target, *segs])


def assert_replica_equal(nginx, group, start, backing, workdir):
    """What nginx received, replayed onto a copy of start, equals backing."""
    replica = os.path.join(workdir, "replica")
    replica_from_inbox(nginx, group, start, replica)
    assert_trees_equal(replica, backing)


@pytest.fixture
def tls_nginx(workdir):
    """nginx's WebDAV over TLS, and the PKI its clients trust."""
    pki = make_pki(os.path.join(workdir, "pki"))
    ng = Nginx(workdir, pki).start()
    yield ng, pki
    ng.stop()


def empty_source(workdir):
    """An empty backing directory and start, a copy to replay onto."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    return backing, start


def test_ships_to_webdav_over_tls_and_prunes(aimfs, workdir):
    pki = make_pki(os.path.join(workdir, "pki"))
    ng = Nginx(workdir, pki).start()
    try:
        backing = os.path.join(workdir, "backing")
        os.makedirs(backing)
        with open(os.path.join(backing, "base.raw"), "wb") as f:
            f.write(os.urandom(1 << 20))
        start = os.path.join(workdir, "start")
        copy_tree(backing, start)
        status = f"127.0.0.1:{free_port()}"
        conf = dav_config(workdir, ng, pki, status, "segment_size = 512K\nsegment_age = 200ms\n",
                          "compress = zstd\n")
        m = aimfs(options=[f"config={conf}"])
        for i in range(3):
            with open(os.path.join(m.mountpoint, f"vm{i}.img"), "wb") as f:
                for _ in range(8):
                    f.write(os.urandom(100000) + bytes(100000))  # half compressible
        with open(os.path.join(m.mountpoint, "base.raw"), "r+b") as f:
            f.seek(4096)
            f.write(b"changed" * 100)
            os.fsync(f.fileno())
        st = wait_in_sync(status)
        d = st["destinations"][0]
        assert d["state"] == "in_sync" and d["backlog_segments"] == 0
        assert d["acked_lsn"] == st["head_lsn"]
        assert d["compression_ratio"] < 0.9
        # every acknowledged segment was pruned from the journal; later
        # segments were written over pruned ones' files (at most two wait)
        wait_for(lambda: not [f for f in os.listdir(m.journal) if f.endswith(".aimj")], 10,
                 what="pruning")
        # the pruned files wait for the next segments (when the burst was
        # all sealed before the first prune, none was written over yet)
        with open(os.path.join(m.mountpoint, "vm0.img"), "r+b") as f:
            f.write(os.urandom(1 << 20))
        st = wait_in_sync(status, head=st["head_lsn"] + 1)
        assert st["segments_recycled"] > 0, st
        wait_for(lambda: not [f for f in os.listdir(m.journal) if f.endswith(".aimj")], 10,
                 what="pruning")
        assert len([f for f in os.listdir(m.journal) if f.endswith(".free")]) <= 2
        assert m.unmount() == 0
        m.check_quiet()
        assert not [f for f in os.listdir(m.journal) if f.endswith(".free")]
        assert_replica_equal(ng, st["group"], start, backing, workdir)
    finally:
        ng.stop()


def test_a_clean_unmount_leaves_no_shipped_segment_behind(aimfs, workdir, tls_nginx):
    """Unmounting right after a write: the last segment is sealed, shipped
    and, once the backing files are synced, pruned before aimfs exits
    rather than left for the next mount."""
    ng, pki = tls_nginx
    backing, start = empty_source(workdir)
    status = f"127.0.0.1:{free_port()}"
    conf = dav_config(workdir, ng, pki, status)
    m = aimfs(options=[f"config={conf}"])
    group = get_status(status)["group"]
    with open(os.path.join(m.mountpoint, "vm.img"), "wb") as f:
        f.write(os.urandom(300000))
        os.fsync(f.fileno())
    assert m.unmount() == 0
    m.check_quiet()
    left = sorted(f for f in os.listdir(m.journal) if f.endswith((".aimj", ".open")))
    assert not left, f"shipped segments left in the journal: {left}"
    assert_replica_equal(ng, group, start, backing, workdir)


def test_kill9_inside_a_recycled_segment_loses_nothing(aimfs, workdir, tls_nginx):
    """The open segment is written over a pruned segment's file, so past its
    last record lie the old segment's bytes.  kill -9 there: the next mount
    cuts them as a torn tail (they fail the new check chain), seals, ships,
    and the replica equals the source."""
    ng, pki = tls_nginx
    backing, start = empty_source(workdir)
    status = f"127.0.0.1:{free_port()}"
    conf = dav_config(workdir, ng, pki, status, "segment_size = 256K\nsegment_age = 60s\n")
    m = aimfs(options=[f"config={conf}"])

    def open_file():
        names = [f for f in os.listdir(m.journal) if f.endswith(".open")]
        return os.path.join(m.journal, names[0]) if names else None

    def stale_tail():
        st = get_status(status)
        path = open_file()
        return (path is not None and st["segments_recycled"] > 0 and
                os.path.getsize(path) > st["open_segment_bytes"] + 4096)
    deadline = time.monotonic() + 30
    with open(os.path.join(m.mountpoint, "vm.img"), "wb") as f:
        for i in range(400):
            f.write(os.urandom(200000))
            f.flush()
            os.fsync(f.fileno())
            time.sleep(0.02)        # let the transport ship and prune
            if (i > 8 and stale_tail()) or time.monotonic() > deadline:
                break
    assert stale_tail(), (get_status(status), os.listdir(m.journal))
    m.kill9()
    m2 = aimfs(options=[f"config={conf}"])
    assert "torn tail" in m2.output(), m2.output()
    st = wait_in_sync(status)
    assert m2.unmount() == 0
    assert_replica_equal(ng, st["group"], start, backing, workdir)


def read_bytes(pid):
    """Bytes process pid has caused to be read from storage (page cache hits
    do not count)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/io has no read_bytes")


def test_a_recycled_segment_file_out_of_the_page_cache_costs_writes_no_reads(
        aimfs, workdir, tls_nginx):
    """A pruned segment's file is written over by a later segment.  With
    retain= or after a long backlog its pages have left the page cache, and a
    record that ends inside a page the kernel does not hold made it read that
    page from the disk first, under the journal lock, on every write.  The
    journal writes each record's last page whole, so it never needs the old
    bytes: a workload of O_DIRECT 4 KiB writes (dd, 4160-byte records) into
    files evicted from the cache reads next to nothing from the disk."""
    ng, pki = tls_nginx
    backing, start = empty_source(workdir)
    status = f"127.0.0.1:{free_port()}"
    conf = dav_config(workdir, ng, pki, status,
                      "segment_size = 4M\nsegment_age = 60s\nsegment_idle = 300ms\n"
                      "segment_eager = 0\n")
    m = aimfs(options=[f"config={conf}"])
    image = os.path.join(m.mountpoint, "vm.img")

    def journal(suffix):
        return [f for f in os.listdir(m.journal) if f.endswith(suffix)]

    def big_files_wait():
        free = [os.path.getsize(os.path.join(m.journal, n)) for n in journal(".free")]
        return (len(free) == 2 and min(free) > 3 << 20 and not journal(".open")
                and not journal(".aimj"))
    # Segments of 3.5 MiB (sealed when the writes pause), each shipped and
    # pruned before the next: the files waiting to be written over are
    # larger than what the workload below writes.
    with open(image, "wb") as f:
        for _ in range(6):
            f.write(os.urandom(7 << 19))
            f.flush()
            os.fsync(f.fileno())
            st = wait_in_sync(status)
            if big_files_wait():
                break
    wait_for(big_files_wait, 20, what="two full-sized pruned files waiting, nothing open")
    for name in journal(".free"):    # as memory pressure would
        fd = os.open(os.path.join(m.journal, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    recycled = st["segments_recycled"]
    before = read_bytes(m.proc.pid)
    count = 800                      # 3.3 MB of records: one segment
    run(["dd", "if=/dev/urandom", f"of={image}", "bs=4k", f"count={count}",
         "oflag=direct", "conv=notrunc", "status=none"])
    read = read_bytes(m.proc.pid) - before
    st = wait_in_sync(status, head=st["head_lsn"] + count)
    assert st["segments_recycled"] > recycled, st
    # Measured: nothing.  Without the padding: a page per record (3.2 MB).
    assert read <= 16 * 4096, f"{read} bytes read from the disk for {count} writes"
    assert m.unmount() == 0
    m.check_quiet()
    assert_replica_equal(ng, st["group"], start, backing, workdir)


def test_receiver_away_then_back(aimfs, workdir):
    port = free_port()
    ng = Nginx(workdir, port=port)
    status = f"127.0.0.1:{free_port()}"
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    m = aimfs(options=[f"dest={ng.url}", f"status={status}", "segment_age=200ms"],
              expect_alarms=False)
    try:
        with open(os.path.join(m.mountpoint, "a.img"), "wb") as f:
            f.write(os.urandom(300000))
        # nobody listens: the source keeps the guest writing and says why
        def retrying():
            d = get_status(status)["destinations"][0]
            return d["state"] == "retrying" and "last_error" in d
        wait_for(retrying, 20, what="state retrying")
        d = get_status(status)["destinations"][0]
        assert d["backlog_segments"] >= 1 and d["backlog_seconds"] > 0
        assert "next_attempt_in_seconds" in d
        with open(os.path.join(m.mountpoint, "a.img"), "r+b") as f:
            f.write(b"more while away")
        ng.start()
        st = wait_in_sync(status, timeout=90)
        assert st["destinations"][0]["state"] == "in_sync"
        assert m.unmount() == 0
        out = m.output()
        assert "retrying" in out and "reachable again" in out
        assert_replica_equal(ng, st["group"], start, backing, workdir)
    finally:
        ng.stop()


def test_a_connection_never_answered_fails_after_connect_timeout(aimfs, workdir):
    """A route that accepts and then never answers (a blackhole, a hung
    receiver) holds a connection attempt for connect_timeout, not for
    the default 10 s: two attempts have ended in a timeout while the
    default would still be waiting in the first."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel completes the handshake; nothing reads
    port = hole.getsockname()[1]
    status = f"127.0.0.1:{free_port()}"
    conf = write_config(os.path.join(workdir, "c.conf"),
                        f"[aimfs]\nstatus = {status}\nsegment_age = 200ms\n"
                        f"[destination x]\nurl = https://127.0.0.1:{port}/aim\n"
                        "connect_timeout = 500ms\n")
    m = aimfs(options=[f"config={conf}"], expect_alarms=False)
    try:
        with open(os.path.join(m.mountpoint, "a.img"), "wb") as f:
            f.write(os.urandom(300000))

        def timed_out_twice():
            d = get_status(status)["destinations"][0]
            return (d["state"] == "retrying" and "timeout" in d.get("last_error", "").lower()
                    and d.get("attempts", 0) >= 2)
        # with the default (10 s) the first attempt would still be waiting
        wait_for(timed_out_twice, 8, 0.05, what="two attempts ended by the connect timeout")
        assert m.unmount() == 0
    finally:
        hole.close()


def test_ship_an_unmounted_journal_with_aimctl(aimfs, workdir):
    ng = Nginx(workdir).start()
    try:
        backing = os.path.join(workdir, "backing")
        os.makedirs(backing)
        start = os.path.join(workdir, "start")
        copy_tree(backing, start)
        m = aimfs(options=["segment_size=256K"])
        with open(os.path.join(m.mountpoint, "x.img"), "wb") as f:
            f.write(os.urandom(1 << 20))
        assert m.unmount() == 0
        group = run(["sqlite3", os.path.join(m.journal, "catalog.db"),
                     "select value from meta where key='group'"]).stdout.strip()
        out = run([AIMCTL, "ship", "--dest", ng.url, "--timeout", "60s", m.journal]).stdout
        assert "in_sync" in out, out
        assert not [f for f in os.listdir(m.journal) if f.endswith(".aimj")]
        assert_replica_equal(ng, group, start, backing, workdir)
        # a destination that never got the pruned segments is told so
        proc = subprocess.run([AIMCTL, "ship", "--dest", "http://127.0.0.1:1/aim", "--timeout",
                               "5s", m.journal], capture_output=True, text=True)
        assert proc.returncode == 1 and "needs_resync" in proc.stdout
        # ... and, having taken nothing, is not kept in the catalog
        names = run(["sqlite3", os.path.join(m.journal, "catalog.db"),
                     "select name from destinations"]).stdout.split()
        assert names == [ng.url], names
        # a bad destination is a usage error (2), an unreadable CA a failure (1)
        proc = subprocess.run([AIMCTL, "ship", "--dest", "ftp://h/aim", m.journal],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "must start with" in proc.stderr, proc
        conf = write_config(os.path.join(workdir, "ship.conf"),
                            "[destination x]\nurl = https://h/aim\nca_file = /nonexistent\n")
        proc = subprocess.run([AIMCTL, "ship", "--config", conf, m.journal],
                              capture_output=True, text=True)
        assert proc.returncode == 1 and "ca_file /nonexistent" in proc.stderr, proc
    finally:
        ng.stop()


def test_ship_does_not_call_a_destination_whose_sync_is_not_done_in_sync(aimfs, workdir):
    """A mount added dr1 while its host was down: the images already there
    wait for dr1's initial sync, which only a mount runs.  aimctl ship
    then sent dr1 every segment and said "in_sync" (exit 0), and for a
    destination still "new" wrote in_sync into the catalog, so no mount
    would ever copy those images to it.  Now it says it needs a resync,
    exits 1, and leaves its state to the next mount."""
    ng = Nginx(workdir).start()
    try:
        backing = os.path.join(workdir, "backing")
        os.makedirs(backing)
        with open(os.path.join(backing, "base.raw"), "wb") as f:
            f.write(os.urandom(256 * 1024))           # before any destination
        down = write_config(os.path.join(workdir, "down.conf"),
                            f"[destination dr1]\nurl = http://127.0.0.1:{free_port()}/aim\n")
        m = aimfs(options=[f"config={down}", "segment_size=256K"], expect_alarms=True)
        with open(os.path.join(m.mountpoint, "x.img"), "wb") as f:
            f.write(os.urandom(1 << 20))
        assert m.unmount() == 0
        db = os.path.join(m.journal, "catalog.db")

        def state():
            return run(["sqlite3", db, "select sync_state from destinations where name='dr1'"]
                       ).stdout.strip()
        before = state()
        assert before in ("new", "syncing"), before
        up = write_config(os.path.join(workdir, "up.conf"),
                          f"[destination dr1]\nurl = {ng.url}\n")
        proc = subprocess.run([AIMCTL, "ship", "--config", up, "--timeout", "60s", m.journal],
                              capture_output=True, text=True)
        assert proc.returncode == 1, proc
        assert "dr1: needs_resync" in proc.stdout, proc
        assert "needs a resynchronisation" in proc.stderr, proc
        assert state() == before
    finally:
        ng.stop()


def test_ship_refuses_a_journal_whose_mount_died(aimfs, workdir):
    """After a crash the backing files may lack what sealed segments hold
    (an fsync syncs the journal; the backing files follow at checkpoints)
    and the next mount redoes them: aimctl ship must not ship and prune
    them first, even when no segment was left open."""
    ng = Nginx(workdir).start()
    try:
        m = aimfs(options=["segment_age=100ms"])
        with open(os.path.join(m.mountpoint, "x.img"), "wb") as f:
            f.write(os.urandom(1 << 20))
            os.fsync(f.fileno())
        wait_for(lambda: not [f for f in os.listdir(m.journal) if f.endswith(".open")], 10,
                 what="the segment to be sealed")
        m.kill9()
        sealed = sorted(f for f in os.listdir(m.journal) if f.endswith(".aimj"))
        assert sealed
        proc = subprocess.run([AIMCTL, "ship", "--dest", ng.url, "--timeout", "10s", m.journal],
                              capture_output=True, text=True)
        assert proc.returncode == 1 and "not unmounted cleanly" in proc.stderr, proc
        assert sorted(f for f in os.listdir(m.journal) if f.endswith(".aimj")) == sealed
        # mounted once and unmounted, it ships
        m = aimfs(options=["segment_age=100ms"])
        assert m.unmount() == 0
        out = run([AIMCTL, "ship", "--dest", ng.url, "--timeout", "60s", m.journal]).stdout
        assert "in_sync" in out, out
    finally:
        ng.stop()


def inbox_segment(nginx, group, name):
    """A segment as aimfs wrote it (nginx keeps a zstd upload as it came)."""
    path = os.path.join(nginx.inbox, group, name)
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == ZSTD_MAGIC:
        data = subprocess.run(["zstd", "-q", "-d", "-c", path], capture_output=True,
                              check=True).stdout
    return data


def test_a_pruned_segment_back_after_a_power_cut_is_removed_again(aimfs, workdir, tls_nginx):
    """A power cut can lose the unlink of a pruned segment, or its rename to
    a free file that a newer segment had started to overwrite: the name
    comes back.  Recovery removes it again rather than take it for part of
    the journal (its trailer for where to redo from, its records for a
    redo, its number for the oldest segment to prune)."""
    ng, pki = tls_nginx
    backing, start = empty_source(workdir)
    status = f"127.0.0.1:{free_port()}"
    conf = dav_config(workdir, ng, pki, status, "segment_size = 256K\n")
    m = aimfs(options=[f"config={conf}"])
    with open(os.path.join(m.mountpoint, "vm.img"), "wb") as f:
        f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    st = wait_in_sync(status)
    assert m.unmount() == 0
    assert not [f for f in os.listdir(m.journal) if f.endswith(".aimj")]
    names = ng.segments(st["group"])
    assert len(names) >= 3, names
    first, second = (inbox_segment(ng, st["group"], n) for n in names[:2])
    # segment 1's file, its first pages written over by segment 2's
    stale = second[:4096] + first[4096:]
    with open(os.path.join(m.journal, names[0]), "wb") as f:
        f.write(stale)
    m = aimfs(options=[f"config={conf}"])
    assert names[0] not in os.listdir(m.journal)
    assert "was pruned before the last mount ended" in m.output()
    with open(os.path.join(m.mountpoint, "vm.img"), "r+b") as f:
        f.write(b"after" * 1000)
    wait_in_sync(status, head=st["head_lsn"] + 1)
    assert m.unmount() == 0
    assert_replica_equal(ng, st["group"], start, backing, workdir)


def test_image_limited_destination_gets_only_its_images(aimfs, workdir):
    ng_all = Nginx(os.path.join(workdir, "all")).start()
    ng_one = Nginx(os.path.join(workdir, "one")).start()
    try:
        backing = os.path.join(workdir, "backing")
        os.makedirs(backing)
        start = os.path.join(workdir, "start")
        copy_tree(backing, start)
        status = f"127.0.0.1:{free_port()}"
        conf = write_config(os.path.join(workdir, "aimfs.conf"), f"""
[aimfs]
status = {status}
segment_age = 200ms
segment_size = 256K
[destination all]
url = {ng_all.url}
[destination one]
url = {ng_one.url}
images = vm1*.qcow2 keep.raw
""")
        m = aimfs(options=[f"config={conf}"], expect_alarms=True)
        mnt = m.mountpoint
        for name in ("vm1-a.qcow2", "other.raw", "keep.raw", "vm1-b.qcow2"):
            with open(os.path.join(mnt, name), "wb") as f:
                f.write(os.urandom(200000))
        os.rename(os.path.join(mnt, "vm1-b.qcow2"), os.path.join(mnt, "gone.raw"))
        with open(os.path.join(mnt, "other.raw"), "r+b") as f:
            f.write(b"x" * 5000)
        st = wait_in_sync(status)
        assert m.unmount() == 0
        full = os.path.join(workdir, "full")
        replica_from_inbox(ng_all, st["group"], start, full)
        assert_trees_equal(full, backing)
        part = os.path.join(workdir, "part")
        replica_from_inbox(ng_one, st["group"], start, part)
        assert sorted(os.listdir(part)) == ["keep.raw", "vm1-a.qcow2"]
        for name in ("keep.raw", "vm1-a.qcow2"):
            assert open(os.path.join(part, name), "rb").read() == \
                open(os.path.join(backing, name), "rb").read()
        # its own LSN sequence has no holes: replay validated contiguity
    finally:
        ng_all.stop()
        ng_one.stop()


def refuse(args, needle, status=2):
    """aimfs refuses to start: 2 for a bad value, 1 for a file it cannot read."""
    proc = subprocess.run([AIMFS, "-f", *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == status, f"aimfs {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
    assert needle in proc.stderr, f"expected '{needle}' in: {proc.stderr!r}"


def test_bad_destination_configuration_is_refused(workdir):
    b = os.path.join(workdir, "b")
    mnt = os.path.join(workdir, "m")
    os.makedirs(b)
    os.makedirs(mnt)

    def conf(text):
        return "config=" + write_config(os.path.join(workdir, "c.conf"), text)
    refuse(["-o", "dest=ftp://host/x", b, mnt], "must start with https://")
    refuse(["-o", "dest=https://", b, mnt], "has no host")
    refuse(["-o", "dest=https://h/a,dest=https://h/a", b, mnt], "given twice")
    refuse(["-o", conf("[destination x]\nurl = https://h/\nca_file = /nonexistent/ca.pem\n"),
            b, mnt], "ca_file /nonexistent/ca.pem", status=1)
    refuse(["-o", conf("[destination x]\nurl = https://h/\ncolour = blue\n"), b, mnt],
           'unknown key "colour"')
    # two streams of one group to one place would overwrite each other
    refuse(["-o", conf("[destination a]\nurl = https://h/aim\n"
                       "[destination b]\nurl = https://H/aim/\n"), b, mnt],
           "destinations a and b both send to https://h/aim")
    refuse(["-o", conf("[destination x]\nurl = https://h/\nrate = fast\n"), b, mnt], "rate = fast")
    refuse(["-o", conf("[destination x]\nurl = https://h/\ncompress = lz4\n"), b, mnt],
           "compress = lz4")
    for bad in ("soon", "0s", "2h"):
        refuse(["-o", conf(f"[destination x]\nurl = https://h/\nconnect_timeout = {bad}\n"),
                b, mnt], f"connect_timeout = {bad}: expected a duration from 1ms to 1h")
    refuse(["-o", conf("[elsewhere]\nx = 1\n"), b, mnt], "unknown section [elsewhere]")
    refuse(["-o", conf("[aimfs]\nspeed = 1\n"), b, mnt], 'has no key "speed"')
    refuse(["-o", conf("this is not ini\n"), b, mnt], "line 1")
    # a key or a section given twice is an error, not a silent choice of one
    refuse(["-o", conf("[aimfs]\njournal_max = 8G\njournal_max = 10x\n"), b, mnt],
           "[aimfs] gives journal_max twice")
    refuse(["-o", conf("[destination x]\nurl = https://h/a\nurl = https://h/b\n"), b, mnt],
           "[destination x] gives url twice")
    refuse(["-o", conf("[destination x]\nurl = https://h/a\n[aimfs]\nretain = 1d\n"
                       "[destination x]\nrate = 1M\n"), b, mnt],
           "section [destination x] appears twice")
    refuse(["-o", "config=/nonexistent.conf", b, mnt], "/nonexistent.conf", status=1)
    refuse(["-o", conf("[destination x]\nurl = https://h/\ntoken_file = /nonexistent\n"), b, mnt],
           "token_file /nonexistent", status=1)
    empty = write_config(os.path.join(workdir, "empty.token"), "\n")
    refuse(["-o", conf(f"[destination x]\nurl = https://h/\ntoken_file = {empty}\n"), b, mnt],
           "must hold one line")
    # the config file's values lose to the command line's
    refuse(["-o", conf("[aimfs]\nsegment_size = 64M\n") + ",segment_size=0", b, mnt],
           "segment_size=0")


def test_pattern_matching_nothing_is_a_warning(aimfs, workdir):
    conf = write_config(os.path.join(workdir, "c.conf"), f"""
[destination x]
url = http://127.0.0.1:{free_port()}/aim
images = nothing-like-this*.raw
""")
    m = aimfs(options=[f"config={conf}"], expect_alarms=True)
    assert m.unmount() == 0
    assert 'image pattern "nothing-like-this*.raw" matches no image' in m.output()


SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
                    r'(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? \S+$')


def test_a_destination_name_with_quotes_keeps_metrics_well_formed(aimfs, workdir):
    """A name is the operator's word: quotes and backslashes in it are
    escaped in /metrics, which Prometheus would otherwise reject whole."""
    name = 'dr "east" \\ 1'
    status = f"127.0.0.1:{free_port()}"
    conf = write_config(os.path.join(workdir, "c.conf"), f"""
[aimfs]
status = {status}
[destination {name}]
url = http://127.0.0.1:{free_port()}/aim
""")
    m = aimfs(options=[f"config={conf}"], expect_alarms=True)
    try:
        assert [d["name"] for d in get_status(status)["destinations"]] == [name]
        with urllib.request.urlopen(f"http://{status}/metrics", timeout=5) as r:
            text = r.read().decode()
        bad = [line for line in text.splitlines()
               if line and not line.startswith("#") and not SAMPLE.match(line)]
        assert not bad, "\n".join(bad)
        assert 'aimfs_destination_up{destination="dr \\"east\\" \\\\ 1"} 0' in text, text
    finally:
        assert m.unmount() == 0
