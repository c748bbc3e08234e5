"""Crash consistency an operator can prove (issue 11), through the kernel:

  * marks: `aimctl mark` journals a MARK in a running aimfs and prints its
    LSN; a name in use or one a MARK cannot carry is refused and journals
    nothing; /status, GET /marks, the catalog and the segments list them,
    also after a remount;
  * `replay --until MARK:NAME` reproduces exactly the backing files the
    source had at that mark (hashed with the workload paused), `--until
    LSN` the same state, and a TIME between two barriers stops at the
    earlier one and says so;
  * `aimctl check` passes at every barrier of a real ext4 written through a
    loop device on the mount, and fails -- first at the right point, after
    the mark before the write that collides -- when its base image was
    changed behind the journal's back;
  * a qcow2 image made inconsistent between two flushes (a bad L1 entry
    written with qemu-io through a loop device, the writer then killed; a
    second qemu-io restores the entry and flushes) passes at every barrier
    and fails with `--every 1` exactly at the record that broke it;
  * check runs on a remote's retained segments (aim-remote --retain), where
    the marks arrive like any record;
  * check keeps a long series' segments out of its memory (under 64 MiB
    over 256 MiB of segments);
  * bad input -- a point that names no record, a base of another group or
    other images or another LSN, a gap in the segments, a checker that
    writes -- is a clear error and writes nothing to the base."""
import json
import os
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import xxhash

from aimtest import AIMCTL, MKSEG, assert_trees_equal, copy_tree, run, wait_for
from crash_helpers import (CHECK_EXT4, CheckRun, Ext4Loop, hash_tree, make_ext4, mark,
                           ns_iso, records, segments)
from remote_helpers import PKI, Remote, free_port, snapshot
from servers import get_status


def status_opt():
    addr = f"127.0.0.1:{free_port()}"
    return addr, f"status={addr}"


def qemu_io(*args, check=True):
    return run(["qemu-io", *args], check=check)


def xxh3_file(path):
    """The hash `aimctl check` prints for an image: XXH3-64 of the file."""
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"{h.intdigest():016x}"


# ---- marks -----------------------------------------------------------------

