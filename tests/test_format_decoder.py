"""docs/FORMAT.md is enough to read aimfs's journal: tests/format_decoder.py,
a decoder written from the document alone, decodes the segments of a real
mount, replays them onto an empty directory, and gets the backing files
byte for byte; it follows the journal through a kill -9 as the source's
recovery does; and on damaged and forged segments it refuses exactly what
the reference decoder (`aimctl dump`) refuses, blaming the same offset."""
import concurrent.futures
import os
import random
import re
import shutil
import struct
import subprocess

import pytest

import format_decoder as fd
from aimtest import AIMCTL, MKSEG, assert_trees_equal, run, tree, wait_for
from remote_helpers import PKI, Remote
from servers import free_port, get_status
from workload import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, \
    Workload, fallocate, populate


def sealed(journal):
    return sorted(os.path.join(journal, f) for f in os.listdir(journal) if f.endswith(".aimj"))


def decode_journal(journal):
    """Every sealed segment, decoded and checked as one sequence (§13)."""
    segs = [fd.decode_file(p) for p in sealed(journal)]
    assert segs, f"no segment in {journal}"
    for a, b in zip(segs, segs[1:]):
        assert b.group == a.group
        assert b.number == a.number + 1, (a.number, b.number)
        assert b.first_lsn == a.last_lsn + 1, (a.number, a.last_lsn, b.first_lsn)
        # the source's own journal: N+1's table is the namespace at N's end
        assert b.table == a.end_names.by_id, f"segment {b.number}'s table"
    return segs


def dump_summary(path):
    """(digest, first_lsn, last_lsn or None) from aimctl dump."""
    out = run([AIMCTL, "dump", "--records=no", path]).stdout
    digest = int(re.search(r"^digest\s+([0-9a-f]+)$", out, re.M).group(1), 16)
    m = re.search(r"^lsn\s+(\d+)\.\.(\d+)", out, re.M)
    return digest, (int(m.group(1)), int(m.group(2))) if m else None


def assert_same_modes(a, b):
    for rel, kind in tree(a).items():
        ma = os.stat(os.path.join(a, rel)).st_mode & 0o7777
        mb = os.stat(os.path.join(b, rel)).st_mode & 0o7777
        assert ma == mb, f"{rel} ({kind[0]}): mode {ma:o} in {a}, {mb:o} in {b}"


