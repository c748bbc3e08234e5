"""A reusable random workload for aimfs: several threads writing VM-image-like
files through a mount at the same time.

Each thread does a random mix, driven by its own random.Random(f"{seed}:{i}")
(the per-thread operation streams are reproducible from the seed; how the
threads interleave is up to the kernel):

  * pwrite buffered (any offset, any length) and O_DIRECT (4 KiB-aligned
    offsets and lengths, from page-aligned mmap buffers) on *shared* images
    that every thread writes, so ranges overlap across threads;
  * fallocate: punch hole (PUNCH_HOLE|KEEP_SIZE), zero range (with and
    without KEEP_SIZE), preallocation that grows the file; truncate up and
    down; fsync and fdatasync;
  * writes, O_DIRECT writes, zero ranges and punched holes in the thread's
    own *ack region* of acks.img (threads never overlap there): every
    acknowledged operation is applied to an in-memory model of the region,
    so after a kill -9 and a remount `check_acked` can say exactly whether
    something acknowledged was lost;
  * namespace work on the thread's own scratch files (t<i>-*): create, write,
    O_TRUNC, rename (also over another of its files and across
    directories), unlink (also while open, then write to it), mkdir, rename
    and rmdir of its own directories; and, rarely, renames of the shared
    images while other threads keep writing through their open descriptors.

Every path operation is relative to a descriptor of the mount's root
directory, so once aimfs is killed (and the dead mount lazily detached) a
thread gets ENOTCONN instead of silently writing into the bare mountpoint
directory underneath.

Typical use:

    populate(backing, seed)               # the starting images
    w = Workload(mountpoint, seed, threads=4)
    w.run(seconds=3)                      # raises, naming the seed, on error
    ...
    w.start(seconds=5); time.sleep(x); mount.kill9(); w.join(crash=True)
    remount; w.check_acked(backing); w.resync(new_mountpoint); ...
"""
import ctypes
import errno
import hashlib
import itertools
import mmap
import os
import random
import threading
import time
import traceback

ALIGN = 4096
REGION = 256 << 10             # bytes of acks.img owned by each thread
SHARED = 3                     # shared images
SHARED_MAX = 8 << 20           # shared images never grow past this
ACKS = "acks.img"

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# Errors a thread may see because the daemon was killed under it.  The
# kernel answers EIO to an O_DIRECT write split into several FUSE requests
# when the connection is aborted while some of them are being answered
# (fs/fuse/file.c: fuse_get_res_by_io); aimfs itself cannot answer after a
# kill -9, and every aimfs-side EIO is logged (the crash tests check the log).
# Under FUSE over io_uring a request the kernel was handing to the dead
# daemon's ring ends with ECANCELED (fs/fuse/dev_uring.c: the ring's task is
# dead).
CRASH_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ECANCELED)

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd, mode, off, length):
    """fallocate(2) with any mode (os.posix_fallocate cannot punch)."""
    if _fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def digest(data):
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def populate(root, seed=0, threads=4):
    """Make the starting images a Workload expects in root (the backing dir
    before the first mount, or a mount): shared images (one sparse, one in
    pool/), acks.img with one REGION per thread, and files nobody touches."""
    rng = random.Random(f"populate:{seed}")
    os.makedirs(os.path.join(root, "pool"), exist_ok=True)
    with open(os.path.join(root, "shared-0.0.img"), "wb") as f:
        f.write(rng.randbytes(4 << 20))
    with open(os.path.join(root, "shared-1.0.img"), "wb") as f:  # sparse
        f.truncate(3 << 20)
        for _ in range(8):
            f.seek(rng.randrange(0, 3 << 20))
            f.write(rng.randbytes(rng.randrange(1, 20000)))
    with open(os.path.join(root, "pool", "shared-2.0.img"), "wb") as f:
        f.write(rng.randbytes(1 << 20) + bytes(1 << 20))
    with open(os.path.join(root, ACKS), "wb") as f:
        f.write(rng.randbytes(threads * REGION))
    with open(os.path.join(root, "pool", "keep.img"), "wb") as f:
        f.write(rng.randbytes(100000))
    open(os.path.join(root, "empty.img"), "wb").close()


class WorkloadError(AssertionError):
    pass


class ShortWrite(WorkloadError):
    """A write returned less than asked (expected only when the mount dies)."""


