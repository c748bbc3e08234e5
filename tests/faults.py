"""The rules file of the fault-injection build (tests/aimfs-faults,
tests/faultio.c): a test says which calls of aimfs's I/O table fail, are
cut short or stall, and changes its mind while aimfs runs.

    f = Faults(os.path.join(workdir, "faults"))
    m = aimfs(binary=AIMFS_FAULTS, env=f.env)
    f.set("pwritev *.open ENOSPC")          # every journal append fails
    f.set("pwrite */backing/vm.raw ENOSPC count=1", "write *.open EIO partial")
    f.clear()

Each rule is `OP GLOB ACTION [count=N] [len=N] [off=N] [partial]` (see
faultio.c).  set() replaces the whole file at once (a new file renamed into
place), so aimfs never reads half a rule."""
import os

from aimtest import BUILD_DIR

AIMFS_FAULTS = os.path.join(BUILD_DIR, "tests", "aimfs-faults")


class Faults:
    def __init__(self, path):
        self.path = path
        self.set()

    @property
    def env(self):
        return {"AIM_FAULTS": self.path}

    def set(self, *rules):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(r + "\n" for r in rules))
        os.rename(tmp, self.path)

    def clear(self):
        self.set()
