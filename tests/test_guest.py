"""A real guest on an aimfs mount (issue 13 item 4): one
QEMU guest with two disks on one mount, so one consistency group, a raw
image opened `cache=none,aio=native` and a qcow2 image opened
`cache=writeback`, the mount shipping over HTTPS (TLS, client certificate,
bearer token) to an aim-remote on loopback.

The guest (tests/guest.py: Debian's cloud kernel, a busybox initramfs
carrying e2fsprogs' mke2fs) makes ext4 on both disks and then writes files
without end: each file is written, fsynced, its directory fsynced, and
only then reported on the serial port with its sha256 (`FILE disk name
sha size`); between files it overwrites a scratch file without fsync, so
a cut always finds unsynced data in flight.  Each boot first reports the
hash of every file it finds (`SEEN`).

Rounds:
  a. power cut: kill -9 of qemu mid-workload;
  b. kill -9 of aimfs under the running guest (its disks have
     werror=stop,rerror=stop, so QEMU pauses it on the first I/O error,
     which QMP shows as `io-error`: proof the guest was doing I/O on the
     dead mount), then remount (recovery), then quit that qemu;
  c. a restarted guest on the recovered mount, which writes a few files
     and shuts down cleanly.
After each round: the source's status says in sync (the remote idle with
the acknowledged segment applied); the replica directory equals the backing
directory byte for byte; a copy of each replica image (the qcow2 one
converted to raw by qemu-img, after `qemu-img check` finds no corruption)
is mounted through a loop device, which replays the ext4 journal as a
guest's next boot would, and every file the guest ever reported as fsynced
is there with its hash; unmounted, `e2fsck -fn` finds it clean.  Each boot
after a round must also SEE every file reported before it, with its hash.
Finally both daemons stop cleanly and their logs hold no alarm word.

A test failover (issue 13 item 1, test_guest_test_failover_on_overlays_of_
a_held_replica): while the source guest writes, the replica is held at a
mark; a second guest boots on qcow2 overlays of the held images and finds
every file fsynced before the mark; the replica does not change until it
is released, and then converges.

The `soak` version (pytest -m soak; AIM_SOAK_ROUNDS, default 20) does
many random rounds of a and b, some of them cut while the guest mounts
(replaying the journals of the cut before).
AIM_SEED=<n> reproduces the moments of the cuts (it is in every failure
message).  Guest logs are kept on failure (see tests/guest.py).

test_guest_runs_aimfs_carried_in_with_its_libraries proves the harness can
carry aimfs itself into a guest (the start of a power-cut test of aimfs:
its journal and backing files on a guest disk, the host cutting qemu)."""
import hashlib
import json
import os
import random
import shutil
import subprocess
import time

import pytest

from aimtest import AIM_REMOTE, AIMCTL, AIMFS, assert_trees_equal, run, wait_for
from guest import Disk, build_initramfs, guests, kernel, pick_accel  # noqa: F401 (fixture)
from remote_helpers import PKI, Remote, free_port
from servers import get_status

DISK_MB = 96
DISKS = (                       # (serial in the guest, image name, format, qemu cache)
    ("raw", "vm-raw.img", "raw", "none"),
    ("qcow2", "vm.qcow2", "qcow2", "writeback"),
)
SEGMENT_OPTS = "segment_size = 256K\nsegment_age = 200ms\n"
BOOT_TIMEOUT = 120              # boot to the first result line (TCG)
STEP_TIMEOUT = 180              # one step of the guest's workload


