"""pytest fixtures shared by the integration tests.

`aimfs` makes mounts that are always torn down (even when the test fails),
`workdir` is a fresh directory on a real filesystem (not tmpfs: O_DIRECT and
fallocate must behave as they do for images).

Tests marked `soak` (long, many rounds) run only when asked for with
`-m soak` (or an -m expression that names it); a plain run deselects them.
Each test item keeps its phase reports (item.rep_setup, rep_call,
rep_teardown) so that fixtures can tell at teardown whether the test
failed (tests/guest.py keeps a failed guest's logs).
"""
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aimtest import AIMFS, BUILD_DIR, CACHE_MODES, Mount  # noqa: E402,F401

# Modules whose every test that mounts aimfs runs once per cache mode
# (aimtest.CACHE_MODES): the crash and replay tests.
BOTH_CACHE_MODES = {"test_aimfs_crash", "test_aimfs_workloads", "test_powercut"}


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long multi-round tests; run only with -m soak")


def pytest_collection_modifyitems(config, items):
    if "soak" in (config.getoption("markexpr") or ""):
        return
    soak = [it for it in items if it.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [it for it in items if not it.get_closest_marker("soak")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_report_header(config):
    return f"aimfs build: {BUILD_DIR}"


@pytest.fixture
def workdir():
    base = os.environ.get("AIM_TEST_TMP", "/var/tmp")
    d = tempfile.mkdtemp(prefix="aimfs-test-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def pytest_generate_tests(metafunc):
    if "aimfs" in metafunc.fixturenames and \
            metafunc.module.__name__.rpartition(".")[2] in BOTH_CACHE_MODES:
        metafunc.parametrize("cache_mode", CACHE_MODES, indirect=True)


@pytest.fixture
def cache_mode(request):
    """-o cache= for the aimfs fixture's mounts: a mode of aimtest.CACHE_MODES
    in the modules of BOTH_CACHE_MODES, else None (AIM_CACHE, or aimfs's
    default)."""
    return getattr(request, "param", None)


@pytest.fixture
def aimfs(workdir, cache_mode):
    """Factory: aimfs(backing, mountpoint, options=[...]) -> started Mount."""
    mounts = []

    def start(backing=None, mountpoint=None, options=(), **kw):
        backing = backing or os.path.join(workdir, "backing")
        mountpoint = mountpoint or os.path.join(workdir, "mnt")
        os.makedirs(backing, exist_ok=True)
        os.makedirs(mountpoint, exist_ok=True)
        options = list(options)
        if cache_mode and not any(o.startswith("cache=") for o in options):
            options.append(f"cache={cache_mode}")
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


@pytest.fixture
def remotes(workdir):
    """Factory: remotes(**Remote's arguments) -> Remote (not started), with
    workdir/inbox and workdir/target made unless given; every one is stopped
    at teardown.  (Some test files keep a factory of their own.)"""
    from remote_helpers import Remote
    made = []

    def make(**kw):
        kw.setdefault("inbox", os.path.join(workdir, "inbox"))
        kw.setdefault("target", os.path.join(workdir, "target"))
        os.makedirs(kw["inbox"], exist_ok=True)
        os.makedirs(kw["target"], exist_ok=True)
        r = Remote(workdir, **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()
