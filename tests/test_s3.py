"""Object-store destinations, proven against a real single-node Ceph RADOS
Gateway (tests/ceph_rgw.py, one cluster for the module, a bucket per test):

  * aimfs (through the kernel, a random multi-threaded workload with
    renames, truncates, punched holes and zero ranges) ships to a bucket;
    two `aim-remote --pull` sites apply it independently; both replicas
    equal the source; the bucket holds HEAD and a contiguous run of
    segments, one multipart-uploaded, with a base recorded in HEAD;
  * radosgw killed -9 during uploads and restarted: the source says
    `retrying`, retries, and loses nothing; the puller killed -9 and
    restarted resumes; no segment is applied twice (every "applied
    segment N" line of the remote's log, across its restarts, is unique);
  * wrong credentials, a missing bucket, a skewed clock (radosgw under
    libfaketime) and a full OSD each show `retrying` with the store's
    error code in the source's status, and the pull side says the same;
    fixing each lets it converge;
  * retention and snapshots: snapshot_every makes new bases; keep = N
    segments and keep = 4s delete exactly the old segments and old bases,
    never the newest base the kept ones need nor a segment younger than
    the age (also for a destination limited to one image, whose segments
    of the other image's writes alone reach the bucket empty); what
    remains restores the source, and a new site starts at
    the newest base and converges; without keep, the bucket keeps segment
    1 after the source's journal pruned it;
  * one aim-remote pulls by two --pull flags (keys from files, and from
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and a [pull NAME] section,
    and receives a fourth group by HTTPS: all four converge;
  * 20 mounts (20 groups) into one bucket, one puller applies them all.

Every daemon is stopped by PID at teardown, even on failure; a failed test
prints the command lines and the daemons' logs."""
import json
import os
import random
import re
import subprocess
import tempfile
import time

import pytest

from aimtest import assert_trees_equal, wait_for
from ceph_rgw import CephError, CephRGW
from remote_helpers import Remote, free_port
from servers import get_status
from workload import Workload, populate


@pytest.fixture(scope="module")
def ceph():
    d = tempfile.mkdtemp(prefix="aimfs-ceph-", dir=os.environ.get("AIM_TEST_TMP", "/var/tmp"))
    c = CephRGW(d)
    try:
        c.start()
    except CephError as e:
        c.stop()
        pytest.fail(f"cannot start the Ceph test cluster: {e}")
    yield c
    c.stop()


@pytest.fixture
def cleanup():
    todo = []
    yield todo
    for fn in reversed(todo):
        try:
            fn()
        except Exception:   # noqa: BLE001 - teardown goes on
            pass


_buckets = iter(range(1, 10000))


def new_bucket(ceph, create=True):
    name = f"aimtest-{os.getpid()}-{next(_buckets)}"
    if create:
        ceph.s3().create_bucket(name)
    return name


class Site:
    """Credentials and config of one source mounting into one bucket."""

    def __init__(self, workdir, ceph, bucket, name="src", prefix="mirror", extra="",
                 secret=None, aimfs_opts="", creds=True):
        self.workdir, self.ceph, self.bucket, self.name = workdir, ceph, bucket, name
        self.url = f"{ceph.endpoint}/{bucket}/{prefix}"
        self.ak = os.path.join(workdir, "access_key")
        self.sk = os.path.join(workdir, f"secret_key-{name}")
        with open(self.ak, "w") as f:
            f.write(ceph.access_key + "\n")
        with open(self.sk, "w") as f:
            f.write((secret or ceph.secret_key) + "\n")
        self.status_addr = f"127.0.0.1:{free_port()}"
        self.backing = os.path.join(workdir, f"backing-{name}")
        self.mnt = os.path.join(workdir, f"mnt-{name}")
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        self.conf = os.path.join(workdir, f"aimfs-{name}.conf")
        self.aimfs_opts, self.creds = aimfs_opts, creds
        self.write_conf(extra)
        self.mount = None

    def write_conf(self, extra):
        """creds=False: no key files (the AWS_* variables then hold them)."""
        keys = (f"access_key_file = {self.ak}\nsecret_key_file = {self.sk}\n"
                if self.creds else "")
        opts = (self.aimfs_opts or "segment_size = 256K").rstrip("\n") + "\n"
        if "segment_age =" not in opts:   # a key given twice is refused
            opts += "segment_age = 200ms\n"
        with open(self.conf, "w") as f:
            f.write(f"[aimfs]\nstatus = {self.status_addr}\n{opts}\n"
                    f"[destination store]\ntype = s3\nurl = {self.url}\n{keys}{extra}")

    def start(self, aimfs, **kw):
        self.mount = aimfs(backing=self.backing, mountpoint=self.mnt,
                           options=[f"config={self.conf}"], **kw)
        self.group = self.status()["group"]
        return self.mount

    def status(self):
        return get_status(self.status_addr)

    def dest(self):
        return self.status()["destinations"][0]

    def wait_dest(self, cond, what, timeout=60):
        last = [None]

        def ok():
            last[0] = self.dest()
            return cond(last[0])
        try:
            wait_for(ok, timeout, 0.1, what=what)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; destination: "
                                 f"{json.dumps(last[0], indent=1)}\n{self.mount.output()[-3000:]}")
        return last[0]

    def wait_in_sync(self, timeout=90):
        def ok(d):
            assert d["state"] not in ("stopped", "needs_resync"), d
            st = self.status()
            return st["in_sync"] and d["acked_lsn"] >= st["head_lsn"]
        self.wait_dest(ok, "the source to be in sync with the bucket", timeout)
        return self.status()

    def head(self):
        if not getattr(self, "group", None):
            self.group = self.status()["group"]
        return json.loads(self.ceph.s3().get(self.bucket, f"mirror/{self.group}/HEAD")[1])

    def pull_args(self, interval="200ms"):
        return ["--pull", self.url, "--access-key-file", self.ak, "--secret-key-file", self.sk,
                "--pull-interval", interval]


def start_remote(workdir, name, args, cleanup, expect_alarms=False):
    inbox = os.path.join(workdir, f"inbox-{name}")
    target = os.path.join(workdir, f"replica-{name}")
    os.makedirs(inbox, exist_ok=True)
    os.makedirs(target, exist_ok=True)
    r = Remote(workdir, inbox, target, args=args, name=f"remote-{name}",
               state=os.path.join(workdir, f"state-{name}"), expect_alarms=expect_alarms)
    cleanup.append(r.close)
    return r.start()