@pytest.fixture(autouse=True)
def _need_tools():
    if not os.path.exists(AIM_REMOTE):
        pytest.fail(f"{AIM_REMOTE} is not built (set AIM_BUILD)")
    missing = [t for t in ("qemu-system-x86_64", "qemu-img", "busybox", "cpio", "losetup",
                           "e2fsck", "mke2fs") if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing {missing}: run scripts/install-deps.sh")


@pytest.fixture
def pki(workdir):
    return PKI(os.path.join(workdir, "pki"))


@pytest.fixture
def cleanup():
    """Callables run at teardown, last first, even on failure."""
    todo = []
    yield todo
    for fn in reversed(todo):
        try:
            fn()
        except Exception:   # noqa: BLE001 - teardown goes on
            pass


# ---- the guest's script ---------------------------------------------------------

def guest_script(round_no, fresh, files):
    """The init script of one boot: mkfs if FRESH, mount both disks, report
    what is there, then write FILES files per disk (0: without end)."""
    return f"""
ROUND={round_no}
FILES={files}
if [ {1 if fresh else 0} = 1 ]; then
    for s in {' '.join(s for s, *_ in DISKS)}; do mke2fs -q -t ext4 -F "$(disk $s)"; done
    aimt MKFS
fi
for s in {' '.join(s for s, *_ in DISKS)}; do
    mkdir -p /mnt/$s
    mount -t ext4 "$(disk $s)" /mnt/$s
done
# journals the kernel replayed at this mount (after a cut: both)
for s in {' '.join(s for s, *_ in DISKS)}; do
    d=$(disk $s); d=${{d#/dev/}}
    if dmesg | grep -q "EXT4-fs ($d): recovery complete"; then aimt REPLAYED $s; fi
done
aimt MOUNTED
for s in {' '.join(s for s, *_ in DISKS)}; do
    for f in /mnt/$s/f-*; do
        [ -e "$f" ] || continue
        aimt SEEN $s ${{f##*/}} $(sha256sum < "$f" | cut -d' ' -f1)
    done
done
aimt SEEN-END
i=0
while [ $FILES = 0 ] || [ $i -lt $FILES ]; do
    for s in {' '.join(s for s, *_ in DISKS)}; do
        f=/mnt/$s/f-$ROUND-$i
        n=$((RANDOM % 24 + 1))
        dd if=/dev/urandom of=$f.tmp bs=4096 count=$n conv=fsync 2>/dev/null
        mv $f.tmp $f
        sync $f /mnt/$s
        aimt FILE $s ${{f##*/}} $(sha256sum < $f | cut -d' ' -f1) $((n * 4096))
        # in flight at any cut: unsynced overwrites
        dd if=/dev/urandom of=/mnt/$s/scratch bs=4096 count=16 seek=$((RANDOM % 64)) \\
            conv=notrunc 2>/dev/null
    done
    i=$((i + 1))
done
for s in {' '.join(s for s, *_ in DISKS)}; do umount /mnt/$s; done
aimt DONE
"""


# ---- the site: one mount shipping to one aim-remote ---------------------------------

class Site:
    def __init__(self, workdir, pki, aimfs, cleanup, seed):
        self.workdir = workdir
        self.aimfs = aimfs
        self.seed = seed
        self.backing = os.path.join(workdir, "backing")
        self.mnt = os.path.join(workdir, "mnt")
        self.replica = os.path.join(workdir, "replica")
        inbox = os.path.join(workdir, "inbox")
        for d in (self.backing, self.replica, inbox):
            os.makedirs(d)
        self.remote = Remote(workdir, inbox=inbox, target=self.replica, name="remote",
                             listen=True, pki=pki, state=os.path.join(workdir, "state"),
                             args=["--token-file", pki.token_file, "--client-ca", pki.ca])
        cleanup.append(self.remote.close)
        self.remote.start()
        self.status_addr = f"127.0.0.1:{free_port()}"
        self.conf = os.path.join(workdir, "aimfs.conf")
        with open(self.conf, "w") as f:
            f.write(f"[aimfs]\nstatus = {self.status_addr}\n{SEGMENT_OPTS}\n"
                    f"[destination dr]\nurl = {self.remote.base_url}/aim\n"
                    f"ca_file = {pki.ca}\ncert_file = {pki.client}\n"
                    f"key_file = {pki.client_key}\ntoken_file = {pki.token_file}\n")
        self.mounts = []
        self.mount = None
        self.log = []               # what happened, for failure messages
        self.reported = {s: {} for s, *_ in DISKS}   # disk -> {file: sha256}
        self.dirty = False          # the filesystems were mounted at the last cut
        self.kern = kernel()
        self.accel = pick_accel()

    def what(self):
        return f"AIM_SEED={self.seed}; " + "; ".join(self.log)

    def mount_aimfs(self):
        self.mount = self.aimfs(backing=self.backing, mountpoint=self.mnt,
                                options=[f"config={self.conf}"])
        self.mounts.append(self.mount)
        return self.mount

    def make_images(self):
        for _, name, fmt, _ in DISKS:
            run(["qemu-img", "create", "-q", "-f", fmt, os.path.join(self.mnt, name),
                 f"{DISK_MB}M"])

    def disks(self, stop_on_error=False):
        pol = "stop" if stop_on_error else None
        return [Disk(os.path.join(self.mnt, name), fmt=fmt, cache=cache, serial=serial,
                     werror=pol, rerror=pol)
                for serial, name, fmt, cache in DISKS]

    def initrd(self, name, round_no, fresh, files):
        path = os.path.join(self.workdir, f"{name}.cpio.gz")
        return build_initramfs(path, guest_script(round_no, fresh, files), self.kern,
                               extra_binaries=["/sbin/mke2fs"],
                               files={"/etc/mke2fs.conf": "/etc/mke2fs.conf"})

    def boot(self, guests, name, round_no, fresh, files, stop_on_error=False, paused=False,
             early=False):
        """Boots a guest on the images.  Unless EARLY (the test cuts it
        while it mounts), waits until it has reported what it finds, and
        checks that."""
        g = guests(name, self.kern, self.initrd(name, round_no, fresh, files),
                   self.disks(stop_on_error), paused=paused)
        if paused:
            # the QMP client works: a guest started with -S waits for cont
            st = g.qmp.query_status()
            assert st["status"] == "prelaunch" and not st["running"], st
            g.qmp.cont()
            assert g.qmp.query_status()["running"]
        g.wait_result("BOOTED", BOOT_TIMEOUT)
        if early:
            return g
        g.wait_result("SEEN-END", STEP_TIMEOUT)
        self.check_seen(g)
        # after a cut the guest's kernel replays both journals (they were
        # mounted), after a clean shutdown neither: the cut was real
        replayed = sorted(x.split()[1] for x in g.results if x.startswith("REPLAYED "))
        want = sorted(s for s, *_ in DISKS) if self.dirty else []
        assert replayed == want, (f"{self.what()}: guest {name} replayed the journals of "
                                  f"{replayed}, expected {want}\n{g.diagnostics()}")
        return g

    def check_seen(self, g):
        """The guest sees every file reported before, with its hash."""
        seen = {s: {} for s, *_ in DISKS}
        for line in g.results:
            if line.startswith("SEEN "):
                _, disk, name, sha = line.split()
                seen[disk][name] = sha
        for disk, files in self.reported.items():
            for name, sha in files.items():
                assert seen[disk].get(name) == sha, (
                    f"{self.what()}: guest {g.name} sees {disk}:{name} as "
                    f"{seen[disk].get(name)}, reported fsynced as {sha}")

    def collect(self, g):
        """Adds the guest's FILE reports (fsynced files) to .reported."""
        n = 0
        for line in g.results:
            if line.startswith("FILE "):
                _, disk, name, sha, _size = line.split()
                self.reported[disk][name] = sha
                n += 1
        return n

    # ---- the checks after a round ----

    def status(self):
        return get_status(self.status_addr)

    def wait_converged(self, timeout=180):
        """Source in sync; the destination in sync and its initial sync
        done, having acknowledged the head LSN; the remote idle with the
        acknowledged segment applied."""
        last = {}

        def done():
            st = last["src"] = self.status()
            (d,) = st["destinations"]
            if d["state"] in ("stopped", "needs_resync"):
                raise AssertionError(f"{self.what()}: destination {d['state']}: "
                                     f"{d.get('last_error')}")
            if not st["in_sync"] or d["state"] != "in_sync" or \
                    d["acked_lsn"] != st["head_lsn"] or d["sync"]["state"] != "in_sync":
                return False
            gr = last["remote"] = self.remote.group(st["group"])
            return gr is not None and gr["state"] == "idle" and \
                gr["applied_segment"] == d["acked_segment"]
        try:
            wait_for(done, timeout, 0.1, what="the mirror to converge")
        except TimeoutError:
            raise AssertionError(f"{self.what()}: not in sync after {timeout}s: "
                                 f"{json.dumps(last, indent=1)}\n"
                                 f"remote log:\n{self.remote.output()[-3000:]}\n"
                                 f"aimfs log:\n{self.mount.output()[-3000:]}") from None
        return last["src"]

    def check_round(self, label):
        t0 = time.monotonic()
        self.wait_converged()
        try:
            assert_trees_equal(self.backing, self.replica)
        except AssertionError as e:
            raise AssertionError(f"{self.what()}: after {label}: {e}") from None
        checked = 0
        for serial, name, fmt, _ in DISKS:
            checked += self.check_image(label, serial, os.path.join(self.replica, name), fmt)
        self.log.append(f"{label}: in sync, replica equal, {checked} fsynced files checked "
                        f"({time.monotonic() - t0:.1f}s)")
        return checked

    def check_image(self, label, serial, image, fmt, reported=None, dirty=None):
        """A copy of the replica image: raw, its ext4 journal replayed by a
        mount (loop device), every reported file there with its hash (those
        of REPORTED, by default every one), then e2fsck -fn clean.  DIRTY:
        whether its ext4 needs recovery (default: whether the last round
        cut the guest).  Returns how many files it checked."""
        reported = self.reported[serial] if reported is None else reported
        dirty_expected = self.dirty if dirty is None else dirty
        where = f"{self.what()}: after {label}: replica {os.path.basename(image)}"
        copy = os.path.join(self.workdir, f"check-{serial}.raw")
        if fmt == "qcow2":
            chk = subprocess.run(["qemu-img", "check", "-f", "qcow2", image],
                                 capture_output=True, text=True)
            # 0: clean, 3: leaked clusters only (normal after a cut); 2: corrupt
            assert chk.returncode in (0, 3), f"{where}: qemu-img check:\n{chk.stdout}{chk.stderr}"
            run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, copy])
        else:
            run(["cp", "--sparse=always", image, copy])
        mnt = os.path.join(self.workdir, f"check-{serial}")
        os.makedirs(mnt, exist_ok=True)
        # a replica of a cut filesystem needs its journal replayed, as the
        # source did; of a cleanly unmounted one, not
        feats = run(["dumpe2fs", "-h", copy]).stdout
        dirty = "needs_recovery" in feats.split("Filesystem features:")[1].split("\n")[0]
        assert dirty == dirty_expected, \
            f"{where}: needs_recovery is {dirty}, expected {dirty_expected}"
        loop = run(["losetup", "-f", "--show", copy]).stdout.strip()
        try:
            run(["mount", "-t", "ext4", loop, mnt])
            try:
                for name, sha in sorted(reported.items()):
                    p = os.path.join(mnt, name)
                    assert os.path.exists(p), f"{where}: fsynced file {name} is missing"
                    with open(p, "rb") as f:
                        have = hashlib.sha256(f.read()).hexdigest()
                    assert have == sha, f"{where}: {name} has sha256 {have}, guest said {sha}"
            finally:
                if subprocess.run(["umount", mnt]).returncode != 0:
                    subprocess.run(["umount", "-l", mnt])
            fsck = subprocess.run(["e2fsck", "-fn", loop], capture_output=True, text=True)
            assert fsck.returncode == 0, (f"{where}: e2fsck -fn after the journal replay "
                                          f"({fsck.returncode}):\n{fsck.stdout}{fsck.stderr}")
        finally:
            subprocess.run(["losetup", "-d", loop], check=False)
            os.unlink(copy)
        return len(reported)

    def finish(self):
        assert self.mount.unmount() == 0
        assert self.remote.stop() == 0, "aim-remote's exit status after SIGTERM"
        for m in self.mounts:
            m.check_quiet()
        self.remote.check_quiet()