def test_marks_are_journaled_named_once_and_listed_everywhere(aimfs, workdir):
    addr, opt = status_opt()
    m = aimfs(options=[opt, "segment_age=60s"])
    with open(os.path.join(m.mountpoint, "a.img"), "wb") as f:
        f.write(os.urandom(100000))
    lsn1 = mark(addr, "before upgrade")
    st = get_status(addr)
    assert st["head_lsn"] == lsn1
    assert st["marks"]["count"] == 1 and st["marks"]["last"]["name"] == "before upgrade"
    assert st["marks"]["last"]["lsn"] == lsn1
    # the mark's segment is sealed at once, so it ships without waiting
    assert st["durable_segment"] >= 1 and st["open_segment_bytes"] == 0

    # a name in use, and names a MARK cannot carry: refused, nothing journaled
    p = mark(addr, "before upgrade", check=False)
    assert p.returncode == 1 and "exists already (LSN %d" % lsn1 in p.stderr, p.stderr
    p = mark(addr, "tab\there", check=False)
    assert p.returncode == 2 and "control characters" in p.stderr, p.stderr
    p = mark(addr, "x" * 256, check=False)
    assert p.returncode == 2, p.stderr
    # aimfs checks too, for clients other than aimctl
    for path in ("/mark/tab%09x", "/mark/"):
        req = urllib.request.Request(f"http://{addr}{path}", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400 and b"control characters" in e.value.read()
    assert get_status(addr)["head_lsn"] == lsn1
    # every listing of marks is JSON: a name must be UTF-8 (one that was not
    # was once journaled while aimctl said it failed, and dropped from /marks)
    p = subprocess.run([AIMCTL, "mark", "--status", addr, b"bad\xff\xfe"], capture_output=True)
    assert p.returncode == 2 and b"UTF-8" in p.stderr, p.stderr
    req = urllib.request.Request(f"http://{addr}/mark/bad%FF%FE", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400 and b"UTF-8" in e.value.read()
    assert get_status(addr)["head_lsn"] == lsn1

    with open(os.path.join(m.mountpoint, "a.img"), "r+b") as f:
        f.write(b"more")
    lsn2 = mark(addr, "after/ü")
    assert lsn2 > lsn1
    out = run([AIMCTL, "marks", "--status", addr]).stdout
    assert "before upgrade" in out and "after/ü" in out
    out = run([AIMCTL, "status", addr]).stdout
    assert f'marks        2, the last "after/ü" at LSN {lsn2}' in out, out
    assert m.unmount() == 0
    m.check_quiet()

    # the catalog keeps them, the segments carry them, in LSN order
    want = [("before upgrade", lsn1), ("after/ü", lsn2)]
    for src in ([m.journal], segments(m.journal)):
        got = json.loads(run([AIMCTL, "marks", "--json", *src]).stdout)["marks"]
        assert [(g["name"], g["lsn"]) for g in got] == want, (src, got)

    # names stay taken across mounts
    m2 = aimfs(options=[opt])
    p = mark(addr, "after/ü", check=False)
    assert p.returncode == 1 and "exists already" in p.stderr
    assert get_status(addr)["marks"]["count"] == 2
    assert m2.unmount() == 0


# ---- replay --until ----------------------------------------------------------

def phase(mnt, i):
    """One step of a workload that uses every kind of record."""
    rnd = os.urandom
    with open(os.path.join(mnt, "raw.img"), "r+b" if i else "wb") as f:
        for k in range(20):
            f.seek((k * 7919 * (i + 1)) % (4 << 20))
            f.write(rnd(4096 + k * 100))
            if k % 7 == 0:
                os.fsync(f.fileno())
    qemu_io("-f", "qcow2", "-c", f"write -P {i + 1} {i}M 192k", "-c", "flush",
            os.path.join(mnt, "vm.qcow2"))
    if i == 1:
        os.rename(os.path.join(mnt, "raw.img"), os.path.join(mnt, "disks", "raw.img"))
        os.rename(os.path.join(mnt, "disks", "raw.img"), os.path.join(mnt, "raw.img"))
        os.truncate(os.path.join(mnt, "raw.img"), 3 << 20)
    if i == 2:
        with open(os.path.join(mnt, "disks", "tmp.img"), "wb") as f:
            f.write(rnd(5000))
    if i == 3:
        os.unlink(os.path.join(mnt, "disks", "tmp.img"))


def test_replay_until_each_mark_reproduces_the_source(aimfs, workdir):
    backing = os.path.join(workdir, "backing")
    os.makedirs(os.path.join(backing, "disks"))
    run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(backing, "vm.qcow2"), "16M"])
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    addr, opt = status_opt()
    m = aimfs(options=[opt, "segment_size=256K"])
    at_mark = {}
    for i in range(4):
        phase(m.mountpoint, i)
        # the workload is paused: the backing files are the source's state
        name = f"phase {i}"
        at_mark[name] = (mark(addr, name), hash_tree(backing))
    assert m.unmount() == 0
    m.check_quiet()

    def replay_to(until, name):
        target = os.path.join(workdir, name)
        copy_tree(start, target)
        p = run([AIMCTL, "replay", "--target-dir", target, "--until", until, m.journal])
        return target, p.stdout

    for name, (lsn, want) in at_mark.items():
        target, out = replay_to(f"MARK:{name}", "t-" + name.replace(" ", "-"))
        assert f'stopped after LSN {lsn} (MARK "{name}"' in out, out
        assert hash_tree(target) == want, f"replay --until MARK:{name} differs from the source"
        # the same point by its LSN
        target2, _ = replay_to(str(lsn), "l-" + name.replace(" ", "-"))
        assert hash_tree(target2) == want

    # a TIME between two barriers stops at the earlier one, and says so
    recs = records(segments(m.journal))
    flushes = [r for r in recs if r["type"] == "FLUSH"]
    pair = next((a, b) for a, b in zip(flushes, flushes[1:]) if b["time_ns"] - a["time_ns"] > 2
                and any(a["lsn"] < r["lsn"] < b["lsn"] for r in recs))
    between = (pair[0]["time_ns"] + pair[1]["time_ns"]) // 2
    t_target, out = replay_to(ns_iso(between), "t-time")
    assert f"stopped after LSN {pair[0]['lsn']} (FLUSH" in out, out
    assert "the last barrier at or before" in out, out
    l_target, _ = replay_to(str(pair[0]["lsn"]), "t-time-lsn")
    assert hash_tree(t_target) == hash_tree(l_target)
    # the same time as epoch seconds
    sec, frac = divmod(between, 1_000_000_000)
    e_target, out = replay_to(f"@{sec}.{frac:09d}", "t-epoch")
    assert f"stopped after LSN {pair[0]['lsn']} (FLUSH" in out, out

    # an --until that names no record: a clear error, the target untouched
    target = os.path.join(workdir, "bad")
    copy_tree(start, target)
    before = snapshot(target)
    last = recs[-1]["lsn"]
    for until, words in (("MARK:no such mark", "names no record"),
                         (str(last + 1), f"LSN {last + 1} names no record"),
                         ("2001-01-01T00:00:00Z", "no barrier (FLUSH) was journaled"),
                         ("yesterday", "is not a time")):
        p = run([AIMCTL, "replay", "--target-dir", target, "--until", until, m.journal],
                check=False)
        assert p.returncode != 0 and words in p.stderr, (until, p.stderr)
        assert snapshot(target) == before, f"--until {until} wrote to the target"