def wait_applied(remote, group, lsn, timeout=90):
    return remote.wait_applied(group, lsn, timeout)


def applied_lines(remote):
    """The segments the remote's log says it applied, across its restarts."""
    return [int(m) for m in re.findall(r"applied segment (\d+) ", remote.output())]


def bucket_keys(ceph, bucket, group):
    return sorted(k.rsplit("/", 1)[1] for k in ceph.s3().list(bucket, f"mirror/{group}/"))


def check_bucket(ceph, bucket, head):
    """HEAD names a contiguous run oldest..segment, all present."""
    keys = bucket_keys(ceph, bucket, head["group"])
    assert "HEAD" in keys
    segs = sorted(int(k.split(".")[0]) for k in keys if k.endswith(".aimj"))
    want = list(range(head["oldest"], head["segment"] + 1))
    assert [n for n in segs if n >= head["oldest"]] == want, (segs, head)
    return segs


# ---- the mirror, end to end ---------------------------------------------------

def test_mirror_through_a_bucket_to_two_pullers(ceph, workdir, aimfs, cleanup):
    seed = int(os.environ.get("AIM_SEED", 1501))
    bucket = new_bucket(ceph)
    # segments sealed by size only, so that big ones go multipart however
    # slowly the machine writes them (by age they were cut below 8 MiB once)
    site = Site(workdir, ceph, bucket, extra="compress = zstd\nmultipart_size = 5M\n",
                aimfs_opts="segment_size = 16M\nsegment_age = 10s\nsegment_idle = 2s\n"
                           "segment_eager = 0\n")
    populate(site.backing, seed, 3)
    a = start_remote(workdir, "a", site.pull_args(), cleanup)
    b = start_remote(workdir, "b", site.pull_args("300ms"), cleanup)
    m = site.start(aimfs)
    group = site.status()["group"]
    w = Workload(m.mountpoint, seed, threads=3, max_len=256 << 10)
    w.run(seconds=3)
    # one segment well above multipart_size: 9 MiB of random data, one fsync
    subprocess.run(["dd", "if=/dev/urandom", f"of={m.mountpoint}/big.raw", "bs=1M", "count=9",
                    "conv=fsync", "status=none"], check=True)
    st = site.wait_in_sync()
    for r in (a, b):
        wait_applied(r, group, st["head_lsn"])
    w.close()
    m.unmount()
    for r in (a, b):
        assert_trees_equal(r.target, site.backing)
        assert r.group(group)["consistent"] is True
    head = site.head()
    check_bucket(ceph, bucket, head)
    assert head["lsn"] == st["head_lsn"] and head["bases"], head
    # the source's journal pruned what the bucket acknowledged; the bucket,
    # with no keep, still holds every segment from the first
    pruned = catalog_states(m.journal)
    assert pruned[1] == "pruned" and head["oldest"] == 1, (pruned, head)
    assert bucket_segments(ceph, bucket, group) == list(range(1, head["segment"] + 1)), head
    assert head["bases"][0]["segment"] == head["oldest"], head
    # a multipart object's ETag is "<md5 of the parts' md5s>-<parts>"
    objs = [ceph.s3().get(bucket, f"mirror/{group}/{k}")
            for k in bucket_keys(ceph, bucket, group) if k.endswith(".aimj")]
    assert any("-" in h["etag"] for h, _ in objs), \
        f"no segment went multipart: {[(h['etag'], len(d)) for h, d in objs if len(d) > 4 << 20]}"
    assert any(h.get("x-amz-meta-aim-encoding") == "zstd" for h, _ in objs), "nothing compressed"
    for r in (a, b):
        pulls = r.status()["pulls"]
        assert pulls[0]["state"] == "polling" and pulls[0]["segments_pulled"] > 0, pulls
        # the groups validated pulled segments with the puller's hashes
        reused = r.status()["receiver"]["checks_reused"]
        assert 0 < reused <= pulls[0]["segments_pulled"], (reused, pulls)
        assert sorted(set(applied_lines(r))) == sorted(applied_lines(r))
    m.check_quiet()
    a.check_quiet()
    b.check_quiet()