# ---- the rounds ------------------------------------------------------------------------

def wait_files(site, g, rng, what, early=False):
    """Lets the guest's endless workload report a few files (at least one on
    each disk), then a little more, so that the cut lands mid-workload.
    EARLY: a moment in the first 1.5 s after the kernel booted instead,
    while the guest mounts (replaying its journals) or starts writing."""
    if early:
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        return f"{what} {delay:.2f}s after boot"
    n = rng.randint(2, 4) * len(DISKS)
    g.wait_count("FILE ", n, STEP_TIMEOUT)
    delay = rng.uniform(0.0, 1.0)
    time.sleep(delay)
    return f"{what} after {n}+ files and {delay:.2f}s"


def round_power_cut(site, guests, rng, round_no, fresh, early=False):
    assert not (fresh and early), "a cut before mkfs leaves nothing to check"
    g = site.boot(guests, f"guest-{round_no}", round_no, fresh, files=0, paused=fresh,
                  early=early)
    how = wait_files(site, g, rng, "kill -9 qemu", early)
    g.kill()
    site.dirty = True
    got = site.collect(g)
    site.log.append(f"round {round_no}: power cut, {how}; {got} files reported")
    site.check_round(f"round {round_no} (power cut)")


def round_aimfs_kill(site, guests, rng, round_no, early=False):
    g = site.boot(guests, f"guest-{round_no}", round_no, False, files=0, stop_on_error=True,
                  early=early)
    how = wait_files(site, g, rng, "kill -9 aimfs", early)
    site.mount.kill9()
    # The guest goes on writing into the dead mount: QEMU stops it at the
    # first failed request (werror/rerror=stop).
    def paused():
        if not g.running():
            raise AssertionError(f"qemu exited after aimfs died\n{g.diagnostics()}")
        return g.qmp.query_status()["status"] == "io-error"
    try:
        wait_for(paused, STEP_TIMEOUT, 0.1, what="the guest to stop on an I/O error")
    except TimeoutError:
        raise AssertionError(f"{site.what()}: {how}: the guest never hit the dead mount "
                             f"(status {g.qmp.query_status()})\n{g.diagnostics()}") from None
    got = site.collect(g)
    site.dirty = True
    site.mount_aimfs()
    g.quit()
    site.log.append(f"round {round_no}: {how}; guest paused on io-error; remounted; "
                    f"{got} files reported")
    site.check_round(f"round {round_no} (kill -9 aimfs)")


