"""FUSE over io_uring (-o io_uring=on, aimfs/uring.c): requests really come
through the ring (/status counts them and names its threads), and random
multi-threaded workloads and fio with verify (O_DIRECT at queue depth 16,
buffered with fdatasync) replay exactly, as through /dev/fuse.

scripts/test.sh also runs its whole sanitizer pass with AIM_IO_URING=on
(every mount of tests/aimtest.py asks for the ring), so the crash, replay,
mirror and resync tests run through the ring there, and through /dev/fuse
in the normal pass.  The kernel offers the ring only while the fuse
module's enable_uring parameter is Y: the fixture sets it and restores what
it found (scripts/test.sh sets it before both passes)."""
import os
import re
import subprocess

import pytest

from aimtest import free_port, wait_for
from servers import get_status
from test_aimfs_workloads import replay_equal, start_dir
from workload import Workload

ENABLE = "/sys/module/fuse/parameters/enable_uring"


@pytest.fixture(scope="module", autouse=True)
def ring_enabled():
    if not os.path.exists(ENABLE):
        pytest.skip("this kernel has no FUSE over io_uring (Linux 6.14+)")
    with open(ENABLE) as f:
        before = f.read().strip()
    with open(ENABLE, "w") as f:
        f.write("Y")
    yield
    with open(ENABLE, "w") as f:
        f.write(before)


def ring_status(addr):
    return get_status(addr)["fuse"]


def test_requests_come_through_the_ring(aimfs, workdir):
    addr = f"127.0.0.1:{free_port()}"
    m = aimfs(options=["io_uring=on", f"status={addr}"])
    # the ring starts once the kernel has taken the INIT reply, which may
    # be after the mount appeared
    wait_for(lambda: "FUSE requests through io_uring" in m.output(), 10,
             what=f"the ring to start:\n{m.output()}")
    before = ring_status(addr)
    assert before["io_uring"] is True, before
    assert before["ring_threads"] >= os.cpu_count(), before  # one queue per CPU
    path = os.path.join(m.mountpoint, "disk.img")
    data = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        assert f.read() == data
    after = ring_status(addr)
    # create, write, flush, fsync, release, open, read, getattr...: all
    # through the ring once it is ready
    assert after["ring_requests"] >= before["ring_requests"] + 6, (before, after)
    assert m.unmount() == 0
    m.check_quiet()
    with open(os.path.join(m.backing, "disk.img"), "rb") as f:
        assert f.read() == data


@pytest.mark.parametrize("seed,threads", [(404, 4), (505, 6)])
def test_random_workload_through_the_ring_replays_exactly(aimfs, workdir, seed, threads):
    seed = int(os.environ.get("AIM_SEED", seed))
    backing, start = start_dir(workdir, seed, threads)
    addr = f"127.0.0.1:{free_port()}"
    m = aimfs(options=["io_uring=on", f"status={addr}", "segment_size=256K",
                       "segment_age=200ms"])
    w = Workload(m.mountpoint, seed, threads=threads)
    try:
        w.run(seconds=3)
    finally:
        w.close()
    assert w.total_ops() > 100, f"seed {seed}: only {w.total_ops()} operations"
    served = ring_status(addr)["ring_requests"]
    assert served > w.total_ops(), f"only {served} requests through the ring"
    assert m.unmount() == 0
    m.check_quiet()
    w.check_acked(backing)
    replay_equal(m, start, f"io_uring workload seed={seed} threads={threads}")


@pytest.mark.parametrize("args", [
    pytest.param(["--rw=randrw", "--bs=4k", "--direct=1", "--ioengine=libaio",
                  "--iodepth=16", "--size=16M"], id="odirect-qd16-4k"),
    pytest.param(["--rw=write", "--bs=1M", "--direct=1", "--ioengine=psync",
                  "--size=32M"], id="odirect-1M"),
    pytest.param(["--rw=randwrite", "--bs=16k", "--direct=0", "--ioengine=psync",
                  "--numjobs=2", "--size=16M", "--fdatasync=8"], id="buffered-2jobs"),
])
def test_fio_verify_through_the_ring_replays_exactly(aimfs, workdir, args):
    backing, start = start_dir(workdir, 5, 1)
    m = aimfs(options=["io_uring=on", "segment_size=4M", "segment_age=500ms"])
    proc = subprocess.run(["fio", "--name=v", f"--directory={m.mountpoint}", *args,
                           "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                           "--verify_backlog=1024", "--group_reporting", "--randrepeat=0"],
                          capture_output=True, text=True, timeout=180, cwd=workdir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"fio failed ({proc.returncode}):\n{out}"
    errs = re.findall(r"err=\s*(\d+)", out)
    assert errs and all(e == "0" for e in errs), out
    assert m.unmount() == 0
    m.check_quiet()
    replay_equal(m, start, f"io_uring fio {' '.join(args)}")


def test_a_bad_io_uring_value_is_refused(workdir):
    from aimtest import AIMFS
    backing = os.path.join(workdir, "b")
    mnt = os.path.join(workdir, "m")
    os.makedirs(backing)
    os.makedirs(mnt)
    p = subprocess.run([AIMFS, "-f", "-o", "io_uring=yes", backing, mnt],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert 'io_uring=yes: must be "on" or "off"' in p.stderr, p.stderr
