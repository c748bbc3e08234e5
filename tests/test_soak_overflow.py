"""The overflow soak: a slow, failing link and a small journal, for minutes.

    fio (rate-limited random writes, bursts at full speed) -> aimfs
    (journal_max 24M)  --HTTPS, through a proxy the soak cuts-->  aim-remote
    (--map onto a loop block device)

The journal overflows again and again: the destination goes tracking
(skeletons, dirty extents), comes back, and is resynchronised by HASH
comparison, while aim-remote is killed with -9 at random moments (in the
middle of uploads, of applying, of a resync), the link is cut for seconds
at a time, and now and then aimfs itself is killed with -9 and mounted
again.  Session 7's audit found a silent divergence in exactly
this (an overflow in the middle of a resync lost the hashed extents), a
destination stopped for good (a lost reply, then a skeleton of that very
segment), and a resync that sent a 128 MiB image eight times over.

At the end: the link restored, aim-remote up, fio stopped; once the source
is in sync and the remote idle, consistent and has applied everything it
acknowledged, the loop device holds the image byte for byte, and the
destination was never `stopped` on the way.

Not in the default run (marked `soak`): `meson test -C build --suite soak`
or `pytest -m soak tests/test_soak_overflow.py`, as root.  AIM_SOAK_MINUTES
sets the duration (default 10), AIM_SEED the randomness (printed)."""
import os
import random
import subprocess
import threading
import time

import pytest

from aimtest import run, wait_for
from proxy import Proxy
from remote_helpers import PKI, Remote
from servers import free_port, get_status

MINUTES = float(os.environ.get("AIM_SOAK_MINUTES", "10"))
SEED = int(os.environ.get("AIM_SEED", str(int(time.time()))))
IMAGE = 128 << 20


class StateWatch:
    """Samples the source's status: every destination state seen, and the
    errors of any `stopped`."""

    def __init__(self, addr):
        self.addr, self.seen, self.stopped = addr, set(), []
        self.ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.ev.wait(0.2):
            try:
                d = get_status(self.addr)["destinations"][0]
            except (OSError, ValueError, KeyError, IndexError):
                continue
            self.seen.add(d["state"])
            if d["state"] == "stopped":
                self.stopped.append(d.get("last_error"))

    def close(self):
        self.ev.set()
        self.thread.join(10)


def fio(path, seconds, rate=None):
    cmd = ["fio", "--name=w", f"--filename={path}", f"--size={IMAGE}", "--bsrange=4k-128k",
           "--rw=randwrite", "--direct=1", "--ioengine=libaio", "--iodepth=4",
           "--time_based", f"--runtime={seconds}", "--output=/dev/null",
           f"--randseed={random.randrange(1 << 30)}"]
    if rate:
        cmd.append(f"--rate={rate}")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.soak
def test_overflow_soak_converges_byte_for_byte(aimfs, workdir):
    random.seed(SEED)
    rnd = random.Random(SEED)
    print(f"overflow soak: {MINUTES} minutes, AIM_SEED={SEED}")
    pki = PKI(os.path.join(workdir, "pki"))
    disk = os.path.join(workdir, "replica.disk")
    with open(disk, "wb") as f:
        f.truncate(IMAGE + (32 << 20))
    loop = run(["losetup", "-f", "--show", disk]).stdout.strip()
    inbox, target = os.path.join(workdir, "inbox"), os.path.join(workdir, "targets")
    os.makedirs(inbox)
    os.makedirs(target)
    r = Remote(workdir, inbox, target, listen=True, pki=pki, expect_alarms=True,
               args=["--client-ca", pki.ca, "--token-file", pki.token_file,
                     "--map", f"vm.raw={loop}"])
    proxy = Proxy(r.listen_port).start()
    watch, load = None, None
    try:
        r.start()
        status = f"127.0.0.1:{free_port()}"
        conf = os.path.join(workdir, "aimfs.conf")
        with open(conf, "w") as f:
            f.write(f"[aimfs]\nstatus = {status}\njournal_max = 24M\nsegment_size = 4M\n"
                    f"segment_age = 1s\n[destination dr1]\nurl = https://127.0.0.1:{proxy.port}/aim\n"
                    f"ca_file = {pki.ca}\ncert_file = {pki.client}\nkey_file = {pki.client_key}\n"
                    f"token_file = {pki.token_file}\n")
        m = aimfs(options=[f"config={conf}"], expect_alarms=True)
        image = os.path.join(m.mountpoint, "vm.raw")
        watch = StateWatch(status)
        end = time.monotonic() + MINUTES * 60
        kills = cuts = bursts = crashes = 0
        load = fio(image, int(MINUTES * 60) + 30, rate="8m")
        while time.monotonic() < end:
            time.sleep(rnd.uniform(0.5, 8))
            what = rnd.random()
            if what < 0.45:
                r.kill9()
                kills += 1
                time.sleep(rnd.uniform(0, 6))
                r.start()
            elif what < 0.65:
                proxy.cut(rnd.choice(("reset", "blackhole")))
                cuts += 1
                time.sleep(rnd.uniform(1, 15))
                proxy.restore()
            elif what < 0.85:
                # a burst at full speed: the journal overflows
                bursts += 1
                fio(image, rnd.randint(2, 6)).wait()
            else:
                # aimfs itself, in the middle of whatever it does (a resync's
                # hashing, a skeleton, an upload); recovery at the remount
                load.kill()
                load.wait()
                m.kill9()
                crashes += 1
                m.start()
                load = fio(image, int(end - time.monotonic()) + 30, rate="8m")
        load.terminate()
        load.wait()
        load = None
        print(f"overflow soak: {kills} kills of aim-remote, {crashes} of aimfs, {cuts} cuts,"
              f" {bursts} bursts; states seen {sorted(watch.seen)}")
        with open(image, "r+b") as f:
            os.fsync(f.fileno())
        group = get_status(status)["group"]

        def converged():
            st = get_status(status)
            d = st["destinations"][0]
            g = r.group(group)
            return (st["in_sync"] and d["remote"] and d["remote"]["applied_all"] and g
                    and g["state"] == "idle" and g["consistent"])
        wait_for(converged, timeout=600, interval=0.5, what="convergence after the soak")
        size = os.path.getsize(os.path.join(m.backing, "vm.raw"))
        assert m.unmount() == 0
        watch.close()
        assert not watch.stopped, f"the destination stopped: {watch.stopped[:3]}"
        assert "tracking" in watch.seen, f"the journal never overflowed: {watch.seen}"
        with open(os.path.join(m.backing, "vm.raw"), "rb") as a, open(loop, "rb") as b:
            for off in range(0, size, 1 << 20):
                x, y = a.read(1 << 20), b.read(1 << 20)
                assert x == y[:len(x)], (f"the replica differs in the MiB at {off} "
                                         f"(AIM_SEED={SEED})")
    finally:
        if load:
            load.kill()
            load.wait()
        if watch:
            watch.close()
        proxy.stop()
        r.close()
        run(["losetup", "-d", loop], check=False)
