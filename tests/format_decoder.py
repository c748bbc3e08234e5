"""format_decoder.py — a second, independent decoder of aimfs segments,
written from docs/FORMAT.md alone (section numbers below are that
document's), so that the document is proven sufficient: the tests decode a
real mount's journal with it, replay it, and check that it accepts and
refuses exactly what the reference decoder (format/segment.c) does.

    seg = decode(data)                     # a sealed segment, or Invalid
    seg = decode(data, partial=True)       # a .open file: good prefix (§12)
    replay([seg1, seg2, ...], directory)   # apply in order onto a directory

Invalid carries the reason and the offset §12 says is reported.  Needs
XXH3-64 from python3-xxhash (Debian's package).
"""
import ctypes
import errno
import os
import struct

import xxhash

HEADER_SIZE = 72
RECORD_SIZE = 64
TRAILER_SIZE = 56
HEAD_MAGIC = b"AIMJSEG\0"
TAIL_MAGIC = b"AIMJEND\0"
TABLE_MAX = 16 << 20
PAYLOAD_MAX = 1 << 30
NAME_MAX = 4095
COMPONENT_MAX = 255
OFF_MAX = 2 ** 63 - 1
DIR_RENAME_BUDGET = 2 ** 26

# record types (§8)
WRITE, ZERO, TRUNCATE, ALLOC, FLUSH, CREATE, UNLINK, RENAME, MKDIR, RMDIR, MARK, \
    SYNC_BEGIN, SYNC_END, HASH, SKIP = range(1, 16)
TYPE_NAMES = {WRITE: "WRITE", ZERO: "ZERO", TRUNCATE: "TRUNCATE", ALLOC: "ALLOC",
              FLUSH: "FLUSH", CREATE: "CREATE", UNLINK: "UNLINK", RENAME: "RENAME",
              MKDIR: "MKDIR", RMDIR: "RMDIR", MARK: "MARK", SYNC_BEGIN: "SYNC_BEGIN",
              SYNC_END: "SYNC_END", HASH: "HASH", SKIP: "SKIP"}
DATA_TYPES = (WRITE, ZERO, TRUNCATE, ALLOC)

# flags (§8)
PUNCH, KEEP_SIZE, DIR, REPLACE, RESYNC = 0x01, 0x02, 0x04, 0x08, 0x10
ALLOWED_FLAGS = {WRITE: RESYNC, ZERO: PUNCH | KEEP_SIZE | RESYNC, TRUNCATE: RESYNC,
                 ALLOC: KEEP_SIZE, RENAME: DIR | REPLACE}

HASH_BLOCK_MIN, HASH_BLOCK_MAX = 4096, 16 << 20

_fallocate = ctypes.CDLL(None, use_errno=True).fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


class Invalid(Exception):
    """The segment is refused: why, and the offset §12 reports."""

    def __init__(self, reason, offset):
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset


def xxh3(data, seed=0):
    return xxhash.xxh3_64_intdigest(data, seed)


def u16(b, o):
    return struct.unpack_from("<H", b, o)[0]


def u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


def u64(b, o):
    return struct.unpack_from("<Q", b, o)[0]


def valid_name(name):
    """§9: 1..4095 bytes, '/'-separated components of 1..255 bytes, none
    '.' or '..', no byte below 0x20 and no 0x7f."""
    if not 1 <= len(name) <= NAME_MAX:
        return False
    if any(c < 0x20 or c == 0x7f for c in name):
        return False
    return all(1 <= len(c) <= COMPONENT_MAX and c not in (b".", b"..")
               for c in name.split(b"/"))


def range_ok(offset, length):
    """offset + length <= 2^63 - 1, without overflow (§8)."""
    return offset <= OFF_MAX and length <= OFF_MAX - offset