# ---- check: ext4 through a loop device, and a base changed behind the back --

def test_check_passes_every_barrier_of_ext4_and_finds_a_base_changed_behind_the_back(
        aimfs, workdir):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    scratch_mnt = os.path.join(workdir, "scratch-mnt")
    make_ext4(os.path.join(backing, "fs.raw"), scratch_mnt, dirs=("d1", "d2"))
    clean = os.path.join(workdir, "base-clean")
    copy_tree(backing, clean)
    changed = os.path.join(workdir, "base-changed")
    copy_tree(backing, changed)
    # behind the journal's back: a file in d1 of the base's file system,
    # consistent on its own (the source never had it)
    with Ext4Loop(os.path.join(changed, "fs.raw"), scratch_mnt) as fs:
        fs.write_file("d1/intruder", b"not in the journal\n" * 100)

    addr, opt = status_opt()
    m = aimfs(options=[opt, "segment_size=256K"])
    fs = Ext4Loop(os.path.join(m.mountpoint, "fs.raw"), os.path.join(workdir, "fs"))
    try:
        fs.open()
        os.sync()
        # d2/new takes the inode the intruder holds in the changed base;
        # nothing before it touches the inode table or d1
        before = mark(addr, "before d2/new")
        fs.write_file("d2/new", b"new\n" * 1000)
        os.sync()
        after = mark(addr, "after d2/new")
        # more of a file system's life: files come and go, with fsync
        for i in range(12):
            fs.write_file(f"d{1 + i % 2}/f{i}", os.urandom(1000 + 3000 * i))
            if i % 4 == 3:
                os.unlink(os.path.join(fs.mnt, f"d{1 + i % 2}", f"f{i - 2}"))
    finally:
        fs.close()
    assert m.unmount() == 0
    m.check_quiet()

    good = CheckRun(["--base", clean, "--fsck", f"{CHECK_EXT4} {{}}", m.journal])
    assert good.rc == 0, good
    assert len(good.points) >= 10 and not good.failed(), good
    assert {p["mark"] for p in good.points if p["mark"]} == {"before d2/new", "after d2/new"}
    assert all(i["checker"] == "fsck" for p in good.points for i in p["images"]), good

    bad = CheckRun(["--base", changed, "--fsck", f"{CHECK_EXT4} {{}}", m.journal])
    assert bad.rc == 1, bad
    first = bad.summary["first_failure"]
    assert before < first["lsn"] <= after, (before, after, bad)
    assert all(p["result"] == "ok" for p in bad.points if p["lsn"] < first["lsn"]), bad
    assert "ref count" in bad.failed()[0]["images"][0]["output"], bad
    # the human form names the same first point
    p = run([AIMCTL, "check", "--base", changed, "--fsck", f"{CHECK_EXT4} {{}}", m.journal],
            check=False)
    assert p.returncode == 1
    assert f"the first failure is at LSN {first['lsn']} " in p.stdout, p.stdout


# ---- check: qcow2 inconsistent between two flushes ---------------------------