class _Thread:
    """Per-thread state that survives a crash (model, names, rng)."""

    def __init__(self, w, i):
        self.w = w
        self.i = i
        self.rng = random.Random(f"{w.seed}:{i}")
        self.base = i * REGION
        self.model = None            # bytearray: acks.img region as acknowledged
        self.inflight = None         # (rel offset, bytes) of an unacknowledged data op
        self.files = set()           # own scratch files (relative paths), acknowledged
        self.dirs = set()            # own directories, acknowledged
        self.ns_inflight = None      # (files, dirs) as they would be after the op in flight
        self.counter = itertools.count()
        self.records = []            # acknowledged ops: (global seq, op, path, off, len, digest)
        self.ops = 0
        self.error = None            # (op, exception, traceback)
        self.op = None               # op being done
        self.doing = None            # and on what, for messages
        self.fds = {}
        self.buf = mmap.mmap(-1, 1 << 20)
        self.mv = memoryview(self.buf)

    # -- bookkeeping --------------------------------------------------------

    def record(self, op, path, off, length, data=None):
        self.records.append((next(self.w.seq), op, path, off, length,
                             digest(data) if data is not None else None))

    def _open(self, rel, flags):
        return os.open(rel, flags, 0o644, dir_fd=self.w.dfd)

    def open_fds(self):
        w = self.w
        self.fds = {}
        with w.lock:
            for k, rel in enumerate(w.shared):
                self.fds[("s", k)] = self._open(rel, os.O_RDWR)
                self.fds[("sd", k)] = self._open(rel, os.O_RDWR | os.O_DIRECT)
        self.fds["a"] = self._open(ACKS, os.O_RDWR)
        self.fds["ad"] = self._open(ACKS, os.O_RDWR | os.O_DIRECT)

    def close_fds(self):
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}

    # -- data operations ----------------------------------------------------

    def _length(self, direct):
        r = self.rng.random()
        cap = self.w.max_len
        if direct:
            n = self.rng.choice((1, 1, 2, 3, 4, 8, 16, 32, 64, 256))
            return max(ALIGN, min(n * ALIGN, cap - cap % ALIGN))
        if r < 0.3:
            n = self.rng.randrange(1, 600)
        elif r < 0.85:
            n = self.rng.randrange(600, 70000)
        else:
            n = self.rng.randrange(70000, 1 << 20)
        return max(1, min(n, cap))

    def _pwrite(self, fd, data, off, direct):
        if direct:
            n = len(data)
            self.buf[:n] = data
            done = os.pwrite(fd, self.mv[:n], off)
        else:
            done = os.pwrite(fd, data, off)
        return done

    def shared_write(self, direct):
        k = self.rng.randrange(SHARED)
        fd = self.fds[("sd" if direct else "s", k)]
        size = os.fstat(fd).st_size
        n = self._length(direct)
        hi = max(0, min(size + (256 << 10), SHARED_MAX) - n)
        off = self.rng.randrange(0, hi + 1)
        if direct:
            off -= off % ALIGN
        data = self.rng.randbytes(n)
        self.doing = (f"shared-{k}", off, n)
        done = self._pwrite(fd, data, off, direct)
        if done != n:
            raise ShortWrite(f"short write {done} of {n} at {off}")
        self.record("dwrite" if direct else "write", f"shared-{k}", off, n, data)

    def shared_fallocate(self):
        k = self.rng.randrange(SHARED)
        fd = self.fds[("s", k)]
        size = max(os.fstat(fd).st_size, 1)
        off = self.rng.randrange(0, size)
        n = self.rng.randrange(1, 300000)
        kind = self.rng.choice(("punch", "zero", "zero_keep", "alloc"))
        if kind == "punch":
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        elif kind == "zero":
            mode = FALLOC_FL_ZERO_RANGE
        elif kind == "zero_keep":
            mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
        else:
            mode = 0
        if kind in ("zero", "alloc"):
            n = min(n, max(1, SHARED_MAX - off))
        fallocate(fd, mode, off, n)
        self.record(kind, f"shared-{k}", off, n)

    def shared_truncate(self):
        k = self.rng.randrange(SHARED)
        fd = self.fds[("s", k)]
        size = self.rng.randrange(256 << 10, SHARED_MAX)
        if self.rng.random() < 0.3:
            size -= size % ALIGN
        os.ftruncate(fd, size)
        self.record("truncate", f"shared-{k}", size, 0)

    def sync(self):
        key = self.rng.choice(sorted(self.fds, key=str))
        if self.rng.random() < 0.5:
            os.fsync(self.fds[key])
            self.record("fsync", str(key), 0, 0)
        else:
            os.fdatasync(self.fds[key])
            self.record("fdatasync", str(key), 0, 0)

    def ack_op(self):
        """An operation on this thread's region of acks.img, tracked exactly."""
        r = self.rng.random()
        if r < 0.55:
            kind, direct = "write", False
        elif r < 0.85:
            kind, direct = "dwrite", True
        elif r < 0.93:
            kind, direct = "zero", False
        else:
            kind, direct = "punch", False
        if kind in ("write", "dwrite"):
            n = min(self._length(direct), REGION // 2)
            off = self.rng.randrange(0, REGION - n + 1)
            if direct:
                off -= off % ALIGN
            data = self.rng.randbytes(n)
        else:
            n = self.rng.randrange(1, REGION // 4)
            off = self.rng.randrange(0, REGION - n + 1)
            data = bytes(n)
        self.inflight = (off, data)
        if kind in ("write", "dwrite"):
            fd = self.fds["ad" if direct else "a"]
            cached = self.w.volatile_cache and not direct
            done = self._pwrite(fd, data, self.base + off, direct)
            if done != n:
                # the first `done` bytes are acknowledged, the rest is not
                # (in the page cache, none of it until an fdatasync)
                if not cached:
                    self.model[off:off + done] = data[:done]
                    self.inflight = (off + done, data[done:])
                raise ShortWrite(f"short write {done} of {n} at {self.base + off}")
            if cached:
                # acknowledged by the fdatasync that covers it
                os.fdatasync(fd)
        else:
            mode = (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE if kind == "zero"
                    else FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
            fallocate(self.fds["a"], mode, self.base + off, n)
        self.model[off:off + n] = data
        self.inflight = None
        self.record("ack-" + kind, ACKS, self.base + off, n, data)

    # -- namespace operations on the thread's own names --------------------

    def _name(self, where=None):
        dirs = sorted(self.dirs) + ["", "pool"]
        d = where if where is not None else self.rng.choice(dirs)
        name = f"t{self.i}-{next(self.counter)}.img"
        return os.path.join(d, name) if d else name

    def _ns(self, files, dirs, fn):
        self.ns_inflight = (set(files), set(dirs))
        fn()
        self.files, self.dirs = set(files), set(dirs)
        self.ns_inflight = None

    def ns_op(self):
        rng = self.rng
        files, dirs = set(self.files), set(self.dirs)
        choices = ["create", "create"]
        if files:
            choices += ["write", "rename", "unlink", "trunc", "unlink_open"]
        if len(dirs) < 3:
            choices.append("mkdir")
        if dirs:
            choices += ["rmdir", "rename_dir"]
        if len(files) > 6:
            choices = ["unlink", "unlink_open", "rename"]
        what = rng.choice(choices)
        dfd = self.w.dfd
        if what == "create":
            rel = self._name()
            files.add(rel)
            fd = None

            def create():
                nonlocal fd
                fd = self._open(rel, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            self._ns(files, dirs, create)
            try:
                for _ in range(rng.randrange(0, 4)):
                    n = self._length(False)
                    off = rng.randrange(0, 1 << 20)
                    data = rng.randbytes(n)
                    if os.pwrite(fd, data, off) != n:
                        raise ShortWrite("short write")
                    self.record("write", rel, off, n, data)
                if rng.random() < 0.3:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self.record("create", rel, 0, 0)
        elif what == "write":
            rel = rng.choice(sorted(files))
            fd = self._open(rel, os.O_RDWR)
            try:
                n = self._length(False)
                off = rng.randrange(0, 2 << 20)
                data = rng.randbytes(n)
                if os.pwrite(fd, data, off) != n:
                    raise ShortWrite("short write")
                self.record("write", rel, off, n, data)
            finally:
                os.close(fd)
        elif what == "trunc":
            rel = rng.choice(sorted(files))
            fd = self._open(rel, os.O_RDWR | os.O_TRUNC)
            try:
                data = rng.randbytes(rng.randrange(0, 5000))
                os.pwrite(fd, data, 0)
                self.record("o_trunc+write", rel, 0, len(data), data)
            finally:
                os.close(fd)
        elif what == "rename":
            src = rng.choice(sorted(files))
            if len(files) > 1 and rng.random() < 0.3:
                dst = rng.choice(sorted(files - {src}))     # replace another
            else:
                dst = self._name()
            files.discard(src)
            files.add(dst)
            self._ns(files, dirs, lambda: os.rename(src, dst, src_dir_fd=dfd, dst_dir_fd=dfd))
            self.record("rename", f"{src} -> {dst}", 0, 0)
        elif what == "unlink":
            rel = rng.choice(sorted(files))
            files.discard(rel)
            self._ns(files, dirs, lambda: os.unlink(rel, dir_fd=dfd))
            self.record("unlink", rel, 0, 0)
        elif what == "unlink_open":
            rel = rng.choice(sorted(files))
            files.discard(rel)
            fd = self._open(rel, os.O_RDWR)
            try:
                self._ns(files, dirs, lambda: os.unlink(rel, dir_fd=dfd))
                os.pwrite(fd, rng.randbytes(rng.randrange(1, 9000)), rng.randrange(0, 1 << 20))
            finally:
                os.close(fd)
            self.record("unlink_open", rel, 0, 0)
        elif what == "mkdir":
            parent = rng.choice(["", "pool"])
            rel = os.path.join(parent, f"t{self.i}-d{next(self.counter)}")
            dirs.add(rel)
            self._ns(files, dirs, lambda: os.mkdir(rel, dir_fd=dfd))
            self.record("mkdir", rel, 0, 0)
        elif what == "rmdir":
            rel = rng.choice(sorted(dirs))
            inside = [f for f in files if f.startswith(rel + "/")]
            for f in inside:                       # empty it first
                files.discard(f)
                self._ns(files, dirs, lambda f=f: os.unlink(f, dir_fd=dfd))
            dirs.discard(rel)
            self._ns(files, dirs, lambda: os.rmdir(rel, dir_fd=dfd))
            self.record("rmdir", rel, 0, 0)
        elif what == "rename_dir":
            src = rng.choice(sorted(dirs))
            parent = rng.choice(["", "pool"])
            dst = os.path.join(parent, f"t{self.i}-d{next(self.counter)}")
            dirs.discard(src)
            dirs.add(dst)
            for f in [f for f in files if f.startswith(src + "/")]:
                files.discard(f)
                files.add(dst + f[len(src):])
            self._ns(files, dirs, lambda: os.rename(src, dst, src_dir_fd=dfd, dst_dir_fd=dfd))
            self.record("rename_dir", f"{src} -> {dst}", 0, 0)

    def shared_rename(self):
        w = self.w
        with w.lock:
            k = self.rng.randrange(SHARED)
            src = w.shared[k]
            gen = int(os.path.basename(src).split(".")[1]) + 1
            d = "" if src.startswith("pool/") else "pool"
            dst = os.path.join(d, f"shared-{k}.{gen}.img")
            w.shared_inflight = (k, dst)
            os.rename(src, dst, src_dir_fd=w.dfd, dst_dir_fd=w.dfd)
            w.shared[k] = dst
            w.shared_inflight = None
        self.record("rename", f"{src} -> {dst}", 0, 0)

    # -- the loop ------------------------------------------------------------

    OPS = (("shared_write", 30), ("shared_dwrite", 14), ("ack", 26), ("fallocate", 9),
           ("sync", 5), ("truncate", 2), ("ns", 7), ("shared_rename", 1))

    def step(self):
        names = [o for o, _ in self.OPS if self.w.namespace or o not in ("ns", "shared_rename")]
        weights = [wt for o, wt in self.OPS if o in names]
        op = self.rng.choices(names, weights)[0]
        self.op = op
        self.doing = None
        if op == "shared_write":
            self.shared_write(False)
        elif op == "shared_dwrite":
            self.shared_write(True)
        elif op == "ack":
            self.ack_op()
        elif op == "fallocate":
            self.shared_fallocate()
        elif op == "sync":
            self.sync()
        elif op == "truncate":
            self.shared_truncate()
        elif op == "ns":
            self.ns_op()
        elif op == "shared_rename":
            self.shared_rename()
        self.op = None
        self.ops += 1

    def run(self, ops, deadline):
        try:
            self.open_fds()
            n = 0
            while not self.w.stop.is_set():
                if ops is not None and n >= ops:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.step()
                n += 1
                if self.w.pace:
                    self.w.stop.wait(self.w.pace)
        except BaseException as e:  # noqa: BLE001 - reported by join()
            self.error = (self.op if self.doing is None else f"{self.op} {self.doing}",
                          e, traceback.format_exc())
        finally:
            self.close_fds()


class Workload:
    """N threads of random image I/O on root (a mountpoint whose tree was
    made by populate()).  See the module docstring."""

    def __init__(self, root, seed, threads=4, namespace=True, max_len=1 << 20,
                 volatile_cache=None, pace=0.0):
        """max_len caps the length of every write (O_DIRECT ones stay at
        least 4 KiB); namespace=False leaves names alone; pace: seconds each
        thread pauses after every operation (a guest that is not flat out,
        so an outage leaves a backlog a test can wait for).  volatile_cache:
        a buffered write into acks.img counts as acknowledged only once an
        fdatasync covers it (aimfs's writeback cache, as a disk's volatile
        cache); None: so if root is a mount made with cache=writeback."""
        if volatile_cache is None:
            from aimtest import cache_mode
            volatile_cache = cache_mode(root) == "writeback"
        self.volatile_cache = volatile_cache
        self.seed = seed
        self.nthreads = threads
        self.namespace = namespace
        self.max_len = max_len
        self.pace = pace
        self.lock = threading.Lock()
        self.seq = itertools.count(1)
        self.stop = threading.Event()
        self.threads = [_Thread(self, i) for i in range(threads)]
        self.running = []
        self.dfd = None
        self.shared = None
        self.shared_inflight = None
        self.resync(root, first=True)

    def __repr__(self):
        return f"Workload(seed={self.seed}, threads={self.nthreads})"

    # -- state from the tree --------------------------------------------------

    @staticmethod
    def _walk(root):
        files, dirs = set(), set()
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            if rel == ".":
                rel = ""
                dirnames[:] = [d for d in dirnames if d != ".aimfs"]
            for d in dirnames:
                dirs.add(os.path.join(rel, d))
            for f in filenames:
                files.add(os.path.join(rel, f))
        return files, dirs

    def _shared_names(self, files):
        out = []
        for k in range(SHARED):
            found = [f for f in files if os.path.basename(f).startswith(f"shared-{k}.")]
            if len(found) != 1:
                raise WorkloadError(f"seed {self.seed}: shared image {k}: found {found}")
            out.append(found[0])
        return out

    def _own(self, t, files, dirs):
        pre = f"t{t.i}-"
        return ({f for f in files if os.path.basename(f).startswith(pre)},
                {d for d in dirs if os.path.basename(d).startswith(pre)})

    def resync(self, root, first=False):
        """Take the tree under root (a fresh mount) as the new starting state:
        models of the ack regions, own names, shared names.  After a crash,
        call check_acked() first: this accepts whatever is there."""
        assert not self.running
        if self.dfd is not None:
            try:
                os.close(self.dfd)
            except OSError:
                pass
        self.root = str(root)
        self.dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        files, dirs = self._walk(self.root)
        self.shared = self._shared_names(files)
        self.shared_inflight = None
        with open(os.path.join(self.root, ACKS), "rb") as f:
            acks = f.read()
        if len(acks) < self.nthreads * REGION:
            raise WorkloadError(f"{ACKS} is {len(acks)} bytes, expected {self.nthreads * REGION}")
        for t in self.threads:
            t.model = bytearray(acks[t.base:t.base + REGION])
            t.inflight = None
            t.files, t.dirs = self._own(t, files, dirs)
            t.ns_inflight = None
            t.error = None
        self.stop.clear()

    # -- running ---------------------------------------------------------------

    def start(self, ops=None, seconds=None):
        """Start the threads; each does `ops` operations and/or runs `seconds`."""
        assert not self.running
        deadline = time.monotonic() + seconds if seconds is not None else None
        self.stop.clear()
        for t in self.threads:
            t.error = None
            th = threading.Thread(target=t.run, args=(ops, deadline), daemon=True,
                                  name=f"workload-{t.i}")
            self.running.append(th)
            th.start()

    def join(self, crash=False, timeout=120):
        """Wait for the threads.  Without crash, any error fails (naming the
        seed); with crash, only the errors of a dead mount are accepted."""
        for th in self.running:
            th.join(timeout)
            if th.is_alive():
                raise WorkloadError(f"seed {self.seed}: {th.name} hung (op {self.threads[int(th.name.split('-')[1])].op})")
        self.running = []
        bad = []
        for t in self.threads:
            if t.error is None:
                continue
            op, e, tb = t.error
            if crash and (isinstance(e, ShortWrite) or
                          (isinstance(e, OSError) and e.errno in CRASH_ERRNOS)):
                continue
            bad.append(f"thread {t.i} op {op}: {e!r}\n{tb}")
        if bad:
            raise WorkloadError(f"workload seed={self.seed} failed:\n" + "\n".join(bad))

    def run(self, ops=None, seconds=None):
        self.start(ops, seconds)
        self.join()

    def close(self):
        if self.dfd is not None:
            try:
                os.close(self.dfd)
            except OSError:
                pass
            self.dfd = None

    def total_ops(self):
        return sum(t.ops for t in self.threads)

    def records(self):
        """Every acknowledged operation, in global completion order."""
        return sorted(r + (t.i,) for t in self.threads for r in t.records)

    # -- checking ------------------------------------------------------------

    def check_acked(self, root):
        """No acknowledged operation lost: each thread's region of acks.img
        under root (the backing dir after remount) equals its model, except
        where the one operation in flight at the kill may have landed (its
        bytes, or the previous ones, byte by byte).  Also the thread's own
        names, and the shared images' names, are the acknowledged ones (or
        those the operation in flight would have made)."""
        problems = []
        with open(os.path.join(root, ACKS), "rb") as f:
            acks = f.read()
        if len(acks) < self.nthreads * REGION:
            problems.append(f"{ACKS} shrank to {len(acks)} bytes")
            acks = acks.ljust(self.nthreads * REGION, b"\0")
        files, dirs = self._walk(root)
        for t in self.threads:
            actual = acks[t.base:t.base + REGION]
            if actual != bytes(t.model):
                lo, hi = 0, 0
                allowed = None
                if t.inflight is not None:
                    lo = t.inflight[0]
                    hi = lo + len(t.inflight[1])
                    allowed = t.inflight[1]
                bad = None
                if actual[:lo] != bytes(t.model[:lo]) or actual[hi:] != bytes(t.model[hi:]):
                    for x in range(REGION):
                        if (x < lo or x >= hi) and actual[x] != t.model[x]:
                            bad = x
                            break
                else:
                    for x in range(lo, hi):
                        if actual[x] != t.model[x] and actual[x] != allowed[x - lo]:
                            bad = x
                            break
                if bad is not None:
                    last = [r for r in t.records if r[2] == ACKS and
                            r[3] <= t.base + bad < r[3] + r[4]]
                    problems.append(
                        f"thread {t.i}: {ACKS} byte {t.base + bad} is {actual[bad]:#04x}, "
                        f"acknowledged {t.model[bad]:#04x}"
                        + (f" (or in flight {allowed[bad - lo]:#04x})" if lo <= bad < hi else "")
                        + f"; last acknowledged op there: {last[-1] if last else None}"
                        + f"; in flight: {(t.inflight[0] + t.base, len(t.inflight[1])) if t.inflight else None}")
            own = self._own(t, files, dirs)
            want = [(t.files, t.dirs)] + ([t.ns_inflight] if t.ns_inflight else [])
            if own not in want:
                problems.append(f"thread {t.i}: names {sorted(own[0])} {sorted(own[1])}, "
                                f"acknowledged {sorted(t.files)} {sorted(t.dirs)}"
                                + (f", in flight {sorted(t.ns_inflight[0])} {sorted(t.ns_inflight[1])}"
                                   if t.ns_inflight else ""))
        try:
            shared = self._shared_names(files)
            for k, name in enumerate(shared):
                ok = [self.shared[k]]
                if self.shared_inflight and self.shared_inflight[0] == k:
                    ok.append(self.shared_inflight[1])
                if name not in ok:
                    problems.append(f"shared image {k} is {name}, acknowledged {ok}")
        except WorkloadError as e:
            problems.append(str(e))
        if problems:
            raise WorkloadError(f"workload seed={self.seed}: acknowledged operations lost:\n  "
                                + "\n  ".join(problems))
