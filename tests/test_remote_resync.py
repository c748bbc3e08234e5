"""aim-remote and resynchronisation (docs/RESYNC.md): a group is reported
inconsistent from a SYNC_BEGIN to the next SYNC_END, in status, metrics
and its state, across kill -9 at any moment; HASH records compare the
targets and the differing ranges are served, with the uploads'
authentication, at GET <prefix>/<group>/mismatches.

Segments are forged with tests/mkseg (sync-begin, sync-end, resync ...,
hash-of).  Reproduce a failing kill -9 case with AIM_SEED=<seed>."""
import os
import random
import sqlite3
import subprocess
import time

import pytest

from aimtest import AIM_REMOTE, AIMCTL
from remote_helpers import PKI, Remote, inbox_deliver, mkseg, snapshot

G = "5e5e5e5e-0000-4000-8000-000000000001"
B = 65536


@pytest.fixture(autouse=True)
def _need_remote():
    if not os.path.exists(AIM_REMOTE):
        pytest.fail(f"{AIM_REMOTE} is not built (set AIM_BUILD)")


@pytest.fixture
def remotes(workdir):
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


def seg(workdir, number, first_lsn, body, images="image 1 vm1.raw\n"):
    return mkseg(os.path.join(workdir, f"seg{number}.aimj"),
                 f"group {G}\nnumber {number}\nfirst_lsn {first_lsn}\n{images}{body}")


def deliver(inbox, path, number):
    inbox_deliver(inbox, G, path, name=f"{number:020d}.aimj")


def state_sync(state_dir):
    db = sqlite3.connect(f"file:{os.path.join(state_dir, 'remote.db')}?mode=ro", uri=True,
                         timeout=10)
    try:
        return db.execute('SELECT applied_lsn, consistent, sync_dest, sync_begin_lsn, '
                          'sync_end_lsn FROM groups WHERE "group" = ?', (G,)).fetchone()
    finally:
        db.close()


def consistent_metric(r):
    for line in r.metrics().splitlines():
        if line.startswith(f'aim_remote_group_consistent{{group="{G}"}} '):
            return int(line.split()[-1])
    return None


def test_sync_begin_and_end_in_status_metrics_state_and_across_kill9(workdir, remotes):
    target = os.path.join(workdir, "target")
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(target)
    os.makedirs(inbox)
    state_dir = inbox + ".state"
    t2 = 1700000000123000000
    s1 = seg(workdir, 1, 1, "time 1700000000000000000\nwrite 1 0 @8192:1\nflush\n")   # 1..2
    s2 = seg(workdir, 2, 3, f"time {t2}\nwrite 1 0 @4096:2\nsync-begin 4\n"            # 3..7
                            "resync 4 write 1 4096 @4096:3\nresync 4 zero 1 8192 4096\n"
                            "flush\n")
    s3 = seg(workdir, 3, 8, "resync 4 write 1 0 @100:5\nresync 4 truncate 1 12288\n"   # 8..11
                            "sync-end 4\nwrite 1 12288 @10:6\n")
    r = remotes(inbox=inbox, target=target).start()
    deliver(inbox, s1, 1)
    g = r.wait_applied(G, 2)
    assert g["consistent"] is True and g["sync_since"] is None
    assert g["sync_since_lsn"] is None and g["sync_destination"] is None
    assert consistent_metric(r) == 1

    deliver(inbox, s2, 2)
    g = r.wait_applied(G, 7)
    assert g["consistent"] is False, g
    assert g["sync_since_lsn"] == 4 and g["sync_destination"] == 4
    assert g["sync_since"] == "2023-11-14T22:13:20.123Z", g["sync_since"]
    assert consistent_metric(r) == 0
    assert state_sync(state_dir) == (7, 0, 4, 4, 0)
    assert "resynchronisation of destination 4 begins at LSN 4" in r.output()

    # kill -9 in the middle of the resync: still inconsistent after restart
    r.kill9()
    r.start()
    g = r.wait_group(G, lambda g: g["state"] == "idle", what="the group to load")
    assert g["consistent"] is False and g["sync_since_lsn"] == 4 and g["applied_lsn"] == 7
    assert consistent_metric(r) == 0
    assert "in progress since LSN 4" in r.output()

    deliver(inbox, s3, 3)
    g = r.wait_applied(G, 11)
    assert g["consistent"] is True and g["sync_since"] is None, g
    assert consistent_metric(r) == 1
    assert state_sync(state_dir) == (11, 1, 4, 4, 10)
    want = bytearray(b"\x02" * 4096 + b"\x03" * 4096 + bytes(4096))
    want[0:100] = b"\x05" * 100
    want += b"\x06" * 10
    with open(os.path.join(target, "vm1.raw"), "rb") as f:
        assert f.read() == bytes(want)
    assert r.stop() == 0
    r.check_quiet()