def round_clean(site, guests, round_no, files=2):
    g = site.boot(guests, f"guest-{round_no}", round_no, False, files=files)
    rc, status = g.wait_exit(STEP_TIMEOUT)
    assert (rc, status) == (0, 0), (f"{site.what()}: the last guest ended with qemu {rc}, "
                                    f"init {status}\n{g.diagnostics()}")
    assert "DONE" in g.results
    got = site.collect(g)
    assert got == files * len(DISKS)
    site.dirty = False
    site.log.append(f"round {round_no}: clean boot, {got} files, shut down")
    site.check_round(f"round {round_no} (clean)")


def seed_for(default):
    return int(os.environ.get("AIM_SEED", default))


def run_rounds(site, guests, kinds):
    rng = random.Random(site.seed)
    t0 = time.monotonic()
    for i, kind in enumerate(kinds):
        t = time.monotonic()
        early = kind.endswith("-early")
        if kind.startswith("power-cut"):
            round_power_cut(site, guests, rng, i, fresh=(i == 0), early=early)
        elif kind.startswith("aimfs-kill9"):
            round_aimfs_kill(site, guests, rng, i, early=early)
        else:
            round_clean(site, guests, i)
        print(f"round {i} ({kind}): {time.monotonic() - t:.1f}s")
    total = sum(len(v) for v in site.reported.values())
    print(f"{site.what()}\naccel {site.accel[0]} ({site.accel[1]}); {total} fsynced files; "
          f"{time.monotonic() - t0:.1f}s of rounds")
    assert all(site.reported.values()), f"a disk had no fsynced file: {site.reported}"


