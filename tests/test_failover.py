"""Hold, release and promote (issue 13, items 1 and 2): aim-remote stops a
group at a point of its stream, never between two barriers; segments keep
arriving and wait; the targets do not change while held; release catches
up; promote applies what arrived up to the last barrier (or the point),
stops the group for good and refuses its segments with 409.  Every
refusal (an unknown group, a point already applied, release without a
hold, a second promote, an inconsistent copy) changes nothing.

The segments are forged with tests/mkseg (valid checksums, records and
times chosen by the test), so that every point's barrier is known; the
commands are aimctl's, as an operator types them.  The end-to-end walk
with aimfs (failover and failback, bytes on the wire) and the README's
procedure are in test_failback.py; the test failover of a real guest on
overlays of a held replica in test_guest.py."""
import json
import os
import sqlite3
import subprocess
import urllib.error
import urllib.request

import pytest

from aimtest import AIM_REMOTE, AIMCTL, BUILD_DIR, wait_for
from remote_helpers import PKI, mkseg

G = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
H = "11111111-2222-4333-8444-555555555555"
BLOCK = 4096
T0 = 1_700_000_000_000_000_000      # source times of the forged records (ns)


@pytest.fixture(autouse=True)
def _need_remote():
    if not os.path.exists(AIM_REMOTE):
        pytest.fail(f"{AIM_REMOTE} is not built (set AIM_BUILD)")


def seg_name(n):
    return f"{n:020d}.aimj"


class Stream:
    """A forged stream of one group: a list of records (one per LSN), cut
    into segments at chosen LSNs.  Record kinds: 'w' (a WRITE of block
    LSN % 8 filled with the LSN's byte), 'f' (FLUSH), ('m', NAME) (MARK).
    Record i has source time T0 + i seconds."""

    def __init__(self, workdir, group, records, cuts):
        self.workdir = workdir
        self.group = group
        self.records = records            # index 0 is LSN 1
        self.cuts = cuts                  # first LSN of each segment after the first
        self.bounds = []
        first = 1
        for last in [c - 1 for c in cuts] + [len(records)]:
            self.bounds.append((first, last))
            first = last + 1

    def spec(self, n):
        first, last = self.bounds[n - 1]
        lines = [f"group {self.group}", f"number {n}", f"first_lsn {first}", "image 1 vm.img"]
        for lsn in range(first, last + 1):
            rec = self.records[lsn - 1]
            lines.append(f"time {T0 + lsn * 1_000_000_000}")
            if rec == "w":
                lines.append(f"write 1 {(lsn % 8) * BLOCK} @{BLOCK}:{lsn % 256}")
            elif rec == "f":
                lines.append("flush")
            else:
                lines.append(f"mark {rec[1]}")
        return "\n".join(lines) + "\n"

    def deliver(self, inbox, n):
        path = os.path.join(self.workdir, f"{self.group[:8]}-{n}.aimj")
        mkseg(path, self.spec(n))
        gdir = os.path.join(inbox, self.group)
        os.makedirs(gdir, exist_ok=True)
        os.rename(path, os.path.join(gdir, seg_name(n)))

    def image_at(self, lsn):
        """The target's bytes once every record up to lsn is applied."""
        img = bytearray()
        for i in range(1, lsn + 1):
            if self.records[i - 1] == "w":
                off = (i % 8) * BLOCK
                if len(img) < off + BLOCK:
                    img.extend(b"\0" * (off + BLOCK - len(img)))
                img[off:off + BLOCK] = bytes([i % 256]) * BLOCK
        return bytes(img)

    def time_of(self, lsn):
        return T0 + lsn * 1_000_000_000


# LSN:      1   2   3   4   5   6          7   | 8   9   10  11  | 12  13  14  15
RECORDS = ["w", "f", "w", "w", "f", ("m", "m1"), "w", "w", "f", "w", "w", "w", "f", "w", "w"]
CUTS = [8, 12]                     # segments: 1..7, 8..11, 12..15


def image(r):
    p = os.path.join(r.target, "vm.img")
    if not os.path.exists(p):
        return b""
    with open(p, "rb") as f:
        return f.read()


def aimctl(r, *args, timeout=60):
    return subprocess.run([AIMCTL, *args, "--status", f"127.0.0.1:{r.status_port}"],
                          capture_output=True, text=True, timeout=timeout)


