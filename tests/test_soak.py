"""The thrash soak (issue 11): the whole pipeline under kill -9, then the
proof that every barrier it left behind is crash-consistent.

    aimfs (kernel mount, own transport, status)  --HTTP PUT-->  nginx (the
    receiver, WebDAV into the inbox)  --inbox-->  aim-remote (watcher and
    applier, --retain keeps every applied segment)

The workload, while aimfs is up: an ext4 file system inside a raw image
(fs.raw) attached through a loop device on the mount and mounted, where
files are written with fsync, renamed and removed; a qcow2 image (vm.qcow2)
written by qemu-io with flushes; a raw image (data.raw) written at random
offsets with fsyncs; and a mark now and then (`aimctl mark`).

The chaos: aimfs, aim-remote and nginx are each killed with -9 at random
intervals of 1-120 s (shorter for a soak shorter than 6 minutes, so that
each dies a few times) and revived after 0-10 s.  When aimfs dies the
ext4's I/O fails; the writers stop, the file system is unmounted and its
loop device detached, and after the revival (recovery, remount) it is
attached and mounted again -- the kernel replays its journal -- and the
writers go on.

At the end: every daemon up, the writers stopped and the ext4 unmounted;
once the source is in sync and aim-remote has applied its head LSN, the
replica equals the source byte for byte, and `aimctl check --fsck
scripts/check-ext4.sh` over aim-remote's retained segments, from an empty
base (the target directory it started with), passes at every barrier and
mark.

Not in the default run: it is marked `soak`, so `pytest tests` (and
scripts/test.sh) deselect it; `meson test -C build --suite soak` runs it, as
does `pytest -m soak tests/test_soak.py`.  AIM_SOAK_MINUTES sets the
duration (default 10), AIM_SEED the randomness (printed)."""
import heapq
import json
import os
import random
import subprocess
import threading
import time

import pytest

from aimtest import AIMCTL, Mount, run, wait_for
from crash_helpers import CHECK_EXT4, CheckRun, Ext4Loop, make_ext4
from remote_helpers import Remote, free_port
from servers import Nginx, get_status

MINUTES = float(os.environ.get("AIM_SOAK_MINUTES", "10"))
SEED = int(os.environ.get("AIM_SEED", str(int(time.time()))))
DEAD_ERRORS = (OSError, subprocess.SubprocessError)