def test_qcow2_inconsistent_between_flushes_fails_only_between_them(aimfs, workdir):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    img = os.path.join(backing, "vm.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", img, "16M"])
    qemu_io("-f", "qcow2", "-c", "write -P 7 0 128k", img)
    base = os.path.join(workdir, "base")
    copy_tree(backing, base)
    with open(img, "rb") as f:
        header = f.read(104)
        l1_offset = struct.unpack(">Q", header[40:48])[0]
        f.seek(l1_offset)
        good_entry = f.read(8)
    assert good_entry != bytes(8)
    orig = os.path.join(workdir, "l1-good.bin")
    bad = os.path.join(workdir, "l1-bad.bin")
    with open(orig, "wb") as f:
        f.write(good_entry)
    with open(bad, "wb") as f:
        f.write(struct.pack(">Q", (1 << 63) | 0x12345))  # an L2 table off any cluster

    m = aimfs()
    vm = os.path.join(m.mountpoint, "vm.qcow2")
    qemu_io("-f", "qcow2", "-c", "write -P 8 1M 64k", "-c", "flush", vm)
    # The raw writes go through a loop device on the image, held open here:
    # killing a writer then closes neither the image (aimfs journals a
    # close as a barrier) nor the device for the last time (which flushes).
    dev = run(["losetup", "-f", "--show", vm]).stdout.strip()
    hold = None
    try:
        hold = os.open(dev, os.O_RDONLY)
        # the L1 entry broken, then the writer killed before any flush ...
        p = qemu_io("-t", "none", "-f", "raw", "-c", f"write -s {bad} {l1_offset} 8",
                    "-c", "sigraise 9", dev, check=False)
        assert p.returncode == -9, p
        # ... and repaired by the next one, which flushes
        qemu_io("-t", "none", "-f", "raw", "-c", f"write -s {orig} {l1_offset} 8", "-c", "flush",
                dev)
    finally:
        if hold is not None:
            os.close(hold)
        run(["losetup", "-d", dev], check=False)
    qemu_io("-f", "qcow2", "-c", "write -P 9 2M 64k", "-c", "flush", vm)
    assert m.unmount() == 0
    m.check_quiet()

    recs = records(segments(m.journal))
    l1 = [r for r in recs if r["type"] == "WRITE" and r["offset"] <= l1_offset
          < r["offset"] + r["length"]]
    assert len(l1) == 2, l1
    broken, repaired = l1[0]["lsn"], l1[1]["lsn"]
    flushes = [r["lsn"] for r in recs if r["type"] == "FLUSH"]
    assert any(f < broken for f in flushes) and any(f > repaired for f in flushes)

    at_barriers = CheckRun(["--base", base, m.journal])
    assert at_barriers.rc == 0, at_barriers
    assert len(at_barriers.points) >= 3 and not at_barriers.failed(), at_barriers
    assert not any(broken <= p["lsn"] < repaired for p in at_barriers.points)

    every = CheckRun(["--base", base, "--every", "1", m.journal])
    assert every.rc == 1, every
    assert [p["lsn"] for p in every.failed()] == list(range(broken, repaired)), every
    assert every.summary["first_failure"]["lsn"] == broken
    out = every.failed()[0]["images"][0]
    assert out["checker"] == "qemu-img" and out["exit"] == 2, out
    assert next(p for p in every.points if p["lsn"] == repaired)["result"] == "ok"

    # after every 3rd record, and the last: the same verdicts at those LSNs
    lsns = [r["lsn"] for r in recs]
    third = CheckRun(["--base", base, "--every", "3", m.journal])
    want = sorted(set(lsns[2::3]) | {lsns[-1]})
    assert [p["lsn"] for p in third.points] == want, third
    verdict = {p["lsn"]: p["result"] for p in every.points}
    assert all(p["result"] == verdict[p["lsn"]] for p in third.points), third
    assert third.rc == (1 if any(broken <= x < repaired for x in want) else 0), third


# ---- check on a remote's retained segments ----------------------------------