def test_guest_power_cut_and_aimfs_kill9_lose_no_fsynced_file(aimfs, workdir, pki, cleanup,
                                                               guests):
    site = Site(workdir, pki, aimfs, cleanup, seed_for(1313))
    site.mount_aimfs()
    site.make_images()
    run_rounds(site, guests, ["power-cut", "aimfs-kill9", "clean"])
    site.finish()


@pytest.mark.soak
def test_guest_soak_random_cuts(aimfs, workdir, pki, cleanup, guests):
    seed = seed_for(int(time.time()) % 100000)
    site = Site(workdir, pki, aimfs, cleanup, seed)
    site.mount_aimfs()
    site.make_images()
    rng = random.Random(f"kinds:{seed}")
    rounds = int(os.environ.get("AIM_SOAK_ROUNDS", 20))
    kinds = ["power-cut"] + [rng.choice(["power-cut", "aimfs-kill9"])
                             + ("-early" if rng.random() < 0.3 else "")
                             for _ in range(rounds)]
    run_rounds(site, guests, kinds + ["clean"])
    site.finish()


# ---- a test failover: a second guest on overlays of a held replica ------------------------

def aimctl(*args, timeout=STEP_TIMEOUT):
    return subprocess.run([AIMCTL, *args], capture_output=True, text=True, timeout=timeout)