class Writers:
    """The workload's threads for one life of aimfs."""

    def __init__(self, mnt, fs, rnd, log):
        self.mnt, self.fs, self.log = mnt, fs, log
        self.stop = threading.Event()
        self.rnd = random.Random(rnd.random())
        self.ops = {"ext4": 0, "qcow2": 0, "raw": 0}
        self.threads = [threading.Thread(target=self._guard, args=(fn,), daemon=True)
                        for fn in (self.ext4, self.qcow2, self.raw)]
        self.procs = set()

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _guard(self, fn):
        try:
            fn(random.Random(self.rnd.random()))
        except DEAD_ERRORS:
            pass        # aimfs died under it: the life ends here

    def ext4(self, r):
        files, n = [], 0
        while not self.stop.is_set():
            n += 1
            name = f"d{r.randrange(4)}/f{n}"
            self.fs.write_file(name, r.randbytes(r.randrange(1, 256) << 10))
            files.append(name)
            if len(files) > 60:
                os.unlink(os.path.join(self.fs.mnt, files.pop(r.randrange(len(files)))))
            if r.random() < 0.1:
                old = files.pop(r.randrange(len(files)))
                new = f"d{r.randrange(4)}/r{n}"
                os.rename(os.path.join(self.fs.mnt, old), os.path.join(self.fs.mnt, new))
                files.append(new)
            self.ops["ext4"] += 1
            time.sleep(r.uniform(0.05, 0.3))

    def qcow2(self, r):
        vm = os.path.join(self.mnt, "vm.qcow2")
        while not self.stop.is_set():
            cmds = []
            for _ in range(r.randrange(1, 5)):
                cmds += ["-c", f"write -P {r.randrange(256)} {r.randrange(0, 60 << 20, 4096)}"
                         f" {r.randrange(4096, 512 << 10, 512)}"]
            p = subprocess.Popen(["qemu-io", "-f", "qcow2", *cmds, "-c", "flush", vm],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.add(p)
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.procs.discard(p)
            if p.returncode != 0:
                return      # aimfs is gone
            self.ops["qcow2"] += 1
            time.sleep(r.uniform(0.2, 1.0))

    def raw(self, r):
        fd = os.open(os.path.join(self.mnt, "data.raw"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not self.stop.is_set():
                os.pwrite(fd, r.randbytes(r.randrange(512, 64 << 10)), r.randrange(32 << 20))
                if r.random() < 0.2:
                    os.fsync(fd)
                self.ops["raw"] += 1
                time.sleep(r.uniform(0.02, 0.2))
        finally:
            os.close(fd)

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(180)
            if t.is_alive():
                for p in list(self.procs):
                    p.kill()
                t.join(60)
        assert not any(t.is_alive() for t in self.threads), "a writer thread hangs"


class Source:
    """aimfs over backing/ at mnt/, and the ext4 in fs.raw on it."""

    def __init__(self, workdir, conf, status, log):
        self.workdir, self.conf, self.status, self.log = workdir, conf, status, log
        self.backing = os.path.join(workdir, "backing")
        self.mnt = os.path.join(workdir, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        self.mount = None
        self.fs = None
        self.writers = None
        self.lives = 0
        self.ops = {"ext4": 0, "qcow2": 0, "raw": 0}

    @property
    def up(self):
        return self.mount is not None

    def start(self, rnd):
        self.mount = Mount(self.backing, self.mnt, [f"config={self.conf}"],
                           log_path=os.path.join(self.workdir, "aimfs.log")).start(60)
        self.lives += 1
        self.fs = Ext4Loop(os.path.join(self.mnt, "fs.raw"), os.path.join(self.workdir, "fs"))
        self.fs.open()   # after a kill -9 the kernel replays the ext4 journal here
        for d in range(4):
            os.makedirs(os.path.join(self.fs.mnt, f"d{d}"), exist_ok=True)
        self.writers = Writers(self.mnt, self.fs, rnd, self.log).start()

    def _end_life(self):
        if self.writers:
            self.writers.join()
            for k, v in self.writers.ops.items():
                self.ops[k] += v
            self.writers = None
        if self.fs:
            self.fs.close()
            self.fs = None

    def kill9(self):
        self.mount.kill9()
        self.mount = None
        self._end_life()

    def quiesce(self):
        """The end: writers stopped, the ext4 unmounted cleanly, aimfs up."""
        self._end_life()
        os.sync()

    def close(self):
        try:
            self._end_life()
        finally:
            if self.mount:
                self.mount.stop()
                self.mount = None


@pytest.mark.soak
def test_thrash_soak_replica_equal_and_every_barrier_consistent(workdir):
    rnd = random.Random(SEED)
    seconds = MINUTES * 60
    longest = 120 if seconds >= 360 else max(10.0, seconds / 3)
    events_log = []

    def log(msg):
        line = f"{time.monotonic() - t0:8.1f}s {msg}"
        events_log.append(line)
        print(line, flush=True)

    t0 = time.monotonic()
    log(f"soak: AIM_SEED={SEED}, {MINUTES} minutes, kills every 1-{longest:.0f} s")
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    make_ext4(os.path.join(backing, "fs.raw"), os.path.join(workdir, "mkfs-mnt"), size="96M")
    run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(backing, "vm.qcow2"), "64M"])
    base = os.path.join(workdir, "base")       # the remote's target as it starts: empty
    target = os.path.join(workdir, "target")
    for d in (base, target):
        os.makedirs(d)

    ng = Nginx(workdir, single_process=True)
    remote = Remote(workdir, inbox=ng.inbox, target=target, name="remote",
                    state=os.path.join(workdir, "state"), args=["--retain"])
    status = f"127.0.0.1:{free_port()}"
    conf = os.path.join(workdir, "aimfs.conf")
    with open(conf, "w") as f:
        f.write(f"[aimfs]\nstatus = {status}\nsegment_size = 1M\nsegment_age = 500ms\n\n"
                f"[destination dr]\nurl = {ng.url}\ncompress = off\n")
    src = Source(workdir, conf, status, log)

    def diagnostics():
        out = ["events:", *events_log[-60:]]
        try:
            out.append("source: " + json.dumps(get_status(status), indent=1))
        except OSError as e:
            out.append(f"source: {e}")
        try:
            out.append("remote: " + json.dumps(remote.status()["groups"], indent=1))
        except OSError as e:
            out.append(f"remote: {e}")
        for name in ("aimfs.log", "remote.log"):
            try:
                with open(os.path.join(workdir, name), errors="replace") as fh:
                    out.append(f"{name} (tail):\n" + "".join(fh.readlines()[-30:]))
            except OSError:
                pass
        return "\n".join(out)

    try:
        ng.start()
        remote.start()
        src.start(rnd)
        log("all up")
        # the chaos: (when, what) events; each victim dies and comes back
        queue = [(time.monotonic() + rnd.uniform(1, longest), "kill", v)
                 for v in ("aimfs", "aim-remote", "nginx")]
        queue.append((time.monotonic() + rnd.uniform(5, 30), "mark", None))
        heapq.heapify(queue)
        deadline = t0 + seconds
        kills = {"aimfs": 0, "aim-remote": 0, "nginx": 0}
        marks = []
        while True:
            when, what, victim = queue[0]
            if when > deadline:
                break
            time.sleep(max(0.0, when - time.monotonic()))
            heapq.heappop(queue)
            if what == "mark":
                if src.up:
                    name = f"soak-{len(marks) + 1}"
                    p = run([AIMCTL, "mark", "--status", status, name], check=False)
                    log(f"mark {name}: {p.stdout.strip() or p.stderr.strip()}")
                    if p.returncode == 0:
                        marks.append(name)
                heapq.heappush(queue, (time.monotonic() + rnd.uniform(10, 40), "mark", None))
                continue
            if what == "kill":
                kills[victim] += 1
                {"aimfs": src.kill9, "aim-remote": remote.kill9, "nginx": ng.kill9}[victim]()
                down = rnd.uniform(0, 10)
                log(f"kill -9 {victim} (#{kills[victim]}), back in {down:.1f} s")
                heapq.heappush(queue, (time.monotonic() + down, "revive", victim))
            else:
                {"aimfs": lambda: src.start(rnd), "aim-remote": remote.start,
                 "nginx": ng.start}[victim]()
                log(f"{victim} is back")
                heapq.heappush(queue, (time.monotonic() + rnd.uniform(1, longest), "kill",
                                       victim))
        # the end: everyone up, the workload stopped, the ext4 unmounted
        for _, what, victim in queue:
            if what == "revive":
                {"aimfs": lambda: src.start(rnd), "aim-remote": remote.start,
                 "nginx": ng.start}[victim]()
                log(f"{victim} is back (end)")
        src.quiesce()
        log(f"workload stopped: kills {kills}, marks {len(marks)}, aimfs lives {src.lives},"
            f" operations {src.ops}")
        assert all(kills.values()), f"not every victim was killed: {kills}"
        assert src.ops["ext4"] > 0 and src.ops["qcow2"] > 0 and src.ops["raw"] > 0, src.ops

        last = {}

        def converged():
            st = last["src"] = get_status(status)
            g = last["dst"] = remote.group(st["group"])
            return (st["in_sync"] and g is not None and g["state"] == "idle"
                    and g["applied_lsn"] == st["head_lsn"])
        try:
            wait_for(converged, 600, 0.5, what="the replica to catch up")
        except TimeoutError:
            raise AssertionError(f"AIM_SEED={SEED}: not converged: {last}\n{diagnostics()}")
        group = last["src"]["group"]
        log(f"converged at LSN {last['src']['head_lsn']}")

        # the replica equals the source
        for name in ("fs.raw", "vm.qcow2", "data.raw"):
            a, b = os.path.join(target, name), os.path.join(backing, name)
            same = subprocess.run(["cmp", a, b], capture_output=True, text=True)
            assert same.returncode == 0, (f"AIM_SEED={SEED}: replica {name} differs: "
                                          f"{same.stdout}{same.stderr}\n{diagnostics()}")
        assert sorted(os.listdir(target)) == sorted(
            f for f in os.listdir(backing) if f != ".aimfs"), (os.listdir(target),
                                                               os.listdir(backing))
        src.close()
        remote.stop()
        ng.stop()

        # every barrier the remote applied is a state a crash may leave
        applied = os.path.join(ng.inbox, group, "applied")
        log(f"aimctl check over {len(os.listdir(applied))} retained segments")
        shipped = [m["name"] for m in json.loads(
            run([AIMCTL, "marks", "--json", applied]).stdout)["marks"]]
        assert shipped == marks, (shipped, marks)
        # data.raw holds no file system: hashed, not checked
        c = CheckRun(["--base", base, "--fsck", f"{CHECK_EXT4} {{}}", "--image", "fs.raw",
                      "--image", "*.qcow2", applied], timeout=6 * 3600)
        log(f"check: {c.summary} in {time.monotonic() - t0:.0f} s since the start")
        assert c.rc == 0 and c.summary and c.summary["ok"], f"AIM_SEED={SEED}: {c}"
        assert c.summary["points"] >= 10, c.summary
        checked = {i["name"] for p in c.points for i in p["images"]
                   if i["result"] == "ok" and i["checker"] in ("fsck", "qemu-img")}
        assert {"fs.raw", "vm.qcow2"} <= checked, checked
        assert {p["mark"] for p in c.points if p["mark"]} <= set(marks)
        assert any(p["mark"] for p in c.points) or not marks, "no mark was checked"
    except BaseException:
        print(diagnostics())
        raise
    finally:
        src.close()
        remote.close()
        ng.stop()
