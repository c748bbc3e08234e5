"""A guest on a full disk pauses, and resumes with nothing lost (issue 12,
item 6).

A QEMU guest (tests/guest.py; TCG where KVM cannot boot a stock kernel)
has one raw virtio disk, `cache=none,aio=native,werror=enospc`, on an
aimfs mount whose backing directory and journal are on a small tmpfs,
mirrored to an aim-remote.  A ballast file leaves room for part of what the
guest writes.  The guest writes random data it has hashed over the whole
disk with an fsync; the disk fills up, and QEMU pauses the guest: QMP's
query-status says `io-error` (only ENOSPC does that under werror=enospc:
EIO, which aimfs answered before, goes to the guest as an I/O error and its
dd fails).  The host removes the ballast and sends `cont`; QEMU retries the
failed request on the same mount, the guest finishes, reads the disk back
and reports the same hash.  Then: the backing image holds exactly the
guest's data, /status says the journal's error cleared, the replica equals
the source, and the journal replayed onto an empty directory equals the
backing files.

Guest logs are kept on failure (see tests/guest.py)."""
import hashlib
import os
import shutil

import pytest

from aimtest import AIM_REMOTE, assert_trees_equal, replay, wait_for
from guest import Disk, build_initramfs, guests, kernel  # noqa: F401 (fixture)
from servers import free_port, get_status
from test_full_disk import fill, small_fs  # noqa: F401 (fixture)
from test_resync import pki, remotes, source_conf, start_remote, wait_converged  # noqa: F401

MiB = 1 << 20
FS_MB = 96          # the tmpfs under the backing directory and the journal
FREE_MB = 20        # left free by the ballast: the guest fills it part way
DATA_MB = 32        # what the guest writes (the image and the journal both grow)
IMAGE_MB = 40
BOOT_TIMEOUT = 300  # TCG on a shared machine
STEP_TIMEOUT = 300

GUEST_SCRIPT = f"""
D=$(disk data)
dd if=/dev/urandom of=/tmp/data bs=1M count={DATA_MB} 2>/dev/null
aimt DATA $(sha256sum < /tmp/data | cut -d' ' -f1)
dd if=/tmp/data of="$D" bs=1M conv=fsync 2>/dev/console || die "dd failed"
aimt WROTE
echo 3 > /proc/sys/vm/drop_caches
aimt READ $(dd if="$D" bs=1M count={DATA_MB} 2>/dev/null | sha256sum | cut -d' ' -f1)
"""


@pytest.fixture(autouse=True)
def _need_tools():
    if not os.path.exists(AIM_REMOTE):
        pytest.fail(f"{AIM_REMOTE} is not built (set AIM_BUILD)")
    missing = [t for t in ("qemu-system-x86_64", "busybox", "cpio") if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing {missing}: run scripts/install-deps.sh")


def file_sha(path, nbytes):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while nbytes > 0:
            b = f.read(min(nbytes, MiB))
            assert b, f"{path} is shorter than expected"
            h.update(b)
            nbytes -= len(b)
    return h.hexdigest()


# fixtures in teardown order, last first: the guest goes, then the mount,
# the remote, and the tmpfs under them
def test_guest_pauses_on_a_full_disk_and_resumes_with_nothing_lost(small_fs, aimfs,  # noqa: F811
                                                                  workdir, pki, remotes,
                                                                  guests):
    kern = kernel()
    fs = small_fs("tmpfs", FS_MB)
    backing = os.path.join(fs.dir, "backing")
    os.makedirs(backing)
    r = start_remote(workdir, pki, "dr1")
    remotes.append(r)
    status = f"127.0.0.1:{free_port()}"
    # retain: the journal keeps acknowledged segments, to replay them all
    conf = source_conf(workdir, "src.conf", {"dr1": (r, pki)}, status, extra="retain = 1h\n")
    m = aimfs(backing=backing, options=[f"config={conf}"], expect_alarms=True)
    img = os.path.join(m.mountpoint, "vm.raw")
    with open(img, "wb") as f:
        f.truncate(IMAGE_MB * MiB)          # sparse: the guest's writes allocate
    ballast = os.path.join(fs.dir, "ballast")
    fill(ballast, fs.free() - FREE_MB * MiB)

    initrd = build_initramfs(os.path.join(workdir, "guest.cpio.gz"), GUEST_SCRIPT, kern)
    g = guests("full", kern, initrd,
               [Disk(img, cache="none", serial="data", werror="enospc", rerror="report")])
    g.wait_result("DATA", BOOT_TIMEOUT)
    data_sha = [x for x in g.results if x.startswith("DATA ")][0].split()[1]

    def paused():
        if not g.running():
            raise AssertionError(f"qemu exited\n{g.diagnostics()}")
        if any(x.startswith(("DIE", "EXIT")) for x in g.results):
            raise AssertionError(f"the guest saw an error instead of pausing: {g.results}\n"
                                 f"{g.diagnostics()}\n{m.output()[-3000:]}")
        return g.qmp.query_status()["status"] == "io-error"
    try:
        wait_for(paused, STEP_TIMEOUT, 0.2, what="the guest to pause on ENOSPC")
    except TimeoutError:
        raise AssertionError(f"the guest never paused (status {g.qmp.query_status()}, "
                             f"results {g.results}, {fs.free()} bytes free)\n"
                             f"{g.diagnostics()}") from None
    assert "WROTE" not in g.results
    st = get_status(status)
    assert st["journal_error_at"], st
    stops = [e for e in g.qmp.events if e["event"] == "BLOCK_IO_ERROR"]
    assert stops and all(e["data"].get("nospace") for e in stops), \
        f"an error other than ENOSPC reached qemu: {stops}\n{m.output()[-4000:]}"

    # space comes back; the same mount takes the retried request
    os.unlink(ballast)
    g.qmp.cont()
    rc, init = g.wait_exit(STEP_TIMEOUT)
    assert (rc, init) == (0, 0), f"qemu {rc}, init {init}: {g.results}\n{g.diagnostics()}"
    read_sha = [x for x in g.results if x.startswith("READ ")][0].split()[1]
    assert read_sha == data_sha, "the guest read back other data than it wrote"
    assert file_sha(os.path.join(backing, "vm.raw"), DATA_MB * MiB) == data_sha, \
        "the backing image does not hold what the guest wrote"

    st = get_status(status)
    assert st["journal_error"] is None and st["journal_error_cleared_at"], st
    wait_converged(status, [r], timeout=300)
    assert_trees_equal(backing, r.target)
    assert m.unmount() == 0
    start = os.path.join(workdir, "start")
    os.makedirs(start)
    replay(m.journal, start)
    assert_trees_equal(start, backing)
    r.stop()