def image_digests(d):
    """{image: (sha256, size, mtime_ns)} of the guest's images in d."""
    out = {}
    for _, name, _, _ in DISKS:
        p = os.path.join(d, name)
        st = os.stat(p)
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[name] = (h.hexdigest(), st.st_size, st.st_mtime_ns)
    return out


def reported_files(g):
    out = {s: {} for s, *_ in DISKS}
    g.poll()
    for line in g.results:
        if line.startswith("FILE "):
            _, disk, name, sha, _size = line.split()
            out[disk][name] = sha
    return out


def failover_round(site, guests, src, label, kill_remote=False):
    """One test failover while guest SRC writes: the replica held at a mark
    made on the source; the held images checked as the next boot would see
    them (every file reported fsynced before the mark, by SRC or a guest
    before it); with KILL_REMOTE, aim-remote killed -9 and restarted while
    held (it stays held, and the images do not change); a test guest on
    qcow2 overlays of the held images that replays both ext4 journals,
    sees those files with their hashes and writes its own; the replica's
    bytes and times unchanged while segments pile up; then released.
    Returns a line for the log."""
    remote = f"127.0.0.1:{site.remote.status_port}"
    group = site.status()["group"]
    mark = f"test-failover-{label}"
    p = aimctl("hold", "--status", remote, "--group", group, "--at", f"mark:{mark}",
               "--timeout", "0")
    assert p.returncode == 0, p.stderr
    # every file reported before the mark is asked for is journaled before it
    before = {disk: dict(files) for disk, files in site.reported.items()}
    for disk, files in reported_files(src).items():
        before[disk].update(files)
    p = aimctl("mark", "--status", site.status_addr, mark)
    assert p.returncode == 0, p.stderr
    t0 = time.monotonic()
    p = aimctl("hold", "--status", remote, "--group", group, "--at", f"mark:{mark}")
    assert p.returncode == 0 and "(MARK, source time" in p.stdout, p.stdout + p.stderr
    held_after = time.monotonic() - t0
    held = image_digests(site.replica)
    n_before = sum(map(len, before.values()))
    for serial, name, fmt, _ in DISKS:
        site.check_image(f"the hold at {mark}", serial, os.path.join(site.replica, name), fmt,
                         reported=before[serial], dirty=True)
    # the source keeps writing; its segments arrive and wait
    src.wait_count("FILE ", len(reported_files(src)["raw"]) * len(DISKS) + 2 * len(DISKS),
                   STEP_TIMEOUT)
    wait_for(lambda: site.remote.group(group)["backlog_segments"] > 0, STEP_TIMEOUT, 0.2,
             what="segments to wait at the held remote")
    if kill_remote:
        site.remote.kill9()
        site.remote.start()
        site.remote.wait_group(group, lambda g: g["state"] == "held", STEP_TIMEOUT,
                               what="the group held again after a kill -9 of aim-remote")
    # the test guest, on overlays of the held images
    ovdir = os.path.join(site.workdir, f"overlays-{label}")
    os.makedirs(ovdir)
    disks = []
    for serial, name, fmt, _ in DISKS:
        ov = os.path.join(ovdir, f"{serial}.qcow2")
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(site.replica, name),
             "-F", fmt, ov])
        disks.append(Disk(ov, fmt="qcow2", cache="writeback", serial=serial))
    t = guests(f"test-vm-{label}", site.kern, site.initrd(f"test-vm-{label}", 900, False, 1),
               disks)
    rc, status = t.wait_exit(STEP_TIMEOUT)
    assert (rc, status) == (0, 0) and "DONE" in t.results, \
        f"{site.what()}: the test guest ended with qemu {rc}, init {status}\n{t.diagnostics()}"
    replayed = sorted(x.split()[1] for x in t.results if x.startswith("REPLAYED "))
    assert replayed == sorted(s for s, *_ in DISKS), \
        f"{site.what()}: the test guest replayed the journals of {replayed}\n{t.diagnostics()}"
    seen = {s: {} for s, *_ in DISKS}
    for line in t.results:
        if line.startswith("SEEN "):
            _, disk, name, sha = line.split()
            seen[disk][name] = sha
    for disk, files in before.items():
        for name, sha in files.items():
            assert seen[disk].get(name) == sha, (f"{site.what()}: the test guest sees {disk}:"
                                                 f"{name} as {seen[disk].get(name)}, reported "
                                                 f"fsynced before the mark as {sha}")
    wrote = [x for x in t.results if x.startswith("FILE ")]
    assert len(wrote) == len(DISKS), t.results
    # nothing of this touched the held replica, whatever piled up meanwhile
    g = site.remote.group(group)
    assert g["state"] == "held" and g["backlog_segments"] > 0, g
    assert image_digests(site.replica) == held, f"{site.what()}: the held replica changed"
    p = aimctl("release", "--status", remote, "--group", group)
    assert p.returncode == 0, p.stderr
    shutil.rmtree(ovdir)
    return (f"test failover at {mark}: held after {held_after:.1f}s"
            f"{', aim-remote killed -9 while held' if kill_remote else ''}; the test guest saw"
            f" the {n_before} files fsynced before the mark and wrote {len(wrote)};"
            f" {g['backlog_segments']} segments waited")