def test_a_puller_catching_up_never_holds_a_segment_past_one_it_lacks(ceph, workdir, aimfs,
                                                                       cleanup):
    """A puller that was away downloads a group's backlog several segments
    at once.  One missing from the bucket (its object lost, or not yet
    readable) stops it there: nothing after it reaches the inbox, however
    many of those downloaded, so the group never holds a segment without the
    one before it; the status names the missing key.  Put back damaged, it
    is refused as it is checked; once it is back whole, the puller goes on
    and the replica converges."""
    bucket = new_bucket(ceph)
    site = Site(workdir, ceph, bucket)
    populate(site.backing, 1509, 2)
    m = site.start(aimfs)
    missing = 12
    w = Workload(m.mountpoint, 1509, threads=2, max_len=64 << 10)
    # ten segments past the one that goes missing, however loaded the VM
    deadline = time.monotonic() + 90
    while True:
        w.run(seconds=2)
        st = site.wait_in_sync()
        if site.head()["segment"] >= missing + 10 or time.monotonic() > deadline:
            break
    w.close()
    group = st["group"]
    head = site.head()
    assert head["oldest"] == 1 and head["segment"] >= missing + 10, head
    key = f"mirror/{group}/{missing:020d}.aimj"
    _, kept = ceph.s3().get(bucket, key)
    ceph.s3().delete(bucket, key)
    r = start_remote(workdir, "late", site.pull_args("200ms"), cleanup, expect_alarms=True)

    def stopped_at_the_gap():
        pull = r.status()["pulls"][0]
        return pull["state"] == "retrying" and key.split("/", 1)[1] in pull.get("last_error", "")
    wait_for(stopped_at_the_gap, 60, what="the puller to stop at the missing segment")
    r.wait_group(group, lambda g: g["applied_segment"] == missing - 1 and g["state"] == "idle",
                 what=f"segments up to {missing - 1} applied")
    inbox = os.path.join(workdir, "inbox-late", group)
    past = [n for n in os.listdir(inbox) if n.endswith(".aimj") and int(n[:20]) > missing]
    assert not past, f"the inbox holds {sorted(past)} without segment {missing}"
    # back, but damaged (a byte in its middle changed): refused as it is
    # downloaded and checked, nothing of it or after it applied
    damaged = bytearray(kept)
    damaged[len(damaged) // 2] ^= 0xff
    ceph.s3().put(bucket, key, bytes(damaged))

    def refused_as_damaged():
        pull = r.status()["pulls"][0]
        return pull["state"] == "retrying" and "not a valid segment" in pull.get("last_error", "")
    wait_for(refused_as_damaged, 60, what="the damaged segment to be refused")
    g = r.group(group)
    assert g["applied_segment"] == missing - 1 and not g["quarantined"], g
    assert not [n for n in os.listdir(inbox) if n.endswith(".aimj") and int(n[:20]) >= missing]
    ceph.s3().put(bucket, key, kept)
    r.wait_applied(group, st["head_lsn"])
    assert m.unmount() == 0
    assert_trees_equal(r.target, site.backing)
    assert sorted(set(applied_lines(r))) == sorted(applied_lines(r))
    m.check_quiet()


# ---- crashes ------------------------------------------------------------------

def test_radosgw_and_puller_killed_lose_nothing_and_apply_nothing_twice(ceph, workdir, aimfs,
                                                                        cleanup):
    seed = int(os.environ.get("AIM_SEED", 1502))
    bucket = new_bucket(ceph)
    # a rate cap keeps uploads in flight long enough to be cut
    site = Site(workdir, ceph, bucket, extra="rate = 8M\n")
    populate(site.backing, seed, 2)
    r = start_remote(workdir, "a", site.pull_args(), cleanup)
    m = site.start(aimfs, expect_alarms=True)
    cleanup.append(lambda: ceph.start_rgw() if "rgw" not in ceph.procs else None)
    group = site.status()["group"]
    site.wait_in_sync()
    w = Workload(m.mountpoint, seed, threads=2, max_len=128 << 10)
    w.start(seconds=3)
    site.wait_dest(lambda d: d["state"] == "shipping" and d["backlog_segments"] > 1,
                   "uploads in flight", 30)
    ceph.kill_rgw()
    d = site.wait_dest(lambda d: d["state"] == "retrying", "the source to say retrying", 30)
    # cut mid-upload ("reset by peer", "Empty reply"), or at the next connection
    assert re.search(r"reset|refused|connect|Empty reply|Recv failure|Send failure",
                     d["last_error"]), d
    # the puller too, while the source is cut off and the workload goes on
    time.sleep(1)
    r.kill9()
    ceph.start_rgw()
    w.join()
    r.start()
    t0 = time.monotonic()
    st = site.wait_in_sync(120)
    wait_applied(r, group, st["head_lsn"], 120)
    print(f"converged {time.monotonic() - t0:.1f} s after the restarts")
    # and once more, in the middle of pulling a backlog
    w.start(seconds=1)
    w.join()
    r.kill9()
    st = site.wait_in_sync(120)
    r.start()
    wait_applied(r, group, st["head_lsn"], 120)
    w.close()
    m.unmount()
    assert_trees_equal(r.target, site.backing)
    lines = applied_lines(r)
    dups = sorted({n for n in lines if lines.count(n) > 1})
    assert not dups, f"segments applied twice: {dups}"
    check_bucket(ceph, bucket, site.head())


# ---- what the status says when the store is wrong ----------------------------------

def test_store_errors_show_as_retrying_with_the_store_code(ceph, workdir, aimfs, cleanup):
    bucket = new_bucket(ceph, create=False)
    site = Site(workdir, ceph, bucket, secret="not-the-secret-key")
    with open(os.path.join(site.backing, "vm.img"), "wb") as f:
        f.write(os.urandom(1 << 20))
    # the pull side: a wrong secret, then a missing bucket
    bad = start_remote(workdir, "bad", site.pull_args(), cleanup, expect_alarms=True)
    gone_args = site.pull_args()
    gone_args[1] = f"{ceph.endpoint}/nosuchbucket-{os.getpid()}/mirror"
    good_sk = os.path.join(workdir, "good_sk")
    with open(good_sk, "w") as f:
        f.write(ceph.secret_key)
    gone_args[5] = good_sk
    gone = start_remote(workdir, "gone", gone_args, cleanup, expect_alarms=True)

    def pull_error(remote, code):
        last = [None]

        def ok():
            last[0] = remote.status()["pulls"][0]
            return last[0]["state"] == "retrying" and code in last[0].get("last_error", "")
        try:
            wait_for(ok, 30, 0.1, what=f"the puller to say {code}")
        except TimeoutError:
            raise AssertionError(f"pull status: {last[0]}")
    pull_error(bad, "SignatureDoesNotMatch")
    pull_error(gone, "NoSuchBucket")

    # the source: wrong secret (the bucket does not exist either: the
    # signature is checked first)
    m = site.start(aimfs, expect_alarms=True)
    d = site.wait_dest(lambda d: d["state"] == "retrying", "retrying", 60)
    assert "SignatureDoesNotMatch" in d["last_error"], d
    assert isinstance(d["next_attempt_in_seconds"], (int, float)) and d["attempts"] >= 1
    m.unmount()
    with open(site.sk, "w") as f:
        f.write(ceph.secret_key)
    # the right key, no bucket
    m = site.start(aimfs, expect_alarms=True)
    d = site.wait_dest(lambda d: d["state"] == "retrying" and "NoSuchBucket" in d["last_error"],
                       "retrying with NoSuchBucket", 60)
    # the operator creates the bucket: it converges without a restart
    ceph.s3().create_bucket(bucket)
    site.wait_in_sync(90)

    # a skewed clock: radosgw an hour ahead
    cleanup.append(lambda: (ceph.stop_daemon("rgw"), ceph.start_rgw()))
    ceph.stop_daemon("rgw")
    ceph.start_rgw(clock_offset="+1h")
    skew = start_remote(workdir, "skew", site.pull_args(), cleanup, expect_alarms=True)
    with open(os.path.join(m.mountpoint, "vm.img"), "r+b") as f:
        f.write(os.urandom(64 << 10))
        os.fsync(f.fileno())
    site.wait_dest(lambda d: d["state"] == "retrying" and
                   "RequestTimeTooSkewed" in d.get("last_error", ""),
                   "retrying with RequestTimeTooSkewed", 60)
    pull_error(skew, "RequestTimeTooSkewed")
    ceph.stop_daemon("rgw")
    ceph.start_rgw()
    site.wait_in_sync(90)

    # a full OSD: radosgw answers 408 RequestTimeout (its op timeout)
    cleanup.append(lambda: ceph.set_full(False))
    ceph.set_full(True)
    with open(os.path.join(m.mountpoint, "vm.img"), "r+b") as f:
        f.write(os.urandom(64 << 10))
        os.fsync(f.fileno())
    site.wait_dest(lambda d: d["state"] == "retrying" and
                   "RequestTimeout" in d.get("last_error", ""),
                   "retrying with RequestTimeout", 60)
    ceph.set_full(False)
    st = site.wait_in_sync(120)
    # metrics say the same as status
    assert 'aimfs_destination_state{destination="store",state="in_sync"} 1' in \
        subprocess.run(["curl", "-s", f"http://{site.status_addr}/metrics"],
                       capture_output=True, text=True).stdout
    # the skewed site catches up once the clock is right
    wait_applied(skew, st["group"], st["head_lsn"], 60)
    m.unmount()
    assert_trees_equal(skew.target, site.backing)


# ---- bases, snapshots, retention ---------------------------------------------------

KEEP_LINE = re.compile(r"destination store: keeping segments (\d+)\.\.(\d+), deleting (\d+)\.\.(\d+)")


def bucket_segments(ceph, bucket, group):
    return [int(k.split(".")[0]) for k in bucket_keys(ceph, bucket, group) if k.endswith(".aimj")]


def base_starts(head):
    """The first segments of HEAD's bases, the pending one included."""
    starts = [b["segment"] for b in head["bases"]]
    if (head.get("pending") or {}).get("segment"):
        starts.append(head["pending"]["segment"])
    return sorted(starts)


def kept_from(starts, frm):
    """The first segment kept when a policy keeps from segment frm: the
    newest base at or before it, so that the kept segments can be used."""
    return max((b for b in starts if b <= frm), default=frm)


def catalog_rows(journal, sql, *args):
    """The rows of a query on the source's catalog, opened read-only."""
    import sqlite3
    db = sqlite3.connect(f"file:{os.path.join(journal, 'catalog.db')}?mode=ro", uri=True,
                         timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def catalog_sealed(journal):
    """{segment: sealed_ns} of every segment the source ever sealed (its
    catalog keeps the rows of pruned ones)."""
    return dict(catalog_rows(journal, "SELECT number, sealed_ns FROM segments"))


def segments_without(journal, name):
    """Segments that hold writes, none of them to the image called name."""
    return {n for (n,) in catalog_rows(
        journal, "SELECT DISTINCT segment FROM writes WHERE segment NOT IN"
        " (SELECT w.segment FROM writes w JOIN images i ON w.image = i.id"
        "  WHERE i.name = ?)", name)}


def catalog_states(journal):
    """{segment: state} from the source's catalog ('pruned' once the
    journal deleted it)."""
    return dict(catalog_rows(journal, "SELECT number, state FROM segments"))


def wait_retention(site, m, passes_before):
    """Waits for a retention pass that deleted something to finish (its
    HEAD forgot purge_from); returns HEAD and the pass's (kept from, kept
    to, deleted from, deleted to) from the source's log."""
    def done():
        lines = KEEP_LINE.findall(m.output())
        return len(lines) > passes_before and not site.head().get("purge_from")
    try:
        wait_for(done, 30, 0.2, what="a retention pass that deletes")
    except TimeoutError:
        raise AssertionError(f"no retention pass deleted anything; HEAD {site.head()}\n"
                             f"{m.output()[-3000:]}") from None
    return site.head(), tuple(int(x) for x in KEEP_LINE.findall(m.output())[-1])


def restore_and_compare(site, workdir, name, lsn, oldest):
    """aimctl restore from what the bucket still holds, at lsn; returns the
    directory (compare it once the source is unmounted)."""
    from aimtest import AIMCTL, run
    target = os.path.join(workdir, f"restored-{name}")
    p = run([AIMCTL, "restore", "--from", site.url, "--until", str(lsn), "--target-dir", target,
             "--access-key-file", site.ak, "--secret-key-file", site.sk])
    base = int(re.search(r"base: segment (\d+)", p.stdout).group(1))
    assert base >= oldest, p.stdout
    return target


def test_snapshots_and_retention_keep_the_base_the_kept_segments_need(ceph, workdir, aimfs,
                                                                     cleanup):
    """keep = 4 segments: the segments and the bases older than what the
    last 4 need are deleted, the newest base they need and everything after
    it stays, and the bucket still restores the source and starts a new
    site.  Retention passes run at a destination's start and then once a
    minute: the source is restarted (without its snapshot schedule, so
    that no new base begins meanwhile) to run one now."""
    KEEP = 4
    bucket = new_bucket(ceph)
    site = Site(workdir, ceph, bucket, extra=f"snapshot_every = 2s\nkeep = {KEEP} segments\n")
    with open(os.path.join(site.backing, "vm.img"), "wb") as f:
        f.write(os.urandom(1 << 20))
    m = site.start(aimfs)
    group = site.group
    site.wait_in_sync()

    def enough(h):
        # three complete bases, the second one well before the last KEEP segments
        return len(h["bases"]) >= 3 and h["bases"][1]["segment"] < h["segment"] - KEEP - 1
    deadline = time.monotonic() + 40
    n = 0
    while not enough(site.head()):
        assert time.monotonic() < deadline, f"no three bases: {site.head()}"
        with open(os.path.join(m.mountpoint, "vm.img"), "r+b") as f:
            f.seek((n * 4096) % (1 << 20))
            f.write(os.urandom(4096))
            os.fsync(f.fileno())
        n += 1
        time.sleep(0.2)
    site.wait_in_sync()
    before = site.head()
    # the pass at the start found nothing to delete; the source's journal
    # pruned what was uploaded, the bucket did not
    assert bucket_segments(ceph, bucket, group) == list(range(1, before["segment"] + 1)), before
    assert before["oldest"] == 1 and before["bases"][0]["segment"] == 1, before
    m.unmount()
    assert catalog_states(m.journal)[1] == "pruned"
    site.write_conf(f"keep = {KEEP} segments\n")
    m = site.start(aimfs)
    head, (kfrom, kto, dfrom, dto) = wait_retention(site, m, 0)
    want = kept_from(base_starts(before), kto - KEEP + 1)
    assert want > 1, (before, kto)
    assert (kfrom, dfrom, dto) == (want, 1, want - 1), (kfrom, kto, dfrom, dto, before)
    assert head["oldest"] == want, head
    # old segments and the bases in them are gone; the newest base the kept
    # segments need is kept, and every segment from it to HEAD's
    assert bucket_segments(ceph, bucket, group) == list(range(want, head["segment"] + 1)), head
    assert [b for b in base_starts(before) if b < want], before
    assert base_starts(head)[0] == want and all(b >= want for b in base_starts(head)), head
    # what remains restores the source, and starts a new site
    st = site.wait_in_sync()
    r = start_remote(workdir, "late", site.pull_args(), cleanup)
    restored = restore_and_compare(site, workdir, "count", st["head_lsn"], want)
    wait_applied(r, group, st["head_lsn"])
    m.unmount()
    assert tree_hashes(restored) == tree_hashes(site.backing)
    assert_trees_equal(r.target, site.backing)
    assert "snapshot_every: starting a new base" in m.output()
    m.check_quiet()
    r.check_quiet()


@pytest.mark.parametrize("limited", [False, True], ids=["all-images", "one-image"])
def test_keep_by_age_deletes_what_is_older_and_keeps_what_is_younger(ceph, workdir, aimfs,
                                                                     cleanup, limited):
    """keep = 4s: a retention pass deletes the segments sealed more than 4 s
    before it (back to the newest base the younger ones need), keeps the
    younger ones, and deletes those at a later pass once they are older.
    The source is restarted to run a pass (one at start, then once a
    minute), without its snapshot schedule then.  one-image: the
    destination mirrors vm.img only and the guest writes other.img as much
    (segments that hold only other.img's records reach the bucket empty):
    ages still come from the source's seal times, the bucket is still a
    contiguous run, and a restore gives vm.img alone."""
    KEEP = 4
    KEEP_NS = KEEP * 10**9
    only = "images = vm.img\n" if limited else ""
    files = ["vm.img", "other.img"] if limited else ["vm.img"]
    bucket = new_bucket(ceph)
    # one-image: the journal keeps its segments (and the catalog their
    # writes) so that the test can tell which segments held vm.img's
    site = Site(workdir, ceph, bucket, extra=f"snapshot_every = 1s\nkeep = {KEEP}s\n{only}",
                aimfs_opts="segment_size = 256K\nretain = 1h" if limited else "")
    for name in files:
        with open(os.path.join(site.backing, name), "wb") as f:
            f.write(os.urandom(512 << 10))
    m = site.start(aimfs)
    group = site.group
    site.wait_in_sync()
    t_end = time.monotonic() + 2 * KEEP
    n = 0
    while time.monotonic() < t_end:
        # one-image: runs of other.img only, so whole segments hold none of vm.img
        name = files[(n // 3) % len(files)]
        with open(os.path.join(m.mountpoint, name), "r+b") as f:
            f.seek((n * 4096) % (512 << 10))
            f.write(os.urandom(4096))
            os.fsync(f.fileno())
        n += 1
        time.sleep(0.2)
    site.wait_in_sync()
    before = site.head()
    assert len(before["bases"]) >= 3, before
    # kept before the age: the pass at the start deleted nothing
    assert bucket_segments(ceph, bucket, group) == list(range(1, before["segment"] + 1)), before
    m.unmount()
    sealed = catalog_sealed(m.journal)
    assert max(sealed) >= before["segment"], (sealed, before)   # (+ those sealed at unmount)
    site.write_conf(f"keep = {KEEP}s\n{only}")
    t1 = time.time_ns()
    m = site.start(aimfs)
    head, (kfrom, kto, dfrom, dto) = wait_retention(site, m, 0)
    t2 = time.time_ns()
    # every base: snapshot_every may have begun one between `before` and
    # the unmount (seen under load); the restarted source begins none
    bases = sorted(set(base_starts(before)) | set(base_starts(head)))

    def expect(t):
        cut = max((n for n, s in sealed.items() if s < t - KEEP_NS), default=0)
        return kept_from(bases, min(cut + 1, kto))
    assert expect(t1) <= kfrom <= expect(t2) and kfrom > 1, (kfrom, sealed, before, t1, t2)
    assert (dfrom, dto) == (1, kfrom - 1) and head["oldest"] == kfrom, head
    assert all(sealed[n] < t2 - KEEP_NS for n in range(1, kfrom)), "deleted a young segment"
    young = [n for n, s in sealed.items() if s >= t2 - KEEP_NS]
    assert young, f"no segment younger than {KEEP} s at the pass: {sealed} {t2}"
    segs = bucket_segments(ceph, bucket, group)
    assert segs == list(range(kfrom, head["segment"] + 1)) and set(young) <= set(segs), \
        (segs, young, head)
    first_pass = kfrom
    # later, every segment from before the restart is older than the age:
    # the next pass deletes up to the newest base (the young ones too)
    time.sleep(max(0, (max(sealed.values()) + KEEP_NS - time.time_ns()) / 1e9 + 0.5))
    m.unmount()
    m = site.start(aimfs)
    head, (kfrom, kto, dfrom, dto) = wait_retention(site, m, 1)
    want = bases[-1]
    assert want > first_pass and kfrom == want and (dfrom, dto) == (first_pass, want - 1), \
        (kfrom, kto, dfrom, dto, before, first_pass)
    assert set(young) & set(range(first_pass, want)), "none of the young ones were deleted"
    if limited:
        # segments of other.img alone were shipped (empty), aged and deleted like the rest
        lone = segments_without(m.journal, "vm.img")
        assert lone & set(range(1, want)), (lone, want)
    assert bucket_segments(ceph, bucket, group) == list(range(want, head["segment"] + 1)), head
    # what remains restores the source
    st = site.wait_in_sync()
    lsn = st["head_lsn"]
    if limited:
        # the bucket numbers vm.img's records alone (FORMAT.md: a filtered
        # destination has its own gap-free LSNs); HEAD says up to where
        last = max(catalog_sealed(m.journal))
        wait_for(lambda: site.head()["segment"] >= last, 10, 0.2,
                 what="HEAD to name the last segment")
        lsn = site.head()["lsn"]
        assert lsn < st["head_lsn"], (lsn, st)
    restored = restore_and_compare(site, workdir, "age", lsn, want)
    m.unmount()
    source = tree_hashes(site.backing)
    assert set(source) == set(files)
    assert tree_hashes(restored) == ({"vm.img": source["vm.img"]} if limited else source)
    m.check_quiet()


# ---- scale ---------------------------------------------------------------------------

def test_twenty_mounts_into_one_bucket_one_puller(ceph, workdir, aimfs, cleanup):
    bucket = new_bucket(ceph)
    sites = []
    for i in range(20):
        s = Site(workdir, ceph, bucket, name=f"m{i:02d}")
        with open(os.path.join(s.backing, f"vm{i}.img"), "wb") as f:
            f.write(os.urandom(1 << 20))
        sites.append(s)
    r = start_remote(workdir, "all", sites[0].pull_args(), cleanup)
    for s in sites:
        s.start(aimfs)
    for i, s in enumerate(sites):
        with open(os.path.join(s.mnt, f"vm{i}.img"), "r+b") as f:
            for k in range(8):
                f.seek(k * 128 << 10)
                f.write(os.urandom(64 << 10))
            os.fsync(f.fileno())
        os.rename(os.path.join(s.mnt, f"vm{i}.img"), os.path.join(s.mnt, f"disk{i}.img"))
        os.truncate(os.path.join(s.mnt, f"disk{i}.img"), 768 << 10)
    heads = {}
    for s in sites:
        st = s.wait_in_sync(120)
        heads[st["group"]] = st["head_lsn"]
    for g, lsn in heads.items():
        wait_applied(r, g, lsn, 120)
    for s in sites:
        s.mount.unmount()
    for i, s in enumerate(sites):
        with open(os.path.join(s.backing, f"disk{i}.img"), "rb") as a, \
                open(os.path.join(r.target, f"disk{i}.img"), "rb") as b:
            assert a.read() == b.read(), f"group of mount {i} differs"
    assert len(r.status()["groups"]) == 20
    assert r.status()["pulls"][0]["groups"] == 20
    r.check_quiet()


# ---- one aim-remote, every way of configuring pulls, and a receiver ---------------------

def test_one_remote_pulls_by_two_flags_and_a_config_section_and_receives_https(
        ceph, workdir, aimfs, cleanup, monkeypatch):
    """One aim-remote applies four groups at once: two `--pull` flags (the
    first with key files, the second with no key options: the
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables, which the second
    source's destination uses too), a `[pull NAME]` section of its
    --config file, and an aimfs shipping to its --listen receiver over
    HTTPS.  Each group's images on the replica end byte-equal to its
    source's."""
    from remote_helpers import PKI
    for k, v in ceph.env().items():
        monkeypatch.setenv(k, v)
    sites = {k: Site(workdir, ceph, new_bucket(ceph), name=k, creds=(k != "env"))
             for k in ("flag", "env", "conf")}
    pki = PKI(os.path.join(workdir, "pki"))
    conf = os.path.join(workdir, "remote.conf")
    c = sites["conf"]
    with open(conf, "w") as f:
        f.write(f"[pull from-config]\nurl = {c.url}\naccess_key_file = {c.ak}\n"
                f"secret_key_file = {c.sk}\npull_interval = 200ms\n")
    inbox, target = os.path.join(workdir, "inbox-all"), os.path.join(workdir, "replica-all")
    os.makedirs(inbox)
    os.makedirs(target)
    r = Remote(workdir, inbox, target, name="remote-all", listen=True, pki=pki,
               state=os.path.join(workdir, "state-all"),
               args=["--token-file", pki.token_file,
                     *sites["flag"].pull_args(), "--pull", sites["env"].url,
                     "--pull-interval", "200ms", "--config", conf])
    cleanup.append(r.close)
    r.start()
    # the https source
    https = os.path.join(workdir, "aimfs-https.conf")
    https_status = f"127.0.0.1:{free_port()}"
    with open(https, "w") as f:
        f.write(f"[aimfs]\nstatus = {https_status}\nsegment_size = 256K\nsegment_age = 200ms\n"
                f"[destination dr]\nurl = {r.base_url}/aim\nca_file = {pki.ca}\n"
                f"token_file = {pki.token_file}\n")
    backings = {k: s.backing for k, s in sites.items()}
    backings["https"] = os.path.join(workdir, "backing-https")
    os.makedirs(backings["https"])
    for k, b in backings.items():
        with open(os.path.join(b, f"{k}.img"), "wb") as f:
            f.write(os.urandom(1 << 20))
    mounts = {k: s.start(aimfs) for k, s in sites.items()}
    mounts["https"] = aimfs(backing=backings["https"],
                            mountpoint=os.path.join(workdir, "mnt-https"),
                            options=[f"config={https}"])
    for k, m in mounts.items():
        img = os.path.join(m.mountpoint, f"{k}.img")
        with open(img, "r+b") as f:
            for i in range(6):
                f.seek(i * 160 << 10)
                f.write(os.urandom(48 << 10))
            os.fsync(f.fileno())
        os.rename(img, os.path.join(m.mountpoint, f"{k}-disk.img"))
        os.truncate(os.path.join(m.mountpoint, f"{k}-disk.img"), 700 << 10)
    heads = {}
    for k, s in sites.items():
        st = s.wait_in_sync()
        heads[k] = (st["group"], st["head_lsn"])
    wait_for(lambda: get_status(https_status)["in_sync"], 60, 0.1, what="the https source in sync")
    st = get_status(https_status)
    heads["https"] = (st["group"], st["head_lsn"])
    for k, (g, lsn) in heads.items():
        wait_applied(r, g, lsn)
    for m in mounts.values():
        m.unmount()
    for k, b in backings.items():
        assert sorted(os.listdir(b)) == [".aimfs", f"{k}-disk.img"], os.listdir(b)
        with open(os.path.join(b, f"{k}-disk.img"), "rb") as a, \
                open(os.path.join(target, f"{k}-disk.img"), "rb") as t:
            assert a.read() == t.read(), f"the {k} group differs"
        assert not os.path.exists(os.path.join(target, f"{k}.img")), k
    pulls = {p["name"]: p for p in r.status()["pulls"]}
    assert set(pulls) == {sites["flag"].url, sites["env"].url, "from-config"}, pulls
    for p in pulls.values():
        assert p["state"] == "polling" and p["groups"] == 1 and p["segments_pulled"] > 0, p
    assert pulls["from-config"]["interval_seconds"] == 0.2, pulls
    rx = r.status()["receiver"]
    assert rx["enabled"] and rx["accepted"] > 0 and rx["rejected_total"] == 0, rx
    for m in mounts.values():
        m.check_quiet()
    r.check_quiet()


# ---- restore ---------------------------------------------------------------------

def tree_hashes(root):
    """{relative path: sha256 | 'dir'} of everything under root but .aimfs."""
    import hashlib
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d != ".aimfs"]
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), root)] = \
                    hashlib.sha256(fh.read()).hexdigest()
    return out


