"""Runs every C unit test program that the build produced, one pytest test each."""
import os
import subprocess

import pytest

from conftest import BUILD_DIR

UNIT_DIR = os.path.join(BUILD_DIR, "tests")
PROGRAMS = sorted(
    name for name in (os.listdir(UNIT_DIR) if os.path.isdir(UNIT_DIR) else [])
    if name.startswith("test_") and os.access(os.path.join(UNIT_DIR, name), os.X_OK)
    and not name.endswith((".p", ".o"))
)


@pytest.mark.parametrize("program", PROGRAMS)
def test_unit(program):
    proc = subprocess.run([os.path.join(UNIT_DIR, program)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{program} failed:\n{proc.stdout}\n{proc.stderr}"


def test_unit_programs_were_built():
    assert "test_segment" in PROGRAMS and "test_parse" in PROGRAMS, PROGRAMS
