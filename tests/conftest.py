"""pytest fixtures shared by the integration tests.

`aimfs` makes mounts that are always torn down (even when the test fails),
`workdir` is a fresh directory on a real filesystem (not tmpfs: O_DIRECT and
fallocate must behave as they do for images).
"""
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aimtest import AIMFS, BUILD_DIR, Mount  # noqa: E402,F401


def pytest_report_header(config):
    return f"aimfs build: {BUILD_DIR}"


@pytest.fixture
def workdir():
    base = os.environ.get("AIM_TEST_TMP", "/var/tmp")
    d = tempfile.mkdtemp(prefix="aimfs-test-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def aimfs(workdir):
    """Factory: aimfs(backing, mountpoint, options=[...]) -> started Mount."""
    mounts = []

    def start(backing=None, mountpoint=None, options=(), **kw):
        backing = backing or os.path.join(workdir, "backing")
        mountpoint = mountpoint or os.path.join(workdir, "mnt")
        os.makedirs(backing, exist_ok=True)
        os.makedirs(mountpoint, exist_ok=True)
        m = Mount(backing, mountpoint, options, **kw)
        mounts.append(m)
        return m.start()

    yield start
    for m in mounts:
        m.stop()


@pytest.fixture(autouse=True)
def _need_binaries():
    if not os.path.exists(AIMFS):
        pytest.fail(f"{AIMFS} is not built (run scripts/test.sh, or set AIM_BUILD)")