def test_restore_until_a_mark_gives_the_state_at_the_mark(ceph, workdir, aimfs, cleanup):
    from aimtest import AIMCTL, run
    seed = int(os.environ.get("AIM_SEED", 1505))
    bucket = new_bucket(ceph)
    site = Site(workdir, ceph, bucket, extra="compress = zstd\nsnapshot_every = 2s\n")
    populate(site.backing, seed, 2)
    m = site.start(aimfs)
    site.wait_in_sync()
    w = Workload(m.mountpoint, seed, threads=2, max_len=128 << 10)
    marks = {}
    for k in range(3):
        w.run(seconds=1.5)
        # the workload is paused: the source as it is at the mark
        marks[f"m{k}"] = tree_hashes(m.mountpoint)
        out = run([AIMCTL, "mark", "--status", site.status_addr, f"m{k}"]).stdout
        assert "LSN" in out or out.strip(), out
    w.run(seconds=1)
    st = site.wait_in_sync()
    w.close()
    head = site.head()
    assert len(head["bases"]) >= 2, head
    bases = {}
    for name, want in marks.items():
        target = os.path.join(workdir, f"restored-{name}")
        p = run([AIMCTL, "restore", "--from", site.url, "--until", f"MARK:{name}",
                 "--target-dir", target, "--access-key-file", site.ak,
                 "--secret-key-file", site.sk])
        assert "base: segment" in p.stdout and f'MARK "{name}"' in p.stdout, p.stdout
        bases[name] = int(re.search(r"base: segment (\d+)", p.stdout).group(1))
        have = tree_hashes(target)
        assert have == want, (f"restore at {name} differs: only restored "
                              f"{sorted(set(have) - set(want))}, only source "
                              f"{sorted(set(want) - set(have))}, different "
                              f"{sorted(k for k in want if k in have and have[k] != want[k])}"
                              f"\n{p.stdout}")
    # the newest base reached the last mark; the first mark needed an older one
    assert bases["m0"] <= bases["m1"] <= bases["m2"], bases
    # the head LSN restores the source as it is now
    target = os.path.join(workdir, "restored-head")
    run([AIMCTL, "restore", "--from", site.url, "--until", str(st["head_lsn"]), "--target-dir",
         target, "--access-key-file", site.ak, "--secret-key-file", site.sk])
    m.unmount()
    assert tree_hashes(target) == tree_hashes(site.backing)
    # a point before the first base is complete is refused, saying why
    p = run([AIMCTL, "restore", "--from", site.url, "--until", "1", "--target-dir",
             os.path.join(workdir, "too-early"), "--access-key-file", site.ak,
             "--secret-key-file", site.sk], check=False)
    assert p.returncode == 1 and "no base" in p.stderr, p.stderr
    m.check_quiet()


