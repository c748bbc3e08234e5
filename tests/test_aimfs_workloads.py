"""Invariants 1-2 under real clients: random multi-threaded workloads,
qemu-img/qemu-io on qcow2 and raw images (cache=none and writeback), and
fio with verify, all through the kernel mount.  After a clean unmount, an
offline `aimctl replay` of the journal onto a copy of the starting directory
must equal the backing directory byte for byte, file set included.

Reproduce a failing random case with AIM_SEED=<seed> (the seed is in every
failure message)."""
import os
import re
import subprocess

import pytest

from aimtest import assert_trees_equal, copy_tree, replay, run
from workload import Workload, populate


def journal_segments(journal):
    return sorted(f for f in os.listdir(journal) if f.endswith(".aimj"))


def replay_equal(m, start, what=""):
    """Replay m's journal onto start and compare with the backing dir; on a
    difference, say where (cmp -l) and which segments there are."""
    assert not [f for f in os.listdir(m.journal) if f.endswith(".open")], \
        f"{what}: an unsealed segment was left after a clean unmount"
    replay(m.journal, start)
    try:
        assert_trees_equal(start, m.backing)
    except AssertionError as e:
        detail = str(e)
        mm = re.match(r"(\S+) differs", detail)
        if mm:
            rel = mm.group(1)
            r = subprocess.run(f"cmp -l '{start}/{rel}' '{m.backing}/{rel}' | head -5",
                               shell=True, capture_output=True, text=True)
            detail += f"\ncmp -l (offset+1, replica, source):\n{r.stdout}"
        raise AssertionError(f"{what}: replay differs from the backing dir: {detail}\n"
                             f"journal {m.journal}: {len(journal_segments(m.journal))} segments; "
                             f"mount: {' '.join(m.cmdline)}") from None


def start_dir(workdir, seed, threads):
    backing = os.path.join(workdir, "backing")
    os.makedirs(backing)
    populate(backing, seed, threads)
    start = os.path.join(workdir, "start")
    copy_tree(backing, start)
    return backing, start


# ---- random multi-threaded workloads ---------------------------------------

CASES = [
    # (seed, threads, seconds, options)
    pytest.param(101, 4, 4, [], id="seed101-4thr-default-segments"),
    pytest.param(202, 3, 3, ["segment_size=256K", "segment_age=200ms"], id="seed202-3thr-256K"),
    pytest.param(303, 6, 3, ["segment_size=64K", "segment_age=50ms"], id="seed303-6thr-64K"),
]


@pytest.mark.parametrize("seed,threads,seconds,options", CASES)
def test_random_workload_replays_exactly(aimfs, workdir, seed, threads, seconds, options):
    seed = int(os.environ.get("AIM_SEED", seed))
    backing, start = start_dir(workdir, seed, threads)
    m = aimfs(options=options)
    w = Workload(m.mountpoint, seed, threads=threads)
    try:
        w.run(seconds=seconds)
    finally:
        w.close()
    assert w.total_ops() > 100, f"seed {seed}: only {w.total_ops()} operations"
    assert m.unmount() == 0
    m.check_quiet()
    # nothing in flight after a clean run: the ack regions are exactly the model
    w.check_acked(backing)
    if options:
        assert len(journal_segments(m.journal)) >= 5, journal_segments(m.journal)
    replay_equal(m, start, f"workload seed={seed} threads={threads} options={options}")


# ---- qemu-img / qemu-io -------------------------------------------------------

QEMU_IO_CMDS = [
    "write -P 0xab 0 1M",
    "write -P 0x11 512k 64k",
    "write -P 0x33 1000k 12k",
    "discard 256k 128k",
    "write -z 1536k 256k",
    "write -z -u 3M 512k",
    "aio_write -P 0x22 2M 256k",
    "aio_write -P 0x44 2112k 4k",
    "aio_write -P 0x55 5M 1M",
    "aio_flush",
    "flush",
    "write -P 0x66 63M 1M",
    "flush",
    "read -P 0xab 0 256k",
    "read -P 0x11 512k 64k",
    "read -P 0x22 2M 64k",
]


def qemu_io(path, fmt, cache, cmds):
    args = ["qemu-io", "-f", fmt, "-t", cache]
    for c in cmds:
        args += ["-c", c]
    out = run(args + [path])
    bad = [l for l in (out.stdout + out.stderr).splitlines()
           if "fail" in l.lower() or "error" in l.lower() or "mismatch" in l.lower()]
    assert not bad, f"qemu-io {fmt} -t {cache} on {path}:\n" + "\n".join(bad)
    return out