def test_guest_test_failover_on_overlays_of_a_held_replica(aimfs, workdir, pki, cleanup,
                                                           guests):
    """While the source guest keeps writing, aim-remote holds the replica at
    a mark made on the source, survives a kill -9 held, and a test guest
    boots on qcow2 overlays of the held images (`qemu-img create -f qcow2 -b
    REPLICA -F raw|qcow2`): failover_round.  Released, the replica
    catches up and, after a power cut of the source guest, equals the
    source with every fsynced file in it."""
    site = Site(workdir, pki, aimfs, cleanup, seed_for(1414))
    site.mount_aimfs()
    site.make_images()
    src = site.boot(guests, "source", 0, True, files=0)
    src.wait_count("FILE ", 4 * len(DISKS), STEP_TIMEOUT)
    site.log.append(failover_round(site, guests, src, "0", kill_remote=True))
    src.kill()
    site.dirty = True
    site.collect(src)
    site.check_round("the release after the test failover")
    print(site.what())
    site.finish()


@pytest.mark.soak
def test_guest_soak_test_failovers(aimfs, workdir, pki, cleanup, guests):
    """Round after round (AIM_SOAK_ROUNDS, default 6): a source guest boots
    on what the last power cut left, writes, a test failover runs on
    overlays of the held replica (aim-remote killed -9 while held in some
    rounds), it is released, and the source guest's power is cut; after
    each round the replica equals the source and holds every fsynced
    file."""
    seed = seed_for(int(time.time()) % 100000)
    site = Site(workdir, pki, aimfs, cleanup, seed)
    site.mount_aimfs()
    site.make_images()
    rng = random.Random(f"failovers:{seed}")
    for i in range(int(os.environ.get("AIM_SOAK_ROUNDS", 6))):
        t = time.monotonic()
        src = site.boot(guests, f"source-{i}", i, i == 0, files=0)
        src.wait_count("FILE ", rng.randint(1, 4) * len(DISKS), STEP_TIMEOUT)
        site.log.append(failover_round(site, guests, src, str(i),
                                            kill_remote=rng.random() < 0.5))
        src.kill()
        site.dirty = True
        site.collect(src)
        site.check_round(f"round {i} (test failover, then a power cut)")
        print(f"round {i}: {time.monotonic() - t:.1f}s")
    print(site.what())
    site.finish()