def test_a_restore_fetches_ahead_but_needs_only_the_segments_up_to_its_point(
        ceph, workdir, aimfs, cleanup):
    """aimctl restore downloads several segments at once.  Segments past the
    point that the bucket lacks (a retention pass racing the restore, a lost
    object) change nothing, wherever the point falls among the downloads; one
    the point needs fails the restore, naming it, and leaves no target
    behind; --segments-dir keeps exactly the segments from the base to the
    point."""
    from aimtest import AIMCTL, run
    bucket = new_bucket(ceph)
    site = Site(workdir, ceph, bucket)
    with open(os.path.join(site.backing, "vm.img"), "wb") as f:
        f.write(os.urandom(1 << 20))
    m = site.start(aimfs)
    site.wait_in_sync()
    rng = random.Random(4242)
    at_mark = {}
    for k in range(20):
        # one write per segment: each waits until the last one is shipped
        with open(os.path.join(m.mountpoint, "vm.img"), "r+b") as f:
            f.seek(rng.randrange(16) * (64 << 10))
            f.write(rng.randbytes(64 << 10))
        site.wait_in_sync()
        if 10 <= k < 13:
            with open(os.path.join(m.mountpoint, "vm.img"), "rb") as f:
                at_mark[f"m{k}"] = f.read()
            run([AIMCTL, "mark", "--status", site.status_addr, f"m{k}"])
            site.wait_in_sync()
    assert m.unmount() == 0
    prefix = f"mirror/{site.group}/"
    last = max(int(k[len(prefix):].split(".")[0])
               for k in ceph.s3().list(bucket, prefix) if k.endswith(".aimj"))

    def restore(mark, target, *extra):
        p = run([AIMCTL, "restore", "--from", site.url, "--until", f"MARK:{mark}",
                 "--target-dir", os.path.join(workdir, target), "--access-key-file", site.ak,
                 "--secret-key-file", site.sk, *extra], check=False)
        if p.returncode:
            return p, None
        with open(os.path.join(workdir, target, "vm.img"), "rb") as f:
            assert f.read() == at_mark[mark], f"restore at {mark} differs\n{p.stdout}"
        return p, tuple(int(x) for x in re.search(
            r"applied segments (\d+)\.\.(\d+)", p.stdout).groups())

    kept = os.path.join(workdir, "kept")
    points = {}
    for mark in at_mark:
        p, (base, points[mark]) = restore(mark, f"first-{mark}",
                                         *(["--segments-dir", kept] if mark == "m12" else []))
    assert sorted(os.listdir(kept)) == [f"{n:020d}.aimj" for n in range(base, points["m12"] + 1)]
    # three consecutive points, each with the two segments after it gone
    # from the bucket: at least one of them has its neighbours in its batch
    assert points["m10"] < points["m11"] < points["m12"] < last - 2, (points, last)
    for mark in ("m12", "m11", "m10"):
        for n in (points[mark] + 1, points[mark] + 2):
            ceph.s3().delete(bucket, f"{prefix}{n:020d}.aimj")
        p, _ = restore(mark, f"again-{mark}")
        assert p.returncode == 0, p.stderr
    # one before the point: needed
    gone = f"{points['m10'] - 1:020d}.aimj"
    ceph.s3().delete(bucket, prefix + gone)
    failed = os.path.join(workdir, "failed")
    p, _ = restore("m10", "needed", "--segments-dir", failed)
    assert p.returncode == 1 and gone in p.stderr, (p.stdout, p.stderr)
    assert not os.path.exists(os.path.join(workdir, "needed"))
    # nothing downloaded past the one that failed is left behind
    assert max(os.listdir(failed)) == gone, sorted(os.listdir(failed))