def every_kind_of_change(mnt):
    """Deterministic operations, so that every record type and flag that a
    mount can produce is in the journal whatever the random workload did."""
    os.makedirs(os.path.join(mnt, "z/deep"))                          # MKDIR
    p = os.path.join(mnt, "z/deep/k.img")
    with open(p, "wb") as f:                                          # CREATE, WRITE
        f.write(os.urandom(300000))
        f.flush()
        fallocate(f.fileno(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192)
        fallocate(f.fileno(), FALLOC_FL_ZERO_RANGE, 290000, 20000)      # ZERO, grows
        fallocate(f.fileno(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 100, 50)
        fallocate(f.fileno(), 0, 400000, 5000)                          # ALLOC, grows
        fallocate(f.fileno(), FALLOC_FL_KEEP_SIZE, 500000, 5000)        # ALLOC keep
        os.ftruncate(f.fileno(), 250000)                                # TRUNCATE
        os.fsync(f.fileno())                                            # FLUSH
    fdd = os.open(p, os.O_RDWR | os.O_DIRECT)
    try:
        import mmap
        buf = mmap.mmap(-1, 8192)
        buf.write(os.urandom(8192))
        os.pwrite(fdd, buf, 65536)                                      # O_DIRECT WRITE
        os.fdatasync(fdd)
    finally:
        os.close(fdd)
    with open(os.path.join(mnt, "z/victim.img"), "wb") as f:
        f.write(b"v" * 5000)
    os.rename(p, os.path.join(mnt, "z/victim.img"))                   # RENAME, REPLACE
    os.rename(os.path.join(mnt, "z"), os.path.join(mnt, "z2"))        # RENAME DIR
    os.unlink(os.path.join(mnt, "z2/victim.img"))                     # UNLINK
    os.rmdir(os.path.join(mnt, "z2/deep"))                            # RMDIR
    os.chmod(os.path.join(mnt, "z2"), 0o750)                          # not journaled
    os.chmod(os.path.join(mnt, "z2"), 0o755)


@pytest.mark.parametrize("seed", [11])
def test_decoder_replays_a_real_mount_byte_for_byte(aimfs, workdir, seed):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    m = aimfs(options=["segment_size=1M", "segment_age=300ms"])
    mnt = m.mountpoint
    populate(mnt, seed=seed, threads=3)           # through the mount: journaled
    w = Workload(mnt, seed=seed, threads=3, max_len=256 << 10)
    w.run(seconds=3)
    w.close()
    every_kind_of_change(mnt)
    assert m.unmount() == 0
    m.check_quiet()
    assert not [f for f in os.listdir(m.journal) if f.endswith(".open")]

    segs = decode_journal(m.journal)
    assert segs[0].number == 1 and segs[0].first_lsn == 1 and segs[0].table == {}
    assert len(segs) > 3, "segment_size should have cut several segments"
    # the reference agrees on every segment's digest and LSN range
    for path, seg in zip(sealed(m.journal), segs):
        digest, lsns = dump_summary(path)
        assert digest == seg.digest, path
        assert lsns == ((seg.first_lsn, seg.last_lsn) if seg.count else None), path
    records = [r for s in segs for r in s.records]
    kinds = {(r.type, r.flags) for r in records}
    for kind in [(fd.WRITE, 0), (fd.ZERO, fd.PUNCH | fd.KEEP_SIZE), (fd.ZERO, 0),
                 (fd.ZERO, fd.KEEP_SIZE), (fd.TRUNCATE, 0), (fd.ALLOC, 0),
                 (fd.ALLOC, fd.KEEP_SIZE), (fd.FLUSH, 0), (fd.CREATE, 0), (fd.UNLINK, 0),
                 (fd.RENAME, 0), (fd.RENAME, fd.REPLACE), (fd.RENAME, fd.DIR), (fd.MKDIR, 0),
                 (fd.RMDIR, 0)]:
        assert kind in kinds, f"no {fd.TYPE_NAMES[kind[0]]} with flags {kind[1]:#x}: {kinds}"
    assert any(r.type == fd.FLUSH and r.image for r in records), "no FLUSH of one image"

    replica = os.path.join(workdir, "replica")
    os.makedirs(replica)
    rp = fd.replay(segs, replica)
    assert rp.mismatches == []
    assert_trees_equal(replica, backing)
    assert_same_modes(replica, backing)


@pytest.mark.parametrize("remote_had", ["nothing", "an old copy"])
def test_decoder_follows_resync_and_hash_records(aimfs, workdir, remote_had):
    """SYNC_BEGIN, RESYNC-flagged WRITE/ZERO/TRUNCATE, SYNC_END (an initial
    sync to a new remote, or to one holding an old copy: hashed first) and
    HASH records for every destination (aimctl verify): decoded, and the
    HASH records agree with the replay or are answered by data."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(os.path.join(backing, "pool"))
    rnd = random.Random(5)
    with open(os.path.join(backing, "pool", "old.raw"), "wb") as f:   # before the mount
        f.truncate(24 << 20)
        for _ in range(6):
            f.seek(rnd.randrange(0, 23 << 20))
            f.write(rnd.randbytes(rnd.randrange(1, 300000)))
    pki = PKI(os.path.join(workdir, "pki"))
    inbox, target = os.path.join(workdir, "dr1", "inbox"), os.path.join(workdir, "dr1", "images")
    os.makedirs(inbox)
    os.makedirs(target)
    replica = os.path.join(workdir, "replica")
    os.makedirs(replica)
    if remote_had == "an old copy":
        # the source's image with its first MiB different
        for d in (target, replica):
            os.makedirs(os.path.join(d, "pool"))
            shutil.copyfile(os.path.join(backing, "pool", "old.raw"),
                            os.path.join(d, "pool", "old.raw"))
            with open(os.path.join(d, "pool", "old.raw"), "r+b") as f:
                f.write(random.Random(7).randbytes(1 << 20))
    r = Remote(workdir, inbox, target, name="dr1", listen=True, pki=pki,
               args=["--client-ca", pki.ca, "--token-file", pki.token_file])
    try:
        r.start()
        status = f"127.0.0.1:{free_port()}"
        conf = os.path.join(workdir, "s.conf")
        with open(conf, "w") as f:
            f.write(f"[aimfs]\nstatus = {status}\nsegment_size = 1M\nsegment_age = 300ms\n"
                    f"retain = 1h\n[destination dr1]\nurl = {r.base_url}/aim\nca_file = {pki.ca}\n"
                    f"cert_file = {pki.client}\nkey_file = {pki.client_key}\n"
                    f"token_file = {pki.token_file}\n")
        m = aimfs(options=[f"config={conf}"])
        with open(os.path.join(m.mountpoint, "pool", "old.raw"), "r+b") as f:
            f.seek(12345)
            f.write(b"live write")
        wait_for(lambda: get_status(status).get("in_sync") is True, 120, 0.2,
                 what="the initial sync")
        v = subprocess.run([AIMCTL, "verify", "--status", status, "--timeout", "120s"],
                           capture_output=True, text=True)
        assert v.returncode == 0 and "dr1: equal" in v.stdout, v.stdout + v.stderr
        assert m.unmount() == 0
    finally:
        r.close()
    segs = decode_journal(m.journal)
    assert segs[0].number == 1, "retain=1h keeps every segment"
    records = [x for s in segs for x in s.records]
    types = {x.type for x in records}
    for t in (fd.SYNC_BEGIN, fd.SYNC_END, fd.HASH):
        assert t in types, fd.TYPE_NAMES[t]
    resync = [x for x in records if x.flags & fd.RESYNC]
    assert {x.type for x in resync} >= {fd.WRITE, fd.ZERO, fd.TRUNCATE}, resync
    dest = next(x.aux for x in records if x.type == fd.SYNC_BEGIN)
    assert dest >= 1 and all(x.aux == dest for x in resync)
    assert any(x.type == fd.HASH and x.aux == 0 for x in records), "verify's HASH records"
    if remote_had == "an old copy":
        assert any(x.type == fd.HASH and x.aux == dest for x in records), "hashed first"
    rp = fd.replay(segs, replica)   # onto what the remote held
    # verify's HASH records (every destination) came once in sync: equal.
    # The initial sync's own (hashed first when the remote already listed
    # a target, e.g. after the live write's segment reached it) hold the
    # source's bytes the replica is still missing (FORMAT §14: an applier
    # reports them): each such block is sent again later in the stream.
    aux = {x.lsn: x.aux for x in records if x.type == fd.HASH}
    assert [mm for mm in rp.mismatches if aux[mm[0]] == 0] == []
    for lsn, name, off, n in rp.mismatches:
        assert aux[lsn] == dest, (lsn, name, off, n)
        later = sorted((x.offset, x.offset + x.length) for x in resync
                       if x.lsn > lsn and x.name == name and x.type in (fd.WRITE, fd.ZERO))
        pos = off
        for a, b in later:
            if a <= pos < b:
                pos = b
        assert pos >= off + n, f"block {name!r} {off}+{n} differed at LSN {lsn}, never resent"
    assert_trees_equal(replica, backing)


def test_decoder_reads_an_open_segment_as_recovery_does(aimfs, workdir):
    """After kill -9 the .open segment's good prefix, by the document's rule
    (§12), is exactly what the source's recovery seals."""
    m = aimfs(options=["segment_size=64M", "segment_age=1h"])
    populate(m.mountpoint, seed=3, threads=2)
    w = Workload(m.mountpoint, seed=3, threads=2, max_len=128 << 10)
    w.start(seconds=10)
    wait_for(lambda: w.total_ops() >= 300, 60, what="the workload to get going")
    m.kill9()
    w.join(crash=True)
    w.close()
    opened = {}
    for f in os.listdir(m.journal):
        if f.endswith(".open"):
            with open(os.path.join(m.journal, f), "rb") as fh:
                opened[int(f[:20])] = fh.read()
    assert opened, "no open segment after kill -9"
    # a torn last write, as a power cut leaves it: part of a record again
    n = max(opened)
    last = fd.decode(opened[n], partial=True).records[-1]
    opened[n] += opened[n][last.at:last.at + 100]
    with open(os.path.join(m.journal, f"{n:020d}.open"), "wb") as fh:
        fh.write(opened[n])
    # the document's torn-tail rule, here on bytes cut and spoiled by hand
    n, data = sorted(opened.items())[0]
    seg = fd.decode(data, partial=True)
    assert not seg.sealed and seg.count > 0
    ends = [r.at + fd.RECORD_SIZE + r.payload_len for r in seg.records]
    rnd = random.Random(1)
    for cut in rnd.sample(range(seg.records[0].at, seg.valid_len), 30) + ends[-3:]:
        part = fd.decode(data[:cut] + (b"" if cut % 2 else rnd.randbytes(200)), partial=True)
        whole = sum(1 for e in ends if e <= cut)
        assert part.count == whole and part.valid_len == (ends[whole - 1] if whole else
                                                          seg.records[0].at), cut
        with pytest.raises(fd.Invalid):
            fd.decode(data[:cut])    # a sealed reader refuses every one of them
    # a trailer followed by stray bytes ends the log before it
    body = data[:seg.valid_len]
    trailer = struct.pack("<8sQQQQQ", fd.TAIL_MAGIC, seg.count, seg.last_lsn, 0, 0, 0)
    trailer += struct.pack("<Q", fd.xxh3(trailer, seg.digest))
    assert fd.decode(body + trailer).count == seg.count
    stray = fd.decode(body + trailer + b"x", partial=True)
    assert not stray.sealed and stray.count == seg.count and stray.valid_len == len(body)

    # the source's recovery seals the same prefix (or deletes an empty one)
    m2 = aimfs(backing=m.backing, mountpoint=m.mountpoint)
    assert m2.unmount() == 0
    for n, data in opened.items():
        try:
            seg = fd.decode(data, partial=True, number=n)
        except fd.Invalid:
            seg = None
        path = os.path.join(m.journal, f"{n:020d}.aimj")
        if seg is None or seg.count == 0:
            assert not os.path.exists(path), f"{path} should have been deleted"
            continue
        with open(path, "rb") as f:
            done = f.read()
        assert done[:seg.valid_len] == data[:seg.valid_len]
        assert len(done) == seg.valid_len + fd.TRAILER_SIZE
        rec = fd.decode(done, number=n)
        assert rec.count == seg.count and rec.backing_lsn == seg.last_lsn
    decode_journal(m.journal)


# ---- hostile input: the same verdicts as the reference decoder ----

def reseal(b):
    """Recomputes every checksum of a (damaged) segment along its framing as
    it now reads, so that the rules behind the checksums get tested."""
    b = bytearray(b)
    if len(b) < fd.HEADER_SIZE:
        return bytes(b)
    table_len = struct.unpack_from("<I", b, 12)[0]
    end = fd.HEADER_SIZE + table_len
    if end > len(b):
        return bytes(b)
    prev = fd.xxh3(bytes(b[:64]) + bytes(b[fd.HEADER_SIZE:end]))
    struct.pack_into("<Q", b, 64, prev)
    p = end
    while len(b) - p >= 8:
        if b[p:p + 8] == fd.TAIL_MAGIC:
            if len(b) - p >= fd.TRAILER_SIZE:
                struct.pack_into("<Q", b, p + 48, fd.xxh3(bytes(b[p:p + 48]), prev))
            break
        if len(b) - p < fd.RECORD_SIZE:
            break
        plen = struct.unpack_from("<I", b, p + 4)[0]
        if plen > len(b) - p - fd.RECORD_SIZE:
            break
        struct.pack_into("<Q", b, p + 48,
                         fd.xxh3(bytes(b[p + fd.RECORD_SIZE:p + fd.RECORD_SIZE + plen])))
        prev = fd.xxh3(bytes(b[p:p + 56]), prev)
        struct.pack_into("<Q", b, p + 56, prev)
        p += fd.RECORD_SIZE + plen
    return bytes(b)


def verdicts(path, data):
    """(reference, ours): None if accepted, else the offset blamed."""
    with open(path, "wb") as f:
        f.write(data)
    p = subprocess.run([AIMCTL, "dump", "--records=no", path], capture_output=True, text=True,
                       errors="replace")
    if p.returncode == 0:
        ref = None
    else:
        m = re.search(r"\(at byte (\d+)\)", p.stderr)
        assert m, p.stderr
        ref = int(m.group(1))
    try:
        fd.decode(data)
        ours = None
    except fd.Invalid as e:
        ours = e.offset
    return ref, ours, p.stderr.strip()


def forged_segment(workdir):
    """A segment with every record type, flag and odd-but-valid field the
    document allows (mkseg encodes what it is told)."""
    spec = "\n".join([
        "group 6c1f3a2e-9b4d-4e55-8a10-2f6d7c8e9a01", "number 3", "first_lsn 40",
        "image 7 b.img", "image 2 dir/a.img", "image 9 dir/sub/c.img",
        "create 3 0xffffffff new.img", "write 3 0 00112233445566778899",
        "zero 3 2 3", "zero 3 4 4 punch", "zero 3 1 1 keep", "alloc 3 0 100 keep",
        "alloc 3 0 20", "truncate 3 16", "flush 3", "flush",
        "resync 2 write 3 1 ff", "resync 2 zero 3 0 4 punch keep", "resync 2 truncate 3 8",
        "sync-begin 2", "hash 3 0 8 4096 dest=2 0123456789abcdef",
        "hash 3 4 5 4096 fedcba9876543210", "raw 15 0 0 4 0 0", "sync-end 2",
        "mkdir newdir 0xffffffff", "rmdir newdir", "mark before upgrade",
        "rename 3 new.img dir/new.img", "rename 7 b.img dir/a.img replace",
        "raw 8 12 0 3 0 0 646972646972", "renamedir dir2 dir2", "renamedir empty x/y",
        "unlink 3 dir/new.img",
    ]) + "\n"
    path = os.path.join(workdir, "forged.aimj")
    p = subprocess.run([MKSEG, path], input=spec, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    with open(path, "rb") as f:
        return f.read()


def test_decoder_refuses_exactly_what_the_reference_refuses(aimfs, workdir):
    # material: a real journal's segments, and one forged with every type
    m = aimfs(options=["segment_size=256K", "segment_age=200ms"])
    populate(m.mountpoint, seed=21, threads=2)
    w = Workload(m.mountpoint, seed=21, threads=2, max_len=16 << 10)
    w.run(ops=60)
    w.close()
    assert m.unmount() == 0
    small = [p for p in sealed(m.journal) if os.path.getsize(p) < 200 << 10]
    corpus = [open(p, "rb").read() for p in small[:4]] + [forged_segment(workdir)]
    probe = os.path.join(workdir, "probe", "00000000000000000003.aimj")
    os.makedirs(os.path.dirname(probe))
    for data in corpus:
        ref, ours, msg = verdicts(probe, data)
        assert ref is None and ours is None, msg
    rnd = random.Random(7)
    cases = []
    for i in range(160):
        data = bytearray(rnd.choice(corpus))
        # half of them damaged at random, half where the rules live and resealed
        n = rnd.choice((1, 1, 2, 3))
        for _ in range(n):
            at = rnd.randrange(len(data))
            data[at] ^= rnd.randrange(1, 256)
        if i % 2:
            data = reseal(data)
        cases.append(bytes(data))

    def judge(share):
        # four aimctl runs at a time, each share on a probe file of its own
        # (a start costs a sanitizer build a tenth of a second)
        path = os.path.join(workdir, f"probe-{share}", os.path.basename(probe))
        os.makedirs(os.path.dirname(path))
        return [verdicts(path, data) for data in cases[share::4]]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        shares = list(pool.map(judge, range(4)))
    results = [shares[i % 4][i // 4] for i in range(len(cases))]
    disagree, refused, accepted = [], 0, 0
    for i, (ref, ours, msg) in enumerate(results):
        if ref != ours:
            disagree.append(f"case {i}: reference {ref} ({msg}), ours {ours}")
        refused += ref is not None
        accepted += ref is None
    assert not disagree, "\n".join(disagree)
    # random damage is mostly refused; resealed damage to a field the rules
    # leave free (a time, an offset, a payload byte) is accepted by both
    assert refused > 60 and accepted > 5, (refused, accepted)
    # forged records that probe the document's edges, each one line of mkseg
    edges = [
        "zero 1 0 0", "raw 2 0x20 1 0 0 1", "raw 4 0x10 1 1 0 1", "raw 1 0x10 1 0 0 1 aa",
        "raw 3 0x10 1 5 9 0", "raw 8 0x10 1 5 0 0 612e696d6762", "raw 8 0x0c 1 5 0 0 612e696d6762",
        "raw 14 0 1 0 0 4096 00100000" + "01000000" + "0000000000000000",
        "raw 14 0 1 0 0 4096 00000002" + "00000000" + "0000000000000000",
        "raw 14 0 1 0 0 8192 00100000" + "00000000" + "0000000000000000",
        "raw 15 0 0 0 0 0", "raw 15 0 1 0 0 0", "raw 12 0 0 0 0 0", "raw 13 0 0 9 0 0",
        "raw 9 0 0 0xffffffff 0 0 64", "raw 10 0 0 1 0 0 64", "raw 6 0 5 0 77 0 65",
        "raw 6 0 5 0 0 1 65", "raw 5 0 1 0 0 0", "raw 5 0 9 0 0 0", "raw 16 0 0 0 0 0",
        "raw 0 0 0 0 0 0", "raw 7 0 1 0 0 0 612e696d67", "raw 7 0 1 0 0 0 612e696d",
        "renamedir a.img a.img/x", "renamedir dir other", "mark " + "m" * 255,
        "raw 11 0 0 0 0 0 " + "6d" * 256, "raw 11 0 0 0 0 0 6d0a",
        "raw 8 4 0 3 0 0 6469722f", "raw 8 0 1 5 0 0 612e696d67612e696d67",
        "truncate 1 9223372036854775807", "raw 3 0 1 0 9223372036854775808 0",
        "raw 2 0 1 0 9223372036854775806 2", "raw 2 0 1 0 9223372036854775806 1",
        "raw 1 0 1 0 9223372036854775806 1 aa",
        # L/... is 3992 bytes: under a 104-byte name it is 4095, under 105 too long
        "renamedir L " + "n" * 104, "renamedir L " + "n" * 105,
    ]
    long_image = "L/" + "/".join(["q" * 199] * 19) + "/" + "q" * 190
    assert len(long_image) == 3992
    head = (f"number 3\nfirst_lsn 5\nimage 1 a.img\nimage 2 dir/b.img\nimage 4 other/x.img\n"
            f"image 6 {long_image}\n")
    verdict = {}
    for line in edges:
        spec = head + line + "\nflush\n"
        p = subprocess.run([MKSEG, probe], input=spec, capture_output=True, text=True)
        assert p.returncode == 0, f"{line}: {p.stderr}"
        with open(probe, "rb") as f:
            ref, ours, msg = verdicts(probe, f.read())
        assert ref == ours, f"{line!r}: reference {ref} ({msg}), ours {ours}"
        verdict[line] = ref
    assert verdict["renamedir L " + "n" * 104] is None
    assert verdict["renamedir L " + "n" * 105] is not None
    assert 8 <= sum(v is None for v in verdict.values()) <= len(edges) - 20, verdict