def uuid_text(b):
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Namespace:
    """The one-to-one map of image ids and names (§9)."""

    def __init__(self):
        self.by_id = {}
        self.by_name = {}

    def copy(self):
        n = Namespace()
        n.by_id, n.by_name = dict(self.by_id), dict(self.by_name)
        return n

    def bind(self, image, name):
        if image in self.by_id or name in self.by_name:
            return False
        self.by_id[image] = name
        self.by_name[name] = image
        return True

    def unbind(self, image):
        del self.by_name[self.by_id.pop(image)]

    def rename(self, image, new):
        other = self.by_name.get(new)
        if other == image:
            return
        if other is not None:
            self.unbind(other)          # replaced
        self.unbind(image)
        self.bind(image, new)

    def rename_dir(self, old, new):
        """Returns None, or why the directory RENAME is refused (§8)."""
        if old == new or not self.by_id:
            return None
        moving = []
        for image, name in self.by_id.items():
            if name == new or name.startswith(new + b"/"):
                return "directory RENAME collides"
            if name.startswith(old + b"/"):
                if len(new) + len(name) - len(old) > NAME_MAX:
                    return "directory RENAME makes an image name longer than 4095 bytes"
                moving.append(image)
        for image in moving:
            self.rename(image, new + self.by_id[image][len(old):])
        return None


class Record:
    """One record, with the names it acts on as of just before it."""

    def __init__(self, b, at):
        (self.type, self.flags, self.reserved, self.payload_len, self.lsn, self.image,
         self.aux, self.offset, self.length, self.time_ns, self.payload_hash,
         self.check) = struct.unpack_from("<BBHIQIIQQQQQ", b, at)
        self.at = at
        self.payload = b""
        self.name = None                 # the image's name (data, FLUSH, UNLINK, HASH, RENAME)
        self.old_name = self.new_name = None  # RENAME

    @property
    def type_name(self):
        return TYPE_NAMES.get(self.type, f"type {self.type}")

    def hashes(self):
        """HASH: (block size, [u64 per block])."""
        n = (len(self.payload) - 8) // 8
        return u32(self.payload, 0), list(struct.unpack_from(f"<{n}Q", self.payload, 8))


class Segment:
    def __init__(self):
        self.group = self.number = self.first_lsn = self.created_ns = None
        self.table = {}                  # id -> name: the starting namespace
        self.records = []
        self.sealed = False
        self.count = 0
        self.last_lsn = None
        self.backing_lsn = self.sealed_ns = None
        self.digest = None               # trailer check, or the last check if unsealed
        self.valid_len = 0               # bytes of the good prefix
        self.end_names = None            # Namespace at the end

    @property
    def group_text(self):
        return uuid_text(self.group)


