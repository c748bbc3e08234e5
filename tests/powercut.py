"""What a power cut leaves on disk, from the undo log of the power-cut test
build of aimfs (tests/powercut_io.c, which documents the log).

After the daemon was killed with SIGKILL (every thread stops at once),
`power_cut(log, roots, rng)` puts back every change the log says was not
durable yet, in the files found under roots (the journal and the backing
directory, matched by device and inode, so renames do not matter and
files since removed are skipped):

  * "all": every change not covered by a sync is undone (the page cache is
    lost, nothing was written back);
  * "random": as if the kernel had written back some dirty pages before the
    cut.  A file whose size never changed (an image, the activity log)
    keeps, page by page, a random number of its later changes; a file that
    grew or shrank (a journal segment) keeps a random prefix of them, whole.
    So the journal may keep records whose backing writes are lost and the
    backing may keep writes whose records are lost, in any mixture.

An O_DIRECT write is never undone, and the earlier changes of the pages it
covered count as durable (the kernel writes them back before it).

Renames in the journal directory (a segment published, recycled, reused)
not followed by a sync of that directory are undone too, the newest first
("random": a random number of the oldest stay, as a filesystem's journal
commits them in order); other namespace operations count as durable.
"""
import os
import struct

REC = struct.Struct("=IIQQQQQQQQ")
REC_MAGIC = 0x50435554
UNDO, SYNC, SYNCFS, DIRECT, RENAME = 1, 2, 3, 4, 5
PAGE = 4096


class Undo:
    __slots__ = ("seq", "off", "len", "old_size", "new_size", "data")

    def __init__(self, seq, off, length, old_size, new_size, data):
        self.seq, self.off, self.len = seq, off, length
        self.old_size, self.new_size, self.data = old_size, new_size, data


def read_log(path, renames=None):
    """(undos {(dev, ino): [Undo]}, syncs {(dev, ino): seq}, syncfs {dev: seq},
    directs {(dev, ino): [(seq, off, len)]}); a torn last record is dropped.
    The renames, [(seq, (dev, ino) of the directory, old, new)], are appended
    to the list renames if one is given."""
    undos, syncs, syncfs, directs = {}, {}, {}, {}
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0
    while pos + REC.size <= len(buf):
        magic, kind, seq, dev, ino, off, length, old, new, dlen = REC.unpack_from(buf, pos)
        if magic != REC_MAGIC:
            raise ValueError(f"{path}: bad record at byte {pos}")
        if pos + REC.size + dlen > len(buf):
            break
        key = (dev, ino)
        if kind == UNDO:
            data = buf[pos + REC.size:pos + REC.size + dlen]
            undos.setdefault(key, []).append(Undo(seq, off, length, old, new, data))
        elif kind == SYNC:
            syncs[key] = max(syncs.get(key, 0), off)
        elif kind == SYNCFS:
            syncfs[dev] = max(syncfs.get(dev, 0), off)
        elif kind == DIRECT:
            directs.setdefault(key, []).append((seq, off, length))
        elif kind == RENAME and renames is not None:
            old_name, new_name = buf[pos + REC.size:pos + REC.size + dlen].split(b"\0")[:2]
            renames.append((seq, key, os.fsdecode(old_name), os.fsdecode(new_name)))
        pos += REC.size + dlen
    return undos, syncs, syncfs, directs


def _dirs(roots):
    out = {}
    for root in roots:
        for dirpath, _, _ in os.walk(root):
            st = os.lstat(dirpath)
            out[(st.st_dev, st.st_ino)] = dirpath
    return out


def _undo_renames(renames, syncs, syncfs, roots, rng, mode):
    """Puts back the names of the renames no directory sync covered."""
    dirs = _dirs(roots)
    pending = [r for r in renames
               if r[0] >= max(syncs.get(r[1], 0), syncfs.get(r[1][0], 0)) and r[1] in dirs]
    keep = 0 if mode == "all" else rng.randrange(0, len(pending) + 1)
    undone = 0
    for _, key, old_name, new_name in reversed(pending[keep:]):
        d = dirs[key]
        if os.path.exists(os.path.join(d, new_name)) and \
                not os.path.exists(os.path.join(d, old_name)):
            os.rename(os.path.join(d, new_name), os.path.join(d, old_name))
            undone += 1
    return undone


def _files(roots):
    out = {}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                if os.path.isfile(p) and not os.path.islink(p):
                    out[(st.st_dev, st.st_ino)] = p
    return out


def _restore(fd, u, lo, hi):
    """Writes back the old bytes of undo u over [lo, hi) (within its range)."""
    lo = max(lo, u.off)
    hi = min(hi, u.off + u.len)
    if lo >= hi:
        return
    known = u.data[lo - u.off:hi - u.off]           # old bytes inside the old size
    if known:
        os.pwrite(fd, known, lo)
    if lo + len(known) < hi:
        os.pwrite(fd, bytes(hi - lo - len(known)), lo + len(known))


def power_cut(log, roots, rng=None, mode="all"):
    """Rolls the files under roots back to what a power cut leaves.  Returns
    {"undone": changes undone (in part or whole), "kept": changes not durable
    that a random writeback kept}."""
    renames = []
    undos, syncs, syncfs, directs = read_log(log, renames)
    files = _files(roots)
    stats = {"undone": 0, "kept": 0}
    for key, changes in undos.items():
        path = files.get(key)
        if path is None:
            continue                                # removed since: nothing to put back
        durable = max(syncs.get(key, 0), syncfs.get(key[0], 0))
        pending = [u for u in changes if u.seq >= durable]
        if not pending:
            continue
        fd = os.open(path, os.O_RDWR)
        try:
            if any(u.old_size != u.new_size for u in pending):
                # A file that grew or shrank keeps a prefix of its changes.
                cut = 0 if mode == "all" else rng.randrange(0, len(pending) + 1)
                stats["kept"] += cut
                for u in reversed(pending[cut:]):
                    _restore(fd, u, u.off, u.off + u.len)
                    os.ftruncate(fd, u.old_size)
                    stats["undone"] += 1
                continue
            # Same size throughout: page by page.
            flushed = directs.get(key, [])
            by_page = {}
            for i, u in enumerate(pending):
                for p in range(u.off // PAGE, (u.off + u.len + PAGE - 1) // PAGE):
                    lo, hi = p * PAGE, (p + 1) * PAGE
                    if any(s > u.seq and o < hi and o + n > lo for s, o, n in flushed):
                        continue                    # written back before an O_DIRECT write
                    by_page.setdefault(p, []).append(i)
            undone = set()
            for p, idx in by_page.items():
                cut = 0 if mode == "all" else rng.randrange(0, len(idx) + 1)
                if cut:
                    stats["kept"] += 1
                for i in reversed(idx[cut:]):
                    _restore(fd, pending[i], p * PAGE, (p + 1) * PAGE)
                    undone.add(i)
            stats["undone"] += len(undone)
        finally:
            os.close(fd)
    stats["renames_undone"] = _undo_renames(renames, syncs, syncfs, roots, rng, mode)
    return stats