def test_check_runs_on_a_remotes_retained_segments(aimfs, workdir):
    pki = PKI(os.path.join(workdir, "pki"))
    target = os.path.join(workdir, "target")
    inbox = os.path.join(workdir, "inbox")
    empty = os.path.join(workdir, "empty")
    for d in (target, inbox, empty):
        os.makedirs(d)
    r = Remote(workdir, inbox=inbox, target=target, listen=True, pki=pki,
               args=["--token-file", pki.token_file, "--client-ca", pki.ca, "--retain"])
    try:
        r.start()
        addr = f"127.0.0.1:{free_port()}"
        conf = os.path.join(workdir, "aimfs.conf")
        with open(conf, "w") as f:
            f.write(f"[aimfs]\nstatus = {addr}\nsegment_size = 256K\nsegment_age = 200ms\n\n"
                    f"[destination dr1]\nurl = {r.base_url}/aim\nca_file = {pki.ca}\n"
                    f"cert_file = {pki.client}\nkey_file = {pki.client_key}\n"
                    f"token_file = {pki.token_file}\ncompress = zstd\n")
        m = aimfs(options=[f"config={conf}"])
        mnt = m.mountpoint
        run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(mnt, "vm.qcow2"), "8M"])
        for i in range(3):
            qemu_io("-f", "qcow2", "-c", f"write -P {i} {i}M 256k", "-c", "flush",
                    os.path.join(mnt, "vm.qcow2"))
            with open(os.path.join(mnt, "raw.img"), "ab") as f:
                f.write(os.urandom(50000))
                os.fsync(f.fileno())
            mark(addr, f"m{i}")

        def caught_up():
            st = get_status(addr)
            g = r.group(st["group"])
            return st["in_sync"] and g and g["applied_lsn"] == st["head_lsn"] and \
                g["state"] == "idle"
        wait_for(caught_up, 60, what="the remote to apply everything")
        group = get_status(addr)["group"]
        assert m.unmount() == 0
        m.check_quiet()
        applied = os.path.join(inbox, group, "applied")
        names = [x["name"] for x in json.loads(
            run([AIMCTL, "marks", "--json", applied]).stdout)["marks"]]
        assert names == ["m0", "m1", "m2"]
        at_marks = CheckRun(["--base", empty, "--marks", applied])
        assert at_marks.rc == 0, at_marks
        assert [p["mark"] for p in at_marks.points] == ["m0", "m1", "m2"], at_marks
        everywhere = CheckRun(["--base", empty, applied])
        assert everywhere.rc == 0 and len(everywhere.points) > 3, everywhere
        # the last point's hashes are the replica's
        last = everywhere.points[-1]
        assert {i["name"]: i["hash"] for i in last["images"]} == \
            {name: xxh3_file(os.path.join(target, name)) for name in ("vm.qcow2", "raw.img")}
        assert not os.listdir(workdir + "/empty")
    finally:
        r.close()


# ---- bad input ----------------------------------------------------------------

def small_journal(aimfs, workdir, name, seed_image=True, marks=()):
    """backing/<name> with one image at the start, a few segments."""
    backing = os.path.join(workdir, name)
    os.makedirs(backing)
    if seed_image:
        with open(os.path.join(backing, "seed.raw"), "wb") as f:
            f.write(os.urandom(70000))
    start = os.path.join(workdir, name + "-start")
    copy_tree(backing, start)
    addr, opt = status_opt()
    m = aimfs(backing=backing, mountpoint=os.path.join(workdir, name + "-mnt"),
              options=[opt, "segment_size=64K"])
    for i in range(6):
        with open(os.path.join(m.mountpoint, "seed.raw"), "r+b") as f:
            f.seek(i * 20000)
            f.write(os.urandom(30000))
            os.fsync(f.fileno())
    for n in marks:
        mark(addr, n)
    assert m.unmount() == 0
    segs = segments(m.journal)
    assert len(segs) >= 3, segs
    return m.journal, start, segs