def post(r, path):
    """POST to the status listener; (HTTP status, JSON answer)."""
    req = urllib.request.Request(f"http://127.0.0.1:{r.status_port}{path}", data=b"",
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def held(r, group=G, lsn=None, timeout=30):
    def ok(g):
        h = g.get("hold")
        return g["state"] == "held" and h and h["reached"] and (lsn is None or h["lsn"] == lsn)
    return r.wait_group(group, ok, timeout, what=f"group held at LSN {lsn}")


def test_hold_at_an_lsn_stops_at_the_last_barrier_before_it_and_release_catches_up(
        workdir, remotes):
    s = Stream(workdir, G, RECORDS, CUTS)
    r = remotes().start()
    s.deliver(r.inbox, 1)
    r.wait_applied(G, 7)
    # LSN 10 is a WRITE in segment 2, which has not arrived: the group may
    # not go past a barrier it cannot prove is the last one before LSN 10
    p = aimctl(r, "hold", "--at", "10", "--timeout", "0")
    assert p.returncode == 0, p.stderr
    g = r.group(G)
    assert g["hold"]["point"] == "10" and not g["hold"]["reached"], g
    s.deliver(r.inbox, 2)
    s.deliver(r.inbox, 3)
    g = held(r, lsn=9)
    assert g["applied_lsn"] == 9 and g["hold"]["record"] == "FLUSH", g
    assert "LSN 10 is not a barrier" in g["hold"]["note"], g
    assert image(r) == s.image_at(9)
    # what waits, and the recovery point the held copy is
    rp = g["hold"]["recovery_point"]
    assert rp["lsn"] == 9 and rp["consistent"] is True, g
    # segment 3 may be noticed (inotify) a moment after the hold is reached
    g = r.wait_group(G, lambda g: g["backlog_segments"] == 2,
                     what="segments 2 and 3 to wait behind the hold")
    assert g["hold"]["backlog_segments"] == 2, g
    assert r.metrics().count(f'aim_remote_group_state{{group="{G}",state="held"}} 1') == 1
    # a point behind the held one is applied already
    p = aimctl(r, "hold", "--at", "8")
    assert p.returncode == 1 and "applied already" in p.stderr, p.stderr
    # asked again, the same hold is where it was; the record the group
    # stands after is a point it can hold at too
    for at in ("10", "9"):
        p = aimctl(r, "hold", "--at", at)
        assert p.returncode == 0 and f"group {G}: held at LSN 9 (FLUSH" in p.stdout, \
            p.stdout + p.stderr
        assert "recovery point  LSN 9" in p.stdout, p.stdout
    p = aimctl(r, "release")
    assert p.returncode == 0 and f"group {G}: released" in p.stdout, p.stdout + p.stderr
    r.wait_applied(G, 15)
    assert image(r) == s.image_at(15)
    assert r.group(G)["hold"] is None
    r.check_quiet()


def test_hold_waits_at_a_barrier_for_a_point_that_has_not_arrived(workdir, remotes):
    """The hold is at LSN 14, in segment 3, which has not arrived: once
    segment 2 is here the group applies up to its FLUSH at LSN 9 and waits
    there (not at the end of segment 2, between two barriers); segment 3
    brings the FLUSH at LSN 13, the last one before LSN 14."""
    s = Stream(workdir, G, RECORDS, CUTS)
    r = remotes().start()
    s.deliver(r.inbox, 1)
    r.wait_applied(G, 7)
    # a new stream position: hold before anything of segment 2 arrives
    p = aimctl(r, "hold", "--at", "14", "--timeout", "0")
    assert p.returncode == 0, p.stderr
    s.deliver(r.inbox, 2)
    g = r.wait_group(G, lambda g: g["applied_lsn"] == 9 and g["state"] == "waiting",
                     what="the group to wait at the FLUSH at LSN 9")
    assert not g["hold"]["reached"] and g["waiting_for"] == 3, g
    assert image(r) == s.image_at(9)
    s.deliver(r.inbox, 3)
    g = held(r, lsn=13)
    assert image(r) == s.image_at(13)
    p = aimctl(r, "hold", "--at", "mark:m1")
    assert p.returncode == 1 and 'MARK (LSN 6) is applied already' in p.stderr, p.stderr
    r.check_quiet()


# LSN:       1   2  | 3   4   5           6   7   8  | 9   10  11  12  13  14
RECORDS2 = ["w", "f", "w", "w", ("m", "x"), "w", "f", "w", "w", "f", "w", "w", "f", "w"]
CUTS2 = [3, 9]


def test_hold_at_a_mark_now_and_at_a_time(workdir, remotes):
    s = Stream(workdir, G, RECORDS2, CUTS2)
    r = remotes().start()
    p = aimctl(r, "hold", "--at", "mark:x", "--timeout", "0")
    assert p.returncode == 1 and "no group here yet" in p.stderr, p.stderr
    s.deliver(r.inbox, 1)
    r.wait_applied(G, 2)
    # at a mark: right after it, a point its maker chose
    p = aimctl(r, "hold", "--at", "mark:x", "--timeout", "0")
    assert p.returncode == 0, p.stderr
    s.deliver(r.inbox, 2)
    g = held(r, lsn=5)
    assert g["hold"]["record"] == "MARK" and g["hold"]["note"] is None, g
    assert image(r) == s.image_at(5)
    # "now" on a held group: at the next barrier of what is here (LSN 7)
    p = aimctl(r, "hold")
    assert p.returncode == 0 and "held at LSN 7 (FLUSH" in p.stdout, p.stdout + p.stderr
    assert image(r) == s.image_at(7)
    assert aimctl(r, "release").returncode == 0
    r.wait_applied(G, 8)
    # "now" with nothing to apply: where the group stands, and it says
    # that this is no barrier
    p = aimctl(r, "hold")
    assert p.returncode == 0 and "held at LSN 8 (WRITE" in p.stdout, p.stdout + p.stderr
    assert "not a barrier" in p.stdout, p.stdout
    assert aimctl(r, "release").returncode == 0
    # at a time between two barriers: the last FLUSH journaled by then, as
    # aimctl replay --until TIME finds it
    t = s.time_of(12) + 500_000_000
    at = f"@{t // 10**9}.{t % 10**9:09d}"
    p = aimctl(r, "hold", "--at", at, "--timeout", "0")
    assert p.returncode == 0, p.stderr
    s.deliver(r.inbox, 3)
    g = held(r, lsn=10)
    assert g["hold"]["record"] == "FLUSH" and "at or before" in g["hold"]["note"], g
    assert image(r) == s.image_at(10)
    assert aimctl(r, "release").returncode == 0
    r.wait_applied(G, 14)
    assert image(r) == s.image_at(14)
    r.check_quiet()


def test_a_hold_survives_a_restart_and_the_targets_do_not_change_while_held(workdir, remotes):
    s = Stream(workdir, G, RECORDS, CUTS)
    r = remotes().start()
    s.deliver(r.inbox, 1)
    r.wait_applied(G, 7)
    p = aimctl(r, "hold")
    assert p.returncode == 0 and "held at LSN 7" in p.stdout, p.stdout + p.stderr
    st = os.stat(os.path.join(r.target, "vm.img"))
    held_bytes = image(r)
    s.deliver(r.inbox, 2)
    r.wait_group(G, lambda g: g["backlog_segments"] == 1, what="segment 2 to wait")
    assert r.stop() == 0
    s.deliver(r.inbox, 3)
    r.start()
    g = held(r, lsn=7)
    assert g["backlog_segments"] == 2, g
    after = os.stat(os.path.join(r.target, "vm.img"))
    assert image(r) == held_bytes and (after.st_mtime_ns, after.st_size) == \
        (st.st_mtime_ns, st.st_size)
    db = sqlite3.connect(os.path.join(r.workdir, "inbox.state", "remote.db"))
    row = db.execute("SELECT kind, reached, stop_lsn, role FROM holds WHERE \"group\" = ?",
                     (G,)).fetchone()
    db.close()
    assert row == ("now", 1, 7, ""), row
    assert aimctl(r, "release").returncode == 0
    r.wait_applied(G, 15)
    assert image(r) == s.image_at(15)
    r.check_quiet()


def test_refusals_change_nothing(workdir, remotes):
    s = Stream(workdir, G, RECORDS, CUTS)
    r = remotes().start()
    s.deliver(r.inbox, 1)
    r.wait_applied(G, 7)
    before = image(r)
    # an unknown group, a malformed one, a bad point
    code, o = post(r, f"/hold/{H}")
    assert code == 404 and f"no group {H} here" in o["error"], o
    code, o = post(r, "/hold/Not-A-Group")
    assert code == 400 and "not a group" in o["error"], o
    code, o = post(r, f"/hold/{G}/at/yesterday")
    assert code == 400 and "is not a time" in o["error"], o
    code, o = post(r, f"/promote/{H}")
    assert code == 404, o
    p = aimctl(r, "hold", "--group", H)
    assert p.returncode == 1 and "HTTP 404" in p.stderr, p.stderr
    # a point already applied: by LSN, by time, by mark
    for at, why in (("5", "that record is applied already"),
                    (f"@{(T0 + 3 * 10**9) // 10**9}", "journaled after it are applied"),
                    ("mark:m1", "is applied already")):
        p = aimctl(r, "hold", "--at", at)
        assert p.returncode == 1 and "HTTP 409" in p.stderr and why in p.stderr, (at, p.stderr)
    # release without a hold
    p = aimctl(r, "release")
    assert p.returncode == 1 and "is not held" in p.stderr, p.stderr
    code, _ = post(r, f"/release/{G}")
    assert code == 409
    # nothing changed, nothing is held, the stream goes on
    g = r.group(G)
    assert g["hold"] is None and g["state"] == "idle" and image(r) == before, g
    s.deliver(r.inbox, 2)
    r.wait_applied(G, 11)
    r.check_quiet()


@pytest.fixture
def pki(workdir):
    return PKI(os.path.join(workdir, "pki"))


def receiving(remotes, pki):
    return remotes(listen=True, pki=pki, args=["--token-file", pki.token_file])


def put(r, s, n):
    """PUT segment n of stream s to the receiver: (HTTP status, reason)."""
    path = os.path.join(s.workdir, f"put-{n}.aimj")
    mkseg(path, s.spec(n))
    code, body, _ = r.put(s.group, path, name=seg_name(n), cert=None)
    return code, body


def test_promote_applies_what_arrived_up_to_the_last_barrier_then_refuses_everything(
        workdir, remotes, pki):
    s = Stream(workdir, G, RECORDS, CUTS)
    r = receiving(remotes, pki).start()
    assert put(r, s, 1)[0] == 201
    r.wait_applied(G, 7)
    p = aimctl(r, "hold")
    assert p.returncode == 0, p.stderr
    assert put(r, s, 2)[0] == 201          # arrives while held
    # promote: what arrived, up to its last barrier (the FLUSH at LSN 9;
    # LSN 10 and 11 are writes after it)
    p = aimctl(r, "promote")
    assert p.returncode == 0, p.stderr
    assert f"group {G}: promoted at LSN 9 (FLUSH, source time" in p.stdout, p.stdout
    assert "the copy is     consistent" in p.stdout, p.stdout
    assert image(r) == s.image_at(9)
    g = r.group(G)
    assert g["state"] == "promoted" and g["hold"]["promote"] == "promoted", g
    assert g["hold"]["lsn"] == 9 and g["hold"]["record"] == "FLUSH", g
    # segment 2's file stays (nothing is lost); its records after 9 are not applied
    assert os.path.exists(os.path.join(r.inbox, G, seg_name(2)))
    # the group's segments are refused with the reason; nothing is stored
    code, body = put(r, s, 3)
    assert code == 409 and "was promoted here" in body, (code, body)
    assert not os.path.exists(os.path.join(r.inbox, G, seg_name(3)))
    # a second promote, a hold, a release: refused, nothing changes
    p = aimctl(r, "promote")
    assert p.returncode == 1 and "HTTP 409" in p.stderr and "was promoted at" in p.stderr, \
        p.stderr
    for cmd in (["hold"], ["release"], ["hold", "--at", "12"]):
        p = aimctl(r, *cmd)
        assert p.returncode == 1 and "was promoted at" in p.stderr, (cmd, p.stderr)
    # for good: across a restart too
    assert r.stop() == 0
    r.start()
    g = r.wait_group(G, lambda g: g["state"] == "promoted", what="promoted after a restart")
    assert g["applied_lsn"] == 9 and image(r) == s.image_at(9), g
    code, body = put(r, s, 3)
    assert code == 409 and "was promoted here" in body, (code, body)
    m = r.metrics()
    assert f'aim_remote_group_state{{group="{G}",state="promoted"}} 1' in m
    assert 'aim_remote_rejected_total{code="409"} 1' in m, m  # since the restart
    # other groups go on
    other = Stream(workdir, H, RECORDS, CUTS)
    assert put(r, other, 1)[0] == 201
    r.wait_applied(H, 7)
    assert "promoted here" in r.output()
    r.check_quiet()


def test_a_segment_stored_while_a_promote_is_decided_is_applied(workdir, remotes, pki):
    """The receiver's last check that a group takes segments and its rename
    of the segment into the inbox were not atomic with a promote: a segment
    checked before the promote was decided and renamed after it was reached
    got 201 (its source counted it delivered) and was never applied.  Here
    the rename of segment 2 is held up for 3 s (tests/slowrename.c) and the
    promote is asked inside that window: it waits for the rename, so the
    segment answered 201 is applied, up to its last barrier."""
    import threading
    shim = os.path.join(BUILD_DIR, "tests", "slowrename.so")
    asan = os.environ.get("ASAN_OPTIONS", "")
    env = {"LD_PRELOAD": shim, "AIM_TEST_SLOW_RENAME": f"{seg_name(2)}:3000",
           "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"}
    s = Stream(workdir, G, RECORDS, CUTS)
    r = remotes(listen=True, pki=pki, args=["--token-file", pki.token_file], env=env).start()
    assert put(r, s, 1)[0] == 201
    r.wait_applied(G, 7)
    answer = {}
    t = threading.Thread(target=lambda: answer.setdefault("put", put(r, s, 2)))
    t.start()
    try:
        wait_for(lambda: "slowrename: holding the rename" in r.output(), 30,
                 what="the receiver to reach the rename")
        p = aimctl(r, "promote")
    finally:
        t.join()
    assert answer["put"][0] == 201, answer
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"group {G}: promoted at LSN 9 (FLUSH" in p.stdout, p.stdout
    assert image(r) == s.image_at(9)
    code, body = put(r, s, 3)
    assert code == 409 and "was promoted here" in body, (code, body)
    r.check_quiet()


def test_promote_at_a_point_and_of_a_stopped_group(workdir, remotes):
    s = Stream(workdir, G, RECORDS, CUTS)
    r = remotes().start()
    s.deliver(r.inbox, 1)
    r.wait_applied(G, 7)
    assert aimctl(r, "hold").returncode == 0
    s.deliver(r.inbox, 2)
    s.deliver(r.inbox, 3)
    r.wait_group(G, lambda g: g["backlog_segments"] == 2, what="two segments waiting")
    p = aimctl(r, "promote", "--at", "12")
    assert p.returncode == 0 and "promoted at LSN 9 (FLUSH" in p.stdout, p.stdout + p.stderr
    assert "LSN 12 is not a barrier" in p.stdout, p.stdout
    assert image(r) == s.image_at(9)
    assert os.path.exists(os.path.join(r.inbox, G, seg_name(3)))
    # a stopped group (its next segment is not its own) can be failed over
    # as it stands
    other = Stream(workdir, H, RECORDS, CUTS)
    other.deliver(r.inbox, 1)
    r.wait_applied(H, 7)
    bad = os.path.join(workdir, "bad.aimj")
    mkseg(bad, other.spec(2).replace("first_lsn 8", "first_lsn 9"))
    os.rename(bad, os.path.join(r.inbox, H, seg_name(2)))
    r.expect_alarms = True
    r.wait_group(H, lambda g: g["state"] == "stopped", what="H to stop")
    p = aimctl(r, "promote", "--group", H)
    assert p.returncode == 0 and "promoted at LSN 7 (WRITE" in p.stdout, p.stdout + p.stderr
    assert "the group was stopped" in p.stdout, p.stdout


def test_a_promote_whose_group_stops_on_the_way_is_refused_not_stuck(workdir, remotes):
    """The operator promotes while the group still catches up, and a record
    on the way cannot be applied (here a CREATE where the target has a
    directory of that name).  The group stopped with its promote pending,
    and a pending promote answers every request with 409: no second
    promote, no release, not even after a restart.  Now the promote is
    refused where the group stands (durable right after the write before
    the record that failed), and a new one promotes it there."""
    s = Stream(workdir, G, RECORDS, CUTS)
    r = remotes().start()
    s.deliver(r.inbox, 1)
    r.wait_applied(G, 7)
    assert aimctl(r, "hold").returncode == 0
    s.deliver(r.inbox, 2)
    os.makedirs(os.path.join(r.target, "vm2.img"))
    first = s.bounds[2][0]
    # segment 3: its first WRITE, then the CREATE that fails, then a FLUSH
    # (the barrier the promote is after)
    lines = s.spec(3).splitlines()
    recs = [i for i, ln in enumerate(lines) if ln.split()[0] in ("write", "flush")]
    assert lines[recs[0]].startswith("write") and lines[recs[1]] == "flush"
    lines[recs[1]] = "create 2 420 vm2.img"
    lines[recs[2]] = "flush"
    bad = os.path.join(workdir, "bad.aimj")
    mkseg(bad, "\n".join(lines) + "\n")
    os.rename(bad, os.path.join(r.inbox, G, seg_name(3)))
    r.wait_group(G, lambda g: g["backlog_segments"] == 2, what="segments 2 and 3 waiting")
    r.expect_alarms = True
    p = aimctl(r, "promote", "--timeout", "30s")
    assert p.returncode == 1 and "stopped before it reached" in p.stderr, p.stdout + p.stderr
    g = r.group(G)
    assert g["state"] == "stopped" and g["hold"]["promote"] == "refused", g
    assert g["applied_lsn"] == first, g
    p = aimctl(r, "promote")
    assert p.returncode == 0 and "the group was stopped" in p.stdout, p.stdout + p.stderr
    assert f"promoted at LSN {first} (WRITE" in p.stdout, p.stdout
    assert "also hold writes" not in p.stdout, p.stdout
    assert r.group(G)["state"] == "promoted"
    assert image(r) == s.image_at(first)


def test_promote_at_a_point_that_did_not_arrive_is_refused_and_segments_come_again(
        workdir, remotes, pki):
    """A promote takes no more segments, so a point beyond what arrived (a
    mistyped mark, an LSN not here yet) would never be reached: it is
    refused, the group stays held at a barrier and takes its segments
    again, and a later promote at a point that arrived succeeds.  (It once
    stayed "promoting" for good, refusing every request and segment.)"""
    s = Stream(workdir, G, RECORDS, CUTS)
    r = receiving(remotes, pki).start()
    assert put(r, s, 1)[0] == 201
    r.wait_applied(G, 7)
    p = aimctl(r, "promote", "--at", "mark:typo")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "was not promoted" in p.stderr and "is not in the segments that arrived" in p.stderr \
        and "segment 2 is not here" in p.stderr, p.stderr
    g = r.group(G)
    assert g["state"] == "held" and g["hold"]["promote"] == "refused", g
    assert g["applied_lsn"] == 7 and image(r) == s.image_at(7), g
    # segments are taken again (and wait: the group is held)
    assert put(r, s, 2)[0] == 201
    r.wait_group(G, lambda g: g["backlog_segments"] == 1, what="segment 2 waiting")
    # LSN 12 is in segment 3, which has not arrived: refused again, after
    # the group went on to the last barrier it knows is before the point
    p = aimctl(r, "promote", "--at", "12")
    assert p.returncode == 1 and "segment 3 is not here" in p.stderr, p.stdout + p.stderr
    g = held(r, lsn=9)
    assert g["hold"]["promote"] == "refused" and image(r) == s.image_at(9), g
    assert put(r, s, 3)[0] == 201
    r.wait_group(G, lambda g: g["backlog_segments"] == 2, what="segments 2 and 3 waiting")
    p = aimctl(r, "promote", "--at", "12")
    assert p.returncode == 0 and "promoted at LSN 9 (FLUSH" in p.stdout, p.stdout + p.stderr
    assert r.group(G)["state"] == "promoted" and image(r) == s.image_at(9)
    code, body = put(r, s, 3)
    assert code == 409 and "was promoted here" in body, (code, body)
    assert "promote refused: its point mark:typo is not in the segments that arrived" \
        in r.output()


def test_promote_refuses_a_copy_in_the_middle_of_a_resync_unless_forced(workdir, remotes):
    r = remotes().start()
    path = os.path.join(workdir, "sync.aimj")
    mkseg(path, f"group {G}\nnumber 1\nfirst_lsn 1\nimage 1 vm.img\nsync-begin 1\n"
                f"resync 1 write 1 0 @{BLOCK}:7\nflush\n")
    os.makedirs(os.path.join(r.inbox, G))
    os.rename(path, os.path.join(r.inbox, G, seg_name(1)))
    g = r.wait_applied(G, 3)
    assert g["consistent"] is False, g
    before = image(r)
    p = aimctl(r, "promote")
    assert p.returncode == 1 and "HTTP 409" in p.stderr, p.stderr
    assert "is not a consistent copy" in p.stderr and "LSN 1" in p.stderr, p.stderr
    g = r.group(G)
    assert g["hold"] is None and g["state"] == "idle" and image(r) == before, g
    p = aimctl(r, "promote", "--force")
    assert p.returncode == 0 and "NOT consistent" in p.stdout, p.stdout + p.stderr
    assert r.group(G)["state"] == "promoted"
    r.check_quiet()


def forged(r, workdir, group, n, first, body):
    path = os.path.join(workdir, f"{group[:8]}-{n}.aimj")
    mkseg(path, f"group {group}\nnumber {n}\nfirst_lsn {first}\nimage 1 {group[:4]}.img\n{body}")
    os.makedirs(os.path.join(r.inbox, group), exist_ok=True)
    os.rename(path, os.path.join(r.inbox, group, seg_name(n)))


def test_promote_stops_at_the_latest_consistent_point(workdir, remotes):
    """An unplanned failover in the middle of a resynchronisation: promote
    stops at the last barrier where the copy is consistent -- before the
    SYNC_BEGIN if the SYNC_END has not arrived, at the SYNC_END if it has
    (after a quiesced VM's last FLUSH it is the last point there is)."""
    r = remotes().start()
    for g in (G, H):
        forged(r, workdir, g, 1, 1, f"write 1 0 @{BLOCK}:1\nflush\n")
        r.wait_applied(g, 2)
        assert aimctl(r, "hold", "--group", g).returncode == 0
    resync = f"sync-begin 1\nresync 1 write 1 0 @{BLOCK}:9\nflush\n"
    forged(r, workdir, G, 2, 3, resync + f"write 1 {BLOCK} @{BLOCK}:3\n")
    forged(r, workdir, H, 2, 3, resync + f"sync-end 1\nwrite 1 {BLOCK} @{BLOCK}:3\n")
    for g in (G, H):
        r.wait_group(g, lambda s: s["backlog_segments"] == 1, what="segment 2 to wait")
    # G: the FLUSH at LSN 5 is inside the resync; the SYNC_END never came
    p = aimctl(r, "promote", "--group", G)
    assert p.returncode == 0 and "promoted at LSN 2 (FLUSH" in p.stdout, p.stdout + p.stderr
    assert "the copy is     consistent" in p.stdout, p.stdout
    with open(os.path.join(r.target, f"{G[:4]}.img"), "rb") as f:
        assert f.read() == b"\1" * BLOCK          # nothing of the resync
    # H: the SYNC_END at LSN 6 is the last consistent barrier
    p = aimctl(r, "promote", "--group", H)
    assert p.returncode == 0 and "promoted at LSN 6 (SYNC_END" in p.stdout, p.stdout + p.stderr
    assert r.group(H)["consistent"] is True and r.group(G)["consistent"] is True
    with open(os.path.join(r.target, f"{H[:4]}.img"), "rb") as f:
        assert f.read() == b"\x09" * BLOCK        # the resync, not the write after it
    r.check_quiet()


def hold_while_applying(r, workdir, lines):
    """Delivers segment 1 of group G (mkseg lines) and asks a hold "now"
    once the group applies it."""
    path = os.path.join(workdir, "long.aimj")
    mkseg(path, "\n".join(lines) + "\n")
    os.makedirs(os.path.join(r.inbox, G))
    os.rename(path, os.path.join(r.inbox, G, seg_name(1)))
    r.wait_group(G, lambda g: g["state"] == "applying" or g["applied_lsn"] > 0,
                 what="the apply to start", interval=0.005)
    code, o = post(r, f"/hold/{G}")
    assert code == 200, (code, o)


def test_a_hold_asked_in_the_middle_of_a_segment_stops_at_its_next_flush(workdir, remotes):
    """A long segment (3000 writes of 64 KiB, a FLUSH every 50) is being
    applied when `hold` comes: the group pauses right after the record it
    applied, answers, and stops at the next FLUSH -- never between two."""
    r = remotes().start()
    big = 65536
    lines = [f"group {G}", "number 1", "first_lsn 1", "image 1 vm.img"]
    kinds = []
    for i in range(1, 3061):
        if i % 51 == 0:
            lines.append("flush")
            kinds.append("f")
        else:
            lines.append(f"write 1 {(i % 16) * big} @{big}:{i % 256}")
            kinds.append("w")
    hold_while_applying(r, workdir, lines)
    g = held(r, timeout=120)
    lsn = g["hold"]["lsn"]
    assert g["hold"]["record"] == "FLUSH" and kinds[lsn - 1] == "f", g
    want = bytearray(16 * big)
    for i in range(1, lsn + 1):
        if kinds[i - 1] == "w":
            want[(i % 16) * big:(i % 16 + 1) * big] = bytes([i % 256]) * big
    got = image(r)
    assert got == bytes(want[:len(got)]) and len(got) == max(
        ((i % 16) + 1) * big for i in range(1, lsn + 1) if kinds[i - 1] == "w"), lsn
    paused = "resuming segment 1 after LSN" in r.output()
    print(f"held at LSN {lsn} of 3060; the request {'paused the apply' if paused else 'came first'}")
    assert aimctl(r, "release").returncode == 0
    r.wait_applied(G, 3060)
    r.check_quiet()


def test_a_hold_now_interrupted_by_a_kill_stops_at_its_barrier_after_the_restart(
        workdir, remotes):
    """A hold "now" asked while a long run of writes is applied stops at the
    FLUSH after them.  aim-remote killed on the way used to reach the hold
    at its durable point when it started again: no barrier, and the targets
    also held writes applied after it before the kill.  The group now
    knows which FLUSH it was going to (recorded before it applied towards
    it), applies again what it had applied past its durable point, and
    stops exactly there."""
    r = remotes().start()
    big, n = 65536, 6000
    lines = [f"group {G}", "number 1", "first_lsn 1", "image 1 vm.img"]
    want = bytearray(16 * big)
    for i in range(1, n + 1):
        lines.append(f"write 1 {(i % 16) * big} @{big}:{i % 256}")
        want[(i % 16) * big:(i % 16 + 1) * big] = bytes([i % 256]) * big
    lines.append("flush")                                   # LSN n + 1
    for i in range(n + 2, n + 10):                          # after it: never applied
        lines.append(f"write 1 {(i % 16) * big} @{big}:{(i + 7) % 256}")
    hold_while_applying(r, workdir, lines)
    r.kill9()
    if "held at LSN" in r.output():
        pytest.skip("the hold was reached before the kill: nothing left to test")
    r.start()
    g = held(r, timeout=120)
    assert (g["hold"]["lsn"], g["hold"]["record"]) == (n + 1, "FLUSH"), g
    assert g["applied_lsn"] == n + 1, g
    assert image(r) == bytes(want), "the targets are not the state at the FLUSH"
    assert aimctl(r, "release").returncode == 0
    r.wait_applied(G, n + 9)
    r.check_quiet()


def test_promote_of_an_unknown_or_malformed_group_is_a_clear_error(workdir, remotes):
    """`aimctl promote --group` of a group this remote does not know, or of
    something that is not a group: non-zero exit, a message that names the
    group and says nothing changed, and nothing is promoted."""
    s = Stream(workdir, G, RECORDS, CUTS)
    r = remotes().start()
    s.deliver(r.inbox, 1)
    r.wait_applied(G, 7)
    before = image(r)
    p = aimctl(r, "promote", "--group", H)
    assert p.returncode != 0, p.stdout + p.stderr
    assert f"no group {H} here" in p.stderr and "nothing changed" in p.stderr, p.stderr
    assert "HTTP 404" in p.stderr and "promoted" not in p.stdout, p.stdout + p.stderr
    p = aimctl(r, "promote", "--group", "Not-A-Group")
    assert p.returncode != 0 and "not a group" in p.stderr, p.stdout + p.stderr
    p = aimctl(r, "promote", "--group", H, "--force")
    assert p.returncode != 0 and f"no group {H} here" in p.stderr, p.stdout + p.stderr
    assert [g["group"] for g in r.status()["groups"]] == [G]
    g = r.group(G)
    assert g["state"] == "idle" and g["hold"] is None and image(r) == before, g
    # the known group goes on
    s.deliver(r.inbox, 2)
    r.wait_applied(G, 11)
    r.check_quiet()
    assert r.stop() == 0, r.output()[-5000:]


def test_segments_put_to_a_held_group_are_validated_and_bad_ones_change_nothing(
        workdir, remotes, pki):
    """While a group is held its segments keep arriving through the
    receiver and are validated as ever: a corrupt one, a truncated one,
    another group's, one whose header names another number, a different
    copy of the segment waiting in the inbox and of the segment applied
    already, and forged ones with valid checksums whose LSNs cannot follow
    the segment before them or precede the one after them, both waiting
    in the inbox (the group would only find out at release, and the
    genuine segment would meanwhile be refused as a different copy) --
    each is refused (422 or 409 with the reason), nothing of them is
    stored, the held replica does not change, and after release the group
    applies the good stream to its end."""
    s = Stream(workdir, G, RECORDS, [8, 12, 14])     # 1..7, 8..11, 12..13, 14..15
    r = receiving(remotes, pki).start()
    assert put(r, s, 1)[0] == 201
    r.wait_applied(G, 7)
    assert aimctl(r, "hold").returncode == 0
    g0 = held(r)
    before = image(r)
    assert put(r, s, 2)[0] == 201                      # the good ones wait
    assert put(r, s, 4)[0] == 201
    r.wait_group(G, lambda g: g["backlog_segments"] == 2, what="segments 2 and 4 to wait")

    good3 = os.path.join(workdir, "good-3.aimj")
    mkseg(good3, s.spec(3))
    with open(good3, "rb") as f:
        data = f.read()

    def upload(name, body, number):
        path = os.path.join(workdir, name)
        with open(path, "wb") as f:
            f.write(body)
        code, reply, err = r.put(G, path, name=seg_name(number), cert=None)
        return code, reply + err

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    other = Stream(workdir, H, RECORDS, CUTS)
    other3 = os.path.join(workdir, "other-3.aimj")
    mkseg(other3, other.spec(3))
    with open(other3, "rb") as f:
        other_data = f.read()
    # valid checksums, the right group and number, other bytes
    spec2 = s.spec(2).replace(f"@{BLOCK}:8", f"@{BLOCK}:99")
    spec1 = s.spec(1).replace(f"@{BLOCK}:7", f"@{BLOCK}:99")
    assert spec2 != s.spec(2) and spec1 != s.spec(1)
    forged2 = os.path.join(workdir, "forged-2.aimj")
    mkseg(forged2, spec2)
    forged1 = os.path.join(workdir, "forged-1.aimj")
    mkseg(forged1, spec1)
    with open(forged2, "rb") as f:
        forged2_data = f.read()
    with open(forged1, "rb") as f:
        forged1_data = f.read()
    gap = os.path.join(workdir, "gap-3.aimj")          # starts at 13, not 12
    mkseg(gap, s.spec(3).replace("first_lsn 12", "first_lsn 13"))
    long3 = os.path.join(workdir, "long-3.aimj")       # 12..14, segment 4 starts at 14
    mkseg(long3, Stream(workdir, G, RECORDS, [8, 12, 15]).spec(3))
    with open(gap, "rb") as f:
        gap_data = f.read()
    with open(long3, "rb") as f:
        long_data = f.read()
    for name, body, number, want, why in (
            ("flipped", bytes(flipped), 3, 422, "not a valid segment"),
            ("truncated", data[:len(data) - 7], 3, 422, "not a valid segment"),
            ("other-group", other_data, 3, 422, f"belongs to group {H}"),
            ("misnumbered", data, 4, 422, "the path names segment 4"),
            ("different-2", forged2_data, 2, 409, "a different segment"),
            ("different-1", forged1_data, 1, 409, "a different segment"),
            ("gap", gap_data, 3, 422, "starts at LSN 13 but segment 2"),
            ("too-long", long_data, 3, 422, "ends at LSN 14 but segment 4")):
        code, reply = upload(name, body, number)
        assert code == want and why in reply, (name, code, reply)
    # nothing stored, nothing applied, still held where it was
    assert sorted(os.listdir(os.path.join(r.inbox, G))) == [seg_name(2), seg_name(4)], \
        os.listdir(os.path.join(r.inbox, G))
    # a refused body's temporary file goes when its request completes,
    # which may be a moment after the answer
    tmp = os.path.join(r.inbox, ".tmp")
    try:
        wait_for(lambda: not os.listdir(tmp), 10, what="refused uploads' temporary files to go")
    except TimeoutError:
        raise AssertionError(f"left in {tmp}: {os.listdir(tmp)}") from None
    g = r.group(G)
    assert g["state"] == "held" and g["applied_lsn"] == g0["applied_lsn"], g
    assert g["hold"]["lsn"] == g0["hold"]["lsn"] and g["quarantined_total"] == 0, g
    assert image(r) == before
    assert 'aim_remote_rejected_total{code="422"} 6' in r.metrics(), r.metrics()
    # the good stream goes on
    code, body, _ = r.put(G, good3, name=seg_name(3), cert=None)
    assert code == 201, (code, body)
    assert image(r) == before
    p = aimctl(r, "release")
    assert p.returncode == 0, p.stderr
    g = r.wait_applied(G, 15)
    assert image(r) == s.image_at(15) and g["quarantined_total"] == 0, g
    r.check_quiet()
    assert r.stop() == 0, r.output()[-5000:]