def test_consistency_is_recorded_with_the_progress_across_kill9(workdir, remotes):
    """Killed at random moments while a segment with many barriers is
    applied, the state row always says consistent exactly when applied_lsn
    lies outside [SYNC_BEGIN, SYNC_END)."""
    seed = int(os.environ.get("AIM_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    target = os.path.join(workdir, "target")
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(target)
    os.makedirs(inbox)
    lines = []
    for i in range(600):
        if i == 200:
            lines.append("sync-begin 1")
        elif i == 400:
            lines.append("sync-end 1")
        else:
            tag = "resync 1 " if 200 < i < 400 else ""
            lines.append(f"{tag}write 1 {(i % 64) * B} @{B}:{i % 250 + 1}")
            if i % 2 == 0:
                lines.append("flush")
    body = "\n".join(lines) + "\n"
    path = seg(workdir, 1, 1, body)
    begin = 1 + next(i for i, line in enumerate(lines) if line.startswith("sync-begin"))
    end = 1 + next(i for i, line in enumerate(lines) if line.startswith("sync-end"))
    last = len(lines)
    deliver(inbox, path, 1)
    r = remotes(inbox=inbox, target=target)
    state_dir = inbox + ".state"
    seen = [(0, 1)]
    for _ in range(8):
        done = seen[-1][0]
        if done >= last:
            break
        r.start()
        # kill once the applied LSN passed a random point, plus a moment
        mark = done + rng.randint(1, max(1, (last - done) // 3))
        r.wait_group(G, lambda g: g["applied_lsn"] >= mark or g["state"] == "idle",
                     timeout=60, what=f"LSN {mark}", interval=0.002)
        time.sleep(rng.uniform(0, 0.005))
        r.kill9()
        row = state_sync(state_dir)
        if row is None:
            continue
        applied, consistent = row[0], row[1]
        seen.append((applied, consistent))
        assert consistent == (0 if begin <= applied < end else 1), (
            f"applied_lsn {applied}, consistent {consistent}, SYNC_BEGIN at {begin}, "
            f"SYNC_END at {end} (AIM_SEED={seed}, {seen})")
    r.start()
    g = r.wait_applied(G, last, timeout=120)
    assert g["consistent"] is True
    want = {}
    for i in range(600):
        if i not in (200, 400):
            want[i % 64] = bytes([i % 250 + 1]) * B
    with open(os.path.join(target, "vm1.raw"), "rb") as f:
        assert f.read() == b"".join(want[k] for k in range(64)), f"AIM_SEED={seed}"
    assert r.stop() == 0
    r.check_quiet()
    print(f"AIM_SEED={seed}: (applied_lsn, consistent) after each kill: {seen}")


def test_a_resync_after_a_gap_removes_what_the_skipped_segments_removed(workdir, remotes):
    """Segments 3 and 4 never come (the source skipped them for this
    destination): they unlinked a.img and renamed c.img to e.img.  Segment 5
    starts the resync; its header table lists the live images, so the
    replica drops a.img and c.img, keeps b.img, gets e.img, and leaves a
    file the group never made alone.  Across a restart too."""
    target = os.path.join(workdir, "target")
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(os.path.join(target, "pool"))
    os.makedirs(inbox)
    write_bytes(os.path.join(target, "operator.img"), b"mine")
    s1 = seg(workdir, 1, 1, "create 1 0644 a.img\nwrite 1 0 @4096:1\n"
                            "create 2 0644 b.img\nwrite 2 0 @4096:2\n"
                            "create 3 0644 pool/c.img\nwrite 3 0 @4096:3\nflush\n", images="")
    s2 = seg(workdir, 2, 8, "write 2 4096 @4096:4\nflush\n",
             images="image 1 a.img\nimage 2 b.img\nimage 3 pool/c.img\n")
    s5 = seg(workdir, 5, 30, "sync-begin 1\nresync 1 write 3 0 @4096:3\n"
                             "resync 1 write 2 0 @8192:5\nsync-end 1\nflush\n",
             images="image 2 b.img\nimage 3 pool/e.img\n")
    r = remotes(inbox=inbox, target=target).start()
    deliver(inbox, s1, 1)
    deliver(inbox, s2, 2)
    r.wait_applied(G, 9)
    assert sorted(os.listdir(target)) == ["a.img", "b.img", "operator.img", "pool"]
    # a restart between the two: the live names come from the state
    assert r.stop() == 0
    r.start()
    deliver(inbox, s5, 5)
    g = r.wait_applied(G, 34)
    assert g["consistent"] is True, g
    assert sorted(os.listdir(target)) == ["b.img", "operator.img", "pool"]
    assert os.listdir(os.path.join(target, "pool")) == ["e.img"]
    with open(os.path.join(target, "b.img"), "rb") as f:
        assert f.read() == b"\x05" * 8192
    with open(os.path.join(target, "pool", "e.img"), "rb") as f:
        assert f.read() == b"\x03" * 4096
    with open(os.path.join(target, "operator.img"), "rb") as f:
        assert f.read() == b"mine"
    out = r.output()
    assert "removed a.img: the source removed or renamed it" in out
    assert "removed pool/c.img" in out
    assert r.stop() == 0
    r.check_quiet()


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_hash_mismatches_served_over_https_with_authentication(workdir, pki, remotes):
    rng = random.Random(7)
    target = os.path.join(workdir, "target")
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(target)
    os.makedirs(inbox)
    # vm1: blocks 1, 2 (adjacent) and 5 differ, and the source is 10000
    # bytes longer than the target; vm2: equal, short last block; vm3: absent
    t1 = rng.randbytes(8 * B)
    s1 = bytearray(t1) + rng.randbytes(10000)
    for blk in (1, 2, 5):
        s1[blk * B + 77] ^= 0xff
    t2 = rng.randbytes(3 * B + 5000)
    write_bytes(os.path.join(target, "vm1.raw"), t1)
    write_bytes(os.path.join(target, "vm2.raw"), t2)
    src1, src2 = os.path.join(workdir, "src1"), os.path.join(workdir, "src2")
    write_bytes(src1, bytes(s1))
    write_bytes(src2, t2)
    images = "image 1 vm1.raw\nimage 2 vm2.raw\nimage 3 vm3.raw\n"
    p1 = seg(workdir, 1, 1,
             "sync-begin 2\n"                                               # 1
             f"hash-of 1 0 {len(s1)} {B} {src1} dest=2\n"                   # 2
             f"hash-of 2 0 {len(t2)} {B} {src2} dest=2\n"                   # 3
             f"hash-of 3 0 {2 * B} {B} {src1}\n"                            # 4
             f"hash-of 1 {B} {B} 4096 {src1}\n"                             # 5
             "flush\n", images=images)                                      # 6
    p2 = seg(workdir, 2, 7, "sync-end 2\n", images=images)                  # 7
    want = [
        {"lsn": 2, "image": "vm1.raw", "image_id": 1, "offset": B, "length": 2 * B},
        {"lsn": 2, "image": "vm1.raw", "image_id": 1, "offset": 5 * B, "length": B},
        {"lsn": 2, "image": "vm1.raw", "image_id": 1, "offset": 8 * B, "length": 10000},
        {"lsn": 4, "image": "vm3.raw", "image_id": 3, "offset": 0, "length": 2 * B},
        {"lsn": 5, "image": "vm1.raw", "image_id": 1, "offset": B, "length": 4096},
    ]
    r = remotes(inbox=inbox, target=target, listen=True, pki=pki,
                args=["--token-file", pki.token_file, "--client-ca", pki.ca]).start()
    before = snapshot(target)
    code, text, err = r.put(G, p1, name=f"{1:020d}.aimj")
    assert code == 201, (code, text, err)
    r.wait_applied(G, 6)
    assert snapshot(target) == before, "a HASH record changed the targets"

    code, ans = r.mismatches(G)
    assert code == 200, ans
    # the first question (after=0) also learns what the remote holds; every
    # answer says the group's state (a source learns "applied" from it)
    assert ans == {"group": G, "applied_lsn": 6, "consistent": False, "pruned_lsn": 0,
                   "more": False, "ranges": want, "state": "idle",
                   "targets": {"vm1.raw": len(t1), "vm2.raw": len(t2)}}, ans
    assert "targets" not in r.mismatches(G, after=1)[1]
    assert r.mismatches(G, after=2)[1]["ranges"] == want[3:]
    assert r.mismatches(G, after=4)[1]["ranges"] == want[4:]
    assert r.mismatches(G, after=5)[1]["ranges"] == []
    assert r.mismatches(G, after=99)[1]["ranges"] == []
    assert r.mismatches(G, prefix="")[1]["ranges"] == want               # any prefix
    assert r.mismatches(G, prefix="/a/b.c")[1]["ranges"] == want
    code, text, _ = r.curl(f"/aim/{G}/mismatches", extra=["-I"])
    assert code == 200 and "application/json" in text, text

    # the same authentication as uploads
    assert r.mismatches(G, token=None)[0] == 401
    assert r.mismatches(G, token="wrong")[0] == 403
    # (a client certificate is required by the TLS handshake: no HTTP answer)
    assert r.mismatches(G, cert=None)[0] == 0
    assert r.mismatches(G, cert=(pki.rogue, pki.rogue_key))[0] == 0
    # strict paths and arguments
    for q in ("after=abc", "after=-1", "after=1e3", "after=%31", "after=", "after",
              "foo=1", "after=1&after=2", "after=99999999999999999999"):
        code, text = r.mismatches(G, query=q)
        assert code == 400, (q, code, text)
    for path, extra in ((f"/aim/{G.upper()}/mismatches", ()),
                        (f"/aim/{G}/mismatches/", ()),
                        (f"/aim/{G}/x/../mismatches", ("--path-as-is",)),
                        (f"/aim/{G}/mismatches.json", ()),
                        (f"/aim/{G}/%6dismatches", ()),
                        ("/mismatches", ())):
        code, text, _ = r.curl(path, extra=list(extra))
        assert code == 400, (path, code, text)
    code, text, _ = r.curl(f"/aim/{G}/mismatches", upload=p2)
    assert code == 405, (code, text)
    assert r.mismatches("5e5e5e5e-0000-4000-8000-00000000ffff")[0] == 404
    # a source asking before its group arrived is not refused anything
    rejected = r.status()["receiver"]["rejected"]
    assert "404" not in rejected and rejected.get("400", 0) >= 10, rejected
    assert snapshot(target) == before
    assert not os.path.exists(os.path.join(target, "vm3.raw"))

    st = r.group(G)
    assert st["mismatch_ranges"] == 5 and st["mismatch_bytes"] == 3 * B + 10000 + 2 * B + 4096
    assert f'aim_remote_mismatch_ranges_total{{group="{G}"}} 5' in r.metrics()

    # SYNC_END: consistent, and the ranges stay until pruned
    code, text, err = r.put(G, p2, name=f"{2:020d}.aimj")
    assert code == 201, (code, text, err)
    r.wait_applied(G, 7)
    code, ans = r.mismatches(G, after=0)
    assert ans["consistent"] is True and ans["applied_lsn"] == 7 and ans["ranges"] == want
    # they survive a restart (the state), and are the same
    assert r.stop() == 0
    r.start()
    r.wait_applied(G, 7)
    assert r.mismatches(G)[1]["ranges"] == want
    assert r.stop() == 0
    r.check_quiet()

    # aimctl replay -v tells the same, and warns of a resync left open
    copy = os.path.join(workdir, "copy")
    os.makedirs(copy)
    write_bytes(os.path.join(copy, "vm1.raw"), t1)
    write_bytes(os.path.join(copy, "vm2.raw"), t2)
    p = subprocess.run([AIMCTL, "replay", "-v", "--target-dir", copy, p1], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"LSN 2: image vm1.raw differs at {B}+{2 * B}" in p.stderr, p.stderr
    assert "LSN 4: image vm3.raw differs at 0+131072" in p.stderr
    assert "resync of destination 2 begins" in p.stderr
    assert "ends inside a resynchronisation (SYNC_BEGIN at LSN 1" in p.stderr
    assert not os.path.exists(os.path.join(copy, "vm3.raw"))


def test_mismatch_answers_are_capped_at_whole_lsns(workdir, pki, remotes):
    blocks, hashes = 1800, 12          # 900 single-block runs per HASH record
    target = os.path.join(workdir, "target")
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(target)
    os.makedirs(inbox)
    with open(os.path.join(target, "vm1.raw"), "wb") as f:
        f.truncate(blocks * 4096)
    src = bytearray(blocks * 4096)
    for i in range(1, blocks, 2):
        src[i * 4096] = 1
    write_bytes(os.path.join(workdir, "src"), bytes(src))
    body = "".join(f"hash-of 1 0 {blocks * 4096} 4096 {workdir}/src\n" for _ in range(hashes))
    p1 = seg(workdir, 1, 1, body)
    r = remotes(inbox=inbox, target=target, listen=True, pki=pki,
                args=["--token-file", pki.token_file]).start()
    deliver(inbox, p1, 1)
    r.wait_applied(G, hashes)
    code, ans = r.mismatches(G, cert=None)
    assert code == 200
    # 10000 at most, and whole LSNs: 11 of them
    assert ans["more"] is True and len(ans["ranges"]) == 11 * 900
    assert [x["lsn"] for x in ans["ranges"][::900]] == list(range(1, 12))
    assert ans["ranges"][:2] == [
        {"lsn": 1, "image": "vm1.raw", "image_id": 1, "offset": 4096, "length": 4096},
        {"lsn": 1, "image": "vm1.raw", "image_id": 1, "offset": 3 * 4096, "length": 4096}]
    code, ans = r.mismatches(G, after=11, cert=None)
    assert ans["more"] is False and len(ans["ranges"]) == 900
    assert {x["lsn"] for x in ans["ranges"]} == {12}
    assert r.stop() == 0
    r.check_quiet()


def test_old_mismatches_are_pruned_and_say_so(workdir, pki, remotes):
    """Rows more than 1000000 LSNs behind applied_lsn are dropped as
    segments complete, and pruned_lsn tells a reader they were."""
    target = os.path.join(workdir, "target")
    inbox = os.path.join(workdir, "inbox")
    os.makedirs(target)
    os.makedirs(inbox)
    p1 = seg(workdir, 1, 1, "hash 1 0 4096 4096 0123456789abcdef\n" + "mark m\n" * 1000005)
    r = remotes(inbox=inbox, target=target, listen=True, pki=pki,
                args=["--token-file", pki.token_file]).start()
    deliver(inbox, p1, 1)
    r.wait_applied(G, 1000006, timeout=300)
    code, ans = r.mismatches(G, cert=None)
    assert code == 200 and ans["pruned_lsn"] == 1 and ans["ranges"] == [], ans
    assert r.group(G)["mismatch_ranges"] == 1      # it was found, then dropped
    assert r.stop() == 0
    r.check_quiet()