def test_bad_input_is_refused_and_writes_nothing(aimfs, workdir):
    journal, start, segs = small_journal(aimfs, workdir, "one", marks=("only",))
    other_journal, other_start, _ = small_journal(aimfs, workdir, "two")

    # a saved base of the other group, and one of this group at LSN k
    other_saved = os.path.join(workdir, "other-saved")
    ok = CheckRun(["--base", other_start, "--save", other_saved, other_journal])
    assert ok.rc == 0 and os.path.exists(os.path.join(other_saved, ".aim-base")), ok
    first_seg_last = records(segs[:1])[-1]["lsn"]
    saved = os.path.join(workdir, "saved")
    ok = CheckRun(["--base", start, "--until", str(first_seg_last), "--save", saved, journal])
    assert ok.rc == 0, ok
    # ... which is the right base for the rest, and only for the rest
    ok = CheckRun(["--base", saved, *segs[1:]])
    assert ok.rc == 0 and ok.points, ok
    # raw images without --fsck: hashed, not checked, and the summary says so
    assert ok.summary["images_checked"] == 0, ok.summary
    p = run([AIMCTL, "check", "--base", saved, *segs[1:]])
    assert "passed by hash only" in p.stdout and "raw images need --fsck" in p.stdout, p.stdout

    # a copy of the other group's backing directory, journal included
    other_copy = os.path.join(workdir, "other-copy")
    copy_tree(os.path.join(workdir, "two"), other_copy)
    assert os.path.isdir(os.path.join(other_copy, ".aimfs"))
    lacking = os.path.join(workdir, "lacking")
    os.makedirs(lacking)
    extra = os.path.join(workdir, "extra")
    copy_tree(start, extra)
    with open(os.path.join(extra, "stray.img"), "wb") as f:
        f.write(b"x")

    cases = [
        (["--base", other_saved, journal], "holds group"),
        (["--base", other_copy, journal], "is a copy of a backing directory of group"),
        (["--base", saved, journal], f"as of LSN {first_seg_last}, but these segments start at LSN 1"),
        (["--base", lacking, journal], "it lacks image seed.raw"),
        (["--base", extra, journal], "stray.img is not an image of the group"),
        (["--base", start, segs[0], *segs[2:]], "segments are missing in between"),
        (["--base", start, "--until", "MARK:nope", journal], "names no record"),
        (["--base", start, "--from", "99999", journal], "LSN 99999 names no record"),
        (["--base", start, "--every", "0", journal], "--every takes a number"),
        (["--base", start, "--marks", "--every", "2", journal], "exclude each other"),
    ]
    for args, words in cases:
        base = args[1]
        parent = os.path.dirname(base)
        before, listing = snapshot(base), sorted(os.listdir(parent))
        c = CheckRun(args)
        assert c.rc in (1, 2) and words in c.err, (words, c)
        assert not c.points, c
        assert snapshot(base) == before, f"{args}: the base changed"
        assert sorted(os.listdir(parent)) == listing, f"{args}: left something next to the base"

    # a checker that writes the image stops the check: the replay would lie
    before = snapshot(start)
    c = CheckRun(["--base", start, "--fsck", "sh -c 'echo x >> \"$AIM_IMAGE\"'", journal])
    assert c.rc == 1 and "changed the image" in c.err, c
    assert snapshot(start) == before
    assert not [f for f in os.listdir(workdir) if "aimctl-check" in f], os.listdir(workdir)

    # a pattern that selects no image checked nothing: not a pass
    c = CheckRun(["--base", start, "--image", "nomatch*", "--image", "seed*", journal])
    assert c.rc == 1 and c.points and "--image nomatch* matched no image" in c.err, c
    assert "seed*" not in c.err, c
    assert snapshot(start) == before

    # a --save that cannot be made fails the command (it once exited 0);
    # the end state is kept for the operator, the base is untouched
    c = CheckRun(["--base", start, "--save", os.path.join(workdir, "no", "such"), journal])
    assert c.rc == 1 and c.points and "the end state stays in" in c.err, c
    assert snapshot(start) == before
    kept = [f for f in os.listdir(workdir) if "aimctl-check" in f]
    assert len(kept) == 1 and os.path.exists(os.path.join(workdir, kept[0], ".aim-base")), kept
    shutil.rmtree(os.path.join(workdir, kept[0]))

    # replay refuses a gap before applying anything
    target = os.path.join(workdir, "target")
    copy_tree(start, target)
    before = snapshot(target)
    p = run([AIMCTL, "replay", "--target-dir", target, segs[0], *segs[2:]], check=False)
    assert p.returncode == 1 and "missing in between" in p.stderr
    assert "nothing was applied" in p.stderr and snapshot(target) == before
    # ... and an --after-lsn the segments cannot continue from
    last = records(segs)[-1]["lsn"]
    second = records(segs[1:2])[0]["lsn"]
    for after, words in ((str(last + 5), "past the last record"),
                         ("1", f"start at LSN {second}")):
        p = run([AIMCTL, "replay", "--target-dir", target, "--after-lsn", after, *segs[1:]],
                check=False)
        assert p.returncode == 1 and words in p.stderr, p.stderr
        assert "nothing was applied" in p.stderr and snapshot(target) == before
    # replay onto a saved base: only from where it stands (the whole
    # journal again once made it a mixture, and said "replayed")
    before = snapshot(saved)
    p = run([AIMCTL, "replay", "--target-dir", saved, journal], check=False)
    assert p.returncode == 1 and f"as of LSN {first_seg_last}" in p.stderr, p.stderr
    assert f"--after-lsn {first_seg_last}" in p.stderr, p.stderr
    assert snapshot(saved) == before
    p = run([AIMCTL, "replay", "--target-dir", saved, "--after-lsn", str(first_seg_last),
             journal], check=False)
    assert p.returncode == 0, p.stderr
    with open(os.path.join(saved, ".aim-base")) as f:
        assert f"lsn {last}\n" in f.read()             # the base moved on with it
    os.remove(os.path.join(saved, ".aim-base"))
    whole = os.path.join(workdir, "whole")
    copy_tree(start, whole)
    run([AIMCTL, "replay", "--target-dir", whole, journal])
    assert_trees_equal(whole, saved)