def check_fields(r, ns, budget):
    """The type's rules of §8 against the namespace; applies its change.
    Returns the remaining directory-rename budget, or raises Invalid."""
    t, f, pl = r.type, r.flags, r.payload
    bad = lambda why: Invalid(f"record {r.lsn}: {r.type_name} {why}", r.at)  # noqa: E731
    if not 1 <= t <= 15:
        raise bad("unknown record type")
    if f & ~ALLOWED_FLAGS.get(t, 0):
        raise bad("has flags its type does not allow")
    if t in (WRITE, ZERO, TRUNCATE):
        if bool(f & RESYNC) != (r.aux != 0):
            raise bad("destination number without RESYNC, or RESYNC without one")
    if t == WRITE:
        if r.length != r.payload_len or r.length < 1 or not range_ok(r.offset, r.length):
            raise bad("has bad lengths or range")
    elif t in (ZERO, ALLOC):
        if (t == ALLOC and r.aux) or pl or r.length < 1 or not range_ok(r.offset, r.length):
            raise bad("is malformed")
    elif t == TRUNCATE:
        if pl or r.length or r.offset > OFF_MAX:
            raise bad("is malformed")
    elif t in (SYNC_BEGIN, SYNC_END, SKIP):
        if r.image or r.offset or r.length or pl or (t != SKIP and r.aux == 0):
            raise bad("is malformed")
    elif t == HASH:
        if r.length < 1 or not range_ok(r.offset, r.length) or len(pl) < 8:
            raise bad("is malformed")
        block = u32(pl, 0)
        if u32(pl, 4) != 0:
            raise bad("has a non-zero reserved field")
        if not HASH_BLOCK_MIN <= block <= HASH_BLOCK_MAX or block & (block - 1):
            raise bad("has a bad block size")
        if len(pl) != 8 + 8 * -(-r.length // block):
            raise bad("does not hold one hash per block")
    elif t == FLUSH:
        if r.aux or pl or r.offset or r.length:
            raise bad("is malformed")
        if r.image and r.image not in ns.by_id:
            raise bad("names an unbound image")
        r.name = ns.by_id.get(r.image)
    elif t == CREATE:
        if r.length or r.image == 0 or not valid_name(pl):
            raise bad("is malformed")
        if not ns.bind(r.image, pl):
            raise bad("binds a bound id or name")
        r.name = pl
    elif t == UNLINK:
        if r.aux or r.offset or r.length or ns.by_id.get(r.image) != pl:
            raise bad("does not name a bound image by its name")
        r.name = pl
        ns.unbind(r.image)
    elif t == RENAME:
        if r.offset or r.length or not 1 <= r.aux < r.payload_len:
            raise bad("is malformed")
        old, new = pl[:r.aux], pl[r.aux:]
        if not valid_name(old) or not valid_name(new):
            raise bad("has an invalid name")
        r.old_name, r.new_name = old, new
        if f & DIR:
            if r.image:
                raise bad("of a directory names an image")
            if new.startswith(old + b"/"):
                raise bad("moves a directory into itself")
            if budget < len(ns.by_id):
                raise bad("is over the budget of directory renames")
            budget -= len(ns.by_id)
            why = ns.rename_dir(old, new)
            if why:
                raise bad(why)
        else:
            if ns.by_id.get(r.image) != old:
                raise bad("does not match the image's name")
            r.name = old
            ns.rename(r.image, new)
    elif t in (MKDIR, RMDIR):
        if r.image or r.offset or r.length or (t == RMDIR and r.aux) or not valid_name(pl):
            raise bad("is malformed")
        r.name = pl
    elif t == MARK:
        if r.image or r.aux or r.offset or r.length or not 1 <= len(pl) <= 255 or \
                any(c < 0x20 or c == 0x7f for c in pl):
            raise bad("is malformed")
    if t in DATA_TYPES or t == HASH:
        if r.image not in ns.by_id:
            raise bad("names an unbound image")
        r.name = ns.by_id[r.image]
    return budget


def decode_header(b, seg):
    """Steps 1-3 of §12; returns the namespace of the table."""
    if len(b) < HEADER_SIZE:
        raise Invalid("too short for a header", 0)
    if b[:8] != HEAD_MAGIC:
        raise Invalid("bad magic", 0)
    if u16(b, 8) != 1:
        raise Invalid(f"version {u16(b, 8)}", 8)
    if u16(b, 10):
        raise Invalid("header flags are not zero", 10)
    if u32(b, 60):
        raise Invalid("header reserved field is not zero", 60)
    table_len = u32(b, 12)
    if table_len > TABLE_MAX or HEADER_SIZE + table_len > len(b):
        raise Invalid("image table runs past the end", 12)
    end = HEADER_SIZE + table_len
    if xxh3(b[:64] + b[HEADER_SIZE:end]) != u64(b, 64):
        raise Invalid("header checksum mismatch", 64)
    seg.group, seg.number, seg.first_lsn, seg.created_ns = \
        b[16:32], u64(b, 32), u64(b, 40), u64(b, 48)
    count = u32(b, 56)
    if seg.number == 0:
        raise Invalid("segment number 0", 32)
    if not 1 <= seg.first_lsn <= OFF_MAX:
        raise Invalid("first LSN out of range", 40)
    if count > table_len // 7:
        raise Invalid("image count does not fit the table", 56)
    ns = Namespace()
    p = HEADER_SIZE
    for i in range(count):
        if p + 6 > end:
            raise Invalid(f"table entry {i} is truncated", p)
        image, name_len = u32(b, p), u16(b, p + 4)
        name = b[p + 6:p + 6 + name_len]
        if p + 6 + name_len > end:
            raise Invalid(f"table entry {i} runs past the table", p)
        if image == 0 or not valid_name(name) or not ns.bind(image, name):
            raise Invalid(f"table entry {i} is invalid", p)
        p += 6 + name_len
    if p != end:
        raise Invalid("stray bytes after the table", p)
    seg.table = dict(ns.by_id)
    return ns, end


def decode_trailer(b, p, seg, prev, count, lsn):
    """The trailer at p (its magic checked); raises Invalid (§11, §12)."""
    if len(b) - p < TRAILER_SIZE:
        raise Invalid("trailer is truncated", p)
    if xxh3(b[p:p + 48], prev) != u64(b, p + 48):
        raise Invalid("trailer checksum mismatch", p)
    if u64(b, p + 40):
        raise Invalid("trailer reserved field is not zero", p)
    if u64(b, p + 8) != count or u64(b, p + 16) != lsn - 1:
        raise Invalid("trailer's count or last LSN is wrong", p)
    if p + TRAILER_SIZE != len(b):
        raise Invalid("bytes after the trailer", p)
    seg.backing_lsn, seg.sealed_ns = u64(b, p + 24), u64(b, p + 32)
    seg.digest = u64(b, p + 48)
    seg.sealed = True


def decode(data, partial=False, number=None):
    """Validates data as a segment (§12) and returns a Segment.  partial:
    the recovery rule for an unsealed segment (the first invalid record or
    trailer ends the log).  number: the number in the file name, if known."""
    b = bytes(data)
    seg = Segment()
    ns, p = decode_header(b, seg)
    if number is not None and seg.number != number:
        raise Invalid(f"header says segment {seg.number}, file name {number}", 32)
    prev = u64(b, 64)                # the header check seeds the chain
    lsn, count, budget = seg.first_lsn, 0, DIR_RENAME_BUDGET
    try:
        while True:
            if len(b) - p >= 8 and b[p:p + 8] == TAIL_MAGIC:
                decode_trailer(b, p, seg, prev, count, lsn)
                p += TRAILER_SIZE
                break
            if p == len(b):
                raise Invalid("segment ends without a trailer", p)
            if len(b) - p < RECORD_SIZE:
                raise Invalid("record header is truncated", p)
            r = Record(b, p)
            if xxh3(b[p:p + 56], prev) != r.check:
                raise Invalid(f"record {count}: checksum mismatch", p)
            if r.reserved:
                raise Invalid(f"record {count}: reserved field is not zero", p)
            if r.lsn != lsn or lsn > OFF_MAX:
                raise Invalid(f"record {count}: LSN {r.lsn}, expected {lsn}", p)
            if r.payload_len > PAYLOAD_MAX or r.payload_len > len(b) - p - RECORD_SIZE:
                raise Invalid(f"record {count}: payload runs past the end", p)
            r.payload = b[p + RECORD_SIZE:p + RECORD_SIZE + r.payload_len]
            if xxh3(r.payload) != r.payload_hash:
                raise Invalid(f"record {count}: payload checksum mismatch", p)
            budget = check_fields(r, ns, budget)
            seg.records.append(r)
            prev = r.check
            p += RECORD_SIZE + r.payload_len
            lsn += 1
            count += 1
    except Invalid:
        if not partial:
            raise
        seg.sealed = False           # the log ends before what failed
        seg.digest = prev
    seg.count = count
    seg.last_lsn = seg.first_lsn + count - 1
    seg.valid_len = p
    seg.end_names = ns
    return seg


def decode_file(path, partial=False):
    """decode() of a file; a sealed name's number must match the header."""
    base = os.path.basename(path)
    number = None
    if len(base) == 25 and base.endswith(".aimj") and base[:20].isdigit():
        number = int(base[:20])
    with open(path, "rb") as f:
        return decode(f.read(), partial, number)


# ---- replay onto a directory ----

class Replayer:
    """Applies segments of one group, in order, onto the files of a
    directory, as §8 and §13 say an applier does.  Names are valid (§9), so
    a plain join stays beneath root as long as root holds no symlinks,
    which this test tool assumes of the directory it is given.  HASH
    records are compared against the bytes replayed so far; differences
    are collected in self.mismatches."""

    def __init__(self, root):
        self.root = str(root)
        self.group = None
        self.next_lsn = None
        self.next_number = None
        self.mismatches = []

    def path(self, name):
        return os.path.join(self.root, os.fsdecode(name))

    def open_image(self, name):
        """The target of a data record: created, with its parents, if the
        directory lacks it (§13)."""
        p = self.path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return os.open(p, os.O_RDWR | os.O_CREAT, 0o600)

    def apply(self, seg):
        if not seg.sealed:
            raise ValueError(f"segment {seg.number} is not sealed")
        if self.group is None:
            self.group = seg.group
        if seg.group != self.group:
            raise ValueError(f"segment {seg.number} is of group {seg.group_text}")
        if self.next_number is not None and seg.number != self.next_number:
            raise ValueError(f"segment {seg.number} after {self.next_number - 1}")
        if self.next_lsn is not None and seg.first_lsn != self.next_lsn:
            raise ValueError(f"segment {seg.number} starts at LSN {seg.first_lsn}, "
                             f"expected {self.next_lsn}")
        for r in seg.records:
            self.apply_record(r)
        self.next_number = seg.number + 1
        self.next_lsn = seg.last_lsn + 1

    def apply_record(self, r):
        t = r.type
        if t in DATA_TYPES:
            fd = self.open_image(r.name)
            try:
                self.data(fd, r)
            finally:
                os.close(fd)
        elif t == HASH:
            self.compare(r)
        elif t == CREATE:
            p = self.path(r.name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, r.aux & 0o777)
            os.close(fd)
        elif t == UNLINK:
            try:
                os.unlink(self.path(r.name))
            except FileNotFoundError:
                pass                 # done already
        elif t == RENAME:
            old, new = self.path(r.old_name), self.path(r.new_name)
            if os.path.lexists(old):
                os.makedirs(os.path.dirname(new), exist_ok=True)
                os.rename(old, new)
            elif r.flags & DIR and not os.path.lexists(new):
                os.makedirs(new)     # a directory this tree never had
        elif t == MKDIR:
            p = self.path(r.name)
            os.makedirs(p, exist_ok=True)
            os.chmod(p, r.aux & 0o1777)
        elif t == RMDIR:
            try:
                os.rmdir(self.path(r.name))
            except FileNotFoundError:
                pass
        # FLUSH, MARK, SYNC_BEGIN, SYNC_END, SKIP: nothing on the files

    @staticmethod
    def data(fd, r):
        size = os.fstat(fd).st_size
        end = r.offset + r.length
        if r.type == WRITE:
            os.pwrite(fd, r.payload, r.offset)
        elif r.type == TRUNCATE:
            os.ftruncate(fd, r.offset)
        elif r.type == ZERO:
            if r.offset < size:
                zero_range(fd, r.offset, min(end, size) - r.offset)
            if not r.flags & KEEP_SIZE and end > size:
                os.ftruncate(fd, end)    # the growth reads zeros
        elif r.type == ALLOC:
            if not r.flags & KEEP_SIZE and end > size:
                os.ftruncate(fd, end)    # allocation itself may be skipped

    def compare(self, r):
        block, hashes = r.hashes()
        p = self.path(r.name)
        try:
            with open(p, "rb") as f:
                for i, want in enumerate(hashes):
                    off = r.offset + i * block
                    n = min(block, r.offset + r.length - off)
                    f.seek(off)
                    if xxh3(f.read(n)) != want:
                        self.mismatches.append((r.lsn, r.name, off, n))
        except FileNotFoundError:
            for i, want in enumerate(hashes):
                if xxh3(b"") != want:
                    self.mismatches.append((r.lsn, r.name, r.offset + i * block, block))


def zero_range(fd, off, length):
    """Makes [off, off + length) read zeros: punch a hole (PUNCH_HOLE |
    KEEP_SIZE), or write zeros where the file system cannot."""
    if _fallocate(fd, 0x02 | 0x01, off, length) == 0:
        return
    e = ctypes.get_errno()
    if e not in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise OSError(e, os.strerror(e))
    while length:
        n = min(length, 1 << 20)
        os.pwrite(fd, bytes(n), off)
        off += n
        length -= n


def replay(segments, root):
    """Applies segments (sorted by number here) onto root; returns the
    Replayer (its mismatches: HASH blocks that differed)."""
    rp = Replayer(root)
    for seg in sorted(segments, key=lambda s: s.number):
        rp.apply(seg)
    return rp