def test_qemu_images_replay_exactly(aimfs, workdir):
    backing, start = start_dir(workdir, 7, 1)
    # a source image made outside the mount, to be converted into it
    src = os.path.join(workdir, "src.raw")
    with open(src, "wb") as f:
        f.truncate(24 << 20)
        for i in range(0, 24 << 20, 3 << 20):
            f.seek(i + 4096 * (i % 7))
            f.write(os.urandom(300000))
    m = aimfs(options=["segment_size=1M", "segment_age=200ms"])
    mnt = m.mountpoint
    os.mkdir(os.path.join(mnt, "vms"))
    q = os.path.join(mnt, "vms", "q.qcow2")
    r = os.path.join(mnt, "vms", "r.raw")
    w = os.path.join(mnt, "wb.qcow2")
    run(["qemu-img", "create", "-f", "qcow2", q, "64M"])
    run(["qemu-img", "create", "-f", "raw", r, "64M"])
    run(["qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=4k", w, "16M"])
    qemu_io(q, "qcow2", "none", QEMU_IO_CMDS)
    qemu_io(r, "raw", "none", QEMU_IO_CMDS)
    qemu_io(w, "qcow2", "writeback", ["write -P 0x77 0 3M", "write -P 0x78 100k 5k",
                                      "discard 1M 512k", "aio_write -P 0x79 8M 1M",
                                      "aio_flush", "flush", "read -P 0x78 100k 5k"])
    # second pass over the qcow2 with cache=none after a reopen: cluster reuse
    qemu_io(q, "qcow2", "none", ["discard 0 1M", "write -P 0xcd 64k 192k", "flush",
                                 "read -P 0xcd 64k 192k"])
    run(["qemu-img", "convert", "-t", "none", "-O", "qcow2", src,
         os.path.join(mnt, "vms", "conv.qcow2")])
    run(["qemu-img", "convert", "-t", "none", "-O", "raw", src,
         os.path.join(mnt, "conv.raw")])
    for img in (q, w, os.path.join(mnt, "vms", "conv.qcow2")):
        run(["qemu-img", "check", img])
    run(["qemu-img", "compare", src, os.path.join(mnt, "vms", "conv.qcow2")])
    assert m.unmount() == 0
    m.check_quiet()
    replay_equal(m, start, "qemu images")
    # witnesses beyond cmp: the replicas are valid images equal to the sources
    for rel in ("vms/q.qcow2", "wb.qcow2", "vms/conv.qcow2"):
        run(["qemu-img", "check", os.path.join(start, rel)])
    for rel in ("vms/q.qcow2", "vms/r.raw", "wb.qcow2", "vms/conv.qcow2", "conv.raw"):
        run(["qemu-img", "compare", os.path.join(backing, rel), os.path.join(start, rel)])
    run(["qemu-img", "compare", src, os.path.join(start, "vms", "conv.qcow2")])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, os.path.join(start, "conv.raw")])


# ---- fio with verify -------------------------------------------------------------

FIO_CASES = [
    pytest.param(["--rw=randwrite", "--bs=4k", "--direct=1", "--ioengine=libaio",
                  "--iodepth=8", "--numjobs=2", "--size=24M", "--verify=crc32c"],
                 id="randwrite-direct-libaio"),
    pytest.param(["--rw=write", "--bsrange=1k-70k", "--direct=0", "--ioengine=psync",
                  "--numjobs=2", "--size=32M", "--fsync=16", "--verify=md5"],
                 id="seqwrite-buffered-unaligned"),
    pytest.param(["--rw=randwrite", "--bs=16k", "--direct=0", "--ioengine=psync",
                  "--numjobs=2", "--size=16M", "--fdatasync=8", "--verify=crc32c",
                  "--fallocate=keep"],
                 id="randwrite-buffered-overwrite"),
]


@pytest.mark.parametrize("args", FIO_CASES)
def test_fio_verify_replays_exactly(aimfs, workdir, args):
    backing, start = start_dir(workdir, 5, 1)
    m = aimfs(options=["segment_size=4M", "segment_age=500ms"])
    proc = subprocess.run(["fio", "--name=v", f"--directory={m.mountpoint}", *args,
                           "--do_verify=1", "--verify_fatal=1", "--verify_backlog=1024",
                           "--group_reporting", "--randrepeat=0"],
                          capture_output=True, text=True, timeout=120, cwd=workdir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"fio failed ({proc.returncode}):\n{out}"
    errs = re.findall(r"err=\s*(\d+)", out)
    assert errs and all(e == "0" for e in errs), out
    assert "verify" not in proc.stderr.lower(), out
    assert m.unmount() == 0
    m.check_quiet()
    replay_equal(m, start, f"fio {' '.join(args)}")