# ---- check: the scratch copy shares the base's blocks where it can ----------

@pytest.mark.skipif(not shutil.which("mkfs.xfs"), reason="mkfs.xfs is not installed")
def test_check_copies_the_base_by_reflink_where_it_can(aimfs, workdir):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(backing, "vm.qcow2"), "16M"])
    with open(os.path.join(backing, "raw.img"), "wb") as f:
        f.write(os.urandom(3 << 20))
    xfs_img, xfs = os.path.join(workdir, "xfs.img"), os.path.join(workdir, "xfs")
    run(["truncate", "-s", "320M", xfs_img])
    run(["mkfs.xfs", "-q", "-m", "reflink=1", xfs_img])
    os.makedirs(xfs)
    run(["mount", "-o", "loop", xfs_img, xfs])
    try:
        base = os.path.join(xfs, "base")
        copy_tree(backing, base)
        m = aimfs()
        qemu_io("-f", "qcow2", "-c", "write -P 3 0 1M", "-c", "flush",
                os.path.join(m.mountpoint, "vm.qcow2"))
        with open(os.path.join(m.mountpoint, "raw.img"), "r+b") as f:
            f.write(os.urandom(1 << 20))
            os.fsync(f.fileno())
        assert m.unmount() == 0
        before = snapshot(base)
        c = CheckRun(["--base", base, m.journal])
        assert c.rc == 0 and len(c.points) >= 2, c
        assert "(reflink)" in c.err, c.err
        assert snapshot(base) == before
        assert sorted(os.listdir(xfs)) == ["base"], os.listdir(xfs)
    finally:
        run(["umount", xfs], check=False)


def test_check_copies_the_base_sparsely_where_reflinks_cannot(aimfs, workdir):
    """On a file system without reflinks (tmpfs) the scratch copy holds the
    base's data extents only: a 1 GiB image with 1 MiB of data fits a 32 MiB
    scratch, and the replayed image hashes as the source's."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    raw = os.path.join(backing, "raw.img")
    with open(raw, "wb") as f:
        f.truncate(1 << 30)
        f.seek(512 << 20)
        f.write(os.urandom(1 << 20))
    base = os.path.join(workdir, "base")
    copy_tree(backing, base)
    m = aimfs()
    with open(os.path.join(m.mountpoint, "raw.img"), "r+b") as f:
        f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    assert m.unmount() == 0
    scratch = os.path.join(workdir, "scratch")
    os.makedirs(scratch)
    run(["mount", "-t", "tmpfs", "-o", "size=32M", "tmpfs", scratch])
    try:
        before = snapshot(base)
        c = CheckRun(["--base", base, "--scratch", scratch, m.journal])
        assert c.rc == 0 and c.points, c
        assert "(sparse copy)" in c.err, c.err
        assert c.points[-1]["images"][0]["hash"] == xxh3_file(raw), c
        assert snapshot(base) == before
        assert not os.listdir(scratch), os.listdir(scratch)
    finally:
        run(["umount", scratch], check=False)


MEASURE_RSS = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(p.returncode)
"""


