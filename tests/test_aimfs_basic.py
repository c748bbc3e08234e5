"""aimfs basics through the kernel: every kind of mutation is journaled and
an offline replay of the journal onto a copy of the starting directory
equals the backing directory; the journal is invisible through the mount;
bad options and unusable paths are refused with a reason."""
import errno
import os
import subprocess
import time

import pytest

from aimtest import (AIMCTL, AIMFS, MKSEG, assert_trees_equal, change_in_place, copy_tree, replay,
                     run, wait_for)


def seed(backing):
    os.makedirs(os.path.join(backing, "pool"), exist_ok=True)
    with open(os.path.join(backing, "vm-old.raw"), "wb") as f:
        f.write(os.urandom(300000))
    with open(os.path.join(backing, "pool", "disk.img"), "wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(b"x" * 5000)


def test_every_operation_replays_exactly(aimfs, workdir):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    seed(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)

    m = aimfs()
    mnt = m.mountpoint
    # writes: new file, existing file, unaligned, sparse growth
    with open(os.path.join(mnt, "a.img"), "wb") as f:
        f.write(os.urandom(1 << 20))
        f.seek(10 << 20)
        f.write(b"tail")
    with open(os.path.join(mnt, "vm-old.raw"), "r+b") as f:
        f.seek(12345)
        f.write(b"hello" * 1000)
        os.fsync(f.fileno())
    fd = os.open(os.path.join(mnt, "pool", "disk.img"), os.O_RDWR)
    os.pwrite(fd, os.urandom(4096), 4 << 20)
    # fallocate: punch hole, zero range, preallocate beyond EOF
    subprocess.run(["fallocate", "-p", "-o", str(1 << 20), "-l", "8192",
                    os.path.join(mnt, "pool", "disk.img")], check=True)
    subprocess.run(["fallocate", "-z", "-o", str(4 << 20), "-l", "2048",
                    os.path.join(mnt, "pool", "disk.img")], check=True)
    subprocess.run(["fallocate", "-o", str(9 << 20), "-l", str(1 << 20),
                    os.path.join(mnt, "pool", "disk.img")], check=True)
    os.fdatasync(fd)
    os.close(fd)
    # truncate down and up, O_TRUNC
    os.truncate(os.path.join(mnt, "vm-old.raw"), 100000)
    os.truncate(os.path.join(mnt, "vm-old.raw"), 200000)
    with open(os.path.join(mnt, "t.img"), "wb") as f:
        f.write(b"1" * 10000)
    with open(os.path.join(mnt, "t.img"), "wb") as f:
        f.write(b"2" * 10)
    # namespace: mkdir, rename file, rename dir, replace by rename, unlink, rmdir
    os.mkdir(os.path.join(mnt, "vms"))
    os.mkdir(os.path.join(mnt, "empty"))
    os.rename(os.path.join(mnt, "a.img"), os.path.join(mnt, "vms", "a.img"))
    os.rename(os.path.join(mnt, "vms"), os.path.join(mnt, "vms2"))
    with open(os.path.join(mnt, "vms2", "b.img"), "wb") as f:
        f.write(b"b" * 70000)
    os.rename(os.path.join(mnt, "t.img"), os.path.join(mnt, "vms2", "b.img"))
    with open(os.path.join(mnt, "gone.img"), "wb") as f:
        f.write(b"g" * 100)
    os.unlink(os.path.join(mnt, "gone.img"))
    os.mkdir(os.path.join(mnt, "tmpdir"))
    os.rmdir(os.path.join(mnt, "tmpdir"))
    # writes to an unlinked-but-open file are not mirrored and not harmful
    f = open(os.path.join(mnt, "ghost.img"), "wb")
    os.unlink(os.path.join(mnt, "ghost.img"))
    f.write(b"boo" * 1000)
    f.close()

    assert m.unmount() == 0
    m.check_quiet()
    replay(m.journal, start)
    assert_trees_equal(start, backing)


def test_a_directory_renamed_while_files_are_made_in_it_replays_exactly(aimfs, workdir):
    """The kernel runs a rename of a directory beside a create, mkdir or
    rename inside it (they lock different directories).  aimfs once took
    the inner operation's path before its namespace lock: the journal could
    then say d1/x after the RENAME d1 -> d2 that moved it, and the replica
    had d1/x where the source has d2/x."""
    import threading
    backing = os.path.join(workdir, "backing")
    os.makedirs(os.path.join(backing, "d1"))
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    m = aimfs()
    mnt = m.mountpoint
    dfd = os.open(os.path.join(mnt, "d1"), os.O_RDONLY | os.O_DIRECTORY)
    stop = threading.Event()
    errors = []

    def flip():
        names = ("d1", "d2")
        i = 0
        while not stop.is_set() and i < 3000:
            os.rename(os.path.join(mnt, names[i % 2]), os.path.join(mnt, names[(i + 1) % 2]))
            i += 1

    t = threading.Thread(target=flip)
    t.start()
    try:
        n = 0
        while t.is_alive() and n < 1000:
            fd = os.open(f"f{n}.img", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd)
            os.write(fd, b"x" * 512)
            os.close(fd)
            os.mkdir(f"sub{n}", dir_fd=dfd)
            os.rename(f"f{n}.img", f"g{n}.img", src_dir_fd=dfd, dst_dir_fd=dfd)
            os.rmdir(f"sub{n}", dir_fd=dfd)
            n += 1
    except OSError as e:
        errors.append(e)
    finally:
        stop.set()
        t.join()
        os.close(dfd)
    assert not errors, errors
    assert n > 10, n
    assert m.unmount() == 0
    replay(m.journal, start)
    assert_trees_equal(start, backing)


def test_a_file_that_reuses_an_images_inode_while_stopped_is_a_new_image(aimfs, workdir):
    """While aimfs is stopped an operator deletes a.img and copies in
    b.img, and the filesystem gives b.img the inode number a.img had
    (ext4 does, at once).  The next mount matched images by inode number
    only: it journaled a RENAME a.img -> b.img and never b.img's content,
    so the replica's b.img held a.img's bytes.  The birth time noted at
    unmount tells the two files apart."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    m = aimfs()
    with open(os.path.join(m.mountpoint, "a.img"), "wb") as f:
        f.write(os.urandom(100000))
    assert m.unmount() == 0
    old = os.stat(os.path.join(backing, "a.img")).st_ino
    os.unlink(os.path.join(backing, "a.img"))
    made = []
    for i in range(64):             # until the filesystem reuses the number
        path = os.path.join(backing, f"new{i}.tmp")
        with open(path, "wb") as f:
            f.write(os.urandom(50000))
        made.append(path)
        if os.stat(path).st_ino == old:
            break
    else:
        pytest.skip("this filesystem did not reuse the inode number")
    os.rename(made.pop(), os.path.join(backing, "b.img"))
    for path in made:
        os.unlink(path)
    m2 = aimfs()
    assert m2.unmount() == 0
    assert "renamed without its record" not in m2.output(), m2.output()
    replay(m2.journal, start)
    assert_trees_equal(start, backing)
    # and a file renamed while aimfs was stopped is still the same image
    os.rename(os.path.join(backing, "b.img"), os.path.join(backing, "c.img"))
    m3 = aimfs()
    assert m3.unmount() == 0
    assert "image b.img is c.img now" in m3.output(), m3.output()
    start2 = os.path.join(workdir, "start2")
    os.makedirs(start2)
    replay(m3.journal, start2)
    assert_trees_equal(start2, backing)


def test_an_image_changed_in_place_while_stopped_is_journaled_again(aimfs, workdir):
    """While aimfs is stopped an operator changes an image in place on the
    backing filesystem (dd conv=notrunc, qemu-img): same name, inode and
    birth time, its mtime even set back.  Recovery matched it and journaled
    nothing, so a replay of the journal (and every replica) kept the old
    bytes.  Its ctime is not the one noted at the unmount: with no
    destination, what it holds now is journaled.  A restart that changes
    nothing journals nothing."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    m = aimfs()
    for name in ("a.img", "b.img"):
        with open(os.path.join(m.mountpoint, name), "wb") as f:
            f.write(os.urandom(300000))
    assert m.unmount() == 0
    seen = len(m.output())
    m2 = aimfs()                    # nothing changed: nothing to say
    assert m2.unmount() == 0
    assert "changed while aimfs was stopped" not in m2.output()[seen:], m2.output()[seen:]
    change_in_place(os.path.join(backing, "a.img"), 123456, b"changed behind the mount's back")
    seen = len(m2.output())
    m3 = aimfs()
    assert m3.unmount() == 0
    out = m3.output()[seen:]
    assert "image a.img changed while aimfs was stopped" in out, out
    assert "b.img changed" not in out, out
    replay(m3.journal, start)
    assert_trees_equal(start, backing)


def test_journal_is_hidden_and_protected(aimfs):
    m = aimfs()
    mnt = m.mountpoint
    assert ".aimfs" not in os.listdir(mnt)
    assert not os.path.exists(os.path.join(mnt, ".aimfs"))
    with pytest.raises(OSError) as e:
        os.mkdir(os.path.join(mnt, ".aimfs"))
    assert e.value.errno in (errno.EEXIST, errno.EPERM)
    with pytest.raises(OSError):
        open(os.path.join(mnt, ".aimfs"), "w").close()
    open(os.path.join(mnt, "x.img"), "w").close()
    with pytest.raises(OSError):
        os.rename(os.path.join(mnt, "x.img"), os.path.join(mnt, ".aimfs"))
    assert os.path.isdir(os.path.join(m.backing, ".aimfs"))
    assert m.unmount() == 0
    m.check_quiet()


def test_idle_mount_makes_no_segment(aimfs):
    m = aimfs(options=["segment_age=100ms"])
    time.sleep(0.5)
    os.listdir(m.mountpoint)
    assert m.unmount() == 0
    segs = [f for f in os.listdir(m.journal) if f.endswith((".aimj", ".open"))]
    assert segs == []


def test_segments_sealed_by_size_and_age(aimfs, workdir):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    m = aimfs(options=["segment_size=256K", "segment_age=200ms"])
    with open(os.path.join(m.mountpoint, "v.img"), "wb") as f:
        for _ in range(40):
            f.write(os.urandom(64 << 10))
    time.sleep(0.6)  # the age seals the last one while mounted
    segs = sorted(f for f in os.listdir(m.journal) if f.endswith(".aimj"))
    assert len(segs) >= 8, segs
    assert not any(f.endswith(".open") for f in os.listdir(m.journal))
    assert m.unmount() == 0
    m.check_quiet()
    # numbered in order, names sort numerically
    nums = [int(s[:20]) for s in segs]
    assert nums == list(range(1, len(nums) + 1))
    replay(m.journal, start)
    assert_trees_equal(start, backing)
    # the catalog indexed every segment and every write
    out = run(["sqlite3", os.path.join(m.journal, "catalog.db"),
               "select count(*), min(number), max(number) from segments;"
               "select count(*), sum(length) from writes where kind='write';"]).stdout.split()
    assert out[0] == f"{len(nums)}|1|{len(nums)}"
    assert out[1] == f"40|{40 * 65536}"


def resident_bytes(path):
    """Bytes of path in the page cache (util-linux fincore)."""
    return int(run(["fincore", "--bytes", "--noheadings", "--output", "RES", path]).stdout)


def test_sealed_segments_leave_the_page_cache_without_destinations(aimfs, workdir):
    """No destination reads the journal soon, so aimfs drops a segment's pages
    once it is durable and indexed: the journal does not fill the page cache
    (and the guests' cache) with write-once data."""
    start = os.path.join(workdir, "start")
    os.makedirs(os.path.join(workdir, "backing"))
    copy_tree(os.path.join(workdir, "backing"), start)
    m = aimfs(options=["segment_size=4M"])
    data = os.urandom(1 << 20)
    with open(os.path.join(m.mountpoint, "v.img"), "wb") as f:
        for i in range(48):
            f.write(data)
        os.fsync(f.fileno())
    wait_for(lambda: len([f for f in os.listdir(m.journal) if f.endswith(".aimj")]) >= 11,
             what="sealed segments")
    time.sleep(0.5)  # the sealer drops a segment right after indexing it
    segs = sorted(f for f in os.listdir(m.journal) if f.endswith(".aimj"))
    cached = sum(resident_bytes(os.path.join(m.journal, s)) for s in segs[:-1])
    assert cached < (4 << 20), (cached, segs)
    # the data are still there, read back from the disk
    assert m.unmount() == 0
    replay(m.journal, start)
    assert_trees_equal(start, os.path.join(workdir, "backing"))


def test_remount_continues_the_sequence(aimfs, workdir):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    for round_ in range(3):
        m = aimfs()
        with open(os.path.join(m.mountpoint, f"r{round_}.img"), "wb") as f:
            f.write(os.urandom(10000))
        with open(os.path.join(m.mountpoint, "shared.img"), "ab") as f:
            f.write(os.urandom(5000))
        assert m.unmount() == 0
        m.check_quiet()
    replay(m.journal, start)
    assert_trees_equal(start, backing)


def refuse(args, needle, cwd=None):
    proc = subprocess.run([AIMFS, "-f", *args], capture_output=True, text=True, timeout=30,
                          cwd=cwd, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, f"aimfs {' '.join(args)} started"
    assert needle in proc.stderr, f"expected '{needle}' in: {proc.stderr!r}"
    assert proc.stderr.startswith("aimfs: "), proc.stderr


def test_bad_options_and_paths_are_refused(workdir):
    b = os.path.join(workdir, "b")
    mnt = os.path.join(workdir, "m")
    os.makedirs(b)
    os.makedirs(mnt)
    afile = os.path.join(workdir, "file")
    open(afile, "w").close()
    refuse([os.path.join(workdir, "nope"), mnt], "backing directory")
    refuse([b, os.path.join(workdir, "nomnt")], "mountpoint")
    refuse([afile, mnt], "not a directory")
    refuse([b], "missing MOUNTPOINT")
    refuse([b, b], "cannot be the backing directory")
    os.makedirs(os.path.join(b, "inner"))
    refuse([b, os.path.join(b, "inner")], "inside the backing directory")
    refuse(["-o", f"journal={mnt}/j", b, mnt], "inside the mountpoint")
    refuse(["-o", f"journal={afile}", b, mnt], "not a directory")
    refuse(["-o", "journal=/nonexistent/dir/j", b, mnt], "parent")
    refuse(["-o", "segment_size=0", b, mnt], "segment_size=0")
    refuse(["-o", "segment_size=12Q", b, mnt], "segment_size=12Q")
    refuse(["-o", "segment_age=0", b, mnt], "segment_age=0")
    refuse(["-o", "journal_max=10", b, mnt], "journal_max=10")
    refuse(["-o", "overflow=drop", b, mnt], "overflow=drop")
    refuse(["-o", "status=nonsense", b, mnt], "status=nonsense")
    refuse([b, mnt, "extra"], "unexpected argument")
    # nothing was mounted and no journal was made by the refusals
    assert not os.path.exists(os.path.join(b, ".aimfs"))


def test_unwritable_journal_is_refused(workdir):
    b = os.path.join(workdir, "b")
    mnt = os.path.join(workdir, "m")
    j = os.path.join(workdir, "j")
    for d in (b, mnt, j):
        os.makedirs(d)
    # root ignores modes; an immutable directory refuses even root
    if subprocess.run(["chattr", "+i", j], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        refuse(["-o", f"journal={j}", b, mnt], "not writable")
    finally:
        subprocess.run(["chattr", "-i", j], check=True)


def test_second_mount_of_same_journal_is_refused(aimfs, workdir):
    m = aimfs()
    other = os.path.join(workdir, "mnt2")
    os.makedirs(other)
    refuse([m.backing, other], "in use by another aimfs")
    assert m.unmount() == 0


def test_journal_of_another_backing_dir_is_refused(aimfs, workdir):
    j = os.path.join(workdir, "journal")
    m = aimfs(options=[f"journal={j}"])
    assert m.unmount() == 0
    other = os.path.join(workdir, "other")
    os.makedirs(other)
    refuse(["-o", f"journal={j}", other, m.mountpoint], "belongs to backing directory")


def test_aimctl_dump_shows_records(aimfs):
    m = aimfs()
    with open(os.path.join(m.mountpoint, "d.img"), "wb") as f:
        f.write(b"z" * 4096)
        os.fsync(f.fileno())
    assert m.unmount() == 0
    seg = sorted(f for f in os.listdir(m.journal) if f.endswith(".aimj"))[0]
    out = run([AIMCTL, "dump", os.path.join(m.journal, seg)]).stdout
    for word in ("CREATE", "WRITE", "FLUSH", "d.img", "group"):
        assert word in out, out


def test_aimctl_dump_shows_every_flag_destination_and_hash(workdir):
    """Every flag by name, the destination of each resync record (aux),
    and a HASH record's range, block size and number of hashes."""
    seg = os.path.join(workdir, "00000000000000000001.aimj")
    spec = "\n".join([
        "group 6c1f3a2e-9b4d-4e55-8a10-2f6d7c8e9a01", "number 1", "first_lsn 10",
        "image 1 vm.img", "image 2 d/old.img",
        "create 3 0100644 new.img",                 # any u32 mode: shown masked, and whole
        "mkdir d2 01755",
        "zero 1 0 4096",                            # flags 0
        "zero 1 4096 8192 punch keep",
        "alloc 1 0 65536 keep",
        "resync 2 write 1 0 00ff",
        "resync 2 zero 1 4096 4096 punch",
        "resync 3 truncate 1 12288",
        "sync-begin 2",
        "hash 1 8192 70000 65536 dest=2 0000000000000001 0000000000000002",
        "hash 1 0 4096 4096 1111111111111111",      # dest 0: every destination
        "raw 15 0 0 7 0 0",                         # SKIP for destination 7
        "sync-end 2",
        "rename 2 d/old.img d/new.img replace",
        "raw 8 12 0 1 0 0 646433",                  # RENAME d -> d3, DIR|REPLACE
        "flush",
    ]) + "\n"
    p = subprocess.run([MKSEG, seg], input=spec, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = run([AIMCTL, "dump", seg]).stdout
    recs = {}
    for line in out.splitlines()[out.splitlines().index(
            next(l for l in out.splitlines() if l.split()[:2] == ["LSN", "TYPE"])) + 1:]:
        recs[int(line.split()[0])] = line
    flags = {lsn: line.split()[4] for lsn, line in recs.items()}

    def has(lsn, *words):
        for w in words:
            assert w in recs[lsn], f"{w!r} not in LSN {lsn}: {recs[lsn]}\n{out}"

    has(10, "CREATE", "new.img", "mode 0644", "(aux 0x000081a4)")
    has(11, "MKDIR", "d2/", "mode 1755")
    assert "aux" not in recs[11]
    assert flags[12] == "-"
    assert flags[13] == "punch,keep-size"
    assert flags[14] == "keep-size"
    for lsn in (15, 16, 17):
        assert flags[lsn].endswith("resync"), recs[lsn]
    assert flags[16] == "punch,resync"
    has(15, "WRITE", "vm.img", "destination 2")
    has(16, "ZERO", "destination 2")
    has(17, "TRUNCATE", "12288", "destination 3")
    has(18, "SYNC_BEGIN", "destination 2")
    has(19, "HASH", "8192", "70000", "vm.img", "block 65536, 2 hashes, destination 2")
    has(20, "HASH", "block 4096, 1 hash, every destination")
    has(21, "SKIP", "destination 7")
    has(22, "SYNC_END", "destination 2")
    assert flags[23] == "replace"
    has(23, "d/old.img -> d/new.img")
    assert flags[24] == "dir,replace"
    has(24, "- d/ -> d3/")
    has(25, "FLUSH", "(all images)")
    # the columns other tools read stay where they were
    f = recs[19].split()
    assert f[1] == "HASH" and f[2] == "8192" and f[3] == "70000"


def journal_records(journal):
    """(type, rest of the line) of every record of every sealed segment, in
    order, from aimctl dump."""
    recs = []
    for seg in sorted(f for f in os.listdir(journal) if f.endswith(".aimj")):
        out = run([AIMCTL, "dump", os.path.join(journal, seg)]).stdout
        lines = out.splitlines()
        start = next(i for i, l in enumerate(lines) if l.split()[:2] == ["LSN", "TYPE"])
        for line in lines[start + 1:]:
            f = line.split()
            recs.append((f[1], line))
    return recs


def test_directory_rename_past_the_name_limit_is_refused(aimfs, workdir):
    """A directory rename that would give an image under it a name longer
    than 4095 bytes (docs/FORMAT.md §9) fails with ENAMETOOLONG before it
    happens, and nothing is journaled; up to the limit it is mirrored."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    m = aimfs()
    mnt = m.mountpoint
    # a/ccc.../ccc.../.../x.img: 3900 bytes, components of at most 200
    parts, length = ["a"], 1
    while length + 201 < 3900 - 6:
        parts.append("c" * 200)
        length += 201
    parts.append("c" * (3900 - 6 - length - 1))
    deep_dir = "/".join(parts)
    image = deep_dir + "/x.img"
    assert len(image) == 3900
    os.makedirs(os.path.join(mnt, deep_dir))
    with open(os.path.join(mnt, image), "wb") as f:
        f.write(b"long" * 1000)
        os.fsync(f.fileno())
    # "a" -> 196 bytes makes the image's name 4095 bytes: the limit
    fits = "b" * 196
    os.rename(os.path.join(mnt, "a"), os.path.join(mnt, fits))
    # one byte more is refused, on the mount and in the backing directory
    too_long = "d" * 197
    with pytest.raises(OSError) as e:
        os.rename(os.path.join(mnt, fits), os.path.join(mnt, too_long))
    assert e.value.errno == errno.ENAMETOOLONG
    assert os.path.isdir(os.path.join(mnt, fits))
    assert not os.path.exists(os.path.join(mnt, too_long))
    assert not os.path.exists(os.path.join(backing, too_long))
    # a rename of a file (not a directory) to the same name is not affected
    with open(os.path.join(mnt, "short.img"), "wb") as f:
        f.write(b"s")
    os.rename(os.path.join(mnt, "short.img"), os.path.join(mnt, too_long))
    assert m.unmount() == 0
    m.check_quiet()
    renames = [line for t, line in journal_records(m.journal) if t == "RENAME"]
    assert len(renames) == 2, "\n".join(renames)
    assert f"- a/ -> {fits}/" in renames[0], renames[0]
    assert f"short.img -> {too_long}" in renames[1], renames[1]
    assert not any(too_long + "/" in r for r in renames)
    replay(m.journal, start)
    assert_trees_equal(start, backing)


def test_names_a_record_cannot_carry_are_refused_before_they_happen(aimfs, workdir):
    """A name with a control character cannot be journaled (FORMAT.md §9):
    a create, mkdir or rename to one fails with EINVAL and leaves the
    backing directory as it was.  (A create or mkdir once happened, was
    undone and failed with EIO; a rename happened unjournaled and failed
    with EIO, the replica keeping the old name until a remount.)"""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    m = aimfs()
    mnt = m.mountpoint
    with open(os.path.join(mnt, "good.img"), "wb") as f:
        f.write(b"g" * 8192)
    for name in ("bad\nname.img", "tab\there.img", "del\x7f.img"):
        with pytest.raises(OSError) as e:
            open(os.path.join(mnt, name), "wb")
        assert e.value.errno == errno.EINVAL, name
        with pytest.raises(OSError) as e:
            os.mkdir(os.path.join(mnt, name + ".d"))
        assert e.value.errno == errno.EINVAL, name
        with pytest.raises(OSError) as e:
            os.rename(os.path.join(mnt, "good.img"), os.path.join(mnt, name))
        assert e.value.errno == errno.EINVAL, name
    assert sorted(os.listdir(backing)) == [".aimfs", "good.img"]
    os.rename(os.path.join(mnt, "good.img"), os.path.join(mnt, "fine.img"))
    assert m.unmount() == 0
    m.check_quiet()
    replay(m.journal, start)
    assert_trees_equal(start, backing)


def bdi_strict_limit(mountpoint):
    """The kernel's strict dirty limit of the mount's bdi: '1', '0', or None
    on a kernel without the knob (before Linux 6.2)."""
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/strict_limit"
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def test_writeback_cache_lifts_the_per_mount_dirty_limit(aimfs, workdir):
    """cache=writeback turns off the kernel's strict per-FUSE-mount dirty
    limit (which throttled a sustained buffered writer to one round trip
    per page); found through mountinfo, so a mount point whose name needs
    escaping there works too.  cache=strict leaves the kernel's default."""
    odd = os.path.join(workdir, "mount point\twith\\odd names")
    m = aimfs(mountpoint=odd, options=["cache=writeback"])
    limit = bdi_strict_limit(odd)
    if limit is None:
        assert "cannot lift the kernel's per-mount dirty limit" in m.output()
    else:
        assert limit == "0", m.output()
        assert "dirty limit" not in m.output()
    with open(os.path.join(odd, "v.img"), "wb") as f:
        f.write(os.urandom(8 << 20))
        os.fsync(f.fileno())
    assert m.unmount() == 0
    m = aimfs(mountpoint=os.path.join(workdir, "strict"), options=["cache=strict"])
    assert bdi_strict_limit(m.mountpoint) in ("1", None)
    assert "dirty limit" not in m.output()
    assert m.unmount() == 0
