"""Read-ahead for O_DIRECT handles read sequentially (aimfs/readahead.c),
through the kernel: the next range is read from the backing file while the
reply to the last one travels, and must never answer a read with bytes a
change made before that read has replaced.

A sequential O_DIRECT reader walks an image one chunk at a time while other
descriptors change it between its reads -- O_DIRECT and buffered writes,
punched and zeroed ranges, truncates down and up -- often exactly the chunk
the reader asks for next (the one read ahead), sometimes after a pause that
lets the read ahead land first; and the reader is closed now and then with
a read ahead in flight.  Every read is compared with a model of the
file.  /metrics must show the read-ahead both used and thrown away for a
change, so the test cannot pass with read-ahead simply off; and the journal
replayed onto the starting copy must equal the backing file.

The mount is through /dev/fuse even in the sanitizer pass (which runs the
other mounts over io_uring): there is no read-ahead over io_uring."""
import mmap
import os
import random
import struct
import subprocess
import threading
import time

import pytest

from aimtest import assert_trees_equal, copy_tree, free_port, replay
from servers import metrics

CHUNK = 256 << 10
SIZE = 16 << 20


class Model:
    def __init__(self, data):
        self.data = bytearray(data)

    def write(self, off, buf):
        if off > len(self.data):
            self.data.extend(bytes(off - len(self.data)))
        self.data[off:off + len(buf)] = buf

    def zero(self, off, length):  # punch / zero range with KEEP_SIZE
        end = min(off + length, len(self.data))
        if off < end:
            self.data[off:end] = bytes(end - off)

    def truncate(self, size):
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    def read(self, off, length):
        return bytes(self.data[off:off + length])


@pytest.mark.parametrize("seed", [1, 2])
def test_a_sequential_direct_reader_sees_every_change_made_before_its_read(aimfs, workdir,
                                                                            seed):
    rnd = random.Random(seed)
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    initial = rnd.randbytes(SIZE)
    with open(os.path.join(backing, "disk.img"), "wb") as f:
        f.write(initial)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    addr = f"127.0.0.1:{free_port()}"
    m = aimfs(options=[f"status={addr}", "io_uring=off"])
    path = os.path.join(m.mountpoint, "disk.img")
    model = Model(initial)

    reader = os.open(path, os.O_RDONLY | os.O_DIRECT)
    direct_w = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buffered_w = os.open(path, os.O_WRONLY)
    rbuf = mmap.mmap(-1, CHUNK)      # page-aligned, as O_DIRECT wants
    wbuf = mmap.mmap(-1, CHUNK)
    changes = 0

    def change(near):
        """One change, at the chunk the reader wants next or anywhere."""
        nonlocal changes
        changes += 1
        size = len(model.data)
        base = near if rnd.random() < 0.7 else rnd.randrange(0, SIZE, 4096)
        kind = rnd.choice(["direct", "direct", "buffered", "buffered", "punch", "zero",
                           "truncate"])
        if kind == "direct":
            n = rnd.choice([4096, 65536, CHUNK])
            data = rnd.randbytes(n)
            wbuf[:n] = data
            assert os.pwritev(direct_w, [memoryview(wbuf)[:n]], base) == n
            model.write(base, data)
        elif kind == "buffered":
            off = base + rnd.randrange(0, 4096)
            data = rnd.randbytes(rnd.randrange(1, 9000))
            assert os.pwrite(buffered_w, data, off) == len(data)
            model.write(off, data)
        elif kind in ("punch", "zero"):
            length = rnd.randrange(1, 3 * 4096)
            flag = "-p" if kind == "punch" else "-z"
            subprocess.run(["fallocate", flag, "-n", "-o", str(base), "-l", str(length), path],
                           check=True)
            model.zero(base, length)
        else:
            # down into the chunk wanted next, or back up to the full size
            new = SIZE if size < SIZE else base + rnd.randrange(0, CHUNK)
            os.truncate(path, new)
            model.truncate(new)

    try:
        for sweep in range(3):
            off = 0
            while off < SIZE:
                n = os.preadv(reader, [rbuf], off)
                want = model.read(off, CHUNK)
                assert n == len(want) and rbuf[:n] == want, \
                    f"seed {seed}, sweep {sweep}: read at {off} differs from the model " \
                    f"after {changes} changes"
                off += CHUNK
                r = rnd.random()
                if r < 0.15:
                    time.sleep(0.01)     # the read ahead of `off` lands first
                    change(off)
                elif r < 0.35:
                    change(off)          # while it may still be being read
                elif r < 0.45:
                    time.sleep(0.005)
                elif r < 0.5:
                    # closed with a read ahead in flight: the release waits
                    # for it, and a new handle starts a new stream
                    os.close(reader)
                    reader = os.open(path, os.O_RDONLY | os.O_DIRECT)
            if len(model.data) < SIZE:
                os.truncate(path, SIZE)
                model.truncate(SIZE)
        got = {k: v for k, v in metrics(addr).items() if k.startswith("aimfs_readahead")}
    finally:
        for fd in (reader, direct_w, buffered_w):
            os.close(fd)
    m.unmount()

    assert got["aimfs_readahead_used_total"] > 20, got
    assert got["aimfs_readahead_changed_total"] > 0, got
    with open(os.path.join(backing, "disk.img"), "rb") as f:
        assert f.read() == bytes(model.data)
    replay(m.journal, start)
    assert_trees_equal(start, backing)