# ---- the harness carries aimfs itself into a guest ---------------------------------------

def test_guest_runs_aimfs_carried_in_with_its_libraries(workdir, guests):
    """extra_binaries carries aimfs with every library ldd lists, the
    loader and libgcc_s (which glibc dlopens when aimfs cancels its threads
    at unmount), and the fuse module is loaded from modules.dep: inside the
    guest aimfs mounts, journals a write, and exits 0 after umount.  (The
    base of a power-cut test of aimfs itself.)"""
    kern = kernel()
    payload = "written through aimfs inside a guest\n"
    want = hashlib.sha256(payload.encode()).hexdigest()
    script = f"""
mkdir -p /backing /mnt/aim
{AIMFS} -f -o status=off /backing /mnt/aim > /tmp/aimfs.log 2>&1 &
pid=$!
n=0
until grep -q " /mnt/aim fuse" /proc/mounts; do
    n=$((n + 1)); [ $n -lt 300 ] || {{ cat /tmp/aimfs.log; die "aimfs did not mount"; }}
    sleep 0.1
done
echo '{payload.strip()}' > /mnt/aim/img
sync /mnt/aim/img
umount /mnt/aim
rc=0; wait $pid || rc=$?
cat /tmp/aimfs.log
aimt AIMFS-EXIT $rc
aimt BACKING $(sha256sum < /backing/img | cut -d' ' -f1)
aimt JOURNAL $(ls /backing/.aimfs | grep -c '[.]aimj$')
"""
    initrd = build_initramfs(os.path.join(workdir, "aimfs-guest.cpio.gz"), script, kern,
                             modules=("fuse",), extra_binaries=[AIMFS])
    g = guests("aimfs-guest", kern, initrd)
    rc, status = g.wait_exit(STEP_TIMEOUT)
    assert (rc, status) == (0, 0), f"qemu {rc}, init {status}\n{g.diagnostics()}"
    res = dict(line.split(" ", 1) for line in g.results if " " in line)
    assert res["AIMFS-EXIT"] == "0", f"aimfs in the guest exited {res['AIMFS-EXIT']}\n" \
                                     f"{g.diagnostics()}"
    assert res["BACKING"] == want, f"the backing file holds {res['BACKING']}, not {want}"
    assert int(res["JOURNAL"]) >= 1, f"no sealed segment in the guest's journal: {res}"