def test_check_holds_little_memory_over_many_segments(aimfs, workdir):
    """aimctl check opens (and validates) the whole series before it
    replays a record: 256 MiB of segments must not stay mapped in its
    memory (it held them all once: ~1.5 GB resident over 1.6 GB of a
    soak's segments), and the check still reaches the same end."""
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    raw = os.path.join(backing, "raw.img")
    with open(raw, "wb") as f:
        f.truncate(32 << 20)
    base = os.path.join(workdir, "base")
    copy_tree(backing, base)
    m = aimfs(options=["segment_size=1M"])
    chunk = os.urandom(1 << 20)
    with open(os.path.join(m.mountpoint, "raw.img"), "r+b") as f:
        for i in range(256):
            f.seek((i * 7 % 32) << 20)
            f.write(chunk)
            if i % 64 == 63:
                os.fsync(f.fileno())
    assert m.unmount() == 0
    segs = segments(m.journal)
    assert sum(os.path.getsize(s) for s in segs) > 256 << 20 and len(segs) > 200
    # Through a small parent: a child's ru_maxrss starts from the RSS of the
    # process it was forked from, and pytest's can be large.
    # Under AddressSanitizer freed memory waits in a quarantine (256 MiB by
    # default) that counts as resident: the bound is on aimctl's own.
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env:
        env["ASAN_OPTIONS"] += ":quarantine_size_mb=0"
    p = subprocess.run([sys.executable, "-c", MEASURE_RSS, AIMCTL, "check", "--json",
                        "--base", base, m.journal], capture_output=True, text=True, timeout=600,
                       env=env)
    assert p.returncode == 0, p.stderr
    *lines, max_rss = p.stdout.splitlines()
    points = [json.loads(line) for line in lines if '"summary"' not in line]
    assert len(points) >= 4 and points[-1]["images"][0]["hash"] == xxh3_file(raw), points[-1]
    assert int(max_rss) < 64 << 10, f"aimctl check held {max_rss} KiB"


def test_names_that_are_not_utf8_stay_in_the_json(aimfs, workdir):
    """File names are bytes, and so are the labels of MARKs in segments
    written before names had to be UTF-8; JSON listings show them with
    U+FFFD for each bad byte instead of dropping them (check --json once
    left such an image out of every point, and marks --json failed
    without a word)."""
    base = os.path.join(workdir, "base")
    os.makedirs(base)
    m = aimfs()
    fd = os.open(os.path.join(os.fsencode(m.mountpoint), b"vm\xff.img"),
                 os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, os.urandom(8192))
    os.fsync(fd)
    os.close(fd)
    assert m.unmount() == 0
    c = CheckRun(["--base", base, m.journal])
    assert c.rc == 0 and c.points, c
    assert [i["name"] for i in c.points[-1]["images"]] == ["vm\ufffd.img"], c.points[-1]

    seg = os.path.join(workdir, "old-mark.aimj")
    spec = (b"group 0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0\nnumber 1\nfirst_lsn 1\n"
            b"image 1 vm.img\nwrite 1 0 @4096:1\nflush\nmark old\xff\n")
    p = subprocess.run([MKSEG, seg], input=spec, capture_output=True)
    assert p.returncode == 0, p.stderr
    p = run([AIMCTL, "marks", "--json", seg], check=False)
    assert p.returncode == 0, p.stderr
    assert [mk["name"] for mk in json.loads(p.stdout)["marks"]] == ["old\ufffd"], p.stdout


def test_a_base_saved_inside_a_resync_is_checked_as_such(workdir):
    """check --save recorded only the group and the LSN: a base saved
    between a SYNC_BEGIN and its SYNC_END was taken by the next check for
    a consistent copy, which checked the barriers before the SYNC_END on a
    half-resynchronised image and failed.  The stamp now says the base is
    inside a resynchronisation."""
    group = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
    one, two = os.path.join(workdir, "1.aimj"), os.path.join(workdir, "2.aimj")
    for path, spec in (
            (one, f"group {group}\nnumber 1\nfirst_lsn 1\ncreate 1 420 vm.img\n"
                  "write 1 0 @4096:1\nflush\nsync-begin 3\nresync 3 write 1 0 424144\n"),
            (two, f"group {group}\nnumber 2\nfirst_lsn 6\nimage 1 vm.img\nflush\n"
                  "resync 3 write 1 0 @4096:2\nsync-end 3\nwrite 1 4096 @4096:3\nflush\n")):
        p = subprocess.run([MKSEG, path], input=spec.encode(), capture_output=True)
        assert p.returncode == 0, p.stderr
    base = os.path.join(workdir, "empty")
    os.makedirs(base)
    saved = os.path.join(workdir, "saved")
    # the checker fails an image that holds the resync's half-way bytes
    fsck = "sh -c '! grep -q BAD \"$AIM_IMAGE\"'"
    c = CheckRun(["--base", base, "--fsck", fsck, "--save", saved, one])
    assert c.rc == 0 and [p["lsn"] for p in c.points] == [3], c
    with open(os.path.join(saved, ".aim-base")) as f:
        assert "resync_from 4\n" in f.read()
    c = CheckRun(["--base", saved, "--fsck", fsck, two])
    assert c.rc == 0 and c.summary["images_checked"] == 1, c
    assert [p["lsn"] for p in c.points] == [10], c       # 6 is inside the resync