def test_a_read_issued_after_a_concurrent_write_returned_sees_it(aimfs, workdir):
    """A writer thread keeps rewriting the chunks just ahead of the reader
    (the one read ahead among them), every 4 KiB block stamped with the
    write's version, while the reader walks the image.  A read must show,
    in every block, the version of the last write to that chunk that had
    returned before the read was issued, or a later one: a read ahead
    queued while a write was in progress must not answer it."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    chunks = SIZE // CHUNK
    with open(os.path.join(backing, "disk.img"), "wb") as f:
        f.write(struct.pack("<Q", 0) * (SIZE // 8))
    addr = f"127.0.0.1:{free_port()}"
    m = aimfs(options=[f"status={addr}", "io_uring=off"])
    path = os.path.join(m.mountpoint, "disk.img")
    returned = [0] * chunks          # the version of the last write returned
    position = [0]                   # the chunk the reader reads next
    stop = threading.Event()
    errors = []

    def writer():
        rnd = random.Random(5)
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, CHUNK)
        version = 0
        try:
            while not stop.is_set():
                chunk = (position[0] + rnd.randrange(0, 3)) % chunks
                version += 1
                buf[:] = struct.pack("<Q", version) * (CHUNK // 8)
                assert os.pwritev(fd, [buf], chunk * CHUNK) == CHUNK
                returned[chunk] = version
        except Exception as e:  # reported by the main thread
            errors.append(e)
        finally:
            os.close(fd)

    reader = os.open(path, os.O_RDONLY | os.O_DIRECT)
    rbuf = mmap.mmap(-1, CHUNK)
    th = threading.Thread(target=writer)
    th.start()
    reads = 0
    # Read for 4 s at least, then on until enough reads were served from
    # read-ahead for the check to mean something: how many are depends on
    # how the writer and reader interleave, which load changes.
    start = time.monotonic()

    def read_more():
        elapsed = time.monotonic() - start
        if errors or elapsed > 60:
            return False
        return elapsed < 4 or metrics(addr)["aimfs_readahead_used_total"] <= 20

    try:
        while read_more():
            for chunk in range(chunks):
                position[0] = chunk
                at_least = returned[chunk]
                assert os.preadv(reader, [rbuf], chunk * CHUNK) == CHUNK
                reads += 1
                seen = min(struct.unpack_from("<Q", rbuf, b)[0] for b in range(0, CHUNK, 4096))
                assert seen >= at_least, \
                    f"chunk {chunk}: a block of version {seen} after version {at_least} " \
                    f"had returned (read {reads})"
    finally:
        stop.set()
        th.join()
        os.close(reader)
    assert not errors, errors
    got = metrics(addr)
    m.unmount()
    assert got["aimfs_readahead_used_total"] > 20, got