def test_a_destination_moved_to_an_empty_prefix_gets_a_new_base(ceph, workdir, aimfs, cleanup):
    """The operator points a destination at a new bucket or prefix (or
    HEAD is deleted).  aimfs went on from the next segment with a HEAD that
    had no base and never would: every restore from there was refused, and
    the status said in_sync.  A full resync now makes a new base there."""
    from aimtest import AIMCTL, run
    bucket = new_bucket(ceph)
    site = Site(workdir, ceph, bucket)
    with open(os.path.join(site.backing, "vm.img"), "wb") as f:
        f.write(os.urandom(512 << 10))
    m = site.start(aimfs)
    site.wait_in_sync()
    with open(os.path.join(m.mountpoint, "vm.img"), "r+b") as f:
        f.write(os.urandom(64 << 10))
    site.wait_in_sync()
    assert m.unmount() == 0
    site.url = f"{ceph.endpoint}/{bucket}/moved"
    site.write_conf("")
    m = site.start(aimfs, expect_alarms=True)
    with open(os.path.join(m.mountpoint, "vm.img"), "r+b") as f:
        f.seek(128 << 10)
        f.write(os.urandom(64 << 10))
    st = site.wait_in_sync()

    def head():
        return json.loads(ceph.s3().get(bucket, f"moved/{site.group}/HEAD")[1])
    # HEAD is written after the acknowledgement, at most once a second
    wait_for(lambda: head()["bases"] and head()["lsn"] >= st["head_lsn"], 30,
             what="a base in the new prefix's HEAD, and HEAD at the source's LSN")
    target = os.path.join(workdir, "restored")
    run([AIMCTL, "restore", "--from", site.url, "--until", str(st["head_lsn"]), "--target-dir",
         target, "--access-key-file", site.ak, "--secret-key-file", site.sk])
    assert m.unmount() == 0
    assert tree_hashes(target) == tree_hashes(site.backing)


# ---- refusals at start (no store needed) ----------------------------------------------

@pytest.mark.parametrize("lines,why,status", [
    ("url = https://s3.example/b\n", "not a valid bucket name", 2),
    ("url = https://s3.example\n", "names no bucket", 2),
    ("url = https://s3.example/bkt\ntoken_file = /etc/hostname\n", "token_file is for https", 2),
    ("url = https://s3.example/bkt\nkeep = forever\n", "keep = forever", 2),
    ("url = https://s3.example/bkt\nmultipart_size = 1M\n", "at least 5M", 2),
    ("url = https://s3.example/bkt\naccess_key_file = /nonexistent\n", "/nonexistent", 1),
])
def test_bad_object_store_destinations_refuse_the_mount(workdir, lines, why, status):
    """2 for a bad value (a usage error), 1 for a key file that cannot be read."""
    from aimtest import AIMFS
    conf = os.path.join(workdir, "bad.conf")
    with open(conf, "w") as f:
        keys = "" if "access_key_file" in lines else "access_key_file = /etc/hostname\n"
        f.write("[destination store]\ntype = s3\nsecret_key_file = /etc/hostname\n" + keys + lines)
    os.makedirs(os.path.join(workdir, "b"))
    os.makedirs(os.path.join(workdir, "m"))
    p = subprocess.run([AIMFS, "-f", "-o", f"config={conf}", os.path.join(workdir, "b"),
                        os.path.join(workdir, "m")], capture_output=True, text=True, timeout=30)
    assert p.returncode == status and why in p.stderr, (p.returncode, p.stderr)


def test_https_destinations_refuse_object_store_keys(workdir):
    from aimtest import AIMFS
    conf = os.path.join(workdir, "bad.conf")
    with open(conf, "w") as f:
        f.write("[destination dr]\nurl = https://dr.example/aim\nkeep = 7d\n")
    os.makedirs(os.path.join(workdir, "b"))
    os.makedirs(os.path.join(workdir, "m"))
    p = subprocess.run([AIMFS, "-f", "-o", f"config={conf}", os.path.join(workdir, "b"),
                        os.path.join(workdir, "m")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "are for object stores (type = s3)" in p.stderr, p.stderr


def test_bad_pulls_refuse_to_start(workdir):
    from aimtest import AIM_REMOTE
    inbox, target = os.path.join(workdir, "in"), os.path.join(workdir, "t")
    os.makedirs(inbox)
    os.makedirs(target)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for args, why in ((["--pull", "https://s3.example"], "names no bucket"),
                      (["--pull", "https://s3.example/bkt"], "no access key"),
                      (["--pull", "https://s3.example/bkt", "--pull-interval", "1ms"],
                       "at least 50ms")):
        p = subprocess.run([AIM_REMOTE, "--inbox", inbox, "--target-dir", target,
                            "--status", "off", *args], capture_output=True, text=True,
                           timeout=30, env=env)
        assert p.returncode != 0 and why in p.stderr, (args, p.stderr)
    conf = os.path.join(workdir, "pull.conf")
    with open(conf, "w") as f:
        f.write("[pull a]\nurl = https://s3.example/bkt\nbogus = 1\n")
    p = subprocess.run([AIM_REMOTE, "--inbox", inbox, "--target-dir", target, "--status", "off",
                        "--config", conf], capture_output=True, text=True, timeout=30, env=env)
    assert p.returncode == 2 and 'unknown key "bogus"' in p.stderr, p.stderr
